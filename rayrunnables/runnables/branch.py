"""``RunnableBranch``: the first branch whose condition holds runs, else the default."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..context import RunContext
from ..errors import InputTypeError
from .base import Runnable, coerce_to_runnable
from .chunks import gather

__all__ = ["RunnableBranch"]


@dataclass(frozen=True, eq=False, init=False)
class RunnableBranch(Runnable[Any, Any]):
    """``RunnableBranch((cond1, step1), (cond2, step2), default)`` as in LangChain."""

    branches: tuple[tuple[Runnable[Any, Any], Runnable[Any, Any]], ...]
    default: Runnable[Any, Any]
    name: str | None = None

    def __init__(self, *branches: Any, name: str | None = None) -> None:
        if len(branches) < 2:
            raise InputTypeError("RunnableBranch needs at least one (condition, runnable) pair and a default")
        *pairs, default = branches
        coerced = []
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise InputTypeError(f"branch[{i}]: expected a (condition, runnable) pair, got {pair!r:.80}")
            coerced.append((coerce_to_runnable(pair[0]), coerce_to_runnable(pair[1])))
        object.__setattr__(self, "branches", tuple(coerced))
        object.__setattr__(self, "default", coerce_to_runnable(default))
        object.__setattr__(self, "name", name)

    def label(self) -> str:
        return self.named("branch")

    def children(self) -> list[tuple[str, Runnable[Any, Any]]]:
        kids: list[tuple[str, Runnable[Any, Any]]] = []
        for i, (cond, step) in enumerate(self.branches):
            kids += [(f"branch[{i}] condition", cond), (f"branch[{i}]", step)]
        return [*kids, ("branch default", self.default)]

    def with_name(self, name: str) -> RunnableBranch:
        return RunnableBranch(*self.branches, self.default, name=name)

    def _choose(self, input: Any, ctx: RunContext) -> tuple[str, Runnable[Any, Any]]:
        for i, (cond, step) in enumerate(self.branches):
            if cond._invoke(input, ctx.child(f"branch[{i}] condition")):
                return f"branch[{i}]", step
        return "branch default", self.default

    def _invoke(self, input: Any, ctx: RunContext) -> Any:
        ctx = self.scope(ctx)
        segment, step = self._choose(input, ctx)
        return step._invoke(input, ctx.child(segment))

    def _transform(self, chunks: Iterator[Any], ctx: RunContext) -> Iterator[Any]:
        """The input added up, the branch chosen on it, then that branch streamed."""
        ctx = self.scope(ctx)
        input = gather(chunks)
        segment, step = self._choose(input, ctx)
        yield from step._stream(input, ctx.child(segment))
