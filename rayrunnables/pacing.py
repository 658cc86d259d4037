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
PERSISTENT = 10.0  # seconds: a second unexplained 429 within this lowers a declared or named pace
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
    """A budget refilled at ``rate`` units per second, holding at most ``capacity`` units: the generic cell
    rate algorithm kept in units rather than times, so that a booking's place in line (its ``ticket``, the
    units booked up to and including it) stays put when the rate changes, and a faster pace lets a call that
    is already waiting go sooner.

    ``meter``: units the budget has paid out as of ``stamp``; ``booked``: units booked in all."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate, self.capacity = rate, capacity
        self.meter = self.booked = 0.0
        self.stamp = now

    def _run(self, now: float) -> None:
        self.meter += max(0.0, now - self.stamp) * self.rate
        self.stamp = max(self.stamp, now)

    def book(self, cost: float, now: float) -> tuple[float, float]:
        """Book ``cost`` units: the call's ticket, and the time from ``now`` until it conforms."""
        self._run(now)
        self.meter = min(self.meter, self.booked)  # a quiet time saves up no more than ``capacity``
        self.booked += cost
        return self.booked, self.wait(self.booked, cost, now)

    def wait(self, ticket: float, cost: float, now: float) -> float:
        """Seconds from ``now`` until the call holding ``ticket`` conforms, at the rate in force now."""
        self._run(now)
        wait = (ticket - max(self.capacity, cost) - self.meter) / self.rate
        return wait if wait > 1e-9 else 0.0  # (not a rounding error's sleep)

    def refund(self, cost: float) -> None:
        self.booked -= cost

    def empty_at(self, now: float, moment: float, forget: bool = False) -> None:
        """Nothing left to spend at ``moment``: the budget refills from then on (``forget``: whatever was
        booked until now is dropped rather than kept in line before later bookings)."""
        self._run(now)
        empty = self.meter + self.capacity + (moment - now) * self.rate
        self.booked = empty if forget else max(self.booked, empty)

    def set_rate(self, rate: float, capacity: float, now: float) -> None:
        self._run(now)
        self.rate, self.capacity = rate, capacity


