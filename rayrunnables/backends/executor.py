"""Any ``concurrent.futures.Executor`` as a backend: ``config={"backend": ProcessPoolExecutor(4)}``.

The worked example of the backend contract: the chain runs in this process as on the local backend,
and every chunk of ``batch``/``imap`` items, and of a ``.map()`` inside the chain, goes to the
executor. With a ``ProcessPoolExecutor`` (or loky's, or dask.distributed's ``client.get_executor()``)
computing steps get process parallelism without Ray. Steps travel by value (cloudpickle), so functions
from ``__main__``, lambdas and closures reach the workers; each chunk comes back as one pickle.

What holds across processes here and what does not: a stateful step (``RunnableActor``) is built once
per worker process; ``max_concurrency`` caps the chunks in flight, one call at a time in each; a step's
own ``with_config(max_concurrency=...)`` holds per worker process. Waiting steps (declared ``io_bound``,
``async``, or learned) and rate-limited ones stay in this process's threads, as on Ray's driver, so a
rate limit holds for the whole run.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import warnings
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor
from multiprocessing.context import BaseContext
from typing import Any

from ..config import sendable_config
from ..context import RunContext, ThreadLimiter
from ..engine.execution import WAITING, subtree_class
from ..engine.inprocess import ChunkResult, PerItem, ThreadChunkRunner, local_root_context, run_chunk
from ..engine.process_state import STATE
from ..engine.steps import walk
from ..errors import BackendError, WorkerLost
from ..protocols import ChunkRunner, Node
from ..runnables.wrappers import RunnableRateLimited
from .base import InProcessBackend
from .outputs import cloudpickle, sendable_outcomes
from .portable import raise_portable

__all__ = ["ExecutorBackend", "ExecutorChunkRunner"]

_WAITING = ThreadChunkRunner(64, final=True)


class ExecutorChunkRunner(ChunkRunner):
    """Chunk primitives for the shared scheduler: one ``executor.submit`` per chunk. Its handles are the
    executor's futures: waiting and abandoning are ``ChunkRunner``'s (a running call cannot be stopped;
    the step's own timer reports an item at its deadline meanwhile)."""

    # a process pool's hand-off (pickle, pipe, unpickle) costs ~0.5 ms a chunk: chunks of ~20 ms keep it small
    target_chunk_seconds = 0.02

    def __init__(self, executor: Executor, workers: int, renew: Callable[[Executor], Executor] | None = None) -> None:
        """``renew``: replaces a broken executor (one of whose processes died) by a new one; without it a
        broken pool is a ``BackendError``: it is not ours to replace."""
        self.executor = executor
        self.default_window = 2 * workers
        self.renew = renew
        self._sent_to: dict[Future[bytes], Executor] = {}

    def submit(self, node: Node, items: list[tuple[int, Any]], ctx: RunContext, return_exceptions: bool) -> Any:
        cap = 1 if ctx.limiters else None  # ``max_concurrency``: the window holds the cap, one call per chunk
        items = [(i, PerItem(sendable_config(v.config), v.value) if type(v) is PerItem else v) for i, v in items]
        state = ctx.state(sendable_config(ctx.config))._replace(limiters=())
        payload = cloudpickle.dumps((node, items, state, return_exceptions, cap))
        try:
            handle = self.executor.submit(run_payload, payload)
        except BrokenExecutor as err:  # a process died since the last result: a new pool, then go on
            handle = self._renewed(self.executor, err).submit(run_payload, payload)
        self._sent_to[handle] = self.executor
        return handle

    def result(self, handle: Future[bytes]) -> ChunkResult:
        """The chunk's outcomes. A process of the pool that died broke the pool and every chunk in it: the
        pool is replaced, and the chunk is ``WorkerLost`` (``shared``: the scheduler re-runs it alone)."""
        sent_to = self._sent_to.pop(handle, self.executor)
        try:
            data = handle.result()
        except BrokenExecutor as err:
            self._renewed(sent_to, err)
            lost = WorkerLost(
                "a process of the pool died while it ran this step (a crash, os._exit, a signal or the OOM "
                "killer), which broke the pool; it was replaced"
            )
            lost.shared = True  # every chunk in the pool was lost with it
            raise lost from err
        result: ChunkResult = cloudpickle.loads(data)
        return result

    def _renewed(self, broken: Executor, err: BaseException) -> Executor:
        if self.renew is None:
            raise BackendError(
                f"a process of the executor's pool died, which broke the pool ({err}); it is not ours to replace: "
                "pass a new executor, or let the backend make its own"
            ) from err
        if broken is self.executor:  # once, however many of its chunks report it
            self.executor = self.renew(broken)
        return self.executor

    def cancel(self, handles: list[Future[bytes]]) -> None:
        super().cancel(handles)
        for handle in handles:
            self._sent_to.pop(handle, None)


def run_payload(payload: bytes) -> bytes:
    """In the executor's worker: one chunk, its outcomes as one pickle (item errors as values; an output
    that cannot travel back is its item's error, the others kept). Errors leave ``portable``, as values
    or raised."""
    try:
        node, items, state, return_exceptions, cap = cloudpickle.loads(payload)
        ctx = RunContext.from_state(state, STATE.services)
        if cap:
            ctx = ctx.with_limiter(ThreadLimiter(cap))
        result = run_chunk(node, items, ctx, return_exceptions, remote=True)
        return bytes(cloudpickle.dumps(sendable_outcomes(result, node, ctx, return_exceptions)))
    except BaseException as exc:
        raise_portable(exc)


def _workers(executor: Executor) -> int:
    count = getattr(executor, "_max_workers", None)  # ProcessPoolExecutor, ThreadPoolExecutor, loky
    return count if isinstance(count, int) and count > 0 else (os.cpu_count() or 1)


FORKS_RAY = (
    "this ProcessPoolExecutor will fork its workers from a process that runs Ray: Ray's driver does not "
    "survive being forked (a child's garbage collector releases the parent's Ray objects through the "
    "parent's own connections, and the parent's Ray calls fail later). Make the pool with "
    "mp_context=multiprocessing.get_context('spawn') or 'forkserver', or start its workers before ray.init()"
)


def _will_fork_ray(executor: Executor) -> bool:
    """Whether ``executor`` is a fork-started pool with no worker yet, in a process where Ray runs."""
    ray = sys.modules.get("ray")
    context = getattr(executor, "_mp_context", None)  # ProcessPoolExecutor's
    no_worker_yet = getattr(executor, "_processes", None) == {}
    forks = context is not None and context.get_start_method() == "fork" and no_worker_yet
    return forks and ray is not None and bool(ray.is_initialized())


class ExecutorBackend(InProcessBackend):
    """Runs the chain in this process and its batches and ``.map()`` chunks on ``executor``.

    Any executor works, a ``ProcessPoolExecutor`` with any start method included: a forked worker makes
    rayrunnables' own threads and services anew (``engine.process_state``). Without an executor, a
    ``ProcessPoolExecutor(max_workers, mp_context=mp_context)`` is made on first use and shut down by
    ``close()``; its start method is ``spawn`` unless ``mp_context`` (a context or a method name) says
    otherwise, because what else the process holds when it first runs a batch is not ours to know: Ray's
    threads and connections, a GPU context, a native library's thread pool do not survive a fork.
    """

    name = "executor"

    def __init__(
        self,
        executor: Executor | None = None,
        max_workers: int | None = None,
        mp_context: BaseContext | str = "spawn",
    ) -> None:
        self._executor = executor
        self._own = executor is None
        self._max_workers = max_workers
        self._mp_context = multiprocessing.get_context(mp_context) if isinstance(mp_context, str) else mp_context
        self._runner: ExecutorChunkRunner | None = None

    @property
    def runner(self) -> ExecutorChunkRunner:
        if self._runner is None:
            if self._executor is None:
                self._executor = self._new_pool()
            if _will_fork_ray(self._executor):
                warnings.warn(FORKS_RAY, RuntimeWarning, stacklevel=2)
            renew = self._renew if self._own else None
            self._runner = ExecutorChunkRunner(self._executor, _workers(self._executor), renew)
        return self._runner

    def _new_pool(self) -> Executor:
        return ProcessPoolExecutor(self._max_workers, mp_context=self._mp_context)

    def _renew(self, broken: Executor) -> Executor:
        """A new pool in the place of ``broken`` (one of its processes died): ours, so ours to replace."""
        broken.shutdown(wait=False, cancel_futures=True)
        self._executor = self._new_pool()
        return self._executor

    def runner_for(self, node: Node) -> ChunkRunner:
        """Chunks of computing steps go to the executor; waiting steps (declared, async or learned) and
        rate-limited ones wait in this process's threads: no worker held per wait, one bucket per limit."""
        if subtree_class(node) == WAITING or any(isinstance(n, RunnableRateLimited) for n in walk(node)):
            return _WAITING
        return self.runner

    def chunk_runner(self, node: Node, config: dict[str, Any]) -> ChunkRunner:
        return self.runner_for(node)

    def root_context(self, config: dict[str, Any], node: Node | None = None) -> RunContext:
        """As local's, but a ``.map()`` inside the chain sends its chunks where ``batch`` does."""
        return local_root_context(config, map_runner=self.runner_for)

    def placement(self) -> str:
        method = self._mp_context.get_start_method()
        kind = type(self._executor).__name__ if self._executor is not None else f"ProcessPoolExecutor ({method})"
        return (
            f"{kind}: batch, imap and each .map() send chunks of items to the executor's workers (steps by "
            "value); the rest of the chain runs in this process, as on local"
        )

    def close(self) -> None:
        if self._own and self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
            self._executor, self._runner = None, None
