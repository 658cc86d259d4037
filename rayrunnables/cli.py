"""The ``rayrunnables`` command. Built on click, which Ray already depends on (no extra install)."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from .runnables.base import Runnable, coerce_to_runnable


def load_target(spec: str) -> Runnable[Any, Any]:
    """``package.module:attr`` -> the runnable (a callable or dict is coerced)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise click.UsageError(f"expected MODULE:ATTR, got {spec!r}")
    sys.path.insert(0, ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.UsageError(f"cannot import {module_name!r}: {exc}") from exc
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise click.UsageError(f"{module_name!r} has no attribute {attr!r}") from None
    return coerce_to_runnable(target)


@click.group()
@click.version_option(package_name="rayrunnables")
def main() -> None:
    """Run LangChain-style chains in-process, on a local Ray, or on a Ray cluster."""


@main.command()
@click.option("--address", default=None, help="Ray address (default: start a local Ray).")
@click.option("--docs", "n_docs", default=48, show_default=True, help="Documents to embed.")
def demo(address: str | None, n_docs: int) -> None:
    """Research-agent fan-out/fan-in + CPU-heavy embeddings: in-process vs on Ray."""
    from .demo import run_demo

    run_demo(address=address, n_docs=n_docs, echo=click.echo)


@main.command()
@click.argument("target")
@click.option("--backend", default="local", type=click.Choice(["local", "ray"]), show_default=True)
def explain(target: str, backend: str) -> None:
    """Print the plan of TARGET (MODULE:ATTR): every step, its path, options and tasks."""
    click.echo(load_target(target).explain(backend))


if __name__ == "__main__":
    main()
