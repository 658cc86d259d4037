"""The step tree ``explain()`` prints for every backend: each step's path, type, options and execution class."""

from __future__ import annotations

from collections.abc import Iterator

from ..protocols import Node
from .execution import describe_class

__all__ = ["step_tree", "walk"]


def step_tree(node: Node, segment: str = "", depth: int = 1) -> list[str]:
    options = dict(node.options)
    head = f"{segment}: " if segment else ""
    kind = describe_class(node)
    line = f"{'  ' * depth}{head}{node.label()} [{type(node).__name__}]"
    line += f"  options={options}" if options else ""
    line += f"  ({kind})" if kind else ""
    described = node.describe()
    line += f"  {described}" if described else ""
    lines = [line]
    for seg, child in node.children():
        lines.extend(step_tree(child, seg, depth + 1))
    return lines


def walk(node: Node) -> Iterator[Node]:
    """``node`` and every step inside it, depth first."""
    yield node
    for _, child in node.children():
        yield from walk(child)
