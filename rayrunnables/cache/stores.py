"""Where cache entries live: a local folder, and ``open_store(uri)`` for every kind of store.

- ``LocalStore(path)``: a folder, one file per entry (``ab/cdef....json``), written under a temporary
  name in the same folder and renamed into place, so a reader (or a killed writer) never sees half an
  entry, and two writers of one key each put a whole entry there.
- ``FileSystemStore(uri)`` (``cache.filesystem``): any filesystem pyarrow opens (``s3://bucket/prefix``,
  ``gs://...``, ``hdfs://...``), so every node of a cluster shares one cache.
- ``RedisStore(url)`` (``cache.redis_store``): a Redis server (``redis://host:port/db``), with its own
  expiry.

Stores pickle as their address: a step sent to a Ray worker takes its store along and connects there.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

from .base import CacheStore, warn_once

__all__ = ["CacheStore", "LocalStore", "open_store", "default_location", "ENV_VAR"]

ENV_VAR = "RAYRUNNABLES_CACHE"


class LocalStore(CacheStore):
    """A folder of entries, one file each, made whole by a rename."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.expanduser(os.fspath(path))).absolute()
        self.uri = str(self.root)

    def __reduce__(self) -> tuple[Any, ...]:
        return (LocalStore, (self.uri,))

    def path_of(self, key: str) -> Path:
        return self.root / key[:2] / f"{key[2:]}.json"

    def get(self, key: str) -> bytes | None:
        try:
            with open(self.path_of(key), "rb") as file:
                return file.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            warn_once(self.uri, f"read {type(exc).__name__}", f"cache {self.uri}: cannot read an entry ({exc}): a miss")
            return None

    def put(self, key: str, data: bytes, ttl: float | None = None) -> None:
        final = self.path_of(key)
        temp = final.parent / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            with open(temp, "xb") as file:
                file.write(data)
            os.replace(temp, final)  # atomic: readers see the old entry, none, or this one, whole
        except OSError as exc:
            warn_once(self.uri, f"write {type(exc).__name__}", f"cache {self.uri}: cannot write an entry ({exc})")
            try:
                temp.unlink()
            except OSError:
                pass

    def delete(self, key: str) -> None:
        try:
            self.path_of(key).unlink()
        except OSError:
            pass

    def leftovers(self, older_than: float = 3600.0) -> list[Path]:
        """Temporary files of writers killed before their rename (never read as entries)."""
        cutoff = time.time() - older_than
        return [p for p in self.root.glob("*/.*.tmp") if p.stat().st_mtime < cutoff]


def default_location() -> str:
    """``$RAYRUNNABLES_CACHE`` (a folder or a URI), else ``$XDG_CACHE_HOME/rayrunnables/steps`` (by default
    ``~/.cache/rayrunnables/steps``)."""
    given = os.environ.get(ENV_VAR)
    if given:
        return given
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rayrunnables", "steps")


def open_store(spec: Any = None) -> CacheStore:
    """A store from ``spec``: a ``CacheStore`` as it is; ``None``: the default location; ``redis://``,
    ``rediss://`` or ``unix://``: Redis; ``file://`` or a plain path: a local folder; any other URI: the
    filesystem pyarrow opens for it. A missing optional library is an ``ImportError`` naming the extra."""
    if isinstance(spec, CacheStore):
        return spec
    if spec is None:
        spec = default_location()
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"a cache store is a path, a URI or a CacheStore, got {spec!r:.80}")
    scheme = spec.partition("://")[0].lower() if "://" in spec else ""
    if scheme in ("redis", "rediss", "unix"):
        from .redis_store import RedisStore

        return RedisStore(spec)
    if scheme == "file":
        return LocalStore(spec[len("file://"):])
    if scheme:
        from .filesystem import FileSystemStore

        return FileSystemStore(spec)
    return LocalStore(spec)
