"""The contract of a cache store (``CacheStore``), and how stores report what goes wrong (``warn_once``).

A store maps a key (64 hex characters) to an entry's bytes. It never fails a step: a store it cannot
reach or read is a miss, a write it cannot make is skipped, each logged once per store and reason.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

__all__ = ["CacheStore", "warn_once", "logger", "redacted"]

logger = logging.getLogger("rayrunnables.cache")
_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def warn_once(where: str, reason: str, message: str) -> None:
    """Log ``message`` once per ``(where, reason)`` in this process (a store down is one warning, not 1,000)."""
    with _warned_lock:
        if (where, reason) in _warned:
            logger.debug(message)
            return
        _warned.add((where, reason))
    logger.warning(message)


class CacheStore:
    """Keys (hex) to entries (bytes). Subclasses implement ``get``, ``put`` and ``delete``; ``uri`` says
    where (with any secret hidden: ``describe()``). ``ttl`` is in seconds; the entry also carries its expiry,
    which every reader checks (a store without expiry of its own keeps expired entries until rewritten)."""

    uri: str = ""

    def get(self, key: str) -> bytes | None:
        raise NotImplementedError

    def put(self, key: str, data: bytes, ttl: float | None = None) -> None:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        return [self.get(key) for key in keys]

    def put_many(self, items: Iterable[tuple[str, bytes]], ttl: float | None = None) -> None:
        for key, data in items:
            self.put(key, data, ttl)

    def describe(self) -> str:
        return redacted(self.uri)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()!r})"


def redacted(uri: str) -> str:
    """``scheme://user:secret@host/...`` -> ``scheme://***@host/...``."""
    scheme, sep, rest = uri.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return uri
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
