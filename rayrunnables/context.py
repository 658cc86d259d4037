"""What a step sees while it runs: its config, its path in the chain, cancellation and the concurrency cap.

One ``RunContext`` per node visit, created by the parent when it descends, so a failing step can name
its full path (``step 1 > parallel['context'] > step 2 > lambda 'embed'``) without any global state.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

from .config import DEFAULT_RECURSION_LIMIT
from .engine.events import Buffer, Recorder, RunSink
from .engine.process_state import STATE
from .errors import StepRecursionError
from .protocols import ChunkRunner, ContextState, Limiter, Node, Services

__all__ = ["RunContext", "CancelToken", "Limiter", "ThreadLimiter", "Cancelled"]


class Cancelled(BaseException):
    """Raised inside a sibling whose invocation already failed; never reaches the caller."""


class CancelToken:
    """A cancellation flag that is also set when any ancestor's flag is set.

    A plain attribute, not a ``threading.Event``: setting a bool is atomic, and creating an Event per
    invocation would cost more than a trivial three-step chain does.
    """

    __slots__ = ("_parent", "_set")

    def __init__(self, parent: CancelToken | None = None) -> None:
        self._set = False
        self._parent = parent

    def cancel(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        token: CancelToken | None = self
        while token is not None:
            if token._set:
                return True
            token = token._parent
        return False


class RunContext:
    """Immutable by convention; ``child`` links to its parent, so the path is only built when needed."""

    __slots__ = (
        "_base", "_parent", "_segment", "cancel", "config", "depth", "events", "limiters", "map_runner", "run_id",
        "run_owner", "run_scopes", "services",
    )

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        path: tuple[str, ...] = (),
        *,
        cancel: CancelToken | None = None,
        limiters: tuple[Limiter, ...] = (),
        depth: int = 0,
        services: Services | None = None,
        map_runner: Callable[[Node], ChunkRunner] | None = None,
        events: Recorder | None = None,
        run_id: UUID | None = None,
    ) -> None:
        self.config = {} if config is None else config
        self.services: Services = STATE.services if services is None else services
        self.run_scopes: dict[int, Limiter] = {}  # one cap per ``with_config(max_concurrency=)`` per run
        self.cancel = CancelToken() if cancel is None else cancel
        self.limiters = limiters
        self.depth = depth
        # where a ``.map()`` inside the chain sends its chunks: None runs them in this process (inline or
        # threads); a backend whose workers are other processes (an executor) picks a runner per step
        self.map_runner = map_runner
        # run events (``rayrunnables.engine.events``): None when nobody listens, the hot path's one test
        sink = self.config.get("callbacks") if events is None else None
        if isinstance(sink, RunSink):  # the caller records: ``Runnable.invoke`` and friends put it there
            events, run_id = sink.recorder, sink.run_id
        self.events = events
        self.run_id = run_id  # the run whose children start here
        self.run_owner: Any = None  # the node whose run that is (its own inner calls are not new runs)
        self._base = path
        self._parent: RunContext | None = None
        self._segment = ""

    def _copy(self) -> RunContext:
        new = RunContext.__new__(RunContext)
        new.config, new.cancel, new.limiters, new.depth = self.config, self.cancel, self.limiters, self.depth
        new.services, new.run_scopes, new.map_runner = self.services, self.run_scopes, self.map_runner
        new.events, new.run_id, new.run_owner = self.events, self.run_id, self.run_owner
        new._base, new._parent, new._segment = self._base, self._parent, self._segment
        return new

    @property
    def path(self) -> tuple[str, ...]:
        segments: list[str] = []
        node: RunContext | None = self
        base: tuple[str, ...] = ()
        while node is not None:
            if node._segment:
                segments.append(node._segment)
            base = node._base
            node = node._parent
        return (*base, *reversed(segments))

    @property
    def path_str(self) -> str:
        path = self.path
        return " > ".join(path) if path else "<root>"

    @classmethod
    def from_state(
        cls, state: ContextState, services: Services, path: tuple[str, ...] | None = None
    ) -> RunContext:
        """A context rebuilt in another process from what ``state`` sent; its run events (if the caller
        records any) go into a ``Buffer`` that travels back with the results."""
        events = Buffer(streams=state.recording > 1, trace_id=state.trace_id) if state.recording else None
        config = state.config if events is None else {**state.config, "callbacks": RunSink(events, state.run_id)}
        return cls(config, state.path if path is None else path, limiters=state.limiters, depth=state.depth,
                   services=services, events=events, run_id=state.run_id)

    def state(self, config: dict[str, Any], path: tuple[str, ...] | None = None) -> ContextState:
        """This context as plain data (with ``config``: what may leave this process), for another process."""
        recording = 0 if self.events is None else 1 + self.events.streams
        trace_id = None if self.events is None else self.events.trace_id
        return ContextState(config, self.path if path is None else path, self.depth, self.limiters, self.run_id,
                            recording, trace_id)

    def in_run(self, node: Any, run_id: UUID, config: dict[str, Any]) -> RunContext:
        """Inside ``node``'s run: what starts here is its child (``rayrunnables.runnables.runs.enter_run``)."""
        new = self._copy()
        new.run_id, new.run_owner, new.config = run_id, node, config
        return new

    def recording(self, events: Recorder | None, run_id: UUID | None) -> RunContext:
        new = self._copy()
        new.events, new.run_id = events, run_id
        return new

    def child(self, segment: str) -> RunContext:
        if not segment:
            return self
        new = self._copy()
        new._base, new._parent, new._segment = (), self, segment
        return new

    def at(self, path: tuple[str, ...]) -> RunContext:
        """The same run, at another step's path (the steps of a fused task share one context)."""
        new = self._copy()
        new._base, new._parent, new._segment = path, None, ""
        return new

    def with_config(self, config: dict[str, Any]) -> RunContext:
        new = self._copy()
        new.config = config
        return new

    def with_limiter(self, limiter: Limiter) -> RunContext:
        new = self._copy()
        new.limiters = (*self.limiters, limiter)
        return new

    def fork(self) -> RunContext:
        """A context whose cancellation can be triggered without cancelling the parent."""
        new = self._copy()
        new.cancel = CancelToken(self.cancel)
        return new

    def deeper(self, step: str) -> RunContext:
        limit = self.config.get("recursion_limit", DEFAULT_RECURSION_LIMIT)
        if self.depth + 1 > limit:
            raise StepRecursionError(
                f"{self.path_str}: recursion limit of {limit} reached by step {step!r} "
                "(a function returning a runnable); raise config['recursion_limit'] if this is intended"
            )
        new = self._copy()
        new.depth = self.depth + 1
        return new

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
