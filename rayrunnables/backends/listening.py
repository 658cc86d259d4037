"""Listeners of a batched step, for backends whose workers are other processes.

``with_listeners`` callbacks belong to the caller's process (they append to the caller's lists, log,
trace). When a batch's items run elsewhere, this runner wraps the backend's own: ``on_start`` as a
chunk is sent, ``on_end``/``on_error`` as its outcomes come back, with the lifecycle ``RunnableBinding``
has in-process (``start_run``/``finish_run``).
"""

from __future__ import annotations

from typing import Any

from ..config import merge_configs
from ..context import RunContext
from ..engine.inprocess import ChunkResult, PerItem
from ..protocols import ChunkRunner, Node
from ..runnables.wrappers import Run, RunnableBinding, finish_run, start_run

__all__ = ["ListeningRunner", "listening"]


def listening(node: Node, config: dict[str, Any], runner_for: Any) -> ChunkRunner | None:
    """A ``ListeningRunner`` when ``node`` has listeners (``runner_for(bare)`` runs what they bind)."""
    if not (isinstance(node, RunnableBinding) and node.listeners is not None):
        return None
    bare = RunnableBinding(node.bound, node.config, node.options)
    return ListeningRunner(runner_for(bare), node, bare, config)


class ListeningRunner:
    """Listeners belong to the driver: a batch's items run on Ray, their ``on_start``, ``on_end`` and
    ``on_error`` here, around each chunk (the same lifecycle ``RunnableBinding`` has in-process)."""

    def __init__(self, inner: ChunkRunner, node: RunnableBinding[Any, Any], bare: RunnableBinding[Any, Any],
                 config: dict[str, Any]) -> None:
        self.inner, self.node, self.bare = inner, node, bare
        self.config = merge_configs(config, node.config)
        self.target_chunk_seconds, self.default_window = inner.target_chunk_seconds, inner.default_window
        self.runs: dict[int, tuple[Run, dict[str, Any]]] = {}

    def runs_inline(self, node: Node) -> bool:
        return False

    def submit(self, node: Node, items: list[tuple[int, Any]], ctx: RunContext,
               return_exceptions: bool) -> Any:
        for index, item in items:
            own = merge_configs(item.config, self.node.config) if type(item) is PerItem else self.config
            self.runs[index] = (start_run(self.node, item.value if type(item) is PerItem else item, own), own)
        return self.inner.submit(self.bare, items, ctx, True)  # every item's end reaches its listeners

    def wait(self, handles: list[Any], timeout: float | None = None) -> list[Any]:
        return self.inner.wait(handles, timeout)

    def result(self, handle: Any) -> ChunkResult:
        result = self.inner.result(handle)
        for index, ok, value, _ in result.outcomes:
            run, own = self.runs.pop(index)
            finish_run(self.node, run, own, value if ok else None, None if ok else value)
        return result

    def cancel(self, handles: list[Any]) -> None:
        self.inner.cancel(handles)

    def abandon(self, handles: list[Any]) -> None:
        self.inner.abandon(handles)
