"""Helper for tests that stream a dict: its chunks per key, which do not depend on how branches interleave."""

from __future__ import annotations

from typing import Any


def by_key(chunks: list[Any]) -> dict[str, list[Any]]:
    """The chunks of each key, in order: what does not depend on how branches interleave."""
    keyed: dict[str, list[Any]] = {}
    for chunk in chunks:
        assert isinstance(chunk, dict) and len(chunk) == 1, chunk
        (key, value), = chunk.items()
        keyed.setdefault(key, []).append(value)
    return keyed
