"""``RunnableGenerator``: a transform function, an iterator of input chunks in and output chunks out.

LangChain's ``RunnableGenerator``: the step that streams its *input* too, such as a parser that turns a
model's token chunks into words as they arrive. ``invoke`` adds its output chunks up.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..context import RunContext
from ..engine.execution import call_step
from ..engine.sharing import tag_failure
from .base import Runnable
from .chunks import gather

__all__ = ["RunnableGenerator"]


@dataclass(frozen=True, eq=False, init=False)
class RunnableGenerator(Runnable[Any, Any]):
    """``RunnableGenerator(transform)`` where ``transform(chunks)`` (or ``transform(chunks, config)``)
    is a generator over an iterator of input chunks."""

    transform: Callable[..., Iterator[Any]]
    name: str | None = None
    wants_config: bool = field(default=False, compare=False)

    def __init__(self, transform: Callable[..., Iterator[Any]], name: str | None = None) -> None:
        if not callable(transform):
            raise TypeError(f"RunnableGenerator needs a callable, got {transform!r}")
        object.__setattr__(self, "transform", transform)
        object.__setattr__(self, "name", name or getattr(transform, "__name__", None) or "generator")
        try:
            wants = "config" in inspect.signature(transform).parameters
        except (TypeError, ValueError):
            wants = False
        object.__setattr__(self, "wants_config", wants)

    @property
    def learns(self) -> bool:
        return True

    def label(self) -> str:
        return f"generator '{self.name}'"

    def _transform(self, chunks: Iterator[Any], ctx: RunContext) -> Iterator[Any]:
        kwargs = {"config": ctx.config} if self.wants_config else {}
        with ctx.call_slot():
            try:
                yield from self.transform(chunks, **kwargs)
            except Exception as exc:
                tag_failure(exc, ctx.child(self.label()).path_str)
                raise

    def _invoke(self, input: Any, ctx: RunContext) -> Any:
        return call_step(self, lambda value: gather(self._transform(iter([value]), ctx)), input)
