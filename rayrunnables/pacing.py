"""The pace of a rate-limited step: requests *and tokens* per second, for every process of a run.

One ``Pacer`` holds a run's limits (in this process for the local and executor backends; inside one
named actor on Ray, so the driver, every task and every Ray Data worker share it). It books each call
before it is made and hands back how long to wait, so a caller sleeps outside any lock and the pacer
answers in microseconds.

Why it is more than a token bucket:

- **Two budgets at once.** A call costs one request and an estimate of its tokens; each budget is a
  generic-cell-rate bucket (a "theoretical arrival time", Go's ``rate.Limiter.Reserve``) whose rate can
  change under it. Per-minute limits are held over one-second windows, as providers enforce them.
- **Estimates corrected.** After the call the real count replaces the estimate in the token budget, and
  a running ratio of real to estimated counts scales later estimates, so errors neither add up nor last.
- **429s learned from.** A rate-limit answer pauses every caller until the provider's ``retry-after``
  (else an exponential backoff with jitter) and leaves both budgets empty at the end of the pause. The
  limits a provider names in its headers replace declared ones that were too high. A 429 that the known
  limits do not explain (the key is shared with another client) lowers the pace multiplicatively, once
  per round of calls, and the pace climbs back additively (AIMD, as TCP does). With nothing declared,
  requests start slowly and double every half second until the first 429 (TCP's slow start); a budget that
  was not declared is learned from the rate measured when its first 429 came.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Pace", "Pacer", "Booking", "Bucket"]

SAFETY = 0.98  # paced a little under the limit: a sleeper that wakes a few ms late must not push a window over
DECREASE = 0.8  # the pace after a 429 that the known limits do not explain
INCREASE = 0.02  # per second without a 429: the share of the pace before the last decrease added back
SLOW_START = 4.0  # requests per second a step with no declared limit starts at, doubling every DOUBLING seconds
DOUBLING = 0.5
MIN_RATE = 0.05  # requests per second: a pace is never learned below this
WINDOW = 2.0  # seconds over which the rate admitted is measured when a limit must be learned


@dataclass(frozen=True)
class Pace:
    """Declared limits of a step (``None``: not declared, learned from 429s if it matters)."""

    requests_per_second: float | None = None
    tokens_per_second: float | None = None
    burst: int = 1  # requests that may go at once after a quiet time

    @property
    def declared(self) -> bool:
        return self.requests_per_second is not None or self.tokens_per_second is not None


class Bucket:
    """A budget refilled at ``rate`` units per second, holding at most ``capacity`` units: the generic
    cell rate algorithm, with a rate that may change (the debt is kept in units across a change)."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate, self.capacity = rate, capacity
        self.tat = 0.0  # when the debt booked so far is paid off

    def book(self, cost: float, now: float) -> float:
        """Book ``cost`` units; the time from ``now`` until the call conforms."""
        tat = max(self.tat, now)
        self.tat = tat + cost / self.rate
        return max(0.0, self.tat - max(self.capacity, cost) / self.rate - now)

    def refund(self, cost: float) -> None:
        self.tat -= cost / self.rate

    def empty_at(self, moment: float) -> None:
        """Nothing left to spend at ``moment``: the budget refills from then on."""
        self.tat = max(self.tat, moment + self.capacity / self.rate)

    def set_rate(self, rate: float, capacity: float, now: float) -> None:
        debt = max(0.0, self.tat - now) * self.rate
        self.rate, self.capacity = rate, capacity
        self.tat = now + debt / rate


@dataclass(frozen=True)
class Booking:
    """A booked call: wait ``delay`` seconds, then call; ``epoch`` and ``tokens`` go back with the outcome."""

    delay: float
    epoch: int
    tokens: int


