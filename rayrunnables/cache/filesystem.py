"""``FileSystemStore``: cache entries on any filesystem pyarrow opens (``s3://bucket/prefix``, ``gs://``,
``hdfs://``...), so every node of a cluster reads what any node wrote.

The URI is pyarrow's own: options go in its query (``s3://bucket/prefix?region=eu-west-1``,
``?endpoint_override=127.0.0.1:9000&scheme=http`` for an S3-compatible server), credentials come from the
usual places (environment, profile, instance role) or the URI (``s3://KEY:SECRET@bucket/...``). On an
object store (S3, GCS, Azure) an object appears whole when its upload completes, so an entry is written in
place; elsewhere it is written under a temporary name and moved. Needs pyarrow (``pip install
"rayrunnables[cache-s3]"``); imported only by this store.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

from .base import CacheStore, warn_once
from .codec import is_whole_entry

__all__ = ["FileSystemStore"]

_ATOMIC_OBJECTS = frozenset({"s3", "gcs", "abfs"})
_TORN_READS = 3  # reads of one object before a torn one is returned: each is raced by a whole write
SCHEMES = frozenset({"s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss"})  # what pyarrow's from_uri opens


class FileSystemStore(CacheStore):
    def __init__(self, uri: str) -> None:
        scheme = uri.partition("://")[0].lower()
        if scheme not in SCHEMES:
            raise ValueError(f"{uri.split('?')[0]!r}: not a store: give a folder, redis://host:port/db, or a URI of "
                             f"a filesystem pyarrow opens ({', '.join(sorted(SCHEMES))})")
        try:
            import pyarrow.fs  # noqa: F401
        except ImportError:
            raise ImportError(f"cache store {uri.split('?')[0]!r} needs pyarrow: pip install "
                              "'rayrunnables[cache-s3]'") from None
        self.uri = uri
        self._lock = threading.Lock()
        self._opened: tuple[int, Any, str] | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (FileSystemStore, (self.uri,))

    def describe(self) -> str:
        return super().describe().split("?")[0]

    def _fs(self) -> tuple[Any, str]:
        """The filesystem and the base path, opened once per process (a forked child opens its own)."""
        opened = self._opened
        if opened is not None and opened[0] == os.getpid():
            return opened[1], opened[2]
        import pyarrow.fs

        with self._lock:
            fs, base = pyarrow.fs.FileSystem.from_uri(self.uri)
            self._opened = (os.getpid(), fs, base.rstrip("/"))
            return fs, self._opened[2]

    def _path(self, base: str, key: str) -> str:
        return f"{base}/{key[:2]}/{key[2:]}.json"

    def get(self, key: str) -> bytes | None:
        """An object store's entry is read as pyarrow reads any object: its size first, then its bytes. An
        object replaced between the two (another writer of the same key) can read torn: a prefix of the new
        object, or the new one with a stray byte. So a read that does not parse is read again, a little
        later; one still torn after that is returned, and the codec makes it a miss, never a wrong value."""
        try:
            fs, base = self._fs()
            path = self._path(base, key)
            attempts = _TORN_READS if fs.type_name in _ATOMIC_OBJECTS else 1
            for attempt in range(attempts):
                with fs.open_input_stream(path) as stream:
                    data: bytes = stream.read()
                if attempt == attempts - 1 or is_whole_entry(data):
                    return data
                time.sleep(0.01 * (attempt + 1))
            return data
        except FileNotFoundError:
            return None
        except Exception as exc:  # pyarrow's OSErrors, and anything its filesystem raises: a miss
            warn_once(self.uri, f"read {type(exc).__name__}",
                      f"cache {self.describe()}: cannot read an entry ({type(exc).__name__}: {exc}): a miss")
            return None

    def put(self, key: str, data: bytes, ttl: float | None = None) -> None:
        try:
            fs, base = self._fs()
            final = self._path(base, key)
            if fs.type_name in _ATOMIC_OBJECTS:
                with fs.open_output_stream(final) as out:  # the object exists once the upload completes
                    out.write(data)
                return
            parent = final.rsplit("/", 1)[0]
            fs.create_dir(parent, recursive=True)
            temp = f"{parent}/.{key[2:]}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
            with fs.open_output_stream(temp) as out:
                out.write(data)
            fs.move(temp, final)
        except Exception as exc:
            warn_once(self.uri, f"write {type(exc).__name__}",
                      f"cache {self.describe()}: cannot write an entry ({type(exc).__name__}: {exc})")

    def delete(self, key: str) -> None:
        try:
            fs, base = self._fs()
            fs.delete_file(self._path(base, key))
        except Exception:
            pass
