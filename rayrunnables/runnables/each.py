"""``RunnableEach`` (what ``.map()`` returns): the bound step over every item of a list, order kept."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..context import RunContext
from ..engine.execution import COMPUTING, subtree_class
from ..engine.inprocess import ThreadChunkRunner, run_chunk
from ..engine.scheduler import iter_batch
from ..errors import InputTypeError, attach_step
from .base import Input, Output, Runnable

__all__ = ["RunnableEach"]

_RUNNER = ThreadChunkRunner()


@dataclass(frozen=True, eq=False)
class RunnableEach(Runnable[Sequence[Input], list[Output]]):
    bound: Runnable[Input, Output]
    name: str | None = None

    def label(self) -> str:
        return self.named("map")

    def run_name(self) -> str:
        return self.name or f"RunnableEach<{self.bound.run_name()}>"

    def children(self) -> list[tuple[str, Runnable[Any, Any]]]:
        return [("map", self.bound)]

    def check_input(self, input: Any, ctx: RunContext) -> list[Any]:
        if isinstance(input, (str, bytes)) or not isinstance(input, (Sequence, set, frozenset)):
            path = ctx.child(self.label()).path_str
            raise attach_step(
                InputTypeError(f"{path}: .map() needs a list input, got {type(input).__name__}: {input!r:.100}"),
                path,
            )
        return list(input)

    def _invoke(self, input: Sequence[Input], ctx: RunContext) -> list[Output]:
        ctx = self.scope(ctx)
        items = self.check_input(input, ctx)
        runner = ctx.map_runner(self.bound) if ctx.map_runner else _RUNNER  # another process's, maybe
        if runner is _RUNNER and subtree_class(self.bound) == COMPUTING:  # every item in this thread, in turn
            result = run_chunk(self.bound, list(enumerate(items)), ctx.child("map"), return_exceptions=False)
            for index, ok, value, _ in result.outcomes:
                if not ok:
                    raise attach_step(value, self.bound.label(), index)
            return [value for _, _, value, _ in result.outcomes]
        out: list[Any] = [None] * len(items)
        for index, value in iter_batch(
            runner, self.bound, items, ctx.child("map"), return_exceptions=False, ordered=False
        ):
            out[index] = value
        return out
