"""How one input reaches many branches and items without copying big values.

The contract: a branch or item never sees a sibling's mutation, on every backend. Deep-copying the
input gives that, but costs a copy of every array and string list per branch (160 MB per branch for
a big embedding matrix). Instead, the way Ray's object store hands values out:

- containers (``list``, ``dict``, ``tuple``, ``set`` and their subclasses) are rebuilt, so appending
  to or assigning into one branch's list or dict is private to that branch;
- immutable leaves (``str``, ``int``, ``bytes``...) are shared: nobody can change them;
- numpy arrays are shared as read-only views: a step that writes into one gets ``ReadOnlyInputError``
  (a ``ValueError``) naming the step and saying to copy first, on the local backend and on Ray alike
  (Ray's object store hands arrays out read-only anyway);
- any other object is deep-copied, as before (its author may mutate it in place).

What the caller finally receives is made writable again (``writable``): a view of the caller's own
array gets its flag back, an array from Ray's object store is copied once, at the end, never per hop.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

from ..errors import ReadOnlyInputError, attach_step

__all__ = [
    "isolate", "freeze", "writable", "writable_outcomes", "is_readonly_write", "readonly_input_error", "tag_failure",
    "ATOMIC_TYPES",
]

ATOMIC_TYPES = (str, int, float, bool, bytes, type(None), complex, frozenset, range)
_ATOMIC = frozenset(ATOMIC_TYPES)


def _numpy() -> Any:
    return sys.modules.get("numpy")  # nothing can hold an array unless numpy was imported


def isolate(value: Any) -> Any:
    """A value the receiver may mutate freely without a sibling seeing it: containers rebuilt, arrays
    shared read-only, immutable leaves shared, other objects deep-copied."""
    kind = type(value)
    if kind in _ATOMIC:
        return value
    try:
        return _share(value, kind, _numpy())
    except RecursionError:  # a self-referencing structure: deepcopy keeps its cycles
        return _deepcopy(value)


def _share(value: Any, kind: type, np: Any) -> Any:
    if kind is list:
        return [v if type(v) in _ATOMIC else _share(v, type(v), np) for v in value]
    if kind is dict:
        return {k: v if type(v) in _ATOMIC else _share(v, type(v), np) for k, v in value.items()}
    if kind is tuple:
        items = [v if type(v) in _ATOMIC else _share(v, type(v), np) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else tuple(items)
    if kind in _ATOMIC:
        return value
    if np is not None and isinstance(value, np.ndarray):
        if value.dtype.hasobject:  # its elements are Python objects a step could mutate
            return _deepcopy(value)
        view = value.view()  # a view even of a read-only array: ``writable`` may flip views, never yours
        view.flags.writeable = False
        return view
    if np is not None and isinstance(value, np.generic):
        return value
    if isinstance(value, (set, frozenset)):
        return kind(value) if kind is set else value  # elements are hashable, so immutable in practice
    if isinstance(value, (dict, list)):  # subclasses (defaultdict, LangChain's AddableDict): same type, own items
        new = copy.copy(value)
        for key, item in (value.items() if isinstance(value, dict) else enumerate(value)):
            new[key] = isolate(item)
        return new
    return _deepcopy(value)


def _deepcopy(value: Any) -> Any:
    try:
        return copy.deepcopy(value)
    except Exception:  # objects that refuse to be copied (locks, clients) are shared, as LangChain does
        return value


def freeze(value: Any) -> Any:
    """Mark the arrays in a value this process owns alone (just unpickled) read-only, in place: a Ray
    worker's inputs then behave as the local backend's shared views do. Returns ``value``."""
    np = _numpy()
    if np is not None and type(value) not in _ATOMIC:
        _freeze(value, np.ndarray)
    return value


def _freeze(value: Any, ndarray: Any) -> None:
    kind = type(value)
    if kind in _ATOMIC:
        return
    if isinstance(value, ndarray):
        if value.flags.writeable and not value.dtype.hasobject:
            value.flags.writeable = False
    elif kind is list or kind is tuple:
        for item in value:
            _freeze(item, ndarray)
    elif kind is dict:
        for item in value.values():
            _freeze(item, ndarray)


def writable(value: Any) -> Any:
    """``value`` with every numpy array in it writable, for the caller who receives it at the end.

    A read-only view of a writable array gets its flag back (no copy); an array whose memory cannot be
    written (Ray's object store) is copied, as Ray Data does by default (``zero_copy_batch=False``).
    Lists and dicts are fixed in place, a tuple is rebuilt only when it held such an array.
    """
    np = _numpy()
    if np is None:
        return value
    return _own(value, np.ndarray)


def _own(value: Any, ndarray: Any) -> Any:
    kind = type(value)
    if kind in _ATOMIC:
        return value
    if isinstance(value, ndarray):
        if value.flags.writeable:
            return value
        if value.base is None:  # a read-only array of the caller's own: never flipped
            return value.copy()
        try:
            value.flags.writeable = True
            return value
        except ValueError:  # memory it does not own writably: Ray's object store, a read-only buffer
            return value.copy()
    if kind is list or kind is dict:
        for key, item in enumerate(value) if kind is list else value.items():
            if type(item) not in _ATOMIC:
                owned = _own(item, ndarray)
                if owned is not item:
                    value[key] = owned  # an existing key or index: safe while iterating
        return value
    if kind is tuple:
        for item in value:
            if type(item) not in _ATOMIC:
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
    np = _numpy()
    if np is None:
        return
    for n, (index, ok, value, tb) in enumerate(outcomes):
        if ok and type(value) not in _ATOMIC:
            owned = _own(value, np.ndarray)
            if owned is not value:
                outcomes[n] = (index, ok, owned, tb)


def is_readonly_write(exc: BaseException) -> bool:
    """Whether ``exc`` is numpy refusing a write into a read-only array."""
    return type(exc) is ValueError and "read-only" in str(exc) and _numpy() is not None


def readonly_input_error(exc: BaseException, path: str) -> ReadOnlyInputError:
    """The error for a step that wrote into an array it received, naming the step and the fix."""
    error = ReadOnlyInputError(
        f"{path}: wrote into a numpy array it received as input ({exc}). Inputs are shared with the other "
        "branches and items as read-only views, not copied: copy first (`x = x.copy()`), or return a new array"
    )
    attach_step(error, path)
    return error


def tag_failure(exc: Exception, path: str) -> None:
    """For a step's ``except`` block: a write into a shared array is raised here as ``ReadOnlyInputError``
    (from the original); any other error gets its step path and the caller re-raises it (``raise``)."""
    if is_readonly_write(exc):
        raise readonly_input_error(exc, path) from exc
    attach_step(exc, path)
