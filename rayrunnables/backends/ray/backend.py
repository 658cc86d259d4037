"""The Ray backend: the same chain, its steps as Ray tasks, intermediate values as ``ObjectRef``s.

``invoke`` walks the plan (``planner``) and submits every task of the invocation before
waiting on anything: a fused sequence segment is one task, a dict fans out into one task per branch
(the shared input ``ray.put`` once), a ``.map()`` is cut into chunk tasks. ``batch``/``imap`` use the
shared windowed scheduler with chunk tasks. Ray's exceptions are converted at this edge: the user's
exception type comes back, with the remote traceback as ``__cause__``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import ray
from ray.exceptions import RayTaskError

from ...context import RunContext
from ...engine.inprocess import ThreadChunkRunner, local_root_context
from ...engine.process_state import STATE
from ...engine.sharing import isolate, writable
from ...errors import BackendError
from ...options import OUR_OPTIONS
from ...protocols import Backend, ChunkRunner, ContextState, Node
from ...runnables.actor import RunnableActor
from ...runnables.wrappers import RunnableBinding, RunnableRateLimited
from . import planner as planning
from .cancelling import stop_stream
from .chunks import RayChunkRunner, chunk_state
from .failures import ray_failure, translate
from .invocation import ActorLimiter, Invocation, RunStats, actor_of, kill_limiters, waits_on_io
from .pending import Const, Share
from .services import WORKER_SERVICES, ActorPool, create_limiter
from .shipping import check_sendable, walk
from .tasks import RecordedEvents, raise_converted, stream_task

__all__ = ["LOCAL_RAY_CONFIG", "MapSlots", "RayBackend", "RunStats", "STREAM_BUFFER"]

#: chunks a streaming task may run ahead of a slow reader (Ray's generator backpressure)
STREAM_BUFFER = 16

#: Ray's ``_system_config`` for a local Ray this package starts (the caller's ``_system_config`` keys win). Ray stops a
#: task worker idle for 1 s while more workers than CPUs exist, and a map task (it holds no CPU) is a worker
#: beyond them: a chain with a ``.map()`` called again after a pause started a process each time (64 CPU
#: items: 2.1 s against batch's 1.6 s; kept 60 s, 1.6 s), as did a server's requests (``rayrunnables
#: serve``, whose replicas and proxy are workers too: 39 workers started and 21 stopped as idle in one
#: bench_serve run of the CPU chain through Ray tasks, 8.6 and 15.8 req/s; kept 60 s, 17 and 5, 19.4 and
#: 18.7 req/s).
LOCAL_RAY_CONFIG: dict[str, Any] = {"idle_worker_killing_time_threshold_ms": 60_000}


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
        self._warned = False
        #: map tasks this process may have running at once (``Invocation.submit_map``); past them a map's
        #: scheduler runs in the submitting thread (bounded: a map task holds no CPU, each is a process)
        self.map_slots = MapSlots(self.parallelism)

    # ---- start-up --------------------------------------------------------------------------------
    def ensure_started(self) -> None:
        """Attach to ``address`` (else ``RAY_ADDRESS``) or start a local Ray. An address that cannot be
        reached, or whose cluster refuses this driver's token, is a ``BackendError`` naming the reason
        within ``connect_timeout`` seconds (``ray.init`` alone can retry for minutes)."""
        if ray.is_initialized():
            if self.address not in (None, "auto") and not self._warned:
                self._warned = True
                warnings.warn(
                    f"Ray is already initialized in this process, so RayBackend(address={self.address!r}) runs on "
                    "that connection; call ray.shutdown() first to attach to another cluster",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return
        address = self.address or os.environ.get("RAY_ADDRESS") or "local"
        kwargs: dict[str, Any] = {"include_dashboard": False, **self.init_kwargs}
        if address == "local":
            kwargs["_system_config"] = {**LOCAL_RAY_CONFIG, **(kwargs.get("_system_config") or {})}
        from .connect import check_cluster, init_failure_hint

        if address != "local":
            kwargs.pop("include_dashboard", None)
            check_cluster(address, self.connect_timeout)
        try:
            _on_lasting_thread(lambda: ray.init(address=address, runtime_env=self.runtime_env, **kwargs))
        except Exception as exc:
            raise BackendError(f"cannot start or reach Ray at {address!r}: {exc}{init_failure_hint(address)}") from exc

    def parallelism(self) -> int:
        stamp, cpus = self._cpus
        if time.monotonic() - stamp > 5:
            cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
            self._cpus = (time.monotonic(), cpus)
        return cpus

    # ---- before anything is submitted ----------------------------------------------------------------
    def prepare(self, node: Node) -> None:
        """Start Ray, ship the user's own modules by value, and refuse unpicklable steps by name."""
        self.ensure_started()
        if node in self._checked:
            return
        check_sendable(node)
        self._start_services(node, {})
        self._checked.add(node)

    def _start_services(self, node: Node, options: dict[str, Any]) -> None:
        """An actor pool per stateful step and a limiter actor per rate-limited step, before any task."""
        if isinstance(node, RunnableBinding):
            options = {**options, **node.options}
        if isinstance(node, RunnableActor) and node.key not in self.pools:
            ray_options = {k: v for k, v in options.items() if k not in OUR_OPTIONS}
            self.pools[node.key] = ActorPool(node, ray_options)
        if isinstance(node, RunnableRateLimited) and node.key not in self._limiters:
            self._limiters[node.key] = create_limiter(node.key, node.pace)
        for _, child in node.children():
            self._start_services(child, options)

    def release(self, node: Node | None = None) -> None:
        """Kill the actor pools and limiter actors started for ``node``'s steps (all, without a node).
        They live until then, so a step's model stays loaded between calls."""
        keys = None if node is None else {
            getattr(n, "key", None) for n in walk(node) if isinstance(n, (RunnableActor, RunnableRateLimited))
        }
        for key in [k for k in self.pools if keys is None or k in keys]:
            self.pools.pop(key).close()
        for key in [k for k in self._limiters if keys is None or k in keys]:
            ray.kill(self._limiters.pop(key))
        if node is None:
            self._checked = weakref.WeakSet()
        else:
            self._checked.discard(node)  # used again, it gets fresh pools

    def replace_dead(self, actor_id: str) -> bool:
        """Replace the pool actor whose id is ``actor_id`` (hex), dead past its restarts: later calls get a
        new one. False when no pool holds it (any more)."""
        return any(pool.replace(actor_id) for pool in list(self.pools.values()))

    def pool_of(self, node: Node) -> ActorPool | None:
        """The pool serving ``node`` when it is a stateful step (possibly wrapped in options/rate limit)."""
        actor = actor_of(node)
        return None if actor is None else self.pools.get(actor.key)

    def state(self, ctx: RunContext) -> ContextState:
        return chunk_state(ctx)

    def root_context(self, config: dict[str, Any], node: Node | None = None) -> RunContext:
        if node is not None and waits_on_io(node):  # runs in driver threads: an in-process cap is enough
            return local_root_context(config)
        ctx = RunContext(config, services=WORKER_SERVICES)
        cap = config.get("max_concurrency")
        return ctx.with_limiter(ActorLimiter.create(cap)) if cap else ctx

    # ---- invoke ------------------------------------------------------------------------------------
    def invoke(self, node: Node, input: Any, config: dict[str, Any]) -> Any:
        self.prepare(node)
        run = Invocation(self, self.root_context(config))
        self.last_run = run.stats
        error: BaseException | None = None
        try:
            return run.materialize(run.submit(run.plan(node), Share(Const(input)), run.ctx.run_id))
        except BaseException as exc:
            error = exc
            raise
        finally:
            run.close()
            run.finish(error)

    async def ainvoke(self, node: Node, input: Any, config: dict[str, Any]) -> Any:
        self.prepare(node)
        run = Invocation(self, self.root_context(config))
        self.last_run = run.stats
        error: BaseException | None = None
        try:
            pending = await asyncio.to_thread(run.submit, run.plan(node), Share(Const(input)), run.ctx.run_id)
            return await run.amaterialize(pending)
        except BaseException as exc:
            error = exc
            if isinstance(exc, asyncio.CancelledError):  # left while submitting: a map in a driver thread stops
                run.cancel()
            raise
        finally:
            run.close()
            await asyncio.to_thread(run.finish, error)

    def stream(self, node: Node, input: Any, config: dict[str, Any]) -> Iterator[Any]:
        """The chain runs in one worker as a Ray generator task and its chunks come back as they are
        produced, at most ``STREAM_BUFFER`` ahead of the reader; closing the stream cancels the task. A
        chain holding waiting steps (``io_bound``, ``async``) streams from this process's threads."""
        self.prepare(node)
        if any(waits_on_io(step) for step in walk(node)):
            ctx = self.root_context(config, node)
            try:
                for chunk in node._stream(isolate(input), ctx):
                    yield writable(chunk)
            finally:
                self.end_run(ctx)
            return
        ctx = self.root_context(config)
        options = {k: v for k, v in planning.task_options(planning.plan(node)).items() if k not in OUR_OPTIONS}
        chunks: Any = stream_task.options(
            name=f"{node.label()} stream", _generator_backpressure_num_objects=STREAM_BUFFER, **options
        ).remote(node, self.state(ctx), input)
        self.last_run = RunStats(tasks=[f"{node.label()} stream"])
        try:
            for ref in chunks:
                try:
                    chunk = ray.get(ref)
                except Exception as err:
                    lost = ray_failure(err)
                    if lost is not None:  # its process died: ours, naming the streamed chain
                        raise translate(lost, node.label()) from lost
                    if isinstance(err, RayTaskError):
                        raise_converted(err)
                    raise
                if type(chunk) is RecordedEvents:
                    if ctx.events is not None:
                        ctx.events.replay(chunk)
                    continue
                yield writable(chunk)
        finally:
            stop_stream(chunks)
            self.end_run(ctx)

    # ---- batch / imap: a chunk runner for the shared scheduler ---------------------------------------
    def chunk_runner(self, node: Node, config: dict[str, Any]) -> ChunkRunner:
        self.prepare(node)
        if waits_on_io(node):  # waiting is cheap in driver threads (with an in-process cap)
            return ThreadChunkRunner(64, final=True)
        return RayChunkRunner(node, self.pool_of(node), self.parallelism(), replace=self.replace_dead)

    def end_run(self, ctx: RunContext) -> None:
        kill_limiters(ctx)

    def explain(self, node: Node) -> str:
        return planning.explain(node)


