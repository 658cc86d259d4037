"""The Ray backend: the same chain, its steps as Ray tasks, intermediate values as ``ObjectRef``s.

``invoke`` walks the plan (``rayrunnables.plan``) and submits every task of the invocation before
waiting on anything: a fused sequence segment is one task, a dict fans out into one task per branch
(the shared input ``ray.put`` once), a ``.map()`` is cut into chunk tasks. ``batch``/``imap`` use the
shared windowed scheduler with chunk tasks. Ray's exceptions are converted at this edge: the user's
exception type comes back, with the remote traceback as ``__cause__``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import sysconfig
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ray
import ray.cloudpickle as ray_pickle
from ray.exceptions import RayTaskError

from .. import plan as planning
from ..batching import iter_batch
from ..config import merge_configs
from ..context import RunContext, isolate
from ..errors import BackendError, UnpicklableStepError
from ..fanout import POOL, ChunkResult, ThreadChunkRunner
from ..runnables.actor import RunnableActor
from ..runnables.lambda_ import RunnableLambda
from ..runnables.passthrough import require_dict
from ..runnables.wrappers import Run, RunnableBinding, RunnableRateLimited, _notify
from .base import Backend
from .ray_pending import Apply, Const, Pending, Ref, flatten, rebuild
from .ray_services import WORKER_SERVICES, ActorPool, create_limiter
from .ray_tasks import (
    ContextState,
    cancel_pending,
    concat,
    map_chunks,
    pack,
    raise_converted,
    run_chunk_task,
    run_fanout_task,
    run_task,
)

if TYPE_CHECKING:
    from ..batching import ChunkRunner
    from ..runnables.base import Runnable

__all__ = ["RayBackend", "RunStats"]

_NOT_SENT = frozenset({"backend", "callbacks"})
_OUR_OPTIONS = frozenset({"io_bound"})


@dataclass
class RunStats:
    """What the last invocation did: tasks submitted (by name), objects put, driver waits mid-chain."""

    tasks: list[str] = field(default_factory=list)
    puts: int = 0
    barriers: int = 0


class RayBackend(Backend):
    """Runs chains on Ray: an existing ``ray.init``, ``address``/``RAY_ADDRESS``, or a local Ray it starts."""

    name = "ray"

    def __init__(self, address: str | None = None, runtime_env: dict[str, Any] | None = None,
                 connect_timeout: float = 15.0, **init_kwargs: Any):
        self.address = address
        self.runtime_env = runtime_env
        self.connect_timeout = connect_timeout
        self.init_kwargs = init_kwargs
        self.last_run = RunStats()
        self._checked: weakref.WeakSet[Any] = weakref.WeakSet()
        self.pools: dict[str, ActorPool] = {}
        self._limiters: dict[str, Any] = {}
        self._cpus: tuple[float, int] = (0.0, 1)

    # ---- start-up --------------------------------------------------------------------------------
    def ensure_started(self) -> None:
        """Attach to ``address`` (else ``RAY_ADDRESS``) or start a local Ray. An address that cannot be
        reached, or whose cluster refuses this driver's token, is a ``BackendError`` naming the reason
        within ``connect_timeout`` seconds (``ray.init`` alone can retry for minutes)."""
        if ray.is_initialized():
            return
        address = self.address or os.environ.get("RAY_ADDRESS") or "local"
        kwargs: dict[str, Any] = {"include_dashboard": False, **self.init_kwargs}
        if address != "local":
            from .ray_connect import check_cluster

            kwargs.pop("include_dashboard", None)
            check_cluster(address, self.connect_timeout)
        try:
            ray.init(address=address, runtime_env=self.runtime_env, **kwargs)
        except Exception as exc:
            raise BackendError(f"cannot start or reach Ray at {address!r}: {exc}") from exc

    def parallelism(self) -> int:
        stamp, cpus = self._cpus
        if time.monotonic() - stamp > 5:
            cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
            self._cpus = (time.monotonic(), cpus)
        return cpus

    # ---- before anything is submitted ----------------------------------------------------------------
    def prepare(self, node: Runnable[Any, Any]) -> None:
        """Start Ray, ship the user's own modules by value, and refuse unpicklable steps by name."""
        self.ensure_started()
        if node in self._checked:
            return
        _ship_user_modules(node)
        try:
            ray_pickle.dumps(node)
        except Exception:
            path, culprit, error = _find_unpicklable(node, ())
            raise UnpicklableStepError(
                f"step {' > '.join(path) or culprit.label()!s} ({culprit.label()}) cannot be sent to Ray workers: "
                f"{type(error).__name__}: {error}. Objects holding locks, sockets or clients must be created "
                "inside the step (e.g. a function that builds the client on first call), not captured from the driver."
            ) from error
        self._start_services(node, {})
        self._checked.add(node)

    def _start_services(self, node: Runnable[Any, Any], options: dict[str, Any]) -> None:
        """An actor pool per stateful step and a limiter actor per rate-limited step, before any task."""
        if isinstance(node, RunnableBinding):
            options = {**options, **node.options}
        if isinstance(node, RunnableActor) and node.key not in self.pools:
            ray_options = {k: v for k, v in options.items() if k not in _OUR_OPTIONS}
            self.pools[node.key] = ActorPool(node, ray_options)
        if isinstance(node, RunnableRateLimited) and node.key not in self._limiters:
            self._limiters[node.key] = create_limiter(node.key, node.requests_per_second, node.burst)
        for _, child in node.children():
            self._start_services(child, options)

    def pool_of(self, node: Runnable[Any, Any]) -> ActorPool | None:
        """The pool serving ``node`` when it is a stateful step (possibly wrapped in options/rate limit)."""
        actor = _actor_of(node)
        return None if actor is None else self.pools.get(actor.key)

    def state(self, ctx: RunContext) -> ContextState:
        config = {k: v for k, v in ctx.config.items() if k not in _NOT_SENT}
        return (config, ctx.path, ctx.depth, ctx.limiters)

    def root_context(self, config: dict[str, Any]) -> RunContext:
        ctx = RunContext(config=config, services=WORKER_SERVICES)
        cap = config.get("max_concurrency")
        return ctx.with_limiter(ActorLimiter.create(cap)) if cap else ctx

    # ---- invoke ------------------------------------------------------------------------------------
    def invoke(self, node: Runnable[Any, Any], input: Any, config: dict[str, Any]) -> Any:
        self.prepare(node)
        run = _Invocation(self, self.root_context(config))
        self.last_run = run.stats
        try:
            return run.materialize(run.submit(planning.plan(node), Const(input)))
        finally:
            run.close()

    async def ainvoke(self, node: Runnable[Any, Any], input: Any, config: dict[str, Any]) -> Any:
        self.prepare(node)
        run = _Invocation(self, self.root_context(config))
        self.last_run = run.stats
        try:
            pending = await asyncio.to_thread(run.submit, planning.plan(node), Const(input))
            return await run.amaterialize(pending)
        finally:
            run.close()

    def stream(self, node: Runnable[Any, Any], input: Any, config: dict[str, Any]) -> Iterator[Any]:
        from ..runnables.sequence import RunnableSequence

        # The chain up to its last step runs on Ray; a generator last step streams from the driver.
        if isinstance(node, RunnableSequence) and isinstance(node.last, RunnableLambda) and node.last.is_generator:
            head = RunnableSequence.of(*node.steps[:-1])
            value = self.invoke(head, input, config)
            ctx = RunContext(config=config, path=(f"step {len(node.steps)}",))
            yield from node.last._stream(value, ctx)
            return
        if isinstance(node, RunnableLambda) and node.is_generator:
            yield from node._stream(isolate(input), RunContext(config=config))
            return
        yield self.invoke(node, input, config)

    # ---- batch / imap --------------------------------------------------------------------------------
    def chunk_runner(self, config: dict[str, Any]) -> ChunkRunner:
        raise NotImplementedError("the Ray backend builds a chunk runner per node: see iter_batch")

    def iter_batch(self, node: Runnable[Any, Any], inputs: Any, config: dict[str, Any], **kwargs: Any) -> Any:
        self.prepare(node)
        if isinstance(node, RunnableBinding) and node.listeners is not None:
            yield from self._batch_with_listeners(node, inputs, config, **kwargs)
            return
        if _waits_on_io(node):  # waiting is cheap in driver threads (with an in-process cap)
            yield from iter_batch(ThreadChunkRunner(64), node, inputs, Backend.root_context(self, config), **kwargs)
            return
        ctx = self.root_context(config)
        try:
            yield from iter_batch(RayChunkRunner(self, node), node, inputs, ctx, **kwargs)
        finally:
            _kill_limiters(ctx)

    def _batch_with_listeners(
        self, node: RunnableBinding[Any, Any], inputs: Any, config: dict[str, Any], **kwargs: Any
    ) -> Iterator[tuple[int, Any]]:
        """Listeners belong to the driver: items run on Ray, ``on_start``/``on_end``/``on_error`` here."""
        listeners = node.listeners
        assert listeners is not None
        cfg = merge_configs(config, node.config)
        runs: dict[int, Run] = {}

        def started(items: Any) -> Iterator[Any]:
            for index, item in enumerate(items):
                runs[index] = Run(name=cfg.get("run_name") or node.get_name(), inputs=item,
                                  tags=list(cfg.get("tags", [])), metadata=dict(cfg.get("metadata", {})))
                _notify(listeners.on_start, runs[index], cfg)
                yield item

        return_exceptions = kwargs.pop("return_exceptions")
        bare = RunnableBinding(node.bound, node.config, node.options)
        for index, value in self.iter_batch(bare, started(inputs), config, return_exceptions=True, **kwargs):
            run = runs.pop(index)
            run.end_time = time.time()
            if isinstance(value, Exception):
                run.error = value
                _notify(listeners.on_error, run, cfg)
                if not return_exceptions:
                    raise value
            else:
                run.outputs = value
                _notify(listeners.on_end, run, cfg)
            yield index, value