@dataclass(frozen=True)
class Booking:
    """A booked call: wait ``delay`` seconds, then ``claim`` it; it goes back with the outcome.

    ``epoch``: the round of 429s it was booked in; ``tickets``: its places in line in the requests and
    the tokens budget (None where that budget was not paced)."""

    delay: float
    epoch: int
    tokens: int
    tickets: tuple[float | None, float | None] = (None, None)


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
            self.bucket = Bucket(rate, capacity, now)  # a new budget starts full
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
        self._last_unexplained = float("-inf")
        self._scale = 1.0  # real tokens / estimated tokens, a running ratio
        self._history: deque[tuple[float, int]] = deque()  # (time, tokens) of calls booked in the last WINDOW
        self._successes: deque[float] = deque()  # when calls succeeded, in the last second
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
        """After sleeping (some of) ``booking.delay``: go (no delay left), or sleep on for the time left at the
        pace in force now (a faster pace lets it go sooner). When a 429 came meanwhile, the call is booked
        again under the new pace: a booking made at the old pace must not go out."""
        with self._lock:
            now = self._clock()
            self._advance(now)
            if booking.epoch != self._epoch:
                self._unbook(booking)
                return self._book(estimate, now)
            delay = max(0.0, self._paused_until - now)
            for limit, ticket, cost in ((self._requests, booking.tickets[0], 1),
                                        (self._tokens, booking.tickets[1], booking.tokens)):
                if limit.bucket is not None and ticket is not None:
                    delay = max(delay, limit.bucket.wait(ticket, cost, now))
            return Booking(delay, booking.epoch, booking.tokens, booking.tickets)

    def _book(self, estimate: int, now: float) -> Booking:
        tokens = round(estimate * self._scale) if estimate else 0
        delay = max(0.0, self._paused_until - now)
        tickets: list[float | None] = [None, None]
        for i, (limit, cost) in enumerate(((self._requests, 1), (self._tokens, tokens))):
            if limit.bucket is not None and cost:
                tickets[i], wait = limit.bucket.book(cost, now)
                delay = max(delay, wait)
        self.requests += 1
        self.tokens_booked += tokens
        self._history.append((now + delay, tokens))
        return Booking(delay, self._epoch, tokens, (tickets[0], tickets[1]))

    def _unbook(self, booking: Booking) -> None:
        self.requests -= 1
        self.tokens_booked -= booking.tokens
        if booking.epoch != self._epoch:
            return  # the pause since reset the budgets: nothing of it is left to give back
        if self._requests.bucket is not None:
            self._requests.bucket.refund(1)
        if self._tokens.bucket is not None:
            self._tokens.bucket.refund(booking.tokens)

    def settle(self, estimate: int, booking: Booking, used: int | None,
               limits: tuple[float | None, float | None] = (None, None)) -> None:
        """The call succeeded; it cost ``used`` tokens as the provider counts them (None: it did not say).
        Correct the budget, and take the limits the provider named in its answer's headers
        (``include_response_headers``). Successes also clock the slow start."""
        with self._lock:
            now = self._clock()
            self._successes.append(now)
            if limits != (None, None):
                self._adopt(limits, now)
            self._throttles_in_a_row = 0
            if used is None:
                return
            self.tokens_used += used
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
            current = booking.epoch == self._epoch
            if self._tokens.bucket is not None and current:
                self._tokens.bucket.refund(booking.tokens)
            explained = self._adopt(limits, now)
            # a 429 that does not say which limit it hit is taken for the requests limit, unless only a
            # token limit is known: a token budget is learned only from a provider that says "tokens"
            kind = kind or ("tokens" if self._tokens.known is not None and self._requests.known is None
                            else "requests")
            if current and not explained and self._persistent(now, kind):
                self._lower(kind, now)
            if retry_after is None:
                retry_after = min(60.0, 0.5 * 2 ** (self._throttles_in_a_row - 1)) * random.uniform(0.5, 1.0)
            pause_end = max(self._paused_until, now + retry_after)
            self._paused_until = pause_end
            for limit in (self._requests, self._tokens):
                if limit.bucket is not None:
                    # the provider's budget is empty now: ours too, at the end of the pause. The first 429 of
                    # a round forgets what was booked before it (calls not yet sent book again: ``claim``);
                    # a later one of the same round keeps what the new round booked
                    limit.bucket.empty_at(now, pause_end, forget=current)
            if current:
                self._epoch += 1  # calls booked before this answer neither lower the pace again nor go out
            return pause_end - now

    def _persistent(self, now: float, kind: str | None) -> bool:
        """Whether a 429 the known limits do not explain should lower the pace. A limit nobody declared or
        named is learned at once (a learned one yields at once too); with limits known, one 429 now and then
        is the estimates' error, and a second within ``PERSISTENT`` seconds means the key is shared."""
        recent, self._last_unexplained = now - self._last_unexplained <= PERSISTENT, now
        return recent or any(limit.known is None or limit.learned for limit in self._targets(kind))

    def _targets(self, kind: str | None) -> list[_Limit]:
        return {"requests": [self._requests], "tokens": [self._tokens]}.get(kind or "", [self._requests, self._tokens])

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
        while self._successes and self._successes[0] < now - 1.0:
            self._successes.popleft()
        for limit in (self._requests, self._tokens):
            if self._slow_start and limit is self._requests:
                # doubling, but clocked by what succeeds (TCP's acks): never past twice the rate of successes
                clocked = max(SLOW_START, 2.0 * len(self._successes))
                limit.known = min(clocked, (limit.known or SLOW_START) * 2 ** (seconds / DOUBLING))
                limit.capacity_seconds = 1.0 / limit.known
            elif limit.known is not None:
                limit.climb(seconds)
            limit.sync(now)

    def _adopt(self, limits: tuple[float | None, float | None], now: float) -> bool:
        """Take the limits the provider named (never above a declared one: the user may want less); whether
        they explain a 429 (we were going faster than they allow)."""
        explained = False
        for limit, named in zip((self._requests, self._tokens), limits, strict=True):
            if named is None or named <= 0:
                continue
            target = named if limit.declared is None else min(named, limit.declared)
            if target == limit.known and not limit.learned:
                continue
            explained = explained or limit.known is None or target < limit.known * limit.factor
            limit.known, limit.learned, limit.factor = target, False, min(limit.factor, 1.0)
            if limit is self._requests:
                limit.capacity_seconds = self.pace.burst / target
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
        for limit in self._targets(kind):
            if limit.known is None:  # never declared, never named: learn it from what was admitted
                measured = measured_tokens if limit is self._tokens else measured_requests
                if measured <= 0:
                    continue
                limit.known, limit.learned, limit.factor = measured * DECREASE, True, 1.0
                limit.step = INCREASE
            else:
                limit.lower()
            limit.sync(now)
