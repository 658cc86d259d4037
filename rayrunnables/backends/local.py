"""The in-process backend: the reference implementation and the debugger. Threads, no Ray."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..fanout import ThreadChunkRunner
from ..sharing import isolate, writable
from .base import Backend

if TYPE_CHECKING:
    from ..batching import ChunkRunner
    from ..runnables.base import Runnable

__all__ = ["LocalBackend"]


class LocalBackend(Backend):
    """Runs the chain in this process: computing steps inline, waiting steps overlapping in threads.

    The caller's input is shared on entry as Ray shares it (containers rebuilt, arrays as read-only
    views: ``rayrunnables.sharing``), so a step mutating its input behaves as on Ray; what the caller
    gets back is writable.
    """

    name = "local"

    def __init__(self, max_workers: int = 32) -> None:
        self._runner = ThreadChunkRunner(window=max_workers)

    def invoke(self, node: Runnable[Any, Any], input: Any, config: dict[str, Any]) -> Any:
        return writable(node._invoke(isolate(input), self.root_context(config)))

    def stream(self, node: Runnable[Any, Any], input: Any, config: dict[str, Any]) -> Iterator[Any]:
        for chunk in node._stream(isolate(input), self.root_context(config)):
            yield writable(chunk)

    def iter_batch(self, node: Runnable[Any, Any], inputs: Iterable[Any], config: dict[str, Any],
                   **kwargs: Any) -> Iterator[tuple[int, Any]]:
        pairs = super().iter_batch(node, inputs, config, **kwargs)
        try:
            for index, value in pairs:
                yield index, writable(value)
        finally:
            close = getattr(pairs, "close", None)
            if close is not None:  # closing this closes the scheduler at once (cancelling its work in flight)
                close()

    def chunk_runner(self, config: dict[str, Any]) -> ChunkRunner:
        return self._runner