class ActorLimiter:
    """``max_concurrency`` across every worker of the cluster: a semaphore held by one threaded actor."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    @staticmethod
    def create(n: int) -> ActorLimiter:
        actor: Any = _SemaphoreActor
        return ActorLimiter(actor.options(max_concurrency=n + 64, num_cpus=0).remote(n))

    def acquire(self) -> None:
        ray.get(self.handle.acquire.remote())

    def release(self) -> None:
        ray.get(self.handle.release.remote())


@ray.remote
class _SemaphoreActor:
    def __init__(self, n: int) -> None:
        import threading

        self.sem = threading.BoundedSemaphore(n)

    def acquire(self) -> None:
        self.sem.acquire()

    def release(self) -> None:
        self.sem.release()


class _Invocation:
    """One ``invoke``: submits the plan's tasks, then waits for the result with first-failure-wins."""

    def __init__(self, backend: RayBackend, ctx: RunContext) -> None:
        self.backend, self.ctx = backend, ctx
        self.stats = RunStats()
        self.submitted: list[Any] = []

    def state(self, path: tuple[str, ...], overlay: dict[str, Any] | None = None) -> ContextState:
        config, _, depth, limiters = self.backend.state(self.ctx)
        return (merge_configs(config, overlay) if overlay else config, path, depth, limiters)

    def remote_options(self, options: dict[str, Any], name: str) -> dict[str, Any]:
        return {"name": name[:200], **{k: v for k, v in options.items() if k not in _OUR_OPTIONS}}

    def submit(self, unit: planning.Unit, pending: Pending) -> Pending:
        if isinstance(unit, planning.Task):
            if unit.where == "driver":
                value = self.materialize(pending, barrier=True)
                config = merge_configs(self.ctx.config, unit.config)
                for path, node in unit.steps:
                    value = node._invoke(value, RunContext(config, path, None, self.ctx.limiters,
                                                           self.ctx.depth, WORKER_SERVICES))
                return Const(value)
            recipe, refs = flatten(pending)
            if unit.where == "actor":
                (path, actor_node), = unit.steps
                pool = self.backend.pools[actor_node.key]  # type: ignore[attr-defined]
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
            for part in unit.parts:
                pending = self.submit(part, pending)
            return pending
        if isinstance(unit, planning.Fan):
            if isinstance(pending, Const) and len(unit.branches) > 1 and not _is_small(pending.value):
                pending = Ref(ray.put(pending.value))  # one copy in the object store for every branch
                self.stats.puts += 1
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
        if isinstance(unit, planning.Listen):
            return self.submit_listen(unit, pending)
        raise AssertionError(f"unknown plan unit {unit!r}")

    def submit_map(self, unit: planning.Map, pending: Pending) -> Pending:
        options = self.remote_options(unit.options, "")
        options.pop("name")
        state = self.state(unit.path, unit.config)
        if _waits_on_io(unit.node.bound):
            value = self.materialize(pending, barrier=True)
            ctx = RunContext(state[0], unit.path, None, self.ctx.limiters, 0, WORKER_SERVICES)
            return Const(unit.node._invoke(value, ctx))
        if isinstance(pending, Const):
            items = unit.node.check_input(pending.value, RunContext(path=unit.path))
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

    def submit_listen(self, unit: planning.Listen, pending: Pending) -> Pending:
        listeners = unit.node.listeners
        assert listeners is not None
        config = self.ctx.config
        value = self.materialize(pending, barrier=True)
        run = Run(name=config.get("run_name") or unit.node.get_name(), inputs=value,
                  tags=list(config.get("tags", [])), metadata=dict(config.get("metadata", {})))
        _notify(listeners.on_start, run, config)
        try:
            run.outputs = self.materialize(self.submit(unit.inner, Const(value)), barrier=True)
        except Exception as exc:
            run.error, run.end_time = exc, time.time()
            _notify(listeners.on_error, run, config)
            raise
        run.end_time = time.time()
        _notify(listeners.on_end, run, config)
        return Const(run.outputs)

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
        recipe, refs = flatten(pending)
        if refs and barrier:
            self.stats.barriers += 1
        remaining = list(refs)
        with self.cancelling_on_failure():
            while remaining:  # first failure in time: look at each result as it lands
                ready, remaining = ray.wait(remaining, num_returns=1)
                ray.get(ready)
            return rebuild(recipe, ray.get(refs) if refs else [])

    async def amaterialize(self, pending: Pending) -> Any:
        recipe, refs = flatten(pending)
        futures = [asyncio.ensure_future(_await(r)) for r in refs]
        try:
            with self.cancelling_on_failure():
                if futures:
                    done, _ = await asyncio.wait(futures, return_when=asyncio.FIRST_EXCEPTION)
                    for fut in done:
                        if fut.exception() is not None:
                            raise fut.exception()  # type: ignore[misc]
                return rebuild(recipe, [f.result() for f in futures])
        finally:
            for fut in futures:
                fut.cancel()

    def cancel(self) -> None:
        cancel_pending(self.submitted)

    def close(self) -> None:
        _kill_limiters(self.ctx)


