"""Stream chunks as LangChain adds them up: ``+`` where the values allow it, dicts key by key.

A step that does not stream gathers its input chunks into one value before it runs (``gather``); a dict
of branches streams ``{key: chunk}`` pieces that add up, key by key, to the dict ``invoke`` returns.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["AddableDict", "add_chunk", "gather", "NOTHING"]

NOTHING: Any = object()  # no chunk yet (``None`` is a chunk like any other)


class AddableDict(dict[str, Any]):
    """A dict chunk: ``a + b`` adds the values of the keys both have, and takes the others."""

    def __add__(self, other: Any) -> AddableDict:
        merged = AddableDict(self)
        for key, value in other.items():
            mine = merged.get(key)
            if mine is None:
                merged[key] = value
            elif value is not None:
                merged[key] = add_chunk(mine, value)
        return merged

    def __radd__(self, other: Any) -> AddableDict:
        return AddableDict(other) + self


def add_chunk(output: Any, chunk: Any) -> Any:
    """One chunk more: ``output + chunk``, or the chunk alone when they cannot be added (as LangChain)."""
    if output is None or output is NOTHING:
        return chunk
    try:
        return output + chunk
    except TypeError:
        return chunk


def gather(chunks: Iterable[Any]) -> Any:
    """The input chunks of a step that does not stream, added up into the one value it runs on."""
    final: Any = NOTHING
    for chunk in chunks:
        final = chunk if final is NOTHING else add_chunk(final, chunk)
    return None if final is NOTHING else final
