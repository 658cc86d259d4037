"""The contract between the algebra, the engine and the backends: the one file a backend author reads.

It imports nothing from the package (only names for type checkers), so every other module can import
the contract from here and no import cycle can form through it.

- ``Node``: what the engine needs of a step (every ``Runnable`` is one): its meaning (``_invoke``,
  ``_invoke_batch``, ``_stream``, ``_transform``), its place in the tree (``children``, ``label``), and five
  hooks the engine reads, each with a default in ``rayrunnables.Runnable`` (``item_timeout``,
  ``speculation``, ``options``, ``waits``, ``describe``).
- ``Backend``: where a chain runs: five methods (``invoke``, ``stream``, ``chunk_runner``, ``root_context``,
  ``explain``) and two optional hooks (``end_run``, ``close``). The shared scheduler does
  ``batch``/``.map()``/``imap`` with the node's ``ChunkRunner``. A backend whose chain runs in this process
  (local, executor) takes four of the five from ``rayrunnables.backends.base.InProcessBackend``.
- ``ChunkRunner``: one method a backend must write (``submit`` a chunk, get a handle); ``wait``,
  ``result``, ``cancel``, ``abandon`` and ``runs_inline`` default to what ``concurrent.futures.Future``
  handles need, ``deadline_slack`` to ``DEADLINE_SLACK``; ``target_chunk_seconds`` and ``default_window``
  say how big and how many chunks.
- ``Services``, ``Limiter``, ``RateLimiter``: what a step reaches while it runs (its stateful instance,
  the concurrency cap, the rate limiter), in this process or across a cluster.
- ``ContextState``: a run context as plain, picklable data, to rebuild it in another process.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, wait
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from .context import RunContext
    from .engine.inprocess import ChunkResult

__all__ = [
    "Node", "Backend", "ChunkRunner", "Services", "Limiter", "RateLimiter", "ContextState", "DEADLINE_SLACK",
]

def deadline_slack(default: float) -> float:
    """``RAYRUNNABLES_DEADLINE_SLACK`` (seconds), else ``default``: how long after an item's deadline the
    scheduler's backstop acts. Read when a process imports this package (set it before Ray starts, so
    Ray's workers have it too)."""
    raw = os.environ.get("RAYRUNNABLES_DEADLINE_SLACK")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"RAYRUNNABLES_DEADLINE_SLACK={raw!r}: expected seconds, e.g. 10") from None
    if not value > 0:
        raise ValueError(f"RAYRUNNABLES_DEADLINE_SLACK={raw!r}: expected a positive number of seconds")
    return value


#: where a step's own timer enforces ``item_timeout`` (in-process, an executor's worker), the scheduler's
#: deadline is a backstop this much later: it catches a worker whose timer cannot run (a C call holding
#: the GIL). ``ChunkRunner.deadline_slack``'s default.
DEADLINE_SLACK = deadline_slack(5.0)


class Node(Protocol):
    """A step: frozen data with an in-process meaning (``_invoke``), the reference every backend reproduces."""

    @property
    def name(self) -> str | None: ...

    @property
    def learns(self) -> bool:
        """Whether it calls a user function itself (its execution class is learned from its calls)."""
        ...

    @property
    def vectorized(self) -> bool:
        """Whether ``_invoke_batch`` takes a whole chunk in one call."""
        ...

    def label(self) -> str: ...

    def get_name(self) -> str: ...

    def children(self) -> Sequence[tuple[str, Node]]: ...

    def _invoke(self, input: Any, ctx: RunContext) -> Any: ...

    def _invoke_batch(self, inputs: list[Any], ctx: RunContext) -> list[Any]: ...

    def _transform(self, chunks: Iterator[Any], ctx: RunContext) -> Iterator[Any]:
        """Input chunks in, output chunks out (LangChain's ``transform``)."""
        ...

    def _stream(self, input: Any, ctx: RunContext) -> Iterator[Any]: ...

    # ---- hooks the engine reads; ``rayrunnables.Runnable`` has the defaults ----------------------------
    @property
    def item_timeout(self) -> float | None:
        """Seconds each item of a batch of this step may take (``with_timeout``): the scheduler gives every
        item a chunk of its own and stops it at its deadline. Default None: no deadline."""
        ...

    @property
    def speculation(self) -> float | bool | None:
        """Straggler backups for a batch of this step (``with_options(speculative=...)``): seconds after
        which an item gets a twin, True for a threshold learned from the measured time per item. Default
        None: no backup."""
        ...

    @property
    def options(self) -> Mapping[str, Any]:
        """The options recorded on it (``with_options``: Ray's, and ours such as ``io_bound``). Default
        empty."""
        ...

    @property
    def waits(self) -> bool:
        """Whether it says it waits rather than computes (an async function, a call to a rate-limited
        provider): it overlaps in threads and holds no CPU. Default False: its class is learned from its
        calls, or declared with ``io_bound``."""
        ...

    def describe(self) -> str:
        """What ``explain()`` adds after its line in the step tree (a cache's store and key). Default ''."""
        ...


class Limiter(Protocol):
    """A cap on concurrently running calls (a semaphore, in this process or cluster-wide)."""

    def acquire(self) -> None: ...

    def release(self) -> None: ...


