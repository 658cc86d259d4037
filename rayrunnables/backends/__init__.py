"""Backends by name. A new backend is one module plus one ``register_backend`` call; the algebra is untouched."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from .base import Backend

__all__ = ["Backend", "register_backend", "get_backend", "available_backends"]

_FACTORIES: dict[str, str | Callable[..., Backend]] = {
    "local": "rayrunnables.backends.local:LocalBackend",
    "ray": "rayrunnables.backends.ray:RayBackend",
}
_DEFAULTS: dict[str, Backend] = {}


def register_backend(name: str, factory: str | Callable[..., Backend]) -> None:
    """Register ``factory`` (a callable or a ``"module:attr"`` string imported on first use) under ``name``."""
    _FACTORIES[name] = factory
    _DEFAULTS.pop(name, None)


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
    """A backend object as it is; a name gives that backend (one shared instance when no kwargs)."""
    if isinstance(choice, Backend):
        if kwargs:
            raise ConfigError("keyword arguments only apply when a backend is named, not given as an object")
        return choice
    if not isinstance(choice, str):
        raise ConfigError(f"config['backend'] must be a backend name or object, got {type(choice).__name__}")
    if kwargs:
        return _factory(choice)(**kwargs)
    if choice not in _DEFAULTS:
        _DEFAULTS[choice] = _factory(choice)()
    return _DEFAULTS[choice]
