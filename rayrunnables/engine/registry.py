"""Backends by name, and which one a call runs on.

A new backend is one module plus one ``register_backend`` call; the algebra is untouched. A
``concurrent.futures.Executor`` given as ``config["backend"]`` is a backend too (``executor``).
Backends are imported by ``"module:attr"`` on first use, so this registry imports none of them, and
``import rayrunnables`` never imports Ray.

The registry lives in the engine layer, below the algebra, so a node's ``invoke`` finds its backend
here without importing the backends layer (which sits above the algebra); ``rayrunnables.backends``
re-exports it.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor
from typing import Any

from ..errors import ConfigError
from ..protocols import Backend
from .process_state import STATE

__all__ = ["Backend", "register_backend", "get_backend", "available_backends", "use", "resolve_backend"]

_FACTORIES: dict[str, str | Callable[..., Backend]] = {
    "local": "rayrunnables.backends.local:LocalBackend",
    "ray": "rayrunnables.backends.ray:RayBackend",
    "executor": "rayrunnables.backends.executor:ExecutorBackend",
}
# the shared instance of each name lives in ``STATE.backends``: a forked child makes its own (a backend's
# process pool or Ray connection is its parent's)


def register_backend(name: str, factory: str | Callable[..., Backend]) -> None:
    """Register ``factory`` (a callable or a ``"module:attr"`` string imported on first use) under ``name``."""
    _FACTORIES[name] = factory
    STATE.backends.pop(name, None)


def available_backends() -> list[str]:
    return sorted(_FACTORIES)


def _factory(name: str) -> Callable[..., Backend]:
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ConfigError(f"unknown backend {name!r}; available: {available_backends()}") from None
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        loaded: Callable[..., Backend] = getattr(importlib.import_module(module), attr)
        return loaded
    return factory


def get_backend(choice: Any, **kwargs: Any) -> Backend:
    """A backend object as it is; an ``Executor`` wrapped in the executor backend; a name gives that backend
    (one shared instance when no kwargs)."""
    if isinstance(choice, Backend):
        if kwargs:
            raise ConfigError("keyword arguments only apply when a backend is named, not given as an object")
        return choice
    if isinstance(choice, Executor):
        return _factory("executor")(choice, **kwargs)
    if not isinstance(choice, str):
        raise ConfigError(
            f"config['backend'] must be a backend name, a backend or a concurrent.futures.Executor, "
            f"got {type(choice).__name__}"
        )
    if kwargs:
        return _factory(choice)(**kwargs)
    shared: dict[str, Backend] = STATE.backends
    if choice not in shared:
        shared[choice] = _factory(choice)()
    return shared[choice]


_current_backend: contextvars.ContextVar[Any] = contextvars.ContextVar("rayrunnables_backend", default=None)


@contextlib.contextmanager
def use(backend: Any = "local", **kwargs: Any) -> Iterator[Backend]:
    """Run every chain invoked inside the block on ``backend`` (a name, a backend or an executor).

    ``with rayrunnables.use("ray", address="auto"): chain.invoke(x)``
    """
    resolved = get_backend(backend, **kwargs)
    token = _current_backend.set(resolved)
    try:
        yield resolved
    finally:
        _current_backend.reset(token)


def resolve_backend(config: Mapping[str, Any] | None) -> Backend:
    """config['backend'] beats ``use(...)``, which beats ``RAYRUNNABLES_BACKEND``; the default is local."""
    choice = config.get("backend") if config else None
    if choice is None:
        choice = _current_backend.get()
    if choice is None:
        choice = os.environ.get("RAYRUNNABLES_BACKEND") or "local"
    return get_backend(choice)
