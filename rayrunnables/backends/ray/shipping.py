"""Getting the user's code to the workers, and refusing, by name, a step that cannot travel.

Functions from ``__main__`` travel by value anyway (cloudpickle); a module the user wrote (not installed
in site-packages) is registered to travel by value too, so workers that cannot import it still run it.
"""

from __future__ import annotations

import functools
import os
import sys
import sysconfig
from typing import TYPE_CHECKING, Any

import ray.cloudpickle as ray_pickle

from ...engine.steps import walk
from ...errors import UnpicklableStepError
from ...protocols import Node

if TYPE_CHECKING:
    pass

__all__ = ["ship_user_modules", "find_unpicklable", "check_sendable", "walk"]

_INSTALLED = tuple(
    os.path.realpath(p) for p in {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
)


def ship_user_modules(node: Node) -> None:
    """Pickle the user's own modules by value, so workers that cannot import them still run their steps."""
    for leaf in walk(node):
        for obj in _callables(leaf):
            for mod_name in {getattr(obj, "__module__", None), getattr(type(obj), "__module__", None)}:
                module = sys.modules.get(mod_name or "")
                if module is not None and _is_users(module):
                    ray_pickle.register_pickle_by_value(module)


def check_sendable(node: Node) -> None:
    """Ship the user's modules, then refuse, naming the step, a chain that cannot be sent to workers."""
    ship_user_modules(node)
    try:
        ray_pickle.dumps(node)
    except Exception:
        path, culprit, error = find_unpicklable(node, ())
        raise UnpicklableStepError(
            f"step {' > '.join(path) or culprit.label()!s} ({culprit.label()}) cannot be sent to Ray workers: "
            f"{type(error).__name__}: {error}. Objects holding locks, sockets or clients must be created "
            "inside the step (e.g. a function that builds the client on first call), not captured from the driver."
        ) from error


def _is_users(module: Any) -> bool:
    name = module.__name__
    path = getattr(module, "__file__", None)
    if name == "__main__" or not path or name.split(".")[0] in ("rayrunnables", "ray"):
        return False
    real = os.path.realpath(path)
    return not any(real.startswith(root) for root in _INSTALLED) and "site-packages" not in real


def _callables(node: Any) -> list[Any]:
    found = []
    for attr in ("func", "afunc", "cls"):
        value = getattr(node, attr, None)
        while callable(value):  # see through decorators, wrappers and partials to the user's own function
            found.append(value)
            inner = getattr(value, "__wrapped__", None)
            value = value.func if inner is None and isinstance(value, functools.partial) else inner
    return found


def find_unpicklable(
    node: Node, path: tuple[str, ...]
) -> tuple[tuple[str, ...], Node, BaseException]:
    for segment, child in node.children():
        try:
            ray_pickle.dumps(child)
        except Exception:
            return find_unpicklable(child, (*path, segment) if segment else path)
    try:
        ray_pickle.dumps(node)
    except Exception as error:
        return (*path, node.label()), node, error
    raise AssertionError("unreachable: the node pickled after all")
