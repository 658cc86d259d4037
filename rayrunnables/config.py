"""Config dicts (LangChain's ``RunnableConfig`` keys plus ``backend``) and how a backend is chosen.

A config is a plain dict so that LangChain users can pass the one they already have. We check its
keys at the call, so a typo (``max_concurency``) fails loudly instead of being ignored.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypedDict

from .errors import ConfigError

if TYPE_CHECKING:
    from .backends.base import Backend

__all__ = ["RunnableConfig", "CONFIG_KEYS", "validate_config", "merge_configs", "use", "resolve_backend"]


class RunnableConfig(TypedDict, total=False):
    """The keys a config may hold; every one is optional."""

    tags: list[str]
    metadata: dict[str, Any]
    run_name: str
    max_concurrency: int | None
    configurable: dict[str, Any]
    recursion_limit: int
    run_id: Any
    callbacks: Any
    backend: Any


CONFIG_KEYS = frozenset(RunnableConfig.__annotations__)
DEFAULT_RECURSION_LIMIT = 25

_KEY_TYPES: dict[str, tuple[type, ...]] = {
    "tags": (list, tuple),
    "metadata": (dict,),
    "run_name": (str,),
    "configurable": (dict,),
    "recursion_limit": (int,),
}


def validate_config(config: Mapping[str, Any] | None, where: str = "config") -> dict[str, Any]:
    """Return a shallow copy of ``config`` after checking its keys and the types of its values."""
    if not config:
        if config is None or isinstance(config, Mapping):
            return {}
    if not isinstance(config, Mapping):
        raise ConfigError(f"{where}: config must be a dict, got {type(config).__name__}")
    unknown = set(config) - CONFIG_KEYS
    if unknown:
        raise ConfigError(
            f"{where}: unknown config key(s) {sorted(unknown)}; allowed keys are {sorted(CONFIG_KEYS)}"
        )
    for key, types in _KEY_TYPES.items():
        if key in config and not isinstance(config[key], types):
            raise ConfigError(
                f"{where}: config[{key!r}] must be {' or '.join(t.__name__ for t in types)}, "
                f"got {type(config[key]).__name__}"
            )
    mc = config.get("max_concurrency")
    if mc is not None and (not isinstance(mc, int) or isinstance(mc, bool) or mc < 1):
        raise ConfigError(f"{where}: config['max_concurrency'] must be a positive int or None, got {mc!r}")
    rl = config.get("recursion_limit")
    if rl is not None and rl < 1:
        raise ConfigError(f"{where}: config['recursion_limit'] must be >= 1, got {rl!r}")
    return dict(config)


def merge_configs(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """LangChain's merge rule: tags are unioned, metadata and configurable are merged, others replace."""
    merged = dict(base)
    for key, value in override.items():
        if key == "tags":
            merged[key] = list(dict.fromkeys([*merged.get("tags", []), *value]))
        elif key in ("metadata", "configurable"):
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
    return merged


_current_backend: contextvars.ContextVar[Any] = contextvars.ContextVar("rayrunnables_backend", default=None)


@contextlib.contextmanager
def use(backend: Any = "local", **kwargs: Any) -> Iterator[Backend]:
    """Run every chain invoked inside the block on ``backend`` (a name or a backend object).

    ``with rayrunnables.use("ray", address="auto"): chain.invoke(x)``
    """
    resolved = _make_backend(backend, kwargs)
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
    elif not isinstance(choice, str):
        return _make_backend(choice, {})
    return _make_backend(choice, {})


def _make_backend(choice: Any, kwargs: dict[str, Any]) -> Backend:
    from .backends import get_backend

    return get_backend(choice, **kwargs)
