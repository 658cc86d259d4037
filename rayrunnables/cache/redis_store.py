"""``RedisStore``: cache entries in a Redis server (``redis://host:port/db``, ``rediss://`` for TLS,
``unix:///path/to/socket``), shared by every process that reaches it.

One ``SET`` per entry (atomic: a reader gets the whole entry or none; a killed writer's half-sent command
is dropped by the server), ``EX`` for a ``ttl``, ``MGET`` for a vectorized step's chunk. Keys are
``rayrunnables:cache:<key>``. Needs the ``redis`` client (``pip install "rayrunnables[cache-redis]"``);
imported only by this store.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable
from typing import Any

from .base import CacheStore, warn_once

__all__ = ["RedisStore", "PREFIX"]

PREFIX = "rayrunnables:cache:"


class RedisStore(CacheStore):
    def __init__(self, url: str, *, socket_timeout: float = 10.0) -> None:
        try:
            import redis  # noqa: F401
        except ImportError:
            raise ImportError("cache store redis://... needs the redis client: pip install "
                              "'rayrunnables[cache-redis]'") from None
        self.uri = url
        self.socket_timeout = socket_timeout
        self._lock = threading.Lock()
        self._client: tuple[int, Any] | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (RedisStore, (self.uri,), {"socket_timeout": self.socket_timeout})

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.socket_timeout = state["socket_timeout"]

    def client(self) -> Any:
        """The connection pool of this process (a forked child makes its own)."""
        found = self._client
        if found is not None and found[0] == os.getpid():
            return found[1]
        import redis

        with self._lock:
            client = redis.Redis.from_url(self.uri, socket_timeout=self.socket_timeout,
                                          socket_connect_timeout=self.socket_timeout)
            self._client = (os.getpid(), client)
            return client

    def _failed(self, what: str, exc: Exception) -> None:
        warn_once(self.uri, f"{what} {type(exc).__name__}",
                  f"cache {self.describe()}: cannot {what} ({type(exc).__name__}: {exc})"
                  + (": a miss" if what == "read" else ""))

    def get(self, key: str) -> bytes | None:
        try:
            data: bytes | None = self.client().get(PREFIX + key)
            return data
        except Exception as exc:  # the server down, a timeout: a miss
            self._failed("read", exc)
            return None

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            found: list[bytes | None] = self.client().mget([PREFIX + k for k in keys])
            return found
        except Exception as exc:
            self._failed("read", exc)
            return [None] * len(keys)

    def put(self, key: str, data: bytes, ttl: float | None = None) -> None:
        self.put_many([(key, data)], ttl)

    def put_many(self, items: Iterable[tuple[str, bytes]], ttl: float | None = None) -> None:
        expiry = None if ttl is None else max(1, math.ceil(ttl * 1000))
        try:
            pipe = self.client().pipeline(transaction=False)
            for key, data in items:
                pipe.set(PREFIX + key, data, px=expiry)
            pipe.execute()
        except Exception as exc:
            self._failed("write", exc)

    def delete(self, key: str) -> None:
        try:
            self.client().delete(PREFIX + key)
        except Exception:
            pass
