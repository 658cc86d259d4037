"""What a step sees while it runs: its config, its path in the chain, cancellation and the concurrency cap.

One ``RunContext`` per node visit, created by the parent when it descends, so a failing step can name
its full path (``step 1 > parallel['context'] > step 2 > lambda 'embed'``) without any global state.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from .config import DEFAULT_RECURSION_LIMIT
from .errors import StepRecursionError

__all__ = ["RunContext", "CancelToken", "Limiter", "ThreadLimiter", "Cancelled", "isolate"]


class Cancelled(BaseException):
    """Raised inside a sibling whose invocation already failed; never reaches the caller."""


class CancelToken:
    """A cancellation flag that is also set when any ancestor's flag is set."""

    __slots__ = ("_event", "_parent")

    def __init__(self, parent: CancelToken | None = None) -> None:
        self._event = threading.Event()
        self._parent = parent

    def cancel(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        token: CancelToken | None = self
        while token is not None:
            if token._event.is_set():
                return True
            token = token._parent
        return False


class Limiter(Protocol):
    """A cap on concurrently running calls (a semaphore, in this process or cluster-wide)."""

    def acquire(self) -> None: ...

    def release(self) -> None: ...


@dataclass(frozen=True)
class RunContext:
    config: dict[str, Any] = field(default_factory=dict)
    path: tuple[str, ...] = ()
    cancel: CancelToken = field(default_factory=CancelToken)
    limiters: tuple[Limiter, ...] = ()
    depth: int = 0

    @property
    def path_str(self) -> str:
        return " > ".join(self.path) if self.path else "<root>"

    def child(self, segment: str) -> RunContext:
        if not segment:
            return self
        return replace(self, path=(*self.path, segment))

    def with_config(self, config: dict[str, Any]) -> RunContext:
        return replace(self, config=config)

    def with_limiter(self, limiter: Limiter) -> RunContext:
        return replace(self, limiters=(*self.limiters, limiter))

    def fork(self) -> RunContext:
        """A context whose cancellation can be triggered without cancelling the parent."""
        return replace(self, cancel=CancelToken(self.cancel))

    def deeper(self, step: str) -> RunContext:
        limit = self.config.get("recursion_limit", DEFAULT_RECURSION_LIMIT)
        if self.depth + 1 > limit:
            raise StepRecursionError(
                f"{self.path_str}: recursion limit of {limit} reached by step {step!r} "
                "(a function returning a runnable); raise config['recursion_limit'] if this is intended"
            )
        return replace(self, depth=self.depth + 1)

    def check_cancelled(self) -> None:
        if self.cancel.is_set():
            raise Cancelled(self.path_str)

    @contextlib.contextmanager
    def call_slot(self) -> Iterator[None]:
        """Hold one slot of every concurrency cap in force while a user function runs."""
        self.check_cancelled()
        if not self.limiters:
            yield
            return
        taken: list[Limiter] = []
        try:
            for limiter in self.limiters:
                limiter.acquire()
                taken.append(limiter)
            yield
        finally:
            for limiter in reversed(taken):
                limiter.release()


class ThreadLimiter:
    """``max_concurrency`` for calls made in this process."""

    def __init__(self, n: int) -> None:
        self._sem = threading.BoundedSemaphore(n)

    def acquire(self) -> None:
        self._sem.acquire()

    def release(self) -> None:
        self._sem.release()


_ATOMIC = (str, int, float, bool, bytes, type(None), complex, frozenset)


def isolate(value: Any) -> Any:
    """A private copy of a mutable input, so siblings never see each other's mutations (as on Ray)."""
    if isinstance(value, _ATOMIC):
        return value
    if isinstance(value, tuple) and all(isinstance(v, _ATOMIC) for v in value):
        return value
    try:
        return copy.deepcopy(value)
    except Exception:  # objects that refuse to be copied (locks, clients) are shared, as LangChain does
        return value
