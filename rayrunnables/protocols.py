"""The contract between the algebra, the engine and the backends: the one file a backend author reads.

It imports nothing from the package (only names for type checkers), so every other module can import
the contract from here and no import cycle can form through it.

- ``Node``: what the engine needs of a step (every ``Runnable`` is one).
- ``Backend``: where a chain runs, as small as ``concurrent.futures.Executor`` allows: ``invoke``,
  ``stream``, a ``ChunkRunner`` for a node (the shared scheduler does ``batch``/``.map()``/``imap`` with it),
  ``explain`` and ``close``.
- ``ChunkRunner``: four primitives (``submit``, ``wait``, ``result``, ``cancel``) the scheduler drives.
- ``Services``, ``Limiter``, ``RateLimiter``: what a step reaches while it runs (its stateful instance,
  the concurrency cap, the rate limiter), in this process or across a cluster.
- ``ContextState``: a run context as plain, picklable data, to rebuild it in another process.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from .context import RunContext
    from .engine.inprocess import ChunkResult

__all__ = ["Node", "Backend", "ChunkRunner", "Services", "Limiter", "RateLimiter", "ContextState"]


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


class ChunkRunner(Protocol):
    """How a backend runs chunks of items for the one scheduler (``rayrunnables.engine.scheduler``)."""

    target_chunk_seconds: float
    default_window: int

    def runs_inline(self, node: Node) -> bool:
        """Whether ``submit`` runs ``node``'s chunks in the calling thread (then taken one at a time)."""
        ...

    def submit(self, node: Node, items: list[tuple[int, Any]], ctx: RunContext, return_exceptions: bool) -> Any:
        """Start a chunk; returns a handle. Item errors come back as values, never raised here."""
        ...

    def wait(self, handles: list[Any], timeout: float | None = None) -> list[Any]:
        """Block until at least one handle is done (or ``timeout`` seconds pass); return the done ones."""
        ...

    def result(self, handle: Any) -> ChunkResult: ...

    def cancel(self, handles: list[Any]) -> None: ...

    def abandon(self, handles: list[Any]) -> None:
        """Stop attempts the scheduler no longer wants (past their deadline, or a twin won), as hard as
        the backend can: on Ray a cancel, then a forced one after a grace; in threads nothing can."""
        ...


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
