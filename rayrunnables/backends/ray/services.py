"""Cluster-wide services for steps on Ray: actor pools for stateful steps, one limiter actor per
rate-limited step. The driver creates them (named, so a worker finds them by name); steps reach
them through ``RayServices``, the Ray counterpart of ``rayrunnables.services.LocalServices``.
"""

from __future__ import annotations

import itertools
import os
import random
import threading
import time
from typing import Any

import ray
from ray.exceptions import ActorDiedError, RayActorError

from ...context import RunContext
from ...engine.inprocess import ChunkResult
from ...engine.sharing import writable
from ...errors import StepConstructionError
from ...pacing import Booking, Pace, Pacer
from ...protocols import ContextState
from ...runnables.actor import RunnableActor
from ..portable import raise_portable
from .pending import rebuild
from .worker import chunk_here, interruptible, steps_here

__all__ = [
    "RayServices", "ActorPool", "actor_hex", "create_limiter", "start_limiters", "find_pacer", "pool_name",
    "limiter_name",
]


#: seconds a replacement waits for a dead pool actor's name to be freed
REPLACE_TIMEOUT = 10.0
#: how often a step's proxy looks again for a new actor in the place of a dead one
PROXY_LOOKUP_SECONDS = 1.0


def actor_hex(handle: Any) -> str | None:
    """An actor handle's id, as ``ActorDiedError.actor_id`` gives it."""
    actor_id = getattr(handle, "_actor_id", None)
    return None if actor_id is None else str(actor_id.hex())


def pool_name(key: str, i: int) -> str:
    return f"rayrunnables-actor-{key}-{i}"


def replacement_of(key: str, index: int, current: Any) -> Any | None:
    """The actor the driver has named in the place of pool member ``index`` if it is not ``current``
    (a replacement of a member dead past its restarts); ``None`` while there is none yet."""
    try:
        fresh = ray.get_actor(pool_name(key, index))
    except ValueError:  # not there (yet)
        return None
    return None if actor_hex(fresh) == actor_hex(current) else fresh


def limiter_name(key: str) -> str:
    return f"rayrunnables-limit-{key}"


class _RemotePacer:
    """The run's one pacer (a ``Pacer`` in a limiter actor), as the ``RateLimiter`` a step calls."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def reserve(self, estimate: int) -> Booking:
        booking: Booking = ray.get(self.handle.reserve.remote(estimate))
        return booking

    def claim(self, booking: Booking, estimate: int) -> Booking:
        claimed: Booking = ray.get(self.handle.claim.remote(booking, estimate))
        return claimed

    def settle(self, estimate: int, booking: Booking, used: int | None,
               limits: tuple[float | None, float | None] = (None, None)) -> None:
        self.handle.settle.remote(estimate, booking, used, limits)  # nobody waits: the next booking sees it

    def throttle(self, booking: Booking, retry_after: float | None, limits: tuple[float | None, float | None],
                 kind: str | None) -> float:
        pause: float = ray.get(self.handle.throttle.remote(booking, retry_after, limits, kind))
        return pause

    def stats(self) -> dict[str, Any]:
        found: dict[str, Any] = ray.get(self.handle.stats.remote())
        return found


class _PoolProxy:
    """What a step running inside some task sees as "the instance": calls go to the step's actor pool.

    A member found dead past its restarts is left out (the call that found it fails: a call that kills its
    actor would kill another one too) until the driver has replaced it, looked up by name now and then."""

    def __init__(self, key: str, size: int) -> None:
        self.key = key
        self.handles = [ray.get_actor(pool_name(key, i)) for i in range(size)]
        self.dead: set[int] = set()
        self._look_again = 0.0

    def _pick(self) -> int:
        if self.dead and time.monotonic() >= self._look_again:
            self._look_again = time.monotonic() + PROXY_LOOKUP_SECONDS
            for index in list(self.dead):
                self._renewed(index)
        live = [i for i in range(len(self.handles)) if i not in self.dead]
        return random.choice(live or range(len(self.handles)))

    def _renewed(self, index: int) -> bool:
        """Whether the driver has put a new actor in the place of member ``index`` (now ours)."""
        fresh = replacement_of(self.key, index, self.handles[index])
        if fresh is None:
            return False
        self.handles[index] = fresh
        self.dead.discard(index)
        return True

    def _call(self, method: str, arg: Any) -> Any:
        index = self._pick()
        try:
            return ray.get(getattr(self.handles[index], method).remote(arg))
        except ActorDiedError:
            if not self._renewed(index):  # the driver learns of it from this error, and replaces it
                self.dead.add(index)
                raise
        return ray.get(getattr(self.handles[index], method).remote(arg))

    def __call__(self, item: Any) -> Any:
        return writable(self._call("call_one", item))

    def batch(self, items: list[Any]) -> list[Any]:
        result: list[Any] = writable(self._call("call_batch", items))
        return result


class RayServices:
    """Services for steps running on Ray (driver, tasks or actors): found by name, cached per process."""

    def __init__(self, own: dict[str, Any] | None = None) -> None:
        self.own = own or {}  # inside a pool actor: its own instance, by step key
        self._lock = threading.Lock()
        self._cache: dict[str, Any] = {}

    def instance(self, node: RunnableActor) -> Any:
        if node.key in self.own:
            return self.own[node.key]
        with self._lock:
            if node.key not in self._cache:
                self._cache[node.key] = _PoolProxy(node.key, node.pool_size)
            return self._cache[node.key]

    def rate_limiter(self, key: str, pace: Pace) -> Any:
        """The pacer actor the driver started for ``key`` (``create_limiter``), found by name."""
        with self._lock:
            if key not in self._cache:
                self._cache[key] = _RemotePacer(ray.get_actor(limiter_name(key)))
            return self._cache[key]


WORKER_SERVICES = RayServices()


_NO_STATE = ContextState({}, (), 0, ())


class _StepActorClass:
    """One member of a stateful step's pool: the class is built here once, then serves every call."""

    def __init__(self, node: RunnableActor) -> None:
        self.node = node
        self.instance = node.construct()
        self.services = RayServices({node.key: self.instance})

    def ready(self) -> int:
        return os.getpid()

    def context(self, state: ContextState, path: tuple[str, ...] | None = None) -> RunContext:
        return RunContext.from_state(state, self.services, path)

    def call(self, path: tuple[str, ...], state: Any, recipe: Any, *values: Any) -> Any:
        """One step of an ``invoke`` (with its recorded run events as a second return when recorded)."""
        return steps_here([(path, self.node)], rebuild(recipe, values), self.context(state), state)

    def call_one(self, item: Any) -> Any:
        try:
            return self.node._invoke(item, self.context(_NO_STATE))
        except Exception as exc:
            raise_portable(exc)

    def call_batch(self, items: list[Any]) -> list[Any]:
        try:
            return self.node._invoke_batch(items, self.context(_NO_STATE))
        except Exception as exc:
            raise_portable(exc)

    def run_chunk(self, node: Any, packed: bytes, state: ContextState, return_exceptions: bool) -> ChunkResult:
        """``node`` is this step, possibly wrapped (options, rate limit, timeout); it runs on our instance."""
        interruptible()  # a timed call is interrupted here, on the actor, at its deadline
        return chunk_here(node, packed, self.context(state), return_exceptions)


