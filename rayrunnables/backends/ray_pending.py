"""Values that may not exist yet: an ``ObjectRef``, a constant, or a pure function of other pendings.

The Ray backend threads these through a chain instead of waiting: ``pick``, ``assign``'s merge and the
dict a fan-out builds are applied where the value is consumed (inside the next task, or once at the
end in the driver), so no step forces the driver to fetch an intermediate result.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Ref", "Const", "Apply", "Pending", "flatten", "rebuild", "writable", "writable_outcomes"]


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
        return writable(values[recipe[1]])
    if kind == "const":
        return recipe[1]
    return recipe[1](*(rebuild(r, values) for r in recipe[2]))


_SCALARS = frozenset({int, float, str, bytes, bool, type(None)})


def writable(value: Any) -> Any:
    """``value`` (just fetched from Ray) with every numpy array in it writable, as it is in-process.

    Ray hands out arrays as read-only views of its object store, so ``vector /= norm`` would fail on Ray
    and work on the local backend. Like Ray Data's default (``zero_copy_batch=False``), a read-only array
    is copied. Only lists, tuples and dicts are searched; lists and dicts are fixed in place (Ray has
    just built them for us), a tuple is rebuilt only if it held such an array.
    """
    np = sys.modules.get("numpy")
    if np is None:  # nothing can have produced an array
        return value
    return _own(value, np.ndarray)


def _own(value: Any, ndarray: type) -> Any:
    kind = type(value)
    if kind in _SCALARS:
        return value
    if isinstance(value, ndarray):
        return value if value.flags.writeable else value.copy()  # type: ignore[attr-defined]
    if kind is list or kind is dict:
        for key, item in enumerate(value) if kind is list else value.items():
            if type(item) not in _SCALARS:
                owned = _own(item, ndarray)
                if owned is not item:
                    value[key] = owned  # an existing key or index: safe while iterating
        return value
    if kind is tuple:
        for item in value:
            if type(item) not in _SCALARS:
                break
        else:  # the common case, e.g. a batch outcome ``(index, ok, 42, None)``: nothing to look into
            return value
        owned_items = [_own(item, ndarray) for item in value]
        if any(o is not i for o, i in zip(owned_items, value, strict=True)):
            return tuple(owned_items)
    return value


def writable_outcomes(outcomes: list[tuple[int, bool, Any, Any]]) -> None:
    """``writable`` for a chunk's ``(index, ok, value, traceback)`` outcomes, in place: only values are
    looked at (this runs once per item of every batch, so plain values cost one set lookup)."""
    np = sys.modules.get("numpy")
    if np is None:
        return
    for n, (index, ok, value, tb) in enumerate(outcomes):
        if ok and type(value) not in _SCALARS:
            owned = _own(value, np.ndarray)
            if owned is not value:
                outcomes[n] = (index, ok, owned, tb)
