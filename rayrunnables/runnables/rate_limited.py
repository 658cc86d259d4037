"""``step.with_rate_limit(...)``: a step held to a provider's requests *and* tokens per minute, for the whole run.

Every call books its request and its estimated tokens with the run's one pacer (``rayrunnables.pacing``;
an actor on Ray that every task, actor and Ray Data worker reaches), sleeps what it is told, calls, and
hands back the tokens the provider really counted. A rate-limit error (HTTP 429) is absorbed: the pacer
pauses everyone for the provider's ``retry-after`` and learns from it, and the item is called again, not
counted against ``with_retry`` or the failure budget, until ``max_wait`` seconds have passed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..context import RunContext
from ..errors import OptionsError, RateLimitTimeout, attach_step
from ..model_calls import (
    charged_tokens,
    estimate_tokens,
    is_rate_limit_error,
    limit_kind_of,
    named_limits_in,
    named_limits_of,
    retry_after_of,
    usage_of,
)
from ..pacing import Booking, Pace
from .base import Input, Output, Runnable
from .chunks import NOTHING, gather

__all__ = ["RunnableRateLimited", "check_limits"]

RECHECK = 0.5  # seconds a booked call sleeps at most before it asks the pacer again


def _positive(value: Any, what: str, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise OptionsError(f"{where}.with_rate_limit: {what} must be a positive number, got {value!r}")
    return float(value)


def check_limits(where: str, requests_per_second: Any, requests_per_minute: Any, tokens_per_minute: Any,
                 burst: Any, max_wait: Any) -> tuple[Pace, float]:
    """The declared limits as one ``Pace`` (requests per second and per minute both hold: the lower wins)."""
    rps = _positive(requests_per_second, "requests_per_second", where)
    rpm = _positive(requests_per_minute, "requests_per_minute", where)
    tpm = _positive(tokens_per_minute, "tokens_per_minute", where)
    wait = _positive(max_wait, "max_wait", where)
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise OptionsError(f"{where}.with_rate_limit: burst must be an int >= 1, got {burst!r}")
    rates = [r for r in (rps, rpm / 60 if rpm else None) if r is not None]
    return Pace(min(rates) if rates else None, tpm / 60 if tpm else None, burst), wait or 300.0


@dataclass(frozen=True, eq=False)
class RunnableRateLimited(Runnable[Input, Output]):
    """``bound`` paced by the run's pacer for ``key`` (steps that share a key share one pace: one API key).

    ``tokens``: the user's estimate of an input's tokens (else ``model_calls.estimate_tokens``);
    ``max_output_tokens``: what the provider books for the answer (the model's ``max_tokens``);
    ``rate_limit_errors``: recognises a provider's "too many requests" beyond HTTP 429."""

    bound: Runnable[Input, Output]
    pace: Pace
    key: str = ""
    tokens: Callable[[Any], int] | None = None
    max_output_tokens: int | None = None
    max_wait: float = 300.0
    rate_limit_errors: Callable[[BaseException], bool] | None = None
    name: str | None = None

    waits = True  # a call to a rate-limited provider waits: overlapped in threads, not given a CPU each

    @property
    def requests_per_second(self) -> float | None:
        return self.pace.requests_per_second

    @property
    def burst(self) -> int:
        return self.pace.burst

    def label(self) -> str:
        return self.named(self.bound.label())

    def describe(self) -> str:
        """What ``explain()`` says of the pace: the declared limits, or that it is learned."""
        rps, tps = self.pace.requests_per_second, self.pace.tokens_per_second
        parts = [f"{rps * 60:g} requests/min" if rps else "", f"{tps * 60:g} tokens/min" if tps else ""]
        limits = ", ".join(p for p in parts if p) or "no limit declared: learned from 429s"
        return f"paced: {limits}; one pacer for the run (key {self.key!r})"

    def reports_run(self) -> bool:
        return False

    def cache_identity(self) -> Runnable[Input, Output]:
        """A pace changes when a step runs, not what it returns (``with_cache``)."""
        return self.bound

    def children(self) -> list[tuple[str, Runnable[Any, Any]]]:
        return [("", self.bound)]

    @property
    def vectorized(self) -> bool:
        return self.bound.vectorized

    # ---- what a call costs, and what counts as "too many" -------------------------------------------------------
    def estimate(self, input: Any, ctx: RunContext) -> int:
        if self.tokens is None:
            return estimate_tokens(input) + (self.max_output_tokens or 0)
        value = self.tokens(input)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            where = self._where(ctx)
            raise attach_step(OptionsError(
                f"{where}: with_rate_limit(tokens=...) must return an int >= 0, got {value!r}"), where)
        return value

    def _where(self, ctx: RunContext) -> str:
        return ctx.child(self.label()).path_str

    def _is_rate_limit(self, exc: BaseException) -> bool:
        return is_rate_limit_error(exc) or (self.rate_limit_errors is not None and bool(self.rate_limit_errors(exc)))

    def _settle(self, pacer: Any, estimate: int, booking: Booking, usage: tuple[int, int] | None,
                named: tuple[float | None, float | None] = (None, None)) -> None:
        """Tell the pacer the call succeeded, what it really cost and the limits its answer named, if it said."""
        used = None if usage is None else charged_tokens(usage, self.max_output_tokens)
        pacer.settle(estimate, booking, used, named)

    def _turn(self, pacer: Any, estimate: int, give_up: float, ctx: RunContext,
              error: BaseException | None, booking: Booking | None) -> Booking:
        """Book the next try (after a 429 ``error`` of the try ``booking``, the pacer learns and pauses)."""
        if error is not None and booking is not None:
            pause = pacer.throttle(booking, retry_after_of(error), named_limits_of(error), limit_kind_of(error))
            if time.monotonic() + pause > give_up:
                where = self._where(ctx)
                raise attach_step(RateLimitTimeout(
                    f"{where}: still rate-limited by its provider after {self.max_wait:g} s of waiting "
                    f"(with_rate_limit(max_wait=...)); last answer: {type(error).__name__}: {error}"), where
                ) from error
        booking = pacer.reserve(estimate)
        while booking.delay > 0:  # a 429, or a much faster pace, while it slept: it books again
            time.sleep(min(booking.delay, RECHECK))
            booking = pacer.claim(booking, estimate)
        return booking

    def _admitted(self, input: Any, ctx: RunContext, call: Callable[[], Any]) -> tuple[Any, Any, int, Booking]:
        """``call()`` on its turn, again after each 429 (the pacer learns and pauses), until the provider
        admits it: its result, the pacer, the estimate and the booking it went out on."""
        pacer = ctx.services.rate_limiter(self.key, self.pace)
        estimate = self.estimate(input, ctx)
        give_up = time.monotonic() + self.max_wait
        error: BaseException | None = None
        booking: Booking | None = None
        while True:
            booking = self._turn(pacer, estimate, give_up, ctx, error, booking)
            try:
                return call(), pacer, estimate, booking
            except Exception as exc:
                if not self._is_rate_limit(exc):
                    raise
                error = exc

    def _paced(self, input: Any, ctx: RunContext, call: Callable[[], Any], usage: Callable[[Any], Any]) -> Any:
        output, pacer, estimate, booking = self._admitted(input, ctx, call)
        self._settle(pacer, estimate, booking, usage(output), named_limits_in(output))
        return output

    # ---- the three ways a step runs ------------------------------------------------------------------------------
    def _invoke(self, input: Input, ctx: RunContext) -> Output:
        output: Output = self._paced(input, ctx, lambda: self.bound._invoke(input, ctx), usage_of)
        return output

    def _invoke_batch(self, inputs: list[Any], ctx: RunContext) -> list[Any]:
        """A vectorized call is one request, whose tokens are its items' tokens."""
        outputs: list[Any] = self._paced(inputs, ctx, lambda: self.bound._invoke_batch(inputs, ctx), _summed_usage)
        return outputs

    def _transform(self, chunks: Iterator[Any], ctx: RunContext) -> Iterator[Output]:
        """The input is gathered first (its tokens are booked before the call); a 429 before the first output
        chunk is absorbed like any other, one after it is the caller's (chunks already went out)."""
        input = gather(chunks)

        def first_chunk() -> tuple[Iterator[Any], Any]:
            stream = self.bound._transform(iter([input]), ctx)
            return stream, next(stream, NOTHING)

        (stream, first), pacer, estimate, booking = self._admitted(input, ctx, first_chunk)
        if first is NOTHING:
            return
        used, named = usage_of(first), named_limits_in(first)
        yield first
        for chunk in stream:
            more = usage_of(chunk)
            if more is not None:
                used = more if used is None else (used[0] + more[0], used[1] + more[1])
            yield chunk
        self._settle(pacer, estimate, booking, used, named)


def _summed_usage(outputs: Any) -> tuple[int, int] | None:
    if not isinstance(outputs, list):
        return None
    seen = [u for u in (usage_of(o) for o in outputs) if u is not None]
    return (sum(u[0] for u in seen), sum(u[1] for u in seen)) if seen else None