# as Ray actor classes, typed loosely (Ray's ``.options`` is not visible to type checkers)
_Limiter: Any = ray.remote(Pacer)
_StepActor: Any = ray.remote(_StepActorClass)


class ActorPool:
    """The actors of one stateful step. Chunks go to the least-loaded actor (not round-robin); an
    actor that dies is restarted by Ray, which retries its calls (``max_restarts``/``max_task_retries``);
    one dead past its restarts is replaced (``replace``) by a new actor of the same name and options."""

    def __init__(self, node: RunnableActor, options: dict[str, Any]) -> None:
        self.node = node
        opts = {"max_restarts": 3, "max_task_retries": 3, **options}
        opts.pop("max_retries", None)
        opts.pop("retry_exceptions", None)
        self.opts = opts
        self.replaced = 0  # actors replaced after they died for good
        self.actors = [
            _StepActor.options(name=pool_name(node.key, i), **opts).remote(node)
            for i in range(node.pool_size)
        ]
        self.load = [0] * len(self.actors)
        self._turn = itertools.count()
        self._lock = threading.Lock()
        try:
            self.pids = ray.get([actor.ready.remote() for actor in self.actors])
        except RayActorError as err:
            self.close()
            raise StepConstructionError(
                f"{node.label()}: its class failed in __init__ and the pool cannot start (not retried):\n{err}"
            ) from None

    def pick(self) -> int:
        with self._lock:
            lowest = min(self.load)
            candidates = [i for i, n in enumerate(self.load) if n == lowest]
            index = candidates[next(self._turn) % len(candidates)]
            self.load[index] += 1
            return index

    def done(self, index: int) -> None:
        with self._lock:
            self.load[index] -= 1

    def replace(self, actor_id: str) -> bool:
        """Put a new actor (same name, same options; its class built again) in the place of the one whose
        id is ``actor_id`` (hex), dead past its restarts. Once, however many of its calls report it; False
        when it is not (or no longer) one of this pool's."""
        with self._lock:
            index = next((i for i, actor in enumerate(self.actors) if actor_hex(actor) == actor_id), None)
            if index is None:  # replaced already (or never ours)
                return False
            dead = self.actors[index]
            try:
                ray.kill(dead, no_restart=True)  # a dead actor keeps its name until it is killed
            except Exception:  # gone already
                pass
            give_up = time.monotonic() + REPLACE_TIMEOUT
            while True:
                try:
                    self.actors[index] = _StepActor.options(name=pool_name(self.node.key, index), **self.opts).remote(
                        self.node
                    )
                    break
                except ValueError:  # the name is freed a moment after the kill
                    if time.monotonic() > give_up:
                        raise
                    time.sleep(0.05)
            self.replaced += 1
            return True

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


def create_limiter(key: str, pace: Pace) -> Any:
    """The one pacer of a rate-limit key for every process of the cluster: an actor that answers one call at a
    time (each answer takes microseconds; the callers sleep in their own processes)."""
    return _Limiter.options(name=limiter_name(key), num_cpus=0, max_concurrency=1).remote(pace)


_STARTED: dict[str, Any] = {}  # limiter actors this driver started for data-engine runs (kept alive here)


def start_limiters(node: Any) -> None:
    """The pacer actor of every rate-limit key in ``node``, for a run whose steps run in Ray Data workers."""
    from ...engine.steps import walk
    from ...runnables.rate_limited import RunnableRateLimited

    for step in walk(node):
        if isinstance(step, RunnableRateLimited) and step.key not in _STARTED:
            _STARTED[step.key] = create_limiter(step.key, step.pace)


def find_pacer(key: str) -> Any:
    """The run's pacer actor for ``key``, if the driver started one (else None: the step paces alone)."""
    try:
        return _RemotePacer(ray.get_actor(limiter_name(key)))
    except ValueError:
        return None