def _kill_limiters(ctx: RunContext) -> None:
    for limiter in ctx.limiters:
        if isinstance(limiter, ActorLimiter):
            ray.kill(limiter.handle)


async def _await(ref: Any) -> Any:
    return await ref


class RayChunkRunner:
    """Chunk primitives for the shared scheduler: one Ray task per chunk, ``ray.wait`` for the window."""

    target_chunk_seconds = 0.02

    def __init__(self, backend: RayBackend, node: Runnable[Any, Any]) -> None:
        self.backend = backend
        self.pool = backend.pool_of(node)
        self.default_window = 2 * (len(self.pool.actors) if self.pool else backend.parallelism())
        self._node_refs: dict[int, tuple[Any, Any]] = {}
        self._actor_of_handle: dict[Any, int] = {}

    def submit(self, node: Runnable[Any, Any], items: list[tuple[int, Any]], ctx: RunContext,
               return_exceptions: bool) -> Any:
        key = id(node)
        if key not in self._node_refs:
            unit = planning.plan(node)
            options = {k: v for k, v in planning.task_options(unit).items() if k not in _OUR_OPTIONS}
            self._node_refs[key] = (ray.put(node), options)
        node_ref, options = self._node_refs[key]
        if self.pool is not None:  # least-loaded member of the step's actor pool
            index = self.pool.pick()
            handle = self.pool.actors[index].run_chunk.remote(
                node_ref, pack(items), self.backend.state(ctx), return_exceptions
            )
            self._actor_of_handle[handle] = index
            return handle
        return run_chunk_task.options(name=f"{node.label()} chunk", **options).remote(
            node_ref, pack(items), self.backend.state(ctx), return_exceptions
        )

    def wait(self, handles: list[Any]) -> list[Any]:
        ready, rest = ray.wait(handles, num_returns=1)
        if rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        return list(ready)

    def result(self, handle: Any) -> ChunkResult:
        index = self._actor_of_handle.pop(handle, None)
        if index is not None and self.pool is not None:
            self.pool.done(index)
        try:
            result: ChunkResult = ray.get(handle)
        except RayTaskError as err:
            raise_converted(err)
            raise
        return result

    def cancel(self, handles: list[Any]) -> None:
        cancel_pending(handles)


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


