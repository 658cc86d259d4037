"""A mapping that keeps only its most recently used entries.

A Ray worker lives for hours and receives new chains all day; what it learns per step (an execution
class, a stateful step's instance, a pacer) is keyed by steps it may never see again. Kept in a plain
dict that would grow with every chain ever sent; kept here it stays bounded, and a step seen again after
its entry went is simply learned (or built) again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["Recent"]

K = TypeVar("K")
V = TypeVar("V")


class Recent(Generic[K, V]):
    """At most ``limit`` entries; reading or writing one makes it the most recent. Thread-safe."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def setdefault(self, key: K, value: V) -> V:
        """The value kept for ``key``: the one already there, else ``value`` (dropping the least recent)."""
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found
            self._items[key] = value
            while len(self._items) > self.limit:
                self._items.popitem(last=False)
            return value

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._items))
