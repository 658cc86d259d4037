"""The in-process runner: a dict's branches and chunks of items, in this process.

It is the local backend, and also what runs *inside* a Ray task or an executor's worker. Computing
branches and chunks run inline in the calling thread; waiting ones (or ones not learned yet) overlap
on one elastic thread pool: an idle thread is reused, and a new one is started only when none is idle,
so a branch waiting on its own nested map never starves it (no deadlock), while ``max_concurrency`` is
enforced on user calls, not on threads.
"""

from __future__ import annotations

import itertools
import queue
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, as_completed
from dataclasses import dataclass
from typing import Any

from ..context import RunContext, ThreadLimiter
from ..errors import attach_step, copy_error
from ..protocols import ChunkRunner, Node
from .events import PARENT_RUN_KEY, RunSink
from .execution import COMPUTING, WAITING, subtree_class
from .process_state import STATE
from .sharing import freeze, isolate, writable_outcomes

__all__ = [
    "run_branches", "stream_branches", "run_chunk", "ChunkResult", "ThreadChunkRunner", "PerItem",
    "local_root_context",
]

def run_branches(ctx: RunContext, input: Any, branches: Sequence[tuple[str, Node]]) -> list[Any]:
    """Run every branch on its own share of ``input``; the first failure in time is raised at once.

    Branches that wait (or are not learned yet) overlap in threads; branches that compute run inline in
    this thread, meanwhile: in threads they would only take turns at the GIL, and pay a hand-off each.
    """
    if not branches:
        return []
    forked = ctx.fork()
    failures: list[BaseException] = []  # in the order they happened: the first one is raised

    def run(segment: str, step: Node) -> Any:
        try:
            return step._invoke(isolate(input), forked.child(segment))
        except BaseException as exc:
            failures.append(exc)
            forked.cancel.cancel()  # siblings stop at their next step
            raise

    # one branch alone has nothing to overlap with
    threaded = [len(branches) > 1 and subtree_class(step) != COMPUTING for _, step in branches]
    futures = {n: STATE.threads.submit(run, *branches[n]) for n, in_thread in enumerate(threaded) if in_thread}
    results: list[Any] = [None] * len(branches)
    try:
        for n, in_thread in enumerate(threaded):
            if not in_thread:
                if failures:
                    break
                results[n] = run(*branches[n])
        if not failures:
            for future in as_completed(futures.values()):
                if future.exception() is not None:
                    break
    except BaseException:
        if not failures:  # interrupted from outside (KeyboardInterrupt): not a branch's failure
            forked.cancel.cancel()
            for future in futures.values():
                future.cancel()
            raise
    if failures:
        forked.cancel.cancel()
        for future in futures.values():
            future.cancel()
        raise failures[0]  # the first failure in time, whichever thread it happened in
    for n, future in futures.items():
        results[n] = future.result()
    return results


_DONE = object()


def stream_branches(
    ctx: RunContext, chunks: list[Any], branches: Sequence[tuple[str, Node]]
) -> Iterator[tuple[int, Any]]:
    """Every branch transforms its own share of the input chunks in a thread of its own; ``(branch,
    chunk)`` pairs come out as they are produced. The first failure is raised; closing the stream early
    stops the branches at their next chunk."""
    forked = ctx.fork()
    produced: queue.SimpleQueue[tuple[int, Any, BaseException | None]] = queue.SimpleQueue()

    def run(n: int, segment: str, step: Node) -> None:
        try:
            for chunk in step._transform(iter([isolate(c) for c in chunks]), forked.child(segment)):
                if forked.cancel.is_set():
                    return
                produced.put((n, chunk, None))
            produced.put((n, _DONE, None))
        except BaseException as exc:
            produced.put((n, None, exc))

    for n, (segment, step) in enumerate(branches):
        STATE.threads.submit(run, n, segment, step)
    running = len(branches)
    try:
        while running:
            n, chunk, exc = produced.get()
            if exc is not None:
                raise exc
            if chunk is _DONE:
                running -= 1
            else:
                yield n, chunk
    finally:
        forked.cancel.cancel()


class PerItem:
    """An item that runs with its own config: ``batch(inputs, [config, ...])`` as in LangChain.

    The scheduler only wraps the items whose config differs from the batch's (the first one), so a
    batch with one config pays nothing. Unwrapped in ``run_chunk``, wherever the chunk runs.
    """

    __slots__ = ("config", "value")

    def __init__(self, config: dict[str, Any], value: Any) -> None:
        self.config, self.value = config, value

    def __reduce__(self) -> tuple[Any, ...]:
        return PerItem, (self.config, self.value)

    @classmethod
    def nested(cls, value: Any, parent: Any, config: Mapping[str, Any] | None = None) -> PerItem:
        """``value`` with the batch's ``config`` (less its backend and callbacks), its runs nested under the
        run id ``parent``: how a caller that records tells one item's run events from another's."""
        own = {k: v for k, v in (config or {}).items() if k not in ("backend", "callbacks")}
        own[PARENT_RUN_KEY] = parent
        return cls(own, value)


def _unwrap(value: Any, ctx: RunContext) -> tuple[Any, RunContext]:
    if type(value) is PerItem:
        config = value.config
        parent = config.get(PARENT_RUN_KEY)
        if parent is not None and ctx.events is not None:  # its run nests under its own caller's run
            # and so does what a step passes its config to (a LangChain model's runs, a nested chain)
            config = {**config, "callbacks": RunSink(ctx.events, parent)}
            return value.value, ctx.with_config(config).recording(ctx.events, parent)
        return value.value, ctx.with_config(config)
    return value, ctx


def _config_of(value: Any) -> dict[str, Any] | None:
    return value.config if type(value) is PerItem else None


