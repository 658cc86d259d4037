"""The base of a backend whose chain runs in this process, its chunks wherever its ``ChunkRunner`` sends them.

``invoke`` and ``stream`` run the step's in-process meaning here (the caller's input shared as Ray shares
it, what the caller gets back writable), ``root_context`` is this process's (``max_concurrency`` as a
semaphore), and ``explain`` prints the step tree and ``placement``. A subclass says where chunks go
(``chunk_runner``) and, in words, where steps run (``placement``): ``local`` and ``executor`` are this,
plus what differs.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..engine.inprocess import local_root_context
from ..engine.sharing import isolate, writable
from ..engine.steps import step_tree
from ..protocols import Backend, Node

if TYPE_CHECKING:
    from ..context import RunContext

__all__ = ["InProcessBackend"]


class InProcessBackend(Backend):
    """A backend that runs the chain in this process and only its chunks of items elsewhere (or not)."""

    def invoke(self, node: Node, input: Any, config: dict[str, Any]) -> Any:
        return writable(node._invoke(isolate(input), self.root_context(config, node)))

    def stream(self, node: Node, input: Any, config: dict[str, Any]) -> Iterator[Any]:
        for chunk in node._stream(isolate(input), self.root_context(config, node)):
            yield writable(chunk)

    def root_context(self, config: dict[str, Any], node: Node | None = None) -> RunContext:
        """This process's context; a ``.map()`` inside the chain runs in this process's threads."""
        return local_root_context(config)

    @abstractmethod
    def placement(self) -> str:
        """Where the steps run, in words: ``explain()``'s last line, after ``on ``."""

    def explain(self, node: Node) -> str:
        return "\n".join(["steps:", *step_tree(node), f"on {self.placement()}"])