class _Limit:
    """One budget (requests or tokens) and how its pace is known: declared, named by the provider,
    or learned; and its AIMD multiplier."""

    def __init__(self, declared: float | None, capacity_seconds: float, min_capacity: float) -> None:
        self.declared = declared
        self.known = declared  # the most we believe the provider allows, per second
        self.capacity_seconds, self.min_capacity = capacity_seconds, min_capacity
        self.factor = 1.0  # AIMD share of ``known`` (may pass 1 only for a learned limit)
        self.step = INCREASE  # added per second while no 429 comes
        self.learned = False
        self.bucket: Bucket | None = None

    def rate(self) -> float | None:
        return None if self.known is None else max(self.known * self.factor * SAFETY, 1e-9)

    def sync(self, now: float) -> None:
        rate = self.rate()
        if rate is None:
            self.bucket = None
            return
        capacity = max(self.min_capacity, rate * self.capacity_seconds)
        if self.bucket is None:
            self.bucket = Bucket(rate, capacity)
            self.bucket.tat = now  # a new budget starts full
        else:
            self.bucket.set_rate(rate, capacity, now)

    def climb(self, seconds: float) -> None:
        ceiling = float("inf") if self.learned else 1.0
        self.factor = min(ceiling, self.factor + self.step * seconds)

    def lower(self) -> None:
        self.factor *= DECREASE
        self.step = INCREASE * self.factor


