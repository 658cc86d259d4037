"""The in-process backend: the reference implementation and the debugger. No other process, no Ray."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..engine.inprocess import ThreadChunkRunner, local_root_context
from ..engine.sharing import isolate, writable
from ..engine.steps import step_tree
from ..protocols import Backend, ChunkRunner, Node

if TYPE_CHECKING:
    from ..context import RunContext

__all__ = ["LocalBackend"]


class LocalBackend(Backend):
    """Runs the chain in this process: computing steps inline, waiting steps overlapping in threads.

    The caller's input is shared on entry as Ray shares it (containers rebuilt, arrays as read-only
    views: ``rayrunnables.engine.sharing``), so a step mutating its input behaves as on Ray; what the
    caller gets back is writable. ``window``: how many chunks of a batch of waiting steps overlap.
    """

    name = "local"

    def __init__(self, window: int = 32) -> None:
        self._runner = ThreadChunkRunner(window=window, final=True)

    def invoke(self, node: Node, input: Any, config: dict[str, Any]) -> Any:
        return writable(node._invoke(isolate(input), self.root_context(config)))

    def stream(self, node: Node, input: Any, config: dict[str, Any]) -> Iterator[Any]:
        for chunk in node._stream(isolate(input), self.root_context(config)):
            yield writable(chunk)

    def chunk_runner(self, node: Node, config: dict[str, Any]) -> ChunkRunner:
        return self._runner

    def root_context(self, config: dict[str, Any], node: Node | None = None) -> RunContext:
        return local_root_context(config)

    def explain(self, node: Node) -> str:
        return "\n".join([
            "steps:", *step_tree(node),
            "on local: runs in this process; computing branches and mapped items run inline in the calling "
            "thread, waiting (or not yet learned) ones overlap in threads",
        ])
