"""The one scheduler behind ``batch``, ``.map()``, ``batch_as_completed`` and ``imap``, for every backend.

It cuts a (possibly endless) iterable into chunks, keeps a bounded window of chunks in flight, sizes
chunks adaptively from the measured cost per item (slow start: single items first, then chunks big
enough to amortise the backend's hand-off cost), and yields results in order or as completed. A
backend only supplies a ``ChunkRunner`` (``protocols``): ``submit`` a chunk, and ``wait``, ``result``,
``cancel``, ``abandon``, whose defaults serve futures.

A chunk whose ``result`` raises ``WorkerLost`` (its process died, the backend's retries spent) is split
and its parts re-run until the item that kills its process is alone (``engine.recovery``): a crash
costs only that item, on every backend.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sized
from typing import Any

from ..context import RunContext
from ..errors import FailureBudgetExceeded, RemoteTraceback, WorkerLost, attach_step, copy_error, deadline_error
from ..protocols import Backend, ChunkRunner, Node
from .attempts import Tracker
from .inprocess import ChunkResult
from .recovery import Recovery

__all__ = ["Batch", "ChunkRunner", "iter_batch", "run_batch", "MAX_CHUNK"]

MAX_CHUNK = 10_000
VECTORIZED_MIN_CHUNK = 64
GROWTH = 4
# When the number of items is known, chunks may be this many times the runner's target: the guided
# cap below keeps the tail short, and fewer, larger chunks cost the workers less hand-off time.
KNOWN_LENGTH_TARGET_FACTOR = 4


class _Sizer:
    """Chooses the next chunk size from the measured seconds per item.

    With a known number of items, chunks may grow to ``KNOWN_LENGTH_TARGET_FACTOR`` times the target, but
    (guided self-scheduling) never beyond ``remaining / spread`` items, so they shrink back towards the
    end and every worker finishes at about the same time. They never shrink below the target's size:
    the hand-off cost stays amortised however wide the window (threads) is."""

    def __init__(self, target: float, fixed: int | None, floor: int = 1, spread: int = 1) -> None:
        self.target, self.fixed, self.floor, self.spread = target, fixed, floor, max(1, spread)
        self.per_item: float | None = None
        self.last = 1

    def observe(self, result: ChunkResult) -> None:
        if result.outcomes:
            sample = result.seconds / len(result.outcomes)
            self.per_item = sample if self.per_item is None else 0.5 * self.per_item + 0.5 * sample

    def next(self, remaining: int | None = None) -> int:
        if self.fixed:
            return self.fixed
        if self.per_item is None:
            return self.floor
        # as many items as fill ``target`` seconds: a chunk that takes ``target`` seconds costs at most
        # ``target`` of imbalance at the end of a stream of unknown length
        size = int(self.target / max(self.per_item, 1e-9))
        if remaining is not None:  # larger, but never more than a fair share of what is left
            larger = int(self.target * KNOWN_LENGTH_TARGET_FACTOR / max(self.per_item, 1e-9))
            size = max(size, min(larger, math.ceil(remaining / self.spread)))
        self.last = max(self.floor, min(size, self.last * GROWTH, MAX_CHUNK))
        return self.last


def iter_batch(
    runner: ChunkRunner,
    node: Node,
    inputs: Iterable[Any],
    ctx: RunContext,
    *,
    return_exceptions: bool,
    ordered: bool,
    chunk_size: int | None = None,
    max_in_flight: int | None = None,
    max_failures: int | None = None,
    first: int = 0,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, output)``; the first item failure in time is raised unless ``return_exceptions``.

    ``first``: the index of the first input (a part of a larger list keeps its items' indexes).

    ``max_failures``: with ``return_exceptions``, once more than this many items have failed, stop
    submitting, cancel what runs and raise ``FailureBudgetExceeded`` (what was yielded stays yielded).
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if max_in_flight is not None and max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    if max_failures is not None and (isinstance(max_failures, bool) or not isinstance(max_failures, int)
                                     or max_failures < 0):
        raise ValueError(f"max_failures must be an int >= 0, got {max_failures!r}")
    batch = Batch(runner, node, inputs, ctx, return_exceptions=return_exceptions, ordered=ordered,
                  chunk_size=chunk_size, max_in_flight=max_in_flight, max_failures=max_failures, first=first)
    yield from batch.run()


class Batch:
    """One run of the scheduler: the chunks in flight, the reorder buffer, the counts.

    ``run`` is the loop: submit chunks while the window has room (``submit_more``), back up stragglers
    (``back_up``), wait for what ends or expires (``collect``), then yield what is ready (``yield_ready``)."""

    def __init__(self, runner: ChunkRunner, node: Node, inputs: Iterable[Any], ctx: RunContext, *,
                 return_exceptions: bool, ordered: bool, chunk_size: int | None, max_in_flight: int | None,
                 max_failures: int | None, first: int) -> None:
        self.runner, self.node = runner, node
        self.return_exceptions, self.ordered, self.max_failures = return_exceptions, ordered, max_failures
        self.ctx = ctx = ctx.fork()  # cancelling our in-flight work must not cancel the caller
        cap = ctx.config.get("max_concurrency")
        window = max_in_flight or runner.default_window
        self.window = window = min(window, cap) if cap else window
        # per-item deadlines and backups (``engine.attempts``): one item per chunk, each attempt watched
        self.tracker = tracker = Tracker.of(node, runner)
        # A vectorized step is cheaper per item in bigger chunks (one matrix product for many rows), so
        # the per-item time measured on small chunks would keep them small: start it at a useful size.
        floor = VECTORIZED_MIN_CHUNK if node.vectorized and tracker is None else 1
        self.sizer = _Sizer(runner.target_chunk_seconds, 1 if tracker else chunk_size, floor,
                            spread=runner.default_window)
        self.remaining = len(inputs) if isinstance(inputs, Sized) else None
        self.source = enumerate(inputs, first)
        self.exhausted = False
        self.in_flight: dict[Any, list[int]] = {}  # by handle: its items' indexes
        self.pending: dict[int, Any] = {}  # ordered: results waiting for an earlier index
        # ordered: the end index of every chunk submitted and not yet fully yielded. Capping these (not only
        # the chunks running) bounds the reorder buffer too: one slow item must not let the rest pile up.
        self.open_ends: deque[int] = deque()
        self.held_cap = 2 * window
        self.next_index = first
        self.failed = self.yielded = 0
        # lost chunks (their process died, the backend's retries spent) are split and re-run (``engine.recovery``)
        self.recovery = Recovery()
        self.where = " > ".join((*ctx.path, node.label()))

    def run(self) -> Iterator[tuple[int, Any]]:
        try:
            while True:
                # a runner that runs a computing step's chunks inline, in this thread, gets them one at a
                # time: a failure then stops the batch at once, and ``imap`` yields as it goes
                limit = 1 if self.runner.runs_inline(self.node) else self.window
                self.submit_more(limit)
                self.back_up(limit)
                if not self.in_flight and not self.recovery.pending():
                    break
                yield from self.yield_ready(self.collect())
        finally:
            if self.in_flight:
                self.ctx.cancel.cancel()
                self.runner.cancel(list(self.in_flight))

    # ---- submitting ----------------------------------------------------------------------------------
    def start(self, items: list[tuple[int, Any]], alone: bool = False) -> Any:
        if self.tracker is None:
            handle = self.runner.submit(self.node, items, self.ctx, self.return_exceptions)
        else:
            own = self.ctx.fork()  # an abandoned attempt's token is set: a step may cooperate
            handle = self.runner.submit(self.node, items, own, self.return_exceptions)
            self.tracker.add(handle, items, own)
        self.recovery.started(handle, items, alone)
        self.in_flight[handle] = [i for i, _ in items]
        return handle

    def submit_more(self, limit: int) -> None:
        """Fill the window: re-runs of lost chunks first, then new chunks sized by what was measured."""
        while len(self.in_flight) < limit:
            rerun = self.recovery.next(len(self.in_flight))
            if rerun is not None:  # the part of a lost chunk: its items' ends are open already
                self.start(*rerun)
                continue
            if self.recovery.holds_back() or self.exhausted or (self.ordered and len(self.open_ends) >= self.held_cap):
                return
            items = list(itertools.islice(self.source, self.sizer.next(self.remaining)))
            if not items:
                self.exhausted = True
                return
            if self.remaining is not None:
                self.remaining = max(0, self.remaining - len(items))
            self.start(items)
            if self.ordered:
                self.open_ends.append(items[-1][0] + 1)

    def back_up(self, limit: int) -> None:
        """A straggler gets one twin where there is room."""
        tracker = self.tracker
        if tracker is None or self.recovery.holds_back():
            return
        for late in tracker.stragglers(self.sizer.per_item, time.monotonic(), limit - len(self.in_flight)):
            items = tracker.attempts[late].items
            twin = self.runner.submit(self.node, items, own := self.ctx.fork(), self.return_exceptions)
            tracker.pair(late, twin, items, own)
            self.recovery.started(twin, items, False)
            self.in_flight[twin] = self.in_flight[late]

    # ---- collecting ----------------------------------------------------------------------------------
    def collect(self) -> list[ChunkResult]:
        """Wait for a chunk to end (or an attempt to expire); the results of what ended."""
        results: list[ChunkResult] = []
        if self.tracker is None:
            done = self.runner.wait(list(self.in_flight))
        else:
            done = self.runner.wait(list(self.in_flight), self.tracker.next_wake(self.sizer.per_item, time.monotonic()))
            results.extend(self.expire(done))
        for handle in done:
            if handle not in self.in_flight:  # the twin of an attempt that already won
                continue
            result = self.settle(handle)
            if result is None:
                continue
            if result.seconds:
                self.sizer.observe(result)
            if result.events and self.ctx.events is not None:  # recorded in another process: replayed here
                self.ctx.events.replay(result.events)
            results.append(result)
        return results

    def expire(self, done: list[Any]) -> list[ChunkResult]:
        """Abandon the attempts past their deadline; items left with no attempt time out."""
        assert self.tracker is not None
        results = []
        for handle in self.tracker.expired(time.monotonic()):
            if handle in done:
                continue
            indices = self.in_flight.pop(handle)
            twin = self.tracker.drop(handle)
            self.recovery.forget(handle)
            self.runner.abandon([handle])
            if twin is None:  # no attempt of these items left: they timed out
                assert self.tracker.seconds is not None
                seconds = self.tracker.seconds
                results.append(ChunkResult(
                    [(i, False, deadline_error(self.where, seconds), None) for i in indices], 0.0
                ))
        return results

    def settle(self, handle: Any) -> ChunkResult | None:
        """The result of a chunk that ended; None when nothing is to be reported for it (yet)."""
        indices = self.in_flight.pop(handle)
        error: Exception | None = None
        try:
            result = self.runner.result(handle)
        except Exception as exc:  # the chunk itself failed or was lost (beyond the backend's retries)
            error = exc
        if self.tracker is not None:
            twin = self.tracker.drop(handle)
            if twin is not None:
                if isinstance(error, WorkerLost):  # its twin still runs the same items: it answers
                    self.recovery.forget(handle)
                    return None
                self.in_flight.pop(twin, None)  # first result wins; the other attempt is stopped
                self.tracker.drop(twin)
                self.recovery.forget(twin)
                self.runner.abandon([twin])
        if error is not None:
            return self.on_failure(handle, indices, error)
        self.recovery.forget(handle)
        return result

    def on_failure(self, handle: Any, indices: list[int], error: Exception) -> ChunkResult | None:
        """A chunk that failed as a whole: re-run (lost), raised, or its error in every item's slot."""
        if self.recovery.lost(handle, error):  # its items run again, split, until a crasher is alone
            return None
        if isinstance(error, WorkerLost) and len(indices) == 1:
            attach_step(error, self.where, indices[0])  # the item that kills its process
        elif not self.return_exceptions:
            raise error
        # each item its own copy; the first keeps the original, with its ``__cause__``
        return ChunkResult([(i, False, copy_error(error) if n else error, None) for n, i in enumerate(indices)], 0.0)

    # ---- yielding ------------------------------------------------------------------------------------
    def yield_ready(self, results: list[ChunkResult]) -> Iterator[tuple[int, Any]]:
        for result in results:
            for index, ok, value, tb in result.outcomes:
                if not ok:
                    self.item_failed(index, value, tb)
                if self.ordered:
                    self.pending[index] = (ok, value)
                else:
                    if not ok:
                        self.count_failure(value)
                    self.yielded += 1
                    yield index, value
            if self.ordered:
                while self.next_index in self.pending:
                    ok, value = self.pending.pop(self.next_index)
                    if not ok:
                        self.count_failure(value)
                    self.yielded += 1
                    yield self.next_index, value
                    self.next_index += 1
                while self.open_ends and self.open_ends[0] <= self.next_index:
                    self.open_ends.popleft()

    def item_failed(self, index: int, error: Any, tb: str | None) -> None:
        """An item's error, named: raised at once (the first failure in time) unless it is returned."""
        if tb is not None:
            error.__cause__ = RemoteTraceback(tb)
        attach_step(error, self.node.label(), index)
        if not self.return_exceptions:
            raise error

    def count_failure(self, error: Any) -> None:
        """Failures are counted in the order results are yielded, not the order they end: an ordered
        stream then stops at the same item on every backend, after every result before it was yielded
        (counting in time order would stop wherever the chunks happened to finish, and drop finished
        results held behind a slower one)."""
        self.failed += 1
        if self.max_failures is not None and self.failed > self.max_failures:
            raise FailureBudgetExceeded(
                f"failure budget exceeded: {self.failed} items failed (max_failures={self.max_failures}); "
                f"stopped after {self.yielded} results, {len(self.in_flight)} chunks in flight cancelled",
                self.failed, self.yielded,
            ) from error


def run_batch(
    backend: Backend,
    node: Node,
    inputs: Iterable[Any],
    config: dict[str, Any],
    **kwargs: Any,
) -> Iterator[tuple[int, Any]]:
    """``batch``/``imap`` of ``node`` on ``backend``: its chunk runner, driven by the one scheduler."""
    runner = backend.chunk_runner(node, config)
    ctx = backend.root_context(config, node)
    try:
        yield from iter_batch(runner, node, inputs, ctx, **kwargs)
    finally:
        backend.end_run(ctx)
