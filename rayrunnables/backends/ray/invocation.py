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
from uuid import UUID, uuid4

import ray
from ray.exceptions import ActorDiedError, RayError, RayTaskError

from ...config import merge_configs
from ...context import Cancelled, RunContext, ThreadLimiter
from ...engine.events import Buffer, RunSink
from ...engine.process_state import STATE
from ...engine.sharing import writable
from ...options import OUR_OPTIONS
from ...protocols import ContextState, Node
from ...runnables.actor import RunnableActor
from ...runnables.cached import RunnableCached
from ...runnables.lambda_ import RunnableLambda
from ...runnables.passthrough import require_dict
from ...runnables.timeout import RunnableTimeout
from ...runnables.wrappers import RunnableBinding, RunnableRateLimited
from . import planner as planning
from .cancelling import cancel_running
from .failures import LOST_ARGUMENT, failed_with, ray_failure, translate
from .maps import PoolView, dead_actors_of, run_map, run_map_task
from .pending import Apply, Const, Pending, Ref, flatten, owned, rebuild, shared, unmarked
from .recording import RunLog
from .services import WORKER_SERVICES
from .shipping import walk
from .tasks import raise_converted, run_task

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


@dataclass
class _Origin:
    """What a submitted task ran, for an error that lost it: its step path and the refs it waited on."""

    path: str
    deps: list[Any]


