"""``RunnableActor``: a stateful step. Its class is built once per actor (Ray) or once per process
(local), then called for every item: the way to load an embedding model once and reuse it.

A class with a ``batch(self, items) -> list`` method is *vectorized*: ``.map()``/``batch`` call it
once per chunk, so a numpy embedder does one matrix product per chunk instead of a Python loop.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..context import RunContext
from ..engine.execution import call_step
from ..engine.sharing import tag_failure
from ..errors import InputTypeError, StepConstructionError, VectorizedOutputError, attach_step
from .base import Runnable
from .chunks import gather

__all__ = ["RunnableActor", "check_batch_output", "has_call"]


def has_call(cls: type) -> bool:
    return any("__call__" in vars(klass) for klass in cls.__mro__[:-1])


def check_batch_output(node: Runnable[Any, Any], ctx: RunContext, got: Any, expected: int) -> list[Any]:
    if not isinstance(got, (list, tuple)) or len(got) != expected:
        size = len(got) if isinstance(got, (list, tuple)) else type(got).__name__
        path = ctx.child(node.label()).path_str
        raise attach_step(
            VectorizedOutputError(f"{path}: the vectorized form returned {size} outputs for {expected} inputs"), path
        )
    return list(got)


@dataclass(frozen=True, eq=False, init=False)
class RunnableActor(Runnable[Any, Any]):
    """``RunnableActor(Embedder, "model-name", pool_size=2)``; options via ``.with_options(num_cpus=...)``."""

    @property
    def learns(self) -> bool:
        return True

    cls: type
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    pool_size: int = 1
    name: str | None = None
    key: str = field(default="", compare=False)

    def __init__(self, cls: type, *args: Any, pool_size: int = 1, name: str | None = None, **kwargs: Any) -> None:
        if not isinstance(cls, type):
            raise InputTypeError(f"RunnableActor needs a class, got {cls!r:.80}")
        if not has_call(cls) and not callable(getattr(cls, "batch", None)):
            raise InputTypeError(f"RunnableActor: {cls.__name__} needs a __call__(self, item) or batch(self, items)")
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise InputTypeError(f"RunnableActor({cls.__name__}): pool_size must be an int >= 1, got {pool_size!r}")
        set_ = object.__setattr__
        set_(self, "cls", cls)
        set_(self, "args", args)
        set_(self, "kwargs", dict(kwargs))
        set_(self, "pool_size", pool_size)
        set_(self, "name", name)
        set_(self, "key", uuid.uuid4().hex[:12])

    def with_name(self, name: str) -> RunnableActor:
        clone = RunnableActor(self.cls, *self.args, pool_size=self.pool_size, name=name, **self.kwargs)
        object.__setattr__(clone, "key", self.key)
        return clone

    def label(self) -> str:
        return f"actor '{self.name or self.cls.__name__}'"

    def cache_identity(self) -> dict[str, Any]:
        """What its outputs depend on (``with_cache``): the class and its arguments, not the pool."""
        return {"cls": self.cls, "args": self.args, "kwargs": self.kwargs}

    @property
    def vectorized(self) -> bool:
        return callable(getattr(self.cls, "batch", None))

    def _call(self, fn: Any, arg: Any, ctx: RunContext, gathered: bool = False) -> Any:
        """One call of the instance (or of its ``batch``), measured while its class is being learned.
        ``gathered``: a generator's chunks added up into one output, as ``invoke`` returns them."""
        with ctx.call_slot():
            try:
                output = call_step(self, fn, arg)
                return gather(output) if gathered and inspect.isgenerator(output) else output
            except Exception as exc:
                tag_failure(exc, ctx.child(self.label()).path_str)
                raise

    def construct(self) -> Any:
        """Build the instance; a failing constructor becomes one clear error naming the step."""
        try:
            return self.cls(*self.args, **self.kwargs)
        except Exception as exc:
            raise StepConstructionError(f"{self.label()}: {self.cls.__name__}(...) failed: {exc!r}") from exc

    def _invoke(self, input: Any, ctx: RunContext) -> Any:
        instance = ctx.services.instance(self)
        if has_call(type(instance)):
            return self._call(instance, input, ctx, gathered=True)
        return check_batch_output(self, ctx, self._call(instance.batch, [input], ctx), 1)[0]

    def _transform(self, chunks: Iterator[Any], ctx: RunContext) -> Iterator[Any]:
        """A ``__call__`` that is a generator streams its chunks (in this process; on Ray, from the task's
        process: a pool actor sends its output whole); any other call yields its one output."""
        instance = ctx.services.instance(self)
        if not has_call(type(instance)):
            yield self._invoke(gather(chunks), ctx)
            return
        output = self._call(instance, gather(chunks), ctx)
        if not inspect.isgenerator(output):
            yield output
            return
        with ctx.call_slot():
            try:
                yield from output
            except Exception as exc:
                tag_failure(exc, ctx.child(self.label()).path_str)
                raise

    def _invoke_batch(self, inputs: list[Any], ctx: RunContext) -> list[Any]:
        instance = ctx.services.instance(self)
        got = self._call(instance.batch, inputs, ctx)
        return check_batch_output(self, ctx, got, len(inputs))
