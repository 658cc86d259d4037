"""Wrappers that change *how* a step runs, not what it computes: retry, fallbacks, config/options/listeners."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import merge_configs
from ..context import RunContext, ThreadLimiter
from ..engine.events import LISTENER_EVENT, Listeners, Run, RunSink, Scoped, ScopedCallbacks, notify_listener
from ..errors import InputTypeError, attach_step
from .base import Input, Output, Runnable
from .chunks import NOTHING, gather
from .rate_limited import RunnableRateLimited

__all__ = [
    "Listeners",
    "Run",
    "RunnableBinding",
    "RunnableRateLimited",
    "RunnableRetry",
    "RunnableWithFallbacks",
    "notify_listener",
    "start_run",
    "finish_run",
]


@dataclass(frozen=True, eq=False)
class RunnableRetry(Runnable[Input, Output]):
    """Re-runs ``bound`` on the listed exception types, up to ``stop_after_attempt`` attempts in all."""

    bound: Runnable[Input, Output]
    retry_if_exception_type: tuple[type[BaseException], ...] = (Exception,)
    stop_after_attempt: int = 3
    wait_exponential_jitter: bool = True
    exponential_jitter_params: Mapping[str, float] | None = None
    name: str | None = None

    @classmethod
    def create(cls, bound: Runnable[Input, Output], **kwargs: Any) -> RunnableRetry[Input, Output]:
        attempts = kwargs["stop_after_attempt"]
        if not isinstance(attempts, int) or attempts < 1:
            raise InputTypeError(
                f"{bound.label()}.with_retry: stop_after_attempt must be an int >= 1, got {attempts!r}"
            )
        types = kwargs["retry_if_exception_type"]
        kwargs["retry_if_exception_type"] = tuple(types) if isinstance(types, (list, tuple)) else (types,)
        return cls(bound, **kwargs)

    def label(self) -> str:
        return self.named(f"retry({self.bound.label()})")

    def run_name(self) -> str:
        """LangChain's retry reports a run named after its step, with a child run per attempt."""
        return self.name or self.bound.run_name()

    def cache_identity(self) -> Runnable[Input, Output]:
        """Retries decide whether a call fails, and failures are not cached (``with_cache``)."""
        return self.bound

    def children(self) -> list[tuple[str, Runnable[Any, Any]]]:
        return [("", self.bound)]

    def _wait_seconds(self, attempt: int) -> float:
        if not self.wait_exponential_jitter:
            return 0.0
        params = {"initial": 1.0, "max": 60.0, "exp_base": 2.0, "jitter": 1.0, **(self.exponential_jitter_params or {})}
        delay = params["initial"] * params["exp_base"] ** (attempt - 1) + random.uniform(0, params["jitter"])
        return float(min(delay, params["max"]))

    def _transform(self, chunks: Iterator[Any], ctx: RunContext) -> Iterator[Output]:
        """Streamed without retries, as LangChain's retry streams (chunks already sent cannot be taken back)."""
        yield from self.bound._transform(chunks, ctx)

    def _invoke(self, input: Input, ctx: RunContext) -> Output:
        attempt = 1
        while True:
            try:
                return self.bound._invoke(input, ctx)
            except self.retry_if_exception_type:
                if attempt >= self.stop_after_attempt:
                    raise
            delay = self._wait_seconds(attempt)
            attempt += 1
            ctx.check_cancelled()
            if delay:
                time.sleep(delay)


@dataclass(frozen=True, eq=False)
class RunnableWithFallbacks(Runnable[Input, Output]):
    """Tries ``runnable``, then each fallback in turn; raises the first error if all fail."""

    runnable: Runnable[Input, Output]
    fallbacks: tuple[Runnable[Input, Output], ...]
    exceptions_to_handle: tuple[type[BaseException], ...] = (Exception,)
    exception_key: str | None = None
    name: str | None = None

    def label(self) -> str:
        return self.named("fallbacks")

    def children(self) -> list[tuple[str, Runnable[Any, Any]]]:
        return [("", self.runnable), *((f"fallback {i}", f) for i, f in enumerate(self.fallbacks, 1))]

    def _given(self, input: Any, ctx: RunContext, last_error: BaseException | None) -> Any:
        """What the next runnable gets: the input, with the last error under ``exception_key`` if set."""
        if self.exception_key is None:
            return input
        if not isinstance(input, Mapping):
            path = ctx.child(self.label()).path_str
            raise attach_step(
                InputTypeError(f"{path}: exception_key needs a dict input, got {type(input).__name__}"), path
            )
        return input if last_error is None else {**input, self.exception_key: last_error}

    def _invoke(self, input: Input, ctx: RunContext) -> Output:
        first_error: BaseException | None = None
        last_error: BaseException | None = None
        for segment, step in self.children():
            value = self._given(input, ctx, last_error)
            try:
                return step._invoke(value, ctx.child(segment))
            except self.exceptions_to_handle as exc:
                first_error = first_error or exc
                last_error = exc
        assert first_error is not None
        raise first_error

    def _transform(self, chunks: Iterator[Any], ctx: RunContext) -> Iterator[Output]:
        """As LangChain streams fallbacks: a runnable that fails before its first chunk hands over to the
        next; once a chunk is out, its errors are the stream's."""
        input = gather(chunks)
        first_error: BaseException | None = None
        last_error: BaseException | None = None
        for segment, step in self.children():
            stream = step._stream(self._given(input, ctx, last_error), ctx.child(segment))
            try:
                first = next(stream, NOTHING)
            except self.exceptions_to_handle as exc:
                first_error = first_error or exc
                last_error = exc
                continue
            if first is not NOTHING:
                yield first
                yield from stream
            return
        assert first_error is not None
        raise first_error


