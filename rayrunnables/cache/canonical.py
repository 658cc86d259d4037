"""An input's canonical digest: equal values hash equal, in any process, whatever the order of a dict's keys.

Known values only, so that two inputs that are different never share a key:

- ``None``, ``bool``, ``int``, ``float`` (``1``, ``1.0`` and ``True`` differ), ``str``, ``bytes``;
- ``list``, ``tuple`` (they differ), ``dict`` (any order of keys), ``set``, ``frozenset``;
- numpy arrays by dtype, shape and bytes; numpy scalars;
- LangChain messages by their dict form (their ``id`` left out: it names a message, it is not what it
  says), prompt values by their messages or text, other pydantic models and dataclasses by their class
  and fields; enums, dates, decimals, UUIDs and paths by their class and value.

Anything else raises ``Unhashable`` (a ``TypeError``) saying where in the input it is.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import struct
import sys
from pathlib import PurePath
from typing import Any

__all__ = ["Unhashable", "input_digest"]

_NAMED_VALUES = ("datetime", "decimal", "fractions", "uuid")


class Unhashable(TypeError):
    """An input (or a part of it, named by ``where``) whose type has no canonical form."""


def input_digest(value: Any) -> bytes:
    """The sha256 digest of ``value``'s canonical form."""
    hasher = hashlib.sha256()
    _feed(hasher, value, "input", 0)
    return hasher.digest()


def _token(hasher: Any, tag: bytes, payload: bytes = b"") -> None:
    hasher.update(tag + struct.pack(">Q", len(payload)) + payload)


def _feed(hasher: Any, value: Any, where: str, depth: int) -> None:
    if depth > 200:
        raise Unhashable(f"{where}: nested too deeply (a cycle?)")
    kind = type(value)
    if value is None:
        _token(hasher, b"N")
    elif kind is bool:
        _token(hasher, b"T" if value else b"F")
    elif kind is int:
        _token(hasher, b"i", str(value).encode())
    elif kind is float:
        _token(hasher, b"f", float.hex(value).encode())
    elif kind is str:
        _token(hasher, b"s", value.encode("utf-8", "surrogatepass"))
    elif kind in (bytes, bytearray):
        _token(hasher, b"b", bytes(value))
    elif kind in (list, tuple):
        _token(hasher, b"l" if kind is list else b"t", struct.pack(">Q", len(value)))
        for n, item in enumerate(value):
            _feed(hasher, item, f"{where}[{n}]", depth + 1)
    elif kind is dict:
        _token(hasher, b"d", struct.pack(">Q", len(value)))
        for key_digest, key, item in sorted(((_digest(k, f"{where} key", depth), k, v) for k, v in value.items()),
                                            key=lambda entry: entry[0]):
            _token(hasher, b"k", key_digest)
            _feed(hasher, item, f"{where}[{key!r:.40}]", depth + 1)
    elif kind in (set, frozenset):
        _token(hasher, b"S" if kind is set else b"Z", b"".join(sorted(_digest(v, where, depth) for v in value)))
    else:
        _feed_object(hasher, value, kind, where, depth)


def _digest(value: Any, where: str, depth: int) -> bytes:
    sub = hashlib.sha256()
    _feed(sub, value, where, depth + 1)
    return sub.digest()


def _class_token(hasher: Any, kind: type) -> None:
    _token(hasher, b"c", f"{kind.__module__}.{kind.__qualname__}".encode())


def _feed_object(hasher: Any, value: Any, kind: type, where: str, depth: int) -> None:
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray):
        _token(hasher, b"a", f"{value.dtype.str}{value.shape}".encode())
        if value.dtype == object:
            _feed(hasher, value.tolist(), where, depth + 1)
        else:
            _token(hasher, b"v", numpy.ascontiguousarray(value).tobytes())
        return
    if numpy is not None and isinstance(value, numpy.generic):
        _token(hasher, b"g", value.dtype.str.encode() + value.tobytes())
        return
    if isinstance(value, enum.Enum):
        _class_token(hasher, kind)
        _feed(hasher, value.value, where, depth + 1)
        return
    if isinstance(value, PurePath) or kind.__module__ in _NAMED_VALUES:
        _class_token(hasher, kind)
        _token(hasher, b"=", str(value).encode("utf-8", "surrogatepass"))
        return
    found = _langchain_form(value)
    if found is not None:
        tag, form = found
        _token(hasher, tag)
        _feed(hasher, form, where, depth + 1)
        return
    if hasattr(kind, "model_fields") and hasattr(value, "__pydantic_fields_set__"):
        _class_token(hasher, kind)
        _feed(hasher, {name: getattr(value, name, None) for name in kind.model_fields}, where, depth + 1)
        return
    if dataclasses.is_dataclass(value):
        _class_token(hasher, kind)
        _feed(hasher, {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}, where, depth + 1)
        return
    raise Unhashable(f"{where} is a {kind.__module__}.{kind.__qualname__}, which has no canonical form")


def _langchain_form(value: Any) -> tuple[bytes, Any] | None:
    """A LangChain message (without its ``id``) or prompt value, as plain data; None for anything else."""
    if "langchain_core" not in sys.modules:
        return None
    from langchain_core.messages import BaseMessage
    from langchain_core.prompt_values import PromptValue

    if isinstance(value, BaseMessage):
        data = value.model_dump()
        data.pop("id", None)
        return b"m", {"type": type(value).__name__, "data": data}
    if isinstance(value, PromptValue):
        messages = getattr(value, "messages", None)
        if messages is not None:
            return b"P", list(messages)
        return b"p", value.to_string()
    return None
