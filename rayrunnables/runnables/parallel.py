"""``RunnableParallel``: a dict of steps that all get the same input and run concurrently."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..context import RunContext
from ..engine.inprocess import run_branches, stream_branches
from ..errors import InputTypeError
from .base import Runnable, coerce_to_runnable
from .chunks import AddableDict

__all__ = ["RunnableParallel"]


@dataclass(frozen=True, eq=False, init=False)
class RunnableParallel(Runnable[Any, dict[str, Any]]):
    """``{"a": step_a, "b": step_b}``: each branch gets its own copy of the input."""

    steps: Mapping[str, Runnable[Any, Any]]
    name: str | None = None

    def __init__(self, steps: Mapping[str, Any] | None = None, name: str | None = None, **kwargs: Any) -> None:
        merged = {**(steps or {}), **kwargs}
        coerced: dict[str, Runnable[Any, Any]] = {}
        for key, value in merged.items():
            if not isinstance(key, str):
                raise InputTypeError(f"RunnableParallel: keys must be strings, got {key!r}")
            try:
                coerced[key] = coerce_to_runnable(value)
            except InputTypeError as exc:
                raise InputTypeError(f"parallel[{key!r}]: {exc}") from None
        object.__setattr__(self, "steps", coerced)
        object.__setattr__(self, "name", name)

    def label(self) -> str:
        return self.named("parallel")

    def run_name(self) -> str:
        return self.name or f"RunnableParallel<{','.join(self.steps)}>"

    def children(self) -> list[tuple[str, Runnable[Any, Any]]]:
        return [(f"parallel[{key!r}]", step) for key, step in self.steps.items()]

    def _invoke(self, input: Any, ctx: RunContext) -> dict[str, Any]:
        children = self.children()
        results = run_branches(self.scope(ctx), input, children)
        return {key: value for key, value in zip(self.steps, results, strict=False)}

    def _transform(self, chunks: Iterator[Any], ctx: RunContext) -> Iterator[dict[str, Any]]:
        """``{key: chunk}`` pieces as the branches produce them (they add up to what ``invoke`` returns).
        The input is read whole first: each branch then streams its own share of it."""
        keys = list(self.steps)
        for n, chunk in stream_branches(self.scope(ctx), list(chunks), self.children()):
            yield AddableDict({keys[n]: chunk})
