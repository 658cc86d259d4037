"""One ``invoke`` on Ray: walk the plan, submit every task before waiting on anything, then gather.

Values flow as pendings (``ray_pending``): a fused segment's ``ObjectRef`` feeds the next task, a
fan-out's branches are gathered where they are consumed, so the driver waits only at the end (or at
a barrier the plan names: an io_bound step).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import ray
from ray.exceptions import RayTaskError

from ...config import merge_configs
from ...context import RunContext, ThreadLimiter
from ...engine.inprocess import POOL
from ...engine.sharing import writable
from ...options import OUR_OPTIONS
from ...protocols import ContextState, Node
from ...runnables.actor import RunnableActor
from ...runnables.lambda_ import RunnableLambda
from ...runnables.passthrough import require_dict
from ...runnables.timeout import RunnableTimeout
from ...runnables.wrappers import RunnableBinding, RunnableRateLimited
from . import planner as planning
from .pending import Apply, Const, Pending, Ref, flatten, owned, rebuild, shared, unmarked
from .services import WORKER_SERVICES
from .shipping import walk
from .tasks import (
    cancel_pending,
    concat,
    map_chunks,
    raise_converted,
    run_fanout_task,
    run_task,
)

if TYPE_CHECKING:
    from .backend import RayBackend

__all__ = ["RunStats", "Invocation", "ActorLimiter", "kill_limiters", "actor_of", "waits_on_io"]


@dataclass
class RunStats:
    """What the last invocation did: tasks submitted (by name), objects put, driver waits mid-chain."""

    tasks: list[str] = field(default_factory=list)
    puts: int = 0
    barriers: int = 0


class ActorLimiter:
    """``max_concurrency`` across every worker of the cluster: a semaphore held by one threaded actor."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    @staticmethod
    def create(n: int) -> ActorLimiter:
        return ActorLimiter(_SemaphoreActor.options(max_concurrency=n + 64, num_cpus=0).remote(n))

    def acquire(self) -> None:
        ray.get(self.handle.acquire.remote())

    def release(self) -> None:
        ray.get(self.handle.release.remote())


# the in-process limiter, as a threaded actor: its semaphore is the one cap for the whole cluster
_SemaphoreActor: Any = ray.remote(ThreadLimiter)


class Invocation:
    """One ``invoke``: submits the plan's tasks, then waits for the result with first-failure-wins."""

    def __init__(self, backend: RayBackend, ctx: RunContext) -> None:
        self.backend, self.ctx = backend, ctx
        self.stats = RunStats()
        self.submitted: list[Any] = []

    def state(self, path: tuple[str, ...], overlay: dict[str, Any] | None = None) -> ContextState:
        state = self.backend.state(self.ctx)
        return state._replace(config=merge_configs(state.config, overlay) if overlay else state.config, path=path)

    def remote_options(self, options: dict[str, Any], name: str) -> dict[str, Any]:
        return {"name": name[:200], **{k: v for k, v in options.items() if k not in OUR_OPTIONS}}

    def submit(self, unit: planning.Unit, pending: Pending) -> Pending:
        if isinstance(unit, planning.Task):
            if unit.where == "driver":
                value = self.materialize(pending, barrier=True)
                config = merge_configs(self.ctx.config, unit.config)
                for path, node in unit.steps:
                    value = node._invoke(value, RunContext(config, path, limiters=self.ctx.limiters,
                                                           depth=self.ctx.depth, services=WORKER_SERVICES))
                return Const(value)
            recipe, refs = flatten(pending)
            if unit.where == "actor":
                (path, actor_node), = unit.steps
                pool = self.backend.pools[cast(RunnableActor, actor_node).key]
                index = pool.pick()
                ref = pool.actors[index].call.remote(path, self.state((), unit.config), recipe, *refs)
                pool.done(index)
                self.submitted.append(ref)
                self.stats.tasks.append(unit.name)
                return Ref(ref)
            ref = run_task.options(**self.remote_options(unit.options, unit.name)).remote(
                unit.steps, self.state((), unit.config), recipe, *refs
            )
            self.submitted.append(ref)
            self.stats.tasks.append(unit.name)
            return Ref(ref)
        if isinstance(unit, planning.Seq):
            for n, part in enumerate(unit.parts):
                pending = self.submit(part, owned(pending) if n else pending)
            return pending
        if isinstance(unit, planning.Fan):
            base = unmarked(pending)
            if isinstance(base, Const) and len(unit.branches) > 1 and not _is_small(base.value):
                pending = Ref(ray.put(base.value))  # one copy in the object store for every branch
                self.stats.puts += 1
            pending = shared(pending)  # every branch reads it, none copies it
            if any(_has_barrier(branch) for branch in unit.branches):
                # a branch that waits in the driver must not hold back its siblings' submission
                futures = [POOL.submit(self.submit, branch, pending) for branch in unit.branches]
                outs = [future.result() for future in futures]
            else:
                outs = [self.submit(branch, pending) for branch in unit.branches]
            return Apply(_build_dict, (tuple(unit.keys), *outs))
        if isinstance(unit, planning.Assign):
            mapped = self.submit(unit.mapper, pending)
            return Apply(_merge_assign, (unit.node, unit.path, pending, mapped))
        if isinstance(unit, planning.Pass):
            return pending
        if isinstance(unit, planning.Pick):
            return Apply(_pick, (unit.node, unit.path, pending))
        if isinstance(unit, planning.Map):
            return self.submit_map(unit, pending)
        raise AssertionError(f"unknown plan unit {unit!r}")

    def submit_map(self, unit: planning.Map, pending: Pending) -> Pending:
        options = self.remote_options(unit.options, "")
        options.pop("name")
        state = self.state(unit.path, unit.config)
        if waits_on_io(unit.node.bound):
            value = self.materialize(pending, barrier=True)
            ctx = RunContext(state.config, unit.path, limiters=self.ctx.limiters, services=WORKER_SERVICES)
            return Const(unit.node._invoke(value, ctx))
        base = unmarked(pending)
        if isinstance(base, Const):
            items = unit.node.check_input(base.value, RunContext(path=unit.path))
            pool = self.backend.pool_of(unit.node.bound)
            refs = map_chunks(unit.node, items, state, options, self.backend.parallelism(), pool)
            self.submitted.extend(refs)
            self.stats.tasks.extend(["/".join((*unit.path, "map"))] * len(refs))
            return Apply(concat, tuple(Ref(r) for r in refs))
        recipe, refs = flatten(pending)
        ref = run_fanout_task.options(name="/".join((*unit.path, "map fan-out")), num_cpus=0).remote(
            unit.node, state, options, recipe, *refs
        )
        self.submitted.append(ref)
        self.stats.tasks.append("/".join((*unit.path, "map fan-out")))
        return Ref(ref)

    # ---- waiting ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def cancelling_on_failure(self) -> Iterator[None]:
        """On the first failure: cancel what has not finished, raise the user's exception type."""
        try:
            yield
        except RayTaskError as err:
            self.cancel()
            raise_converted(err)
            raise
        except BaseException:
            self.cancel()
            raise

    def materialize(self, pending: Pending, barrier: bool = False) -> Any:
        """The value in the driver: for a step that runs here (``barrier``) shared as any step's input
        is, else, as the caller's result, writable (an array from the object store copied once, here)."""
        recipe, refs = flatten(pending)
        if refs and barrier:
            self.stats.barriers += 1
        remaining = list(refs)
        with self.cancelling_on_failure():
            while remaining:  # first failure in time: look at each result as it lands
                ready, remaining = ray.wait(remaining, num_returns=1)
                ray.get(ready)
            value = rebuild(recipe, ray.get(refs) if refs else [], driver=True)
            return value if barrier else writable(value)

    async def amaterialize(self, pending: Pending) -> Any:
        recipe, refs = flatten(pending)
        futures = [asyncio.ensure_future(_await(r)) for r in refs]
        try:
            with self.cancelling_on_failure():
                if futures:
                    done, _ = await asyncio.wait(futures, return_when=asyncio.FIRST_EXCEPTION)
                    for fut in done:
                        if fut.exception() is not None:
                            raise cast(BaseException, fut.exception())
                return writable(rebuild(recipe, [f.result() for f in futures], driver=True))
        finally:
            for fut in futures:
                fut.cancel()

    def cancel(self) -> None:
        cancel_pending(self.submitted)

    def close(self) -> None:
        kill_limiters(self.ctx)


