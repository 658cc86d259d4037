"""The in-process backend: the reference implementation and the debugger. No other process, no Ray."""

from __future__ import annotations

from typing import Any

from ..engine.inprocess import ThreadChunkRunner
from ..protocols import ChunkRunner, Node
from .base import InProcessBackend

__all__ = ["LocalBackend"]


class LocalBackend(InProcessBackend):
    """Runs the chain in this process: computing steps inline, waiting steps overlapping in threads.

    The caller's input is shared on entry as Ray shares it (containers rebuilt, arrays as read-only
    views: ``rayrunnables.engine.sharing``), so a step mutating its input behaves as on Ray; what the
    caller gets back is writable. ``window``: how many chunks of a batch of waiting steps overlap.
    """

    name = "local"

    def __init__(self, window: int = 32) -> None:
        self._runner = ThreadChunkRunner(window=window, final=True)

    def chunk_runner(self, node: Node, config: dict[str, Any]) -> ChunkRunner:
        return self._runner

    def placement(self) -> str:
        return (
            "local: runs in this process; computing branches and mapped items run inline in the calling "
            "thread, waiting (or not yet learned) ones overlap in threads"
        )
