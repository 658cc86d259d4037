"""The backend protocol: run one invocation, and supply chunk primitives to the shared scheduler."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..batching import ChunkRunner, iter_batch
from ..context import RunContext, ThreadLimiter

if TYPE_CHECKING:
    from ..runnables.base import Runnable

__all__ = ["Backend"]


class Backend(ABC):
    """Where a chain runs. Subclasses implement ``invoke`` and ``chunk_runner``; the rest is shared."""

    name: str = "?"

    @abstractmethod
    def invoke(self, node: Runnable[Any, Any], input: Any, config: dict[str, Any]) -> Any:
        """Run one invocation of ``node`` and return its output (raising the first failure in time)."""

    @abstractmethod
    def chunk_runner(self, config: dict[str, Any]) -> ChunkRunner:
        """The primitives ``batching.iter_batch`` uses to run chunks of items."""

    def root_context(self, config: dict[str, Any]) -> RunContext:
        ctx = RunContext(config=config)
        cap = config.get("max_concurrency")
        return ctx.with_limiter(ThreadLimiter(cap)) if cap else ctx

    async def ainvoke(self, node: Runnable[Any, Any], input: Any, config: dict[str, Any]) -> Any:
        return await asyncio.to_thread(self.invoke, node, input, config)

    def stream(self, node: Runnable[Any, Any], input: Any, config: dict[str, Any]) -> Iterator[Any]:
        yield self.invoke(node, input, config)

    def iter_batch(
        self,
        node: Runnable[Any, Any],
        inputs: Iterable[Any],
        config: dict[str, Any],
        *,
        return_exceptions: bool,
        ordered: bool,
        chunk_size: int | None = None,
        max_in_flight: int | None = None,
    ) -> Iterator[tuple[int, Any]]:
        yield from iter_batch(
            self.chunk_runner(config),
            node,
            inputs,
            self.root_context(config),
            return_exceptions=return_exceptions,
            ordered=ordered,
            chunk_size=chunk_size,
            max_in_flight=max_in_flight,
        )

    def describe(self) -> str:
        return self.name