def kill_limiters(ctx: RunContext) -> None:
    for limiter in ctx.limiters:
        if isinstance(limiter, ActorLimiter):
            ray.kill(limiter.handle)


async def _await(ref: Any) -> Any:
    return await ref


# ---- recipes applied where a value is consumed (driver or worker) ------------------------------------------
def _build_dict(keys: tuple[str, ...], *values: Any) -> dict[str, Any]:
    return dict(zip(keys, values, strict=False))


def _merge_assign(node: Any, path: tuple[str, ...], base: Any, mapped: dict[str, Any]) -> dict[str, Any]:
    data = require_dict(node, base, RunContext(path=path), "assign")
    return {**data, **mapped}


def _pick(node: Any, path: tuple[str, ...], value: Any) -> Any:
    return node._invoke(value, RunContext(path=path))


def _is_small(value: Any) -> bool:
    return isinstance(value, (int, float, bool, type(None))) or (isinstance(value, (str, bytes)) and len(value) < 1024)


def _has_barrier(unit: planning.Unit) -> bool:
    """Whether submitting ``unit`` makes the driver wait (io_bound steps, listeners, io maps)."""
    if isinstance(unit, planning.Task):
        return unit.where == "driver"
    if isinstance(unit, planning.Map):
        return waits_on_io(unit.node.bound)
    if isinstance(unit, planning.Seq):
        return any(_has_barrier(p) for p in unit.parts)
    if isinstance(unit, planning.Fan):
        return any(_has_barrier(b) for b in unit.branches)
    if isinstance(unit, planning.Assign):
        return _has_barrier(unit.mapper)
    return False


def actor_of(node: Node) -> RunnableActor | None:
    while isinstance(node, (RunnableBinding, RunnableRateLimited, RunnableTimeout)):
        if isinstance(node, RunnableBinding) and (node.listeners is not None or node.config):
            return None
        node = node.bound
    return node if isinstance(node, RunnableActor) else None


def waits_on_io(node: Node) -> bool:
    """Steps marked ``io_bound`` or made only of async functions: run them where waiting is cheap."""
    if isinstance(node, RunnableBinding) and node.options.get("io_bound"):
        return True
    leaves = [n for n in walk(node) if isinstance(n, RunnableLambda)]
    return bool(leaves) and all(leaf.is_async for leaf in leaves)
