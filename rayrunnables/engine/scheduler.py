"""The one scheduler behind ``batch``, ``.map()``, ``batch_as_completed`` and ``imap``, for every backend.

It cuts a (possibly endless) iterable into chunks, keeps a bounded window of chunks in flight, sizes
chunks adaptively from the measured cost per item (slow start: single items first, then chunks big
enough to amortise the backend's hand-off cost), and yields results in order or as completed. A
backend only supplies four primitives: ``submit``, ``wait``, ``result``, ``cancel``.

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

__all__ = ["ChunkRunner", "iter_batch", "run_batch", "MAX_CHUNK"]

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
    ctx = ctx.fork()  # cancelling our in-flight work must not cancel the caller
    cap = ctx.config.get("max_concurrency")
    window = max_in_flight or runner.default_window
    if cap:
        window = min(window, cap)
    # per-item deadlines and backups (``engine.attempts``): one item per chunk, each attempt watched
    tracker = Tracker.of(node, runner)
    # A vectorized step is cheaper per item in bigger chunks (one matrix product for many rows), so
    # the per-item time measured on small chunks would keep them small: start it at a useful size.
    floor = VECTORIZED_MIN_CHUNK if node.vectorized and tracker is None else 1
    sizer = _Sizer(runner.target_chunk_seconds, 1 if tracker else chunk_size, floor, spread=runner.default_window)
    remaining = len(inputs) if isinstance(inputs, Sized) else None
    source = enumerate(inputs, first)
    in_flight: dict[Any, list[int]] = {}
    pending: dict[int, Any] = {}
    # ordered: the end index of every chunk submitted and not yet fully yielded. Capping these (not only
    # the chunks running) bounds the reorder buffer too: one slow item must not let the rest pile up.
    open_ends: deque[int] = deque()
    held_cap = 2 * window
    next_index = first
    exhausted = False
    failed = yielded = 0

    # lost chunks (their process died, the backend's retries spent) are split and re-run (``engine.recovery``)
    recovery = Recovery()
    where = " > ".join((*ctx.path, node.label()))

    def start(items: list[tuple[int, Any]], alone: bool = False) -> Any:
        if tracker is None:
            handle = runner.submit(node, items, ctx, return_exceptions)
        else:
            own = ctx.fork()  # an abandoned attempt's token is set: a step may cooperate
            handle = runner.submit(node, items, own, return_exceptions)
            tracker.add(handle, items, own)
        recovery.started(handle, items, alone)
        return handle

    # a runner that runs a computing step's chunks inline, in this thread, gets them one at a time: a
    # failure then stops the batch at once, and ``imap`` yields as it goes
    try:
        while True:
            limit = 1 if runner.runs_inline(node) else window
            while len(in_flight) < limit:
                rerun = recovery.next(len(in_flight))
                if rerun is not None:  # the part of a lost chunk: its items' ends are open already
                    items, alone = rerun
                    in_flight[start(items, alone)] = [i for i, _ in items]
                    continue
                if recovery.holds_back() or exhausted or (ordered and len(open_ends) >= held_cap):
                    break
                items = list(itertools.islice(source, sizer.next(remaining)))
                if not items:
                    exhausted = True
                    break
                if remaining is not None:
                    remaining = max(0, remaining - len(items))
                in_flight[start(items)] = [i for i, _ in items]
                if ordered:
                    open_ends.append(items[-1][0] + 1)
            if tracker is not None and not recovery.holds_back():  # a straggler gets one twin where there is room
                for late in tracker.stragglers(sizer.per_item, time.monotonic(), limit - len(in_flight)):
                    twin_items = tracker.attempts[late].items
                    twin = runner.submit(node, twin_items, own := ctx.fork(), return_exceptions)
                    tracker.pair(late, twin, twin_items, own)
                    recovery.started(twin, twin_items, False)
                    in_flight[twin] = in_flight[late]
            if not in_flight and not recovery.pending():
                break
            results: list[ChunkResult] = []
            if tracker is None:
                done = runner.wait(list(in_flight))
            else:
                done = runner.wait(list(in_flight), tracker.next_wake(sizer.per_item, time.monotonic()))
                for handle in tracker.expired(time.monotonic()):
                    if handle in done:
                        continue
                    indices = in_flight.pop(handle)
                    twin = tracker.drop(handle)
                    recovery.forget(handle)
                    runner.abandon([handle])
                    if twin is None:  # no attempt of these items left: they timed out
                        assert tracker.seconds is not None
                        results.append(ChunkResult(
                            [(i, False, deadline_error(node.label(), tracker.seconds), None) for i in indices], 0.0
                        ))
            for handle in done:
                if handle not in in_flight:  # the twin of an attempt that already won
                    continue
                indices = in_flight.pop(handle)
                error: Exception | None = None
                try:
                    result = runner.result(handle)
                except Exception as exc:  # the chunk itself failed or was lost (beyond the backend's retries)
                    error = exc
                if tracker is not None:
                    twin = tracker.drop(handle)
                    if twin is not None:
                        if isinstance(error, WorkerLost):  # its twin still runs the same items: it answers
                            recovery.forget(handle)
                            continue
                        in_flight.pop(twin, None)  # first result wins; the other attempt is stopped
                        tracker.drop(twin)
                        recovery.forget(twin)
                        runner.abandon([twin])
                if error is not None:
                    if recovery.lost(handle, error):  # its items run again, split, until a crasher is alone
                        continue
                    if isinstance(error, WorkerLost) and len(indices) == 1:
                        attach_step(error, where, indices[0])  # the item that kills its process
                    elif not return_exceptions:
                        raise error
                    # each item its own copy; the first keeps the original, with its ``__cause__``
                    result = ChunkResult(
                        [(i, False, copy_error(error) if n else error, None) for n, i in enumerate(indices)], 0.0
                    )
                else:
                    recovery.forget(handle)
                if result.seconds:
                    sizer.observe(result)
                if result.events and ctx.events is not None:  # recorded in another process: replayed here
                    ctx.events.replay(result.events)
                results.append(result)
            for result in results:
                for index, ok, value, tb in result.outcomes:
                    if not ok:
                        if tb is not None:
                            value.__cause__ = RemoteTraceback(tb)
                        attach_step(value, node.label(), index)
                        if not return_exceptions:
                            raise value
                        failed += 1
                        if max_failures is not None and failed > max_failures:
                            raise FailureBudgetExceeded(
                                f"failure budget exceeded: {failed} items failed (max_failures={max_failures}); "
                                f"stopped after {yielded} results, {len(in_flight)} chunks in flight cancelled",
                                failed, yielded,
                            ) from value
                    if ordered:
                        pending[index] = value
                    else:
                        yielded += 1
                        yield index, value
                if ordered:
                    while next_index in pending:
                        yielded += 1
                        yield next_index, pending.pop(next_index)
                        next_index += 1
                    while open_ends and open_ends[0] <= next_index:
                        open_ends.popleft()
    finally:
        if in_flight:
            ctx.cancel.cancel()
            runner.cancel(list(in_flight))


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
