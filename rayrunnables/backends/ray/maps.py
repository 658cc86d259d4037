"""A ``.map()`` inside a chain on Ray, scheduled by the one scheduler (``engine.scheduler``) as ``batch`` is.

The plan's ``Map`` unit is one *map task* (it holds no CPU) beside the list: the list given by the caller
travels as its argument, a list an earlier task computed as that task's ``ObjectRef``, so the driver never
fetches it. The map task drives ``iter_batch`` with the Ray chunk runner (``chunks``): chunks sized from
the measured cost per item, a bounded window, per-item deadlines with their forced cancel
(``with_timeout`` as the mapped step), straggler backups, and a chunk lost with its process split until
the item that kills it is alone; a stateful step's pool member dead past its restarts is left out
(``PoolView``) and its chunk run again on the others. A ``.map()`` has no ``return_exceptions``: its
first item failure in time stops it (what runs is cancelled) and is raised, portable, with the map's
step path and the item's index. Its outputs, in order, are the task's return value (with the run events
its chunks recorded, when someone records).
"""

from __future__ import annotations

import time
from typing import Any

import ray
from ray.exceptions import RayTaskError

from ...context import Cancelled, CancelToken, RunContext
from ...engine.events import Buffer
from ...engine.scheduler import iter_batch
from ...protocols import ContextState
from ..portable import raise_portable
from .chunks import RayChunkRunner
from .pending import rebuild
from .services import PROXY_LOOKUP_SECONDS, WORKER_SERVICES, actor_hex, replacement_of
from .tasks import make_context
from .worker import attach_events, interruptible

__all__ = ["PoolView", "run_map", "run_map_task", "dead_actors_of"]


class PoolView:
    """A stateful step's actor pool as a map task sees it: the same actors, their load counted here.

    A member found dead past its restarts (``replace``, the chunk runner's hook) is left out, so the chunk
    it lost runs again on the others, until the driver has put a new actor in its place (looked up by its
    name now and then): a map task cannot make one itself, as an actor dies with the process that made it.
    A map that fails names the members it left out on its error (``DEAD_ACTORS_ATTR``), and the driver
    replaces them when the error reaches it (``Invocation.lost``).
    """

    def __init__(self, actors: list[Any], key: str | None = None) -> None:
        self.actors = list(actors)
        self.key = key
        self.load = [0] * len(self.actors)
        self.dead: set[int] = set()
        self._look_again = 0.0

    def pick(self) -> int:
        if self.dead and self.key is not None and time.monotonic() >= self._look_again:
            self._look_again = time.monotonic() + PROXY_LOOKUP_SECONDS
            for index in list(self.dead):
                self._renewed(index)
        live = [i for i in range(len(self.actors)) if i not in self.dead] or list(range(len(self.actors)))
        index = min(live, key=self.load.__getitem__)
        self.load[index] += 1
        return index

    def done(self, index: int) -> None:
        self.load[index] -= 1

    def replace(self, actor_id: str) -> bool:
        """Leave out the member whose id is ``actor_id`` (dead past its restarts) unless the driver has
        replaced it already; False when it is not one of this view's (any more)."""
        index = next((i for i, actor in enumerate(self.actors) if actor_hex(actor) == actor_id), None)
        if index is None:
            return False
        if not self._renewed(index):
            self.dead.add(index)
        return True

    def dead_ids(self) -> list[str]:
        """The ids of the members left out (what the driver is to replace)."""
        return [actor_id for i in sorted(self.dead) if (actor_id := actor_hex(self.actors[i])) is not None]

    def _renewed(self, index: int) -> bool:
        """Whether the driver has put a new actor in the place of member ``index`` (now in this view)."""
        fresh = None if self.key is None else replacement_of(self.key, index, self.actors[index])
        if fresh is None:
            return False
        self.actors[index] = fresh
        self.dead.discard(index)
        return True


#: the attribute a map task's error carries the ids of its pool's dead members in
DEAD_ACTORS_ATTR = "_rayrunnables_dead_actors"


def dead_actors_of(err: BaseException) -> list[str]:
    """The pool members a failed map task found dead (``err``: its error, as Ray wrapped it, or not)."""
    seen = 0
    while isinstance(err, RayTaskError) and isinstance(err.cause, BaseException) and seen < 16:
        err, seen = err.cause, seen + 1
    found: list[str] = getattr(err, DEAD_ACTORS_ATTR, None) or []
    return found


def run_map(
    each: Any, items: list[Any], state: ContextState, options: dict[str, Any], parallelism: int,
    pool: PoolView | None = None, cancel: CancelToken | None = None,
) -> tuple[list[Any], list[Any]]:
    """``each`` (a ``RunnableEach``) over ``items`` through the one scheduler, from this process: the
    outputs in order, and the run events recorded (none when nobody records). The first item failure is
    raised, carrying the events recorded so far. ``cancel``: for a map run in the driver's thread (a map
    task is stopped by ``ray.cancel`` instead), looked at while it waits (``RayChunkRunner.wait``) and as
    each item ends; once set, what runs is cancelled by the scheduler and ``Cancelled`` raised."""
    node = each.bound
    ctx = RunContext.from_state(state._replace(path=(*state.path, "map")), WORKER_SERVICES)
    name = "/".join((*state.path, "map", node.label()))
    replace = None if pool is None else pool.replace
    runner = RayChunkRunner(node, pool, parallelism, options=options, replace=replace, name=name)
    runner.stop_token = cancel
    out: list[Any] = [None] * len(items)
    try:
        for index, value in iter_batch(runner, node, items, ctx, return_exceptions=False, ordered=False):
            out[index] = value
            if cancel is not None and cancel.is_set():
                raise Cancelled(name)
    except BaseException as exc:
        if isinstance(ctx.events, Buffer):  # they travel with the error (``recording``)
            attach_events(exc, ctx.events.take())
        if pool is not None and pool.dead:  # the driver replaces them when the error reaches it
            setattr(exc, DEAD_ACTORS_ATTR, pool.dead_ids())
        raise
    return out, ctx.events.take() if isinstance(ctx.events, Buffer) else []


@ray.remote
def run_map_task(
    each: Any, state: ContextState, options: dict[str, Any], parallelism: int, pool: PoolView | None,
    recipe: Any, *values: Any,
) -> Any:
    """A ``.map()`` inside a chain: its list (given, or an earlier task's output) through the one scheduler."""
    interruptible()
    items = each.check_input(rebuild(recipe, values), make_context(state))
    try:
        outputs, events = run_map(each, items, state, options, parallelism, pool)
    except Exception as exc:  # an item's error (with the map's step path and its index), or a lost item
        raise_portable(exc)  # rebuilt with its type in the caller's process
    return (outputs, events) if state.recording else outputs
