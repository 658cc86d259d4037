"""Values that may not exist yet: an ``ObjectRef``, a constant, or a pure function of other pendings.

The Ray backend threads these through a chain instead of waiting: ``pick``, ``assign``'s merge and the
dict a fan-out builds are applied where the value is consumed (inside the next task, or once at the
end in the driver), so no step forces the driver to fetch an intermediate result.

Two marks say how a value reaches the step that consumes it, as ``rayrunnables.engine.sharing`` describes:
``Share`` (the chain's input, a fan-out's input: arrays read-only, nothing copied) and ``Own`` (what
the previous step of a sequence returned: the next step may write into it, as in-process, so an array
that arrived read-only from the object store is copied, once, there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...engine.sharing import freeze, isolate, writable

__all__ = ["Ref", "Const", "Apply", "Share", "Own", "Pending", "flatten", "rebuild", "shared", "owned", "unmarked"]


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


@dataclass(frozen=True)
class Share:
    inner: Any  # Pending


@dataclass(frozen=True)
class Own:
    inner: Any  # Pending


Pending = Ref | Const | Apply | Share | Own


_PENDING = (Ref, Const, Apply, Share, Own)


def unmarked(pending: Pending) -> Pending:
    return pending.inner if isinstance(pending, (Share, Own)) else pending


def shared(pending: Pending) -> Pending:
    """``pending`` as the input of fan-out branches (or of the chain)."""
    return pending if isinstance(pending, Share) else Share(unmarked(pending))


def owned(pending: Pending) -> Pending:
    """``pending`` as the next step of a sequence gets it: as it is in-process. A value shared with
    siblings stays shared, and a driver constant is unpickled as a private copy anyway."""
    return pending if isinstance(pending, (Share, Own, Const)) else Own(pending)


def flatten(pending: Pending, refs: list[Any] | None = None) -> tuple[Any, list[Any]]:
    """A picklable recipe with refs replaced by positions, and the refs (to pass as task arguments)."""
    refs = [] if refs is None else refs
    if isinstance(pending, Ref):
        refs.append(pending.ref)
        return ("ref", len(refs) - 1), refs
    if isinstance(pending, Const):
        return ("const", pending.value), refs
    if isinstance(pending, (Share, Own)):
        return ("share" if isinstance(pending, Share) else "own", flatten(pending.inner, refs)[0]), refs
    args = [flatten(a, refs)[0] if isinstance(a, _PENDING) else ("const", a) for a in pending.args]
    return ("apply", pending.fn, args), refs


def rebuild(recipe: Any, values: list[Any] | tuple[Any, ...], driver: bool = False) -> Any:
    """The value a recipe describes. In a worker every value is a private copy (unpickled, or read-only
    from the object store), so sharing only marks its arrays read-only; in the ``driver`` a constant is
    the caller's own object, so sharing there rebuilds it as ``isolate`` does."""
    kind = recipe[0]
    if kind == "ref":
        return values[recipe[1]]
    if kind == "const":
        return recipe[1]
    if kind == "share":
        value = rebuild(recipe[1], values, driver)
        return isolate(value) if driver else freeze(value)
    if kind == "own":
        return writable(rebuild(recipe[1], values, driver))
    return recipe[1](*(rebuild(r, values, driver) for r in recipe[2]))
