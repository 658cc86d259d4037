"""The step cache (``step.with_cache(...)``): fingerprints, canonical input digests, entries and stores.

One job a module: ``fingerprint`` (what a step's output depends on besides its input), ``canonical`` (an
input's digest), ``codec`` (entries as JSON, never pickles), ``base`` (the contract), ``stores`` (a local folder,
``open_store``), ``filesystem`` (pyarrow's filesystems: S3, GCS, HDFS) and ``redis_store`` (Redis). The
node that uses them is ``rayrunnables.runnables.cached.RunnableCached``. Importing this package imports
neither pyarrow nor redis: each store imports its library when it is made.
"""

from .base import CacheStore
from .canonical import Unhashable, input_digest
from .codec import FORMAT, Uncacheable
from .fingerprint import fingerprint
from .stores import ENV_VAR, LocalStore, default_location, open_store

__all__ = [
    "CacheStore",
    "ENV_VAR",
    "FORMAT",
    "FileSystemStore",
    "LocalStore",
    "RedisStore",
    "Uncacheable",
    "Unhashable",
    "default_location",
    "fingerprint",
    "input_digest",
    "open_store",
]


def __getattr__(name: str) -> object:
    """``FileSystemStore`` and ``RedisStore`` load their modules on first use (they need optional libraries)."""
    if name == "FileSystemStore":
        from .filesystem import FileSystemStore

        return FileSystemStore
    if name == "RedisStore":
        from .redis_store import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