# ---- shipping user code ---------------------------------------------------------------------------------
_INSTALLED = tuple(
    os.path.realpath(p) for p in {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
)


def _ship_user_modules(node: Runnable[Any, Any]) -> None:
    """Pickle the user's own modules by value, so workers that cannot import them still run their steps."""
    for leaf in _walk(node):
        for obj in _callables(leaf):
            for mod_name in {getattr(obj, "__module__", None), getattr(type(obj), "__module__", None)}:
                module = sys.modules.get(mod_name or "")
                if module is not None and _is_users(module):
                    ray_pickle.register_pickle_by_value(module)


def _is_users(module: Any) -> bool:
    name = module.__name__
    path = getattr(module, "__file__", None)
    if name == "__main__" or not path or name.split(".")[0] in ("rayrunnables", "ray"):
        return False
    real = os.path.realpath(path)
    return not any(real.startswith(root) for root in _INSTALLED) and "site-packages" not in real


def _callables(node: Any) -> list[Any]:
    found = []
    for attr in ("func", "afunc", "cls"):
        value = getattr(node, attr, None)
        while callable(value):  # see through decorators and wrappers to the user's own function
            found.append(value)
            value = getattr(value, "__wrapped__", None)
    return found


def _walk(node: Runnable[Any, Any]) -> Iterator[Runnable[Any, Any]]:
    yield node
    for _, child in node.children():
        yield from _walk(child)


def _find_unpicklable(
    node: Runnable[Any, Any], path: tuple[str, ...]
) -> tuple[tuple[str, ...], Runnable[Any, Any], BaseException]:
    for segment, child in node.children():
        try:
            ray_pickle.dumps(child)
        except Exception:
            return _find_unpicklable(child, (*path, segment) if segment else path)
    try:
        ray_pickle.dumps(node)
    except Exception as error:
        return (*path, node.label()), node, error
    raise AssertionError("unreachable: the node pickled after all")


def _has_barrier(unit: planning.Unit) -> bool:
    """Whether submitting ``unit`` makes the driver wait (io_bound steps, listeners, io maps)."""
    if isinstance(unit, planning.Task):
        return unit.where == "driver"
    if isinstance(unit, planning.Listen):
        return True
    if isinstance(unit, planning.Map):
        return _waits_on_io(unit.node.bound)
    if isinstance(unit, planning.Seq):
        return any(_has_barrier(p) for p in unit.parts)
    if isinstance(unit, planning.Fan):
        return any(_has_barrier(b) for b in unit.branches)
    if isinstance(unit, planning.Assign):
        return _has_barrier(unit.mapper)
    return False


def _actor_of(node: Runnable[Any, Any]) -> RunnableActor | None:
    while isinstance(node, (RunnableBinding, RunnableRateLimited)):
        if isinstance(node, RunnableBinding) and (node.listeners is not None or node.config):
            return None
        node = node.bound
    return node if isinstance(node, RunnableActor) else None


def _waits_on_io(node: Runnable[Any, Any]) -> bool:
    """Steps marked ``io_bound`` or made only of async functions: run them where waiting is cheap."""
    if isinstance(node, RunnableBinding) and node.options.get("io_bound"):
        return True
    leaves = [n for n in _walk(node) if isinstance(n, RunnableLambda)]
    return bool(leaves) and all(leaf.is_async for leaf in leaves)