class Invocation:
    """One ``invoke``: submits the plan's tasks, then waits for the result with first-failure-wins.

    When someone records run events (``log``), every task returns its recorded events as a second return,
    composite steps (``RunOf``) are reported by the driver, and ``finish`` replays it all in order."""

    def __init__(self, backend: RayBackend, ctx: RunContext) -> None:
        self.backend, self.ctx = backend, ctx
        self.stats = RunStats()
        self.submitted: list[Any] = []
        self.origins: dict[Any, _Origin] = {}  # by ref: for a Ray failure, the step path of the task lost
        self.log = RunLog(ctx.events) if ctx.events is not None else None
        self.root: planning.Unit | None = None  # the plan of the whole call, once planned

    def plan(self, node: Node) -> planning.Unit:
        self.root = planning.plan(node, recording=self.log is not None)
        return self.root

    def state(self, path: tuple[str, ...], overlay: dict[str, Any] | None = None,
              parent: UUID | None = None) -> ContextState:
        state = self.backend.state(self.ctx)
        return state._replace(config=merge_configs(state.config, overlay) if overlay else state.config, path=path,
                              run_id=parent)

    def remote_options(self, options: dict[str, Any], name: str) -> dict[str, Any]:
        """A task's Ray options; with a log, it returns (value, recorded events)."""
        returns = {"num_returns": 2} if self.log is not None else {}
        return {"name": name[:200], **_ray_options(options), **returns}

    def submitted_ref(self, ref: Any, name: str, path: str | None = None, deps: list[Any] | None = None) -> Ref:
        """A task's output; with a log, ``ref`` is (output, events) and the events are logged here."""
        if self.log is not None:
            ref, events = ref
            self.log.recorded(events)
        self.origins[ref] = _Origin(path or name, deps or [])
        self.submitted.append(ref)
        self.stats.tasks.append(name)
        return Ref(ref)

    def in_driver(self, config: dict[str, Any], path: tuple[str, ...], parent: UUID | None,
                  owner: Node | None = None) -> RunContext:
        """The context of a step run in this process: its events (if recorded) kept for the log."""
        events = Buffer() if self.log is not None else None
        if events is not None:  # what it hands on (a LangChain step's own runs) nests under ``parent`` too
            config = {**config, "callbacks": RunSink(events, parent)}
        ctx = RunContext(config, path, limiters=self.ctx.limiters, depth=self.ctx.depth, services=WORKER_SERVICES,
                         events=events, run_id=parent)
        ctx.run_owner = owner  # a ``.map()`` reported by its ``RunOf`` is not a second run
        return ctx

    def log_driver_events(self, ctx: RunContext) -> None:
        if self.log is not None and isinstance(ctx.events, Buffer):
            self.log.events(ctx.events.take())

    def submit(self, unit: planning.Unit, pending: Pending, parent: UUID | None = None) -> Pending:
        if isinstance(unit, planning.Task):
            if unit.where == "driver":
                value = self.materialize(pending, barrier=True)
                config = merge_configs(self.ctx.config, unit.config)
                ctx = self.in_driver(config, (), parent)
                try:
                    for path, node in unit.steps:
                        value = node._invoke(value, ctx.at(path))
                finally:
                    self.log_driver_events(ctx)
                return Const(value)
            recipe, refs = flatten(pending)
            if unit.where == "actor":
                (path, actor_node), = unit.steps
                pool = self.backend.pools[cast(RunnableActor, actor_node).key]
                index = pool.pick()
                method = pool.actors[index].call
                if self.log is not None:
                    method = method.options(num_returns=2)
                ref = method.remote(path, self.state((), unit.config, parent), recipe, *refs)
                pool.done(index)
                return self.submitted_ref(ref, unit.name, _task_path(unit), refs)
            ref = run_task.options(**self.remote_options(unit.options, unit.name)).remote(
                unit.steps, self.state((), unit.config, parent), recipe, *refs
            )
            return self.submitted_ref(ref, unit.name, _task_path(unit), refs)
        if isinstance(unit, planning.RunOf):
            return self.submit_run(unit, pending, parent)
        if isinstance(unit, planning.Seq):
            for n, part in enumerate(unit.parts):
                pending = self.submit(part, owned(pending) if n else pending, parent)
            return pending
        if isinstance(unit, planning.Fan):
            base = unmarked(pending)
            if isinstance(base, Const) and len(unit.branches) > 1 and not _is_small(base.value):
                pending = Ref(ray.put(base.value))  # one copy in the object store for every branch
                self.stats.puts += 1
            pending = shared(pending)  # every branch reads it, none copies it
            if any(_has_barrier(branch) for branch in unit.branches):
                # a branch that waits in the driver must not hold back its siblings' submission
                futures = [STATE.threads.submit(self.submit, branch, pending, parent) for branch in unit.branches]
                outs, errors = [], []
                for future in futures:
                    try:
                        outs.append(future.result())
                    except BaseException as exc:
                        errors.append(exc)
                if errors:  # the failure itself, not a sibling's map stopped because of it (``Cancelled``)
                    raise next((e for e in errors if not isinstance(e, Cancelled)), errors[0])
            else:
                outs = [self.submit(branch, pending, parent) for branch in unit.branches]
            return Apply(_build_dict, (tuple(unit.keys), *outs))
        if isinstance(unit, planning.Assign):
            mapped = self.submit(unit.mapper, pending, parent)
            return Apply(_merge_assign, (unit.node, unit.path, pending, mapped))
        if isinstance(unit, planning.Pass):
            return pending
        if isinstance(unit, planning.Pick):
            return Apply(_pick, (unit.node, unit.path, pending))
        if isinstance(unit, planning.Map):
            return self.submit_map(unit, pending, parent)
        raise AssertionError(f"unknown plan unit {unit!r}")

    def submit_run(self, unit: planning.RunOf, pending: Pending, parent: UUID | None) -> Pending:
        """A composite step's own run: started here at submission, its end logged with its pending output."""
        assert self.log is not None
        run_id = uuid4()
        ids = self.log.start(unit.node, run_id, parent, self.ctx.config, unit.path, pending, unit.run_name)
        output = self.submit(unit.inner, pending, run_id)
        self.log.end(ids, output, unit.path, unit.node)
        return output

    def submit_map(self, unit: planning.Map, pending: Pending, parent: UUID | None = None) -> Pending:
        options = _ray_options(unit.options)  # the chunk tasks' options
        state = self.state(unit.path, unit.config, parent)
        if waits_on_io(unit.node.bound):
            value = self.materialize(pending, barrier=True)
            ctx = self.in_driver(state.config, unit.path, parent, unit.node if self.log is not None else None)
            try:
                return Const(unit.node._invoke(value, ctx))
            finally:
                self.log_driver_events(ctx)
        base = unmarked(pending)
        if isinstance(base, Const):  # a list given by the caller: bad input named before anything is submitted
            unit.node.check_input(base.value, RunContext(path=unit.path))
        pool = self.backend.pool_of(unit.node.bound)
        view = None if pool is None else PoolView(pool.actors, pool.node.key)
        if self.log is None and (unit is self.root or not self.backend.map_slots.take()):
            return self.run_map_here(unit, pending, state, options, view)
        # the one scheduler runs the map beside its list, in a map task: the driver fetches nothing
        recipe, refs = flatten(pending)
        name = "/".join((*unit.path, "map"))
        returns = {"num_returns": 2} if self.log is not None else {}
        try:
            ref = run_map_task.options(name=name, num_cpus=0, **returns).remote(
                unit.node, state, options, self.backend.parallelism(), view, recipe, *refs
            )
        except BaseException:
            self.backend.map_slots.give_back()
            raise
        if self.log is None:  # its slot is free again once the map task ends, however it ends
            ref.future().add_done_callback(lambda _: self.backend.map_slots.give_back())
        return self.submitted_ref(ref, name, " > ".join((*unit.path, "map")), refs)

    def run_map_here(self, unit: planning.Map, pending: Pending, state: ContextState, options: dict[str, Any],
                     view: PoolView | None) -> Pending:
        """The map's list fetched here and the same scheduler (``run_map``) run in this thread: chunk tasks
        as a map task submits them, no process of its own. Chosen when the map is the whole call (its list is
        the caller's and nothing runs beside it, as with ``batch``: a map task there only added a process and
        a hop, 1.45x against batch's 1.86x on 64 CPU items), and when every map-task slot is taken: a map
        task holds no CPU, so Ray starts a worker process per concurrent one (a server with 64 requests in
        flight would start 64, and start them again as idle ones are reaped). Stopped by ``cancel`` (the
        invocation's token, looked at while it waits); pool members found dead are replaced here, at once."""
        items = unit.node.check_input(self.materialize(pending, barrier=True), RunContext(path=unit.path))
        try:
            outputs, _ = run_map(unit.node, items, state, options, self.backend.parallelism(), view, self.ctx.cancel)
        finally:
            for actor_id in [] if view is None else view.dead_ids():
                self.backend.replace_dead(actor_id)
        return Const(outputs)

    def finish(self, error: BaseException | None) -> None:
        """Replay what was recorded (nothing without a log), once the invocation is over."""
        if self.log is not None:
            self.log.replay(error)

    # ---- waiting ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def cancelling_on_failure(self) -> Iterator[None]:
        """On the first failure: cancel what has not finished, raise the user's exception type (a Ray
        failure as ours, ``failures``)."""
        try:
            yield
        except RayTaskError as err:
            self.cancel()
            if ray_failure(err) is not None:
                raise translate(err) from ray_failure(err)
            raise_converted(err)
            raise
        except RayError as err:
            self.cancel()
            found = ray_failure(err)
            if found is not None:
                raise translate(found) from found
            raise
        except BaseException:
            self.cancel()
            raise

    def lost(self, err: BaseException, ref: Any) -> BaseException | None:
        """Ours for a Ray failure met getting ``ref`` (None for the user's exceptions), naming the task
        that was lost: found by walking back from ``ref`` through the tasks it waited on, as Ray passes
        a lost argument's failure on to every task downstream. A pool actor dead for good is replaced. (A
        lost chunk of a ``.map()`` is run again, split, by the scheduler in its map task, which names the
        pool members it found dead on its error: they are replaced here.)"""
        for actor_id in dead_actors_of(err):
            self.backend.replace_dead(actor_id)
        if ray_failure(err) is None:
            return None
        self.cancel()  # the invocation has failed: what still runs stops now, not after the search below
        for _ in range(len(self.origins)):
            origin = self.origins.get(ref)
            if origin is None or not (isinstance(err, RayTaskError) and LOST_ARGUMENT in str(err)):
                break
            failed = ((dep, failed_with(dep)) for dep in origin.deps)
            upstream = next(((dep, e) for dep, e in failed if e is not None and ray_failure(e)), None)
            if upstream is None:  # its own process died (or a ray.get inside it failed)
                break
            ref, err = upstream
        found = ray_failure(err)
        if isinstance(found, ActorDiedError) and getattr(found, "actor_id", None):
            self.backend.replace_dead(found.actor_id)
        origin = self.origins.get(ref)
        return translate(err, origin.path if origin else None)

    def get(self, ref: Any) -> Any:
        try:
            return ray.get(ref)
        except Exception as err:
            exc = self.lost(err, ref)
            if exc is None:
                raise
            raise exc from exc.__cause__

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
                self.get(ready[0])
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
                            err = cast(BaseException, fut.exception())
                            exc = await asyncio.to_thread(self.lost, err, refs[futures.index(fut)])
                            if exc is None:
                                raise err
                            raise exc from exc.__cause__
                return writable(rebuild(recipe, [f.result() for f in futures], driver=True))
        finally:
            for fut in futures:
                fut.cancel()

    def cancel(self) -> None:
        self.ctx.cancel.cancel()  # a map run in a driver thread stops as its next item ends
        cancel_running(self.submitted)

    def close(self) -> None:
        kill_limiters(self.ctx)