class RateLimiter(Protocol):
    """A run's pace for one key (``rayrunnables.pacing.Pacer``, or its proxy on Ray): ``reserve`` books a call
    of about ``estimate`` tokens and says how long to wait; ``claim`` confirms it after the wait; ``settle``
    hands back what it really cost; ``throttle`` reports a 429 (the pace learns and pauses)."""

    def reserve(self, estimate: int) -> Any: ...

    def claim(self, booking: Any, estimate: int) -> Any: ...

    def settle(self, estimate: int, booking: Any, used: int | None,
               limits: tuple[float | None, float | None] = (None, None)) -> None: ...

    def throttle(self, booking: Any, retry_after: float | None, limits: tuple[float | None, float | None],
                 kind: str | None) -> float: ...


class Services(Protocol):
    """What a step reaches while it runs, wherever it runs: in this process plain objects, on Ray actors
    shared by the whole cluster."""

    def instance(self, node: Any) -> Any:
        """The instance of a stateful step (built once per process, or an actor pool's proxy)."""
        ...

    def rate_limiter(self, key: str, pace: Any) -> RateLimiter:
        """The pacer of a rate-limit key (one for the whole run), made with ``pace`` when it is new."""
        ...


class ContextState(NamedTuple):
    """A run context as plain data: sent with a task, rebuilt where it runs."""

    config: dict[str, Any]
    path: tuple[str, ...]
    depth: int
    limiters: tuple[Any, ...]
    run_id: Any = None  # the caller's run: runs started there are its children
    recording: int = 0  # 0: nobody listens; 1: run events; 2: and every streamed chunk
    trace_id: int | None = None  # the caller's OpenTelemetry trace, when an OpenTelemetry consumer listens


class ChunkRunner(ABC):
    """How a backend runs chunks of items for the one scheduler (``rayrunnables.engine.scheduler``).

    A backend writes ``submit``; the rest has defaults for handles that are ``concurrent.futures.Future``s
    whose result is the chunk's ``ChunkResult`` (what ``Executor.submit`` returns), which a backend with
    other handles (Ray's ``ObjectRef``s) overrides. ``target_chunk_seconds``: how long a chunk should run
    to make the backend's hand-off cost small (the scheduler sizes chunks from the measured time per
    item); ``default_window``: how many chunks are in flight at once (about twice the workers).
    """

    target_chunk_seconds: float
    default_window: int
    #: how much later than a step's ``item_timeout`` the scheduler stops an item itself: the step's own
    #: timer reports it first, this catches a worker whose timer cannot run (Ray allows a longer slack)
    deadline_slack: float = DEADLINE_SLACK

    def runs_inline(self, node: Node) -> bool:
        """Whether ``submit`` runs ``node``'s chunks in the calling thread (then taken one at a time).
        Default False."""
        return False

    @abstractmethod
    def submit(self, node: Node, items: list[tuple[int, Any]], ctx: RunContext, return_exceptions: bool) -> Any:
        """Start a chunk (``rayrunnables.engine.inprocess.run_chunk`` of ``node`` on ``items`` is its meaning,
        wherever it runs); returns a handle. Item errors come back as values, never raised here."""

    def wait(self, handles: list[Any], timeout: float | None = None) -> list[Any]:
        """Block until at least one handle is done (or ``timeout`` seconds pass); return the done ones."""
        done, _ = wait(handles, timeout, return_when=FIRST_COMPLETED)
        return [h for h in handles if h in done]

    def result(self, handle: Any) -> ChunkResult:
        """The chunk's outcomes; raises when the chunk as a whole failed (``WorkerLost``: its process died,
        and the scheduler re-runs its items, split)."""
        result: ChunkResult = handle.result()
        return result

    def cancel(self, handles: list[Any]) -> None:
        """Drop chunks the scheduler no longer wants (the batch failed or was closed)."""
        for handle in handles:
            handle.cancel()

    def abandon(self, handles: list[Any]) -> None:
        """Stop attempts the scheduler no longer wants (past their deadline, or a twin won), as hard as
        the backend can: on Ray a cancel, then a forced one after a grace. By default ``cancel``: a chunk
        not started is dropped, a running one ends where it runs (its cancel token is set, so a step that
        checks ``rayrunnables.cancel_requested()`` can return)."""
        self.cancel(handles)


class Backend(ABC):
    """Where a chain runs. A backend is one module plus one ``register_backend`` call."""

    name: str = "?"

    @abstractmethod
    def invoke(self, node: Node, input: Any, config: dict[str, Any]) -> Any:
        """One invocation; raises the first failure in time, with the user's exception type."""

    @abstractmethod
    def stream(self, node: Node, input: Any, config: dict[str, Any]) -> Iterator[Any]:
        """The output in chunks."""

    @abstractmethod
    def chunk_runner(self, node: Node, config: dict[str, Any]) -> ChunkRunner:
        """How chunks of ``node``'s items run here; the shared scheduler does the rest."""

    @abstractmethod
    def root_context(self, config: dict[str, Any], node: Node | None = None) -> RunContext:
        """The context a run (of ``node``, when known) starts in: its concurrency cap, its services."""

    @abstractmethod
    def explain(self, node: Node) -> str:
        """Where every step of ``node`` runs here, before it runs."""

    def end_run(self, ctx: RunContext) -> None:  # noqa: B027 - optional hook
        """Release what ``root_context`` started for one run (a cluster-wide semaphore...)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the backend holds (actor pools, connections)."""

    async def ainvoke(self, node: Node, input: Any, config: dict[str, Any]) -> Any:
        import asyncio

        return await asyncio.to_thread(self.invoke, node, input, config)
