"""``RunnablePassthrough`` (+ ``.assign``), ``RunnableAssign`` and ``RunnablePick``: reshaping dicts."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .._aio import run_coro_sync
from ..context import RunContext
from ..engine.execution import call_step
from ..engine.sharing import tag_failure
from ..errors import InputTypeError, attach_step
from .base import Runnable
from .chunks import NOTHING, AddableDict, add_chunk, gather
from .parallel import RunnableParallel

__all__ = ["RunnablePassthrough", "RunnableAssign", "RunnablePick", "require_dict"]


def require_dict(node: Runnable[Any, Any], input: Any, ctx: RunContext, what: str) -> Mapping[str, Any]:
    if not isinstance(input, Mapping):
        path = ctx.child(node.label()).path_str
        raise attach_step(
            InputTypeError(f"{path}: {what} needs a dict input, got {type(input).__name__}: {input!r:.100}"),
            path,
        )
    return input


@dataclass(frozen=True, eq=False)
class RunnablePassthrough(Runnable[Any, Any]):
    """Returns its input unchanged; ``func``, when given, is called on the input for its side effect."""

    func: Callable[..., Any] | None = None
    name: str | None = None

    @property
    def learns(self) -> bool:
        return self.func is not None

    def label(self) -> str:
        return self.named("passthrough")

    @classmethod
    def assign(cls, **kwargs: Any) -> RunnableAssign:  # type: ignore[override]
        return RunnableAssign.of(kwargs)

    def _transform(self, chunks: Iterator[Any], ctx: RunContext) -> Iterator[Any]:
        """The input's chunks as they come; ``func`` then sees them added up."""
        final: Any = NOTHING
        for chunk in chunks:
            yield chunk
            final = chunk if final is NOTHING else add_chunk(final, chunk)
        if self.func is not None and final is not NOTHING:
            self._invoke(final, ctx)

    def _invoke(self, input: Any, ctx: RunContext) -> Any:
        if self.func is not None:
            here = ctx.child(self.label())
            with ctx.call_slot():
                try:
                    result = call_step(self, self.func, input)
                    if hasattr(result, "__await__"):
                        run_coro_sync(result)
                except Exception as exc:
                    tag_failure(exc, here.path_str)
                    raise
        return input


@dataclass(frozen=True, eq=False)
class RunnableAssign(Runnable[Mapping[str, Any], dict[str, Any]]):
    """``{**input, **mapper(input)}``: the new keys are computed in parallel from the input dict."""

    mapper: RunnableParallel
    name: str | None = None

    @classmethod
    def of(cls, kwargs: Mapping[str, Any]) -> RunnableAssign:
        return cls(RunnableParallel(dict(kwargs)))

    def run_name(self) -> str:
        return self.name or f"RunnableAssign<{','.join(self.mapper.steps)}>"

    def label(self) -> str:
        return self.named("assign")

    def children(self) -> list[tuple[str, Runnable[Any, Any]]]:
        return [("assign", self.mapper)]

    def _invoke(self, input: Mapping[str, Any], ctx: RunContext) -> dict[str, Any]:
        data = require_dict(self, input, ctx, "assign")
        return {**data, **self.mapper._invoke(data, ctx.child("assign"))}

    def _transform(self, chunks: Iterator[Any], ctx: RunContext) -> Iterator[dict[str, Any]]:
        """As LangChain streams it: the input's own keys first, then the new keys as they are computed."""
        received = list(chunks)
        data = require_dict(self, gather(received), ctx, "assign")
        for chunk in received:
            kept = AddableDict({k: v for k, v in chunk.items() if k not in self.mapper.steps})
            if kept:
                yield kept
        yield from self.mapper._transform(iter([data]), ctx.child("assign"))


@dataclass(frozen=True, eq=False, init=False)
class RunnablePick(Runnable[Mapping[str, Any], Any]):
    """One key (``pick("a")`` gives its value) or several (``pick(["a", "b"])`` gives a smaller dict)."""

    keys: str | tuple[str, ...]
    name: str | None = None

    def __init__(self, keys: str | list[str] | tuple[str, ...], name: str | None = None) -> None:
        if isinstance(keys, str):
            value: str | tuple[str, ...] = keys
        elif isinstance(keys, (list, tuple)) and all(isinstance(k, str) for k in keys):
            value = tuple(keys)
        else:
            raise InputTypeError(f"pick: keys must be a string or a list of strings, got {keys!r}")
        object.__setattr__(self, "keys", value)
        object.__setattr__(self, "name", name)

    def run_name(self) -> str:
        keys = self.keys if isinstance(self.keys, str) else ",".join(self.keys)
        return self.name or f"RunnablePick<{keys}>"

    def label(self) -> str:
        if self.name:
            return f"'{self.name}'"
        return f"pick {self.keys!r}" if isinstance(self.keys, str) else f"pick {list(self.keys)!r}"

    def _invoke(self, input: Mapping[str, Any], ctx: RunContext) -> Any:
        data = require_dict(self, input, ctx, "pick")
        if isinstance(self.keys, str):
            return data.get(self.keys)
        picked = {k: data[k] for k in self.keys if k in data}
        return picked or None  # LangChain: None when none of the keys is present

    def _transform(self, chunks: Iterator[Any], ctx: RunContext) -> Iterator[Any]:
        """Each chunk's key (or keys) as it comes; chunks without them yield nothing."""
        for chunk in chunks:
            picked = self._invoke(chunk, ctx)
            if picked is not None:
                yield AddableDict(picked) if isinstance(picked, dict) else picked
