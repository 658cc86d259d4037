"""``RunnableSequence``: ``a | b | c``, each step's output the next step's input."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from ..context import RunContext
from .base import Input, Output, Runnable

__all__ = ["RunnableSequence"]

_SEGMENTS = [f"step {i}" for i in range(64)]


def _segment(i: int) -> str:
    return _SEGMENTS[i] if i < len(_SEGMENTS) else f"step {i}"


@dataclass(frozen=True, eq=False)
class RunnableSequence(Runnable[Input, Output]):
    steps: tuple[Runnable[Any, Any], ...]
    name: str | None = None

    @classmethod
    def of(cls, *steps: Runnable[Any, Any], name: str | None = None) -> Runnable[Any, Any]:
        """Build a sequence, flattening nested unnamed sequences as LangChain does."""
        flat: list[Runnable[Any, Any]] = []
        for step in steps:
            if isinstance(step, RunnableSequence) and step.name is None:
                flat.extend(step.steps)
            else:
                flat.append(step)
        if len(flat) == 1 and name is None:
            return flat[0]
        return cls(tuple(flat), name)

    @property
    def first(self) -> Runnable[Any, Any]:
        return self.steps[0]

    @property
    def last(self) -> Runnable[Any, Any]:
        return self.steps[-1]

    def label(self) -> str:
        return self.named("sequence")

    def children(self) -> list[tuple[str, Runnable[Any, Any]]]:
        return [(f"step {i}", step) for i, step in enumerate(self.steps, 1)]

    def _invoke(self, input: Input, ctx: RunContext) -> Output:
        value: Any = input
        ctx = self.scope(ctx)
        for i, step in enumerate(self.steps, 1):
            value = step._invoke(value, ctx.child(_segment(i)))
        return cast(Output, value)

    def _transform(self, chunks: Iterator[Any], ctx: RunContext) -> Iterator[Output]:
        """Each step transforms the previous one's chunks: a streaming step after a streaming step
        streams through; a step that does not stream adds its input up and yields one output."""
        ctx = self.scope(ctx)
        stream: Iterator[Any] = chunks
        for i, step in enumerate(self.steps, 1):
            stream = step._transform(stream, ctx.child(_segment(i)))
        yield from stream