def _task_path(unit: planning.Task) -> str:
    """The step path of a task's step, or of its fused steps (``step 1-3 (lambda 'a' | ...)``)."""
    (path, node), *more = unit.steps
    return " > ".join((*path, node.label())) if not more else unit.name.replace("/", " > ")


def _ray_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in OUR_OPTIONS}


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
    if isinstance(unit, planning.RunOf):
        return _has_barrier(unit.inner)
    return False


def actor_of(node: Node) -> RunnableActor | None:
    while isinstance(node, (RunnableBinding, RunnableRateLimited, RunnableTimeout, RunnableCached)):
        if isinstance(node, RunnableBinding) and (node.listeners is not None or node.config):
            return None
        node = node.bound
    return node if isinstance(node, RunnableActor) else None


def waits_on_io(node: Node) -> bool:
    """Steps marked ``io_bound``, rate-limited steps (they call a provider) or steps made only of async
    functions: run them where waiting is cheap."""
    if isinstance(node, RunnableBinding) and "io_bound" in node.options:
        return bool(node.options["io_bound"])
    if isinstance(node, RunnableRateLimited):
        return True
    if isinstance(node, RunnableCached):  # a miss runs the step: where it waits, the cached step waits
        return waits_on_io(node.bound)
    leaves = [n for n in walk(node) if isinstance(n, RunnableLambda)]
    return bool(leaves) and all(leaf.is_async for leaf in leaves)
