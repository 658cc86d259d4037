"""``RunnableLambda``: a plain, async or generator function as a step; and the ``@chain`` decorator."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from .._aio import run_coro_sync
from ..context import RunContext
from ..engine.execution import call_step
from ..engine.sharing import tag_failure
from .actor import check_batch_output
from .base import Input, Output, Runnable
from .chunks import gather

__all__ = ["RunnableLambda", "chain"]


def _accepts_config(func: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    return "config" in params


@dataclass(frozen=True, eq=False, init=False)
class RunnableLambda(Runnable[Input, Output]):
    """Wraps ``func(input)`` (or ``func(input, config)``). Async and generator functions work too.

    A function that returns a Runnable has that runnable invoked on the same input, as in LangChain.
    ``batched=True`` marks a vectorized function: it takes a list of inputs and returns a list of outputs,
    and ``.map()``/``batch`` call it once per chunk.
    """

    @property
    def learns(self) -> bool:
        return True

    func: Callable[..., Any]
    afunc: Callable[..., Any] | None = None
    name: str | None = None
    batched: bool = False
    is_async: bool = field(default=False, compare=False)
    is_generator: bool = field(default=False, compare=False)
    wants_config: bool = field(default=False, compare=False)

    def __init__(
        self,
        func: Callable[..., Any] | None = None,
        afunc: Callable[..., Any] | None = None,
        name: str | None = None,
        *,
        batched: bool = False,
        is_async: bool = False,
        is_generator: bool = False,
        wants_config: bool = False,
    ) -> None:
        target = func if func is not None else afunc
        if target is None or not callable(target):
            raise TypeError(f"RunnableLambda needs a callable, got {target!r}")
        set_ = object.__setattr__
        set_(self, "func", target)
        set_(self, "afunc", afunc)
        fname = getattr(target, "__name__", None) or type(target).__name__
        set_(self, "name", name if name is not None else ("lambda" if fname == "<lambda>" else fname))
        set_(self, "batched", bool(batched))
        call_method = type(target).__call__ if not inspect.isroutine(target) else None
        set_(self, "is_async", inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(call_method))
        set_(self, "is_generator", inspect.isgeneratorfunction(target))
        set_(self, "wants_config", _accepts_config(target))

    def label(self) -> str:
        return f"lambda '{self.name}'"

    def run_name(self) -> str:
        anonymous = self.name == "lambda" and getattr(self.func, "__name__", None) == "<lambda>"
        return "RunnableLambda" if anonymous else str(self.name)

    def reports_run(self) -> bool:
        """A LangChain runnable inside (``from_langchain``) reports its own runs, through LangChain."""
        return not getattr(self.func, "reports_runs", False)

    @property
    def waits(self) -> bool:
        """An async function waits, by declaration."""
        return self.is_async

    def _call(self, input: Any, ctx: RunContext) -> Any:
        kwargs = {"config": ctx.config} if self.wants_config else {}
        if self.is_async:
            return run_coro_sync(self.func(input, **kwargs))
        if self.is_generator:
            return gather(self.func(input, **kwargs))
        return self.func(input, **kwargs)

    @property
    def vectorized(self) -> bool:
        return self.batched

    def _invoke_batch(self, inputs: list[Any], ctx: RunContext) -> list[Any]:
        """A ``batched=True`` function gets the whole chunk (a list) and returns one output per item."""
        with ctx.call_slot():
            got = self._guarded(inputs, ctx)
        return check_batch_output(self, ctx, got, len(inputs))

    def _call_user(self, input: Any, ctx: RunContext) -> Any:
        """The function's own output (a runnable it returns is not run yet)."""
        if self.batched:
            return self._invoke_batch([input], ctx)[0]
        if ctx.limiters or ctx.cancel.is_set():
            with ctx.call_slot():
                return self._guarded(input, ctx)
        return self._guarded(input, ctx)  # the hot path: no cap, nothing cancelled

    def _invoke(self, input: Input, ctx: RunContext) -> Output:
        output = self._call_user(input, ctx)
        if isinstance(output, Runnable):
            here = ctx.child(self.label())
            nested: Output = output._invoke(input, here.deeper(self.label()))
            return nested
        return cast(Output, output)

    def _guarded(self, input: Any, ctx: RunContext) -> Any:
        try:
            if self.is_async:  # waiting by declaration: nothing to learn
                return self._call(input, ctx)
            if self.wants_config or self.is_generator:
                return call_step(self, self._call, input, ctx)
            return call_step(self, self.func, input)
        except Exception as exc:
            tag_failure(exc, ctx.child(self.label()).path_str)
            raise

    def _transform(self, chunks: Iterator[Any], ctx: RunContext) -> Iterator[Output]:
        """A generator function streams its chunks; a function that returns a runnable streams that
        runnable; any other function yields its one output. The input is added up first, as LangChain
        does; a callable that streams its input itself (``transform_chunks``, e.g. a LangChain step) gets
        the chunks as they come."""
        here = ctx.child(self.label())
        streamer = getattr(self.func, "transform_chunks", None)
        if streamer is None and not self.is_generator:
            final = gather(chunks)
            output = self._call_user(final, ctx)
            if isinstance(output, Runnable):
                yield from output._stream(final, here.deeper(self.label()))
            else:
                yield output
            return
        with ctx.call_slot():
            try:
                if streamer is not None:
                    yield from streamer(chunks, ctx.config)
                else:
                    kwargs = {"config": ctx.config} if self.wants_config else {}
                    yield from self.func(gather(chunks), **kwargs)
            except Exception as exc:
                tag_failure(exc, here.path_str)
                raise


def chain(func: Callable[[Input], Output]) -> RunnableLambda[Input, Output]:
    """Decorator: ``@chain`` turns a function into a ``RunnableLambda`` named after it."""
    return RunnableLambda(func)