@dataclass
class ChunkResult:
    """Outcomes of one chunk: ``(index, ok, value, remote_traceback)`` per item run, and compute time."""

    outcomes: list[tuple[int, bool, Any, str | None]]
    seconds: float
    events: list[Any] | None = None  # run events recorded in another process, replayed by the caller


def run_chunk(
    node: Node,
    items: list[tuple[int, Any]],
    ctx: RunContext,
    return_exceptions: bool,
    remote: bool = False,
) -> ChunkResult:
    """Run ``node`` on each item in turn. Without ``return_exceptions`` stop at the first failure.

    Item errors are returned, not raised, so one bad item never loses the chunk's other results;
    the scheduler above decides whether to raise. ``remote`` adds the traceback text, which a pickled
    exception would otherwise lose.
    """
    outcomes: list[tuple[int, bool, Any, str | None]] = []
    start = time.perf_counter()
    if node.vectorized and any(type(value) is PerItem for _, value in items):
        # one call per run of items sharing a config: a vectorized call has one config
        for config, group in itertools.groupby(items, key=lambda pair: _config_of(pair[1])):
            group_ctx = ctx if config is None else ctx.with_config(config)
            values = [(i, v.value if type(v) is PerItem else v) for i, v in group]
            part = run_chunk(node, values, group_ctx, return_exceptions, remote)
            outcomes.extend(part.outcomes)
            if not return_exceptions and any(not ok for _, ok, _, _ in part.outcomes):
                break
        return ChunkResult(outcomes, time.perf_counter() - start)
    if node.vectorized:
        try:
            values = [freeze(value) if remote else isolate(value) for _, value in items]
            outputs = node._invoke_batch(values, ctx)
        except Exception as exc:  # the one call failed: every item of the chunk carries its error
            path = ctx.path_str if ctx.path else node.label()
            tb = _format(exc) if remote else None
            # one call failed for the whole chunk: each item gets its own copy (made before the first is
            # tagged), naming its own index
            copies = [exc, *(copy_error(exc) for _ in items[1:])]
            per_item = [attach_step(e, path, index) for e, (index, _) in zip(copies, items, strict=True)]
            outcomes = [(index, False, e, tb) for (index, _), e in zip(items, per_item, strict=True)]
            return ChunkResult(outcomes if return_exceptions else outcomes[:1], time.perf_counter() - start)
        done: list[tuple[int, bool, Any, str | None]] = [
            (i, True, out, None) for (i, _), out in zip(items, outputs, strict=True)
        ]
        return ChunkResult(done, time.perf_counter() - start)
    if remote and len(items) > 1 and subtree_class(node) == WAITING:
        # a chunk of waiting steps sent to another process (a Ray task): its items wait together, in threads,
        # not one after the other (the task holds its CPU slot, not one slot per call in flight)
        parts = [STATE.threads.submit(run_chunk, node, [item], ctx, True, remote) for item in items]
        outcomes = [outcome for part in parts for outcome in part.result().outcomes]
        if not return_exceptions:  # as a chunk run in turn: up to its first failure
            failed = next((n for n, (_, ok, _, _) in enumerate(outcomes) if not ok), None)
            outcomes = outcomes if failed is None else outcomes[: failed + 1]
        return ChunkResult(outcomes, time.perf_counter() - start)
    # items unpickled in a worker are private copies already (``pack`` saw to shared ones): their arrays
    # are only marked read-only, as the local backend's shared views are
    share = freeze if remote else isolate
    for index, item in items:
        value, item_ctx = _unwrap(item, ctx)
        try:
            outcomes.append((index, True, node._invoke(share(value), item_ctx), None))
        except Exception as exc:
            attach_step(exc, ctx.path_str if ctx.path else node.label(), index)
            tb = _format(exc) if remote else None
            outcomes.append((index, False, exc, tb))
            if not return_exceptions:
                break
    return ChunkResult(outcomes, time.perf_counter() - start)


def _format(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


class ThreadChunkRunner(ChunkRunner):
    """Chunk primitives for the scheduler: chunks of waiting (or not yet learned) steps overlap on the
    shared thread pool; chunks of computing steps run inline, in the calling thread. ``final``: the
    outputs go to the caller (made writable), not to another step. Its handles are futures: waiting,
    cancelling and abandoning are ``ChunkRunner``'s (a running thread cannot be stopped; its cancel
    token is set)."""

    target_chunk_seconds = 0.001

    def __init__(self, window: int = 32, final: bool = False) -> None:
        self.default_window = window
        self.final = final

    def runs_inline(self, node: Node) -> bool:
        # an item with a deadline or a backup is watched by the scheduler, so it must not hold its thread
        watched = node.item_timeout is not None or node.speculation
        return not watched and subtree_class(node) == COMPUTING

    def submit(
        self, node: Node, items: list[tuple[int, Any]], ctx: RunContext, return_exceptions: bool
    ) -> Future[ChunkResult]:
        if not self.runs_inline(node):
            return STATE.threads.submit(run_chunk, node, items, ctx, return_exceptions)
        done: Future[ChunkResult] = Future()
        done.set_result(run_chunk(node, items, ctx, return_exceptions))
        return done

    def result(self, handle: Future[ChunkResult]) -> ChunkResult:
        result = handle.result()
        if self.final:
            writable_outcomes(result.outcomes)
        return result


def local_root_context(config: dict[str, Any], map_runner: Callable[[Node], ChunkRunner] | None = None) -> RunContext:
    """The context of a run in this process: ``max_concurrency`` as a semaphore around user calls."""
    ctx = RunContext(config, map_runner=map_runner)
    cap = config.get("max_concurrency")
    return ctx.with_limiter(ThreadLimiter(cap)) if cap else ctx
