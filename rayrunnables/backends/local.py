"""The in-process backend: the reference implementation and the debugger. Threads, no Ray."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..context import isolate
from ..fanout import ThreadChunkRunner
from .base import Backend

if TYPE_CHECKING:
    from ..batching import ChunkRunner
    from ..runnables.base import Runnable

__all__ = ["LocalBackend"]


class LocalBackend(Backend):
    """Runs the chain in this process; concurrent branches and items use threads.

    The caller's input is copied on entry when mutable, so a step mutating its input behaves as on
    Ray (where every task receives its own copy).
    """

    name = "local"

    def __init__(self, max_workers: int = 32) -> None:
        self._runner = ThreadChunkRunner(window=max_workers)

    def invoke(self, node: Runnable[Any, Any], input: Any, config: dict[str, Any]) -> Any:
        return node._invoke(isolate(input), self.root_context(config))

    def stream(self, node: Runnable[Any, Any], input: Any, config: dict[str, Any]) -> Iterator[Any]:
        yield from node._stream(isolate(input), self.root_context(config))

    def chunk_runner(self, config: dict[str, Any]) -> ChunkRunner:
        return self._runner
