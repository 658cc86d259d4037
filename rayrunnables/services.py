"""Per-process services a step may need while it runs: the one instance of a stateful step's class,
and the token bucket of a rate-limited step.

A backend hands its own ``Services`` to the steps through the ``RunContext``: in this process they
are plain objects (this process's ``LocalServices`` is ``engine.process_state.STATE.services``, made anew
in a forked child); on Ray, the same questions are answered by actors shared by the whole cluster.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .protocols import Services

if TYPE_CHECKING:
    from .runnables.actor import RunnableActor

__all__ = ["Services", "LocalServices", "TokenBucket"]


class TokenBucket:
    """A token bucket that hands out reservations (Go's ``rate.Limiter.Reserve``): callers sleep
    outside the lock, so a slow caller never holds up the others, and the rate holds exactly."""

    def __init__(self, requests_per_second: float, burst: int = 1) -> None:
        if requests_per_second <= 0 or burst < 1:
            raise ValueError("requests_per_second must be > 0 and burst >= 1")
        # Paced at 98% of the limit: a caller that wakes a few ms late from its sleep must not push
        # the calls measured in some one-second window over the limit.
        self.interval = 1.0 / (requests_per_second * 0.98)
        self.burst = burst
        self._lock = threading.Lock()
        self._tat = 0.0  # the "theoretical arrival time" of the generic cell rate algorithm

    def reserve(self) -> float:
        with self._lock:
            now = time.monotonic()
            tat = max(self._tat, now)
            self._tat = tat + self.interval
            return max(0.0, tat - (self.burst - 1) * self.interval - now)


class LocalServices:
    """Services of this process: one instance per stateful step, one bucket per rate-limited step, one
    object per lazily built step."""

    def __init__(self) -> None:
        # reentrant: a constructor may itself build another step's instance (a stateful step that runs a chain)
        self._lock = threading.RLock()
        self._instances: dict[str, Any] = {}
        self._buckets: dict[str, TokenBucket] = {}

    def instance(self, node: RunnableActor) -> Any:
        return self.once(node.key, node.construct)

    def once(self, key: str, build: Callable[[], Any]) -> Any:
        """``build()`` once in this process under ``key``, even when many threads ask at the same moment."""
        found = self._instances.get(key)
        if found is not None:
            return found
        with self._lock:
            if key not in self._instances:
                self._instances[key] = build()
            return self._instances[key]

    def rate_limiter(self, key: str, requests_per_second: float, burst: int) -> TokenBucket:
        with self._lock:
            if key not in self._buckets:
                self._buckets[key] = TokenBucket(requests_per_second, burst)
            return self._buckets[key]