class MapSlots:
    """How many map tasks of this process run now, against a bound (the cluster's CPUs by default).

    Why: a map task holds no CPU (it only schedules chunk tasks, and holding one could starve them), so
    Ray's scheduler does not bound them: every concurrent one is a worker process of its own. One invoke
    has a map or two in flight; a server has one per request in flight (tens), and Ray starts (and
    later reaps) that many processes, whose start-up costs more than the maps' work. ``limit``: a
    number, or a function giving it (read when a slot is taken)."""

    def __init__(self, limit: int | Any) -> None:
        self.limit = limit
        self.taken = 0
        self.lock = threading.Lock()

    def take(self) -> bool:
        bound = self.limit() if callable(self.limit) else self.limit
        with self.lock:
            if self.taken >= bound:
                return False
            self.taken += 1
            return True

    def give_back(self) -> None:
        with self.lock:
            self.taken = max(0, self.taken - 1)


def _on_lasting_thread(start: Any) -> Any:
    """Run ``start`` (``ray.init``) on a thread that lives as long as this process.

    A local Ray's head processes are started with Linux's parent-death signal, which fires when the
    *thread* that started them ends: a first call made from ``asyncio.to_thread`` or an ``astream`` would
    otherwise take the whole local cluster down (SIGKILL) when that pool thread retires."""
    if threading.current_thread() is threading.main_thread():
        return start()
    return STATE.lasting.submit(start).result()


