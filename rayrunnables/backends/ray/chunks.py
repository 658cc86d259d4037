"""Chunks of ``batch``/``imap``/``.map()`` items as Ray tasks (or calls on a step's actor pool), for the
one scheduler (``rayrunnables.engine.scheduler``), driven from the driver (``batch``) or from a map task
in a worker (a ``.map()`` inside a chain, ``maps``). The edge where a chunk's result comes back: a Ray
failure is translated here (``failures``), a pool actor that died for good replaced.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import ActorDiedError, RayTaskError

from ...config import sendable_config
from ...context import Cancelled, CancelToken, RunContext
from ...engine.inprocess import ChunkResult
from ...engine.sharing import writable_outcomes
from ...options import OUR_OPTIONS
from ...protocols import ChunkRunner, ContextState, Node
from . import planner as planning
from .cancelling import cancel_running
from .deadlines import BACKSTOP, Deadlines
from .failures import ray_failure, translate, translate_outcomes
from .services import ActorPool
from .tasks import pack, raise_converted, run_chunk_task

#: how often a map run in a driver thread looks at its invocation's cancel token while it waits
CANCEL_POLL_SECONDS = 0.2

if TYPE_CHECKING:
    from .maps import PoolView

__all__ = ["RayChunkRunner", "chunk_state"]


def chunk_state(ctx: RunContext) -> ContextState:
    """``ctx`` as plain data for a task: its config less what stays in this process."""
    return ctx.state(sendable_config(ctx.config))


class RayChunkRunner(ChunkRunner):
    """Chunk primitives for the shared scheduler: one Ray task per chunk, ``ray.wait`` for the window."""

    # Ray's per-task cost is ~1 ms of driver and worker time, taken from the workers on a small
    # machine: chunks of ~50 ms keep it near 2%, and cost at most 50 ms of imbalance at the end.
    target_chunk_seconds = 0.05

    def __init__(self, node: Node, pool: ActorPool | PoolView | None, slots: int,
                 options: dict[str, Any] | None = None, replace: Callable[[str], Any] | None = None,
                 name: str | None = None) -> None:
        """``pool``: the actor pool serving ``node`` (a stateful step; in a map task, a view of it);
        ``slots``: CPUs to fill otherwise; ``options``: the chunk tasks' Ray options (by default, what
        ``node``'s steps ask for); ``replace``: replaces a pool actor that died for good, by its id
        (``RayBackend.replace_dead``); ``name``: the chunk tasks' name (by default, the step's)."""
        self.replace = replace
        self.name = name
        # an item past its deadline whose task did not stop is force-cancelled here (``deadlines``)
        self.deadlines = Deadlines(self)
        self.pool = pool
        self.options = options
        slots = len(pool.actors) if pool else slots
        # a deadline counts from submission: timed items must not wait in Ray's queue behind their siblings
        self.default_window = slots if node.item_timeout else 2 * slots
        self._prepared: dict[int, tuple[Any, Any]] = {}  # per node: its object ref, its remote function
        self._actor_of_handle: dict[Any, int] = {}

    deadline_slack = BACKSTOP

    def submit(self, node: Node, items: list[tuple[int, Any]], ctx: RunContext,
               return_exceptions: bool) -> Any:
        prepared = self._prepared.get(id(node))
        if prepared is None:  # once per batch, not once per chunk
            options = planning.task_options(planning.plan(node)) if self.options is None else self.options
            options = {k: v for k, v in options.items() if k not in OUR_OPTIONS}
            remote = run_chunk_task.options(name=self.name or f"{node.label()} chunk", **options)
            prepared = self._prepared[id(node)] = (ray.put(node), remote)
        node_ref, remote = prepared
        if self.pool is not None:  # least-loaded member of the step's actor pool
            index = self.pool.pick()
            member = self.pool.actors[index]
            handle = member.run_chunk.remote(node_ref, pack(items), chunk_state(ctx), return_exceptions)
            self._actor_of_handle[handle] = index
            return handle
        return remote.remote(node_ref, pack(items), chunk_state(ctx), return_exceptions)

    #: set for a map run in a driver thread (``maps.run_map``): ``wait`` looks at it every
    #: ``CANCEL_POLL_SECONDS`` and raises ``Cancelled``, so the scheduler cancels what runs (a map task is
    #: interrupted by ``ray.cancel`` instead, and waits in one call)
    stop_token: CancelToken | None = None

    def wait(self, handles: list[Any], timeout: float | None = None) -> list[Any]:
        if self.stop_token is None:
            ready, _ = ray.wait(handles, num_returns=1, timeout=timeout)
            return list(ready)
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            left = CANCEL_POLL_SECONDS if end is None else min(CANCEL_POLL_SECONDS, max(0.0, end - time.monotonic()))
            ready, _ = ray.wait(handles, num_returns=1, timeout=left)
            if ready or (end is not None and time.monotonic() >= end):
                return list(ready)
            if self.stop_token.is_set():
                raise Cancelled(self.name or "map")

    def result(self, handle: Any) -> ChunkResult:
        """The chunk's outcomes; a Ray failure is raised as ours (``failures``): a lost process as
        ``WorkerLost``, which the scheduler answers by re-running the chunk's items, split. A pool actor
        that died for good is replaced first."""
        self.release(handle)
        try:
            result: ChunkResult = ray.get(handle)
        except Exception as err:
            lost = ray_failure(err)
            if lost is None:
                if isinstance(err, RayTaskError):
                    raise_converted(err)
                raise
            self.on_dead(lost)
            raise translate(lost) from lost
        for _, ok, value, _ in result.outcomes:  # a step's own call to a pool actor that died for good
            if not ok:
                self.on_dead(ray_failure(value))
        translate_outcomes(result.outcomes)
        writable_outcomes(result.outcomes)
        return result

    def on_dead(self, err: BaseException | None) -> None:
        actor_id = getattr(err, "actor_id", None) if isinstance(err, ActorDiedError) else None
        if actor_id and self.replace is not None:
            self.replace(actor_id)

    def cancel(self, handles: list[Any]) -> None:
        cancel_running(handles)

    def abandon(self, handles: list[Any]) -> None:
        self.deadlines.stop(handles)

    def release(self, handle: Any) -> int | None:
        """The pool member that ran ``handle`` (an actor chunk), its load given back."""
        index = self._actor_of_handle.pop(handle, None)
        if index is not None and self.pool is not None:
            self.pool.done(index)
        return index
