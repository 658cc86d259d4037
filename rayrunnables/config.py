"""Config dicts: LangChain's ``RunnableConfig`` keys plus ``backend``, checked at the call.

A config is a plain dict so that LangChain users can pass the one they already have. We check its
keys at the call, so a typo (``max_concurency``) fails loudly instead of being ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypedDict

from .errors import ConfigError

__all__ = [
    "RunnableConfig", "CONFIG_KEYS", "validate_config", "merge_configs", "sendable_config", "DEFAULT_RECURSION_LIMIT",
]


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
    cache: Any  # the store of steps that ``with_cache()`` without one: a path, a URI or a CacheStore


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
    cache = config.get("cache")
    if cache is not None and not isinstance(cache, (str, os.PathLike)) and not hasattr(cache, "get_many"):
        raise ConfigError(f"{where}: config['cache'] must be a path, a URI or a CacheStore, got {cache!r:.80}")
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


# keys that never leave the caller's process: the backend object, LangChain callbacks (unpicklable)
_LOCAL_ONLY = frozenset({"backend", "callbacks"})


def sendable_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` as another process receives it: without what only makes sense in the caller's."""
    return {k: v for k, v in config.items() if k not in _LOCAL_ONLY}