def start_run(binding: RunnableBinding[Any, Any], value: Any, ctx: RunContext) -> Run:
    """A listened run begins: ``on_start`` sees it, in the process that built the chain."""
    config = ctx.config
    run = Run(name=config.get("run_name") or binding.get_name(), inputs=value,
              tags=list(config.get("tags", [])), metadata=dict(config.get("metadata", {})))
    _tell(binding, ctx, "on_start", dataclasses.replace(run))
    return run


def finish_run(
    binding: RunnableBinding[Any, Any], run: Run, ctx: RunContext, output: Any = None,
    error: BaseException | None = None,
) -> None:
    """A listened run ends: ``on_end`` with its output, or ``on_error`` with its error."""
    run.end_time = time.time()
    if error is not None:
        run.error = error
    else:
        run.outputs = output
    _tell(binding, ctx, "on_error" if error is not None else "on_end", run)


def _tell(binding: RunnableBinding[Any, Any], ctx: RunContext, phase: str, run: Run) -> None:
    """Through the run events when they are recorded (they reach the caller's process from any worker);
    directly otherwise."""
    listeners = binding.listeners
    assert listeners is not None
    config = {k: v for k, v in ctx.config.items() if k != "callbacks"}
    if ctx.events is not None:
        ctx.events.emit(LISTENER_EVENT, (listeners.key, phase, run, config), {})
    else:
        notify_listener(getattr(listeners, phase), run, config)


@dataclass(frozen=True, eq=False)
class RunnableBinding(Runnable[Input, Output]):
    """``bound`` with a config merged in, Ray options recorded, and/or listeners attached."""

    bound: Runnable[Input, Output]
    config: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    listeners: Listeners | None = None
    name: str | None = None

    @classmethod
    def wrap(
        cls,
        bound: Runnable[Input, Output],
        *,
        config: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        listeners: Listeners | None = None,
    ) -> RunnableBinding[Input, Output]:
        both_call_back = bool(isinstance(bound, RunnableBinding) and bound.config.get("callbacks")
                              and (config or {}).get("callbacks"))
        if isinstance(bound, RunnableBinding) and bound.listeners is None and listeners is None and not both_call_back:
            return cls(
                bound.bound,
                merge_configs(bound.config, config or {}),
                {**bound.options, **(options or {})},
                None,
                bound.name,
            )
        return cls(bound, config or {}, options or {}, listeners)

    def label(self) -> str:
        return self.named(self.bound.label())

    def get_name(self) -> str:
        return self.name or self.bound.get_name()

    def cache_identity(self) -> Any:
        """What may change the step's outputs (``with_cache``): its config (not its handlers, cap or run name)
        and a ``runtime_env``; not where it runs, nor its listeners."""
        config = {k: v for k, v in self.config.items() if k not in ("callbacks", "max_concurrency", "run_name")}
        env = self.options.get("runtime_env")
        return {"bound": self.bound, "config": config, "runtime_env": env} if config or env else self.bound

    def reports_run(self) -> bool:
        return False

    def children(self) -> list[tuple[str, Runnable[Any, Any]]]:
        return [("", self.bound)]

    @property
    def vectorized(self) -> bool:
        return self.listeners is None and self.bound.vectorized

    @property
    def item_timeout(self) -> float | None:
        """A ``with_timeout`` just inside holds for each item of a batch of this binding (scheduler)."""
        return self.bound.item_timeout if self.listeners is None else None

    @property
    def speculation(self) -> float | bool | None:
        """``speculative_after`` seconds, True (threshold learned), or None: what the scheduler backs up."""
        if self.listeners is not None:
            return None
        if "speculative_after" in self.options:
            return float(self.options["speculative_after"])
        if "speculative" in self.options:
            return True if self.options["speculative"] else None
        return self.bound.speculation

    def _invoke_batch(self, inputs: list[Any], ctx: RunContext) -> list[Any]:
        return self.bound._invoke_batch(inputs, self.enter(ctx))

    def enter(self, ctx: RunContext) -> RunContext:
        """The context ``bound`` runs in: our config merged, and a cap of our own if we set one."""
        if not self.config:
            return ctx
        inner = ctx.with_config(merge_configs(ctx.config, self.config))
        scope = self.config.get("callbacks")
        if isinstance(scope, ScopedCallbacks):  # our handlers hear every run inside, wherever it runs
            if ctx.events is None:
                inner.config["callbacks"] = ctx.config.get("callbacks")
            else:
                events = Scoped(ctx.events, scope.key)
                inner = inner.recording(events, ctx.run_id)
                inner.config["callbacks"] = RunSink(events, ctx.run_id)
        cap = self.config.get("max_concurrency")
        if not cap:
            return inner
        # one cap shared by every item and branch of this run that passes through this binding
        limiter = ctx.run_scopes.get(id(self))
        if limiter is None:
            limiter = ctx.run_scopes.setdefault(id(self), ThreadLimiter(cap))
        return inner.with_limiter(limiter)

    def _invoke(self, input: Input, ctx: RunContext) -> Output:
        inner = self.enter(ctx)
        if self.listeners is None:
            return self.bound._invoke(input, inner)
        run = start_run(self, input, inner)
        try:
            output = self.bound._invoke(input, inner)
        except Exception as exc:
            finish_run(self, run, inner, error=exc)
            raise
        finish_run(self, run, inner, output)
        return output

    def _transform(self, chunks: Iterator[Any], ctx: RunContext) -> Iterator[Output]:
        if self.listeners is not None:  # listeners see one run with its whole input and output
            yield self._invoke(gather(chunks), ctx)
            return
        yield from self.bound._transform(chunks, self.enter(ctx))
