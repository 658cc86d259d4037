"""``MODULE:ATTR`` on the command line -> the object it names: one loader for ``run``, ``explain`` and ``serve``."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from .runnables.base import coerce_to_runnable

__all__ = ["load_target"]


def load_target(spec: str, coerce: bool = True) -> Any:
    """``package.module:attr`` -> the runnable (a callable or dict is coerced; as it is without ``coerce``)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise click.UsageError(f"expected MODULE:ATTR, got {spec!r}")
    if "." not in sys.path:
        sys.path.insert(0, ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.UsageError(f"cannot import {module_name!r}: {exc}") from exc
    except Exception as exc:  # the module itself fails while importing
        raise click.UsageError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise click.UsageError(f"{module_name!r} has no attribute {attr!r}") from None
    if not coerce:
        return target
    try:
        return coerce_to_runnable(target)
    except TypeError as exc:
        raise click.UsageError(f"{spec}: {exc}") from None
