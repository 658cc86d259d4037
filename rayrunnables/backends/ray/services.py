"""Cluster-wide services for steps on Ray: actor pools for stateful steps, one limiter actor per
rate-limited step. The driver creates them (named, so a worker finds them by name); steps reach
them through ``RayServices``, the Ray counterpart of ``rayrunnables.services.LocalServices``.
"""

from __future__ import annotations

import itertools
import os
import random
import threading
from typing import Any

import ray
from ray.exceptions import RayActorError

from ...context import RunContext
from ...engine.inprocess import ChunkResult
from ...engine.sharing import writable
from ...errors import StepConstructionError
from ...pacing import Booking, Pace, Pacer
from ...protocols import ContextState
from ...runnables.actor import RunnableActor
from ..portable import raise_portable
from .pending import rebuild
from .worker import chunk_here, interruptible, list_here, steps_here

__all__ = ["RayServices", "ActorPool", "create_limiter", "start_limiters", "find_pacer", "pool_name", "limiter_name"]


def pool_name(key: str, i: int) -> str:
    return f"rayrunnables-actor-{key}-{i}"


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
    """What a step running inside some task sees as "the instance": calls go to the step's actor pool."""

    def __init__(self, handles: list[Any]) -> None:
        self.handles = handles

    def __call__(self, item: Any) -> Any:
        return writable(ray.get(random.choice(self.handles).call_one.remote(item)))

    def batch(self, items: list[Any]) -> list[Any]:
        result: list[Any] = writable(ray.get(random.choice(self.handles).call_batch.remote(items)))
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
                self._cache[node.key] = _PoolProxy(
                    [ray.get_actor(pool_name(node.key, i)) for i in range(node.pool_size)]
                )
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

    def run_list(self, node: Any, packed: bytes, state: ContextState) -> Any:
        values, events = list_here(node, packed, self.context(state))
        return (values, events or []) if state.recording else values


# as Ray actor classes, typed loosely (Ray's ``.options`` is not visible to type checkers)
_Limiter: Any = ray.remote(Pacer)
_StepActor: Any = ray.remote(_StepActorClass)


class ActorPool:
    """The actors of one stateful step. Chunks go to the least-loaded actor (not round-robin); an
    actor that dies is restarted by Ray, which retries its calls (``max_restarts``/``max_task_retries``)."""

    def __init__(self, node: RunnableActor, options: dict[str, Any]) -> None:
        self.node = node
        opts = {"max_restarts": 3, "max_task_retries": 3, **options}
        opts.pop("max_retries", None)
        opts.pop("retry_exceptions", None)
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