class Pacer:
    """The pace of one rate-limited step (or of every step sharing its ``key``). Thread-safe."""

    def __init__(self, pace: Pace, clock: Callable[[], float] = time.monotonic) -> None:
        self.pace = pace
        self._clock = clock
        self._lock = threading.Lock()
        now = clock()
        self._requests = _Limit(pace.requests_per_second, pace.burst / (pace.requests_per_second or 1.0),
                                pace.burst)
        self._tokens = _Limit(pace.tokens_per_second, 1.0, 1.0)
        if not pace.declared:  # nothing declared: requests start slowly and double (slow start)
            self._requests.known, self._requests.learned = SLOW_START, True
            self._requests.capacity_seconds = 1.0 / SLOW_START
        self._slow_start = not pace.declared
        self._updated = now
        self._epoch = 0
        self._paused_until = 0.0
        self._throttles_in_a_row = 0
        self._scale = 1.0  # real tokens / estimated tokens, a running ratio
        self._history: deque[tuple[float, int]] = deque()  # (time, tokens) of calls booked in the last WINDOW
        self.requests = self.throttled = 0
        self.tokens_booked = self.tokens_used = 0
        for limit in (self._requests, self._tokens):
            limit.sync(now)

    # ---- the three calls a step makes ----------------------------------------------------------------------------
    def reserve(self, estimate: int) -> Booking:
        """Book one call of about ``estimate`` tokens (0 when tokens do not matter)."""
        with self._lock:
            now = self._clock()
            self._advance(now)
            return self._book(estimate, now)

    def claim(self, booking: Booking, estimate: int) -> Booking:
        """After sleeping ``booking.delay``: go (a booking with no delay), or, when a 429 came meanwhile,
        the same call booked again under the new pace (a booking made at the old pace must not go out)."""
        with self._lock:
            if booking.epoch == self._epoch:
                return Booking(0.0, booking.epoch, booking.tokens)
            now = self._clock()
            self._advance(now)
            self._unbook(booking)
            return self._book(estimate, now)

    def _book(self, estimate: int, now: float) -> Booking:
        tokens = round(estimate * self._scale) if estimate else 0
        delay = 0.0
        if self._requests.bucket is not None:
            delay = max(delay, self._requests.bucket.book(1, now))
        if self._tokens.bucket is not None and tokens:
            delay = max(delay, self._tokens.bucket.book(tokens, now))
        delay = max(delay, self._paused_until - now)
        self.requests += 1
        self.tokens_booked += tokens
        self._history.append((now + delay, tokens))
        return Booking(delay, self._epoch, tokens)

    def _unbook(self, booking: Booking) -> None:
        self.requests -= 1
        self.tokens_booked -= booking.tokens
        if booking.epoch != self._epoch:
            return  # the pause since reset the budgets: nothing of it is left to give back
        if self._requests.bucket is not None:
            self._requests.bucket.refund(1)
        if self._tokens.bucket is not None:
            self._tokens.bucket.refund(booking.tokens)

    def settle(self, estimate: int, booking: Booking, used: int,
               limits: tuple[float | None, float | None] = (None, None)) -> None:
        """The call succeeded and cost ``used`` tokens (as the provider counts them): correct the budget, and
        take the limits the provider named in its answer's headers (``include_response_headers``)."""
        with self._lock:
            if limits != (None, None):
                self._adopt(limits, self._clock())
            self.tokens_used += used
            self._throttles_in_a_row = 0
            if estimate > 0 and used > 0:
                self._scale = 0.8 * self._scale + 0.2 * (used / estimate)
            if self._tokens.bucket is not None and booking.epoch == self._epoch:
                # (a booking from before the last 429 is not corrected: the pause reset the budget to the
                # provider's own state, which already held it)
                self._tokens.bucket.refund(booking.tokens - used)

    def throttle(
        self,
        booking: Booking,
        retry_after: float | None,
        limits: tuple[float | None, float | None] = (None, None),
        kind: str | None = None,
    ) -> float:
        """The call was answered 429 (not admitted). ``limits``: requests and tokens per second the provider
        named; ``kind``: ``"requests"`` or ``"tokens"`` when it said which. Returns the pause it set."""
        with self._lock:
            now = self._clock()
            self._advance(now)
            self.throttled += 1
            self._throttles_in_a_row += 1
            self.requests -= 1  # not admitted: its tokens were not spent (its request slot was: kept)
            self.tokens_booked -= booking.tokens
            if self._tokens.bucket is not None and booking.epoch == self._epoch:
                self._tokens.bucket.refund(booking.tokens)
            explained = self._adopt(limits, now)
            if booking.epoch == self._epoch and not explained:
                self._lower(kind, now)
            self._epoch += 1  # calls booked before this answer do not lower the pace again
            if retry_after is None:
                retry_after = min(60.0, 0.5 * 2 ** (self._throttles_in_a_row - 1)) * random.uniform(0.5, 1.0)
            pause_end = max(self._paused_until, now + retry_after)
            self._paused_until = pause_end
            for limit in (self._requests, self._tokens):
                if limit.bucket is not None:
                    limit.bucket.empty_at(pause_end)
            return pause_end - now

    def stats(self) -> dict[str, float | int | None]:
        with self._lock:
            return {
                "requests": self.requests, "throttled": self.throttled, "tokens_booked": self.tokens_booked,
                "tokens_used": self.tokens_used, "requests_per_second": self._requests.rate(),
                "tokens_per_second": self._tokens.rate(), "estimate_scale": self._scale,
            }

    # ---- how the pace moves ------------------------------------------------------------------------------------
    def _advance(self, now: float) -> None:
        seconds, self._updated = now - self._updated, now
        if now < self._paused_until or seconds <= 0:
            return
        while self._history and self._history[0][0] < now - WINDOW:
            self._history.popleft()
        for limit in (self._requests, self._tokens):
            if self._slow_start and limit is self._requests:
                limit.known = min(1e6, (limit.known or SLOW_START) * 2 ** (seconds / DOUBLING))
                limit.capacity_seconds = 1.0 / limit.known
            elif limit.known is not None:
                limit.climb(seconds)
            limit.sync(now)

    def _adopt(self, limits: tuple[float | None, float | None], now: float) -> bool:
        """Take the limits the provider named; whether they explain the 429 (ours were higher)."""
        explained = False
        for limit, named in zip((self._requests, self._tokens), limits, strict=True):
            if named is None or named <= 0:
                continue
            if limit.known is None or limit.learned or named < limit.known:
                explained = explained or limit.known is None or named < limit.known * limit.factor
                limit.known, limit.learned, limit.factor = named, False, min(limit.factor, 1.0)
                if limit is self._requests:
                    limit.capacity_seconds = self.pace.burst / named
                    self._slow_start = False
                limit.sync(now)
        return explained

    def _lower(self, kind: str | None, now: float) -> None:
        measured_requests = sum(1 for _ in self._history) / WINDOW
        measured_tokens = sum(t for _, t in self._history) / WINDOW
        if self._slow_start:
            self._slow_start = False
            rate = max(MIN_RATE, min(self._requests.known or MIN_RATE, measured_requests) * DECREASE)
            self._requests.known, self._requests.factor = rate, 1.0
            self._requests.capacity_seconds = max(1.0, self.pace.burst) / rate
            self._requests.step = INCREASE
            self._requests.sync(now)
            if kind != "tokens":
                return
        targets = {"requests": [self._requests], "tokens": [self._tokens]}.get(
            kind or "", [self._requests, self._tokens])
        for limit in targets:
            if limit.known is None:  # never declared, never named: learn it from what was admitted
                measured = measured_tokens if limit is self._tokens else measured_requests
                if measured <= 0:
                    continue
                limit.known, limit.learned, limit.factor = measured * DECREASE, True, 1.0
                limit.step = INCREASE
            else:
                limit.lower()
            limit.sync(now)
