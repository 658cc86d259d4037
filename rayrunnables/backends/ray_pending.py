"""Values that may not exist yet: an ``ObjectRef``, a constant, or a pure function of other pendings.

The Ray backend threads these through a chain instead of waiting: ``pick``, ``assign``'s merge and the
dict a fan-out builds are applied where the value is consumed (inside the next task, or once at the
end in the driver), so no step forces the driver to fetch an intermediate result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Ref", "Const", "Apply", "Pending", "flatten", "rebuild"]


@dataclass(frozen=True)
class Ref:
    ref: Any  # ray.ObjectRef


@dataclass(frozen=True)
class Const:
    value: Any


@dataclass(frozen=True)
class Apply:
    fn: Callable[..., Any]
    args: tuple[Any, ...]  # Pending or plain values


Pending = Ref | Const | Apply


def flatten(pending: Pending, refs: list[Any] | None = None) -> tuple[Any, list[Any]]:
    """A picklable recipe with refs replaced by positions, and the refs (to pass as task arguments)."""
    refs = [] if refs is None else refs
    if isinstance(pending, Ref):
        refs.append(pending.ref)
        return ("ref", len(refs) - 1), refs
    if isinstance(pending, Const):
        return ("const", pending.value), refs
    args = [flatten(a, refs)[0] if isinstance(a, (Ref, Const, Apply)) else ("const", a) for a in pending.args]
    return ("apply", pending.fn, args), refs


def rebuild(recipe: Any, values: list[Any] | tuple[Any, ...]) -> Any:
    kind = recipe[0]
    if kind == "ref":
        return values[recipe[1]]
    if kind == "const":
        return recipe[1]
    return recipe[1](*(rebuild(r, values) for r in recipe[2]))
