"""Cache entries as JSON: the value, its full key, the format, the step and when it expires.

Values are never pickled: an entry is read by every process that shares the store (the nodes of a
cluster, other users of a shared bucket or Redis), and unpickling what someone else wrote runs their code.
JSON holds ``None``, ``bool``, ``int``, ``float`` (NaN and infinities too), ``str``, lists and dicts with
string keys; a tagged object (``{"__rr__": tag, ...}``) holds the rest of what a step may return:

- tuples, sets, frozensets, dicts with other keys, ``bytes``;
- numpy arrays (not of ``object`` dtype) and numpy scalars, by dtype, shape and bytes;
- LangChain messages (by their dict form), ``Document``s, prompt values, and the ``str`` that LangChain's
  output parsers return (its ``TextAccessor``);
- pydantic models (a structured output) of a class already imported in the reading process.

Exact types only: a subclass (a ``namedtuple``, an ``OrderedDict``, a ``str`` enum) is not cached, since
reading it back would change its type. A value that cannot be encoded raises ``Uncacheable``: the step's
output is returned, and not cached. An entry that does not decode, names another key, has another format
or has expired is a miss (``read_entry`` returns ``MISS`` and says why).
"""

from __future__ import annotations

import base64
import json
import sys
import time
from typing import Any, cast

__all__ = ["FORMAT", "MISS", "Uncacheable", "decode_value", "encode_value", "is_whole_entry", "make_entry",
           "read_entry"]

FORMAT = "rayrunnables-cache/1"
TAG = "__rr__"
MISS: Any = object()


class Uncacheable(TypeError):
    """A value the cache cannot hold (its type has no JSON form here)."""


# ---- values ----------------------------------------------------------------------------------------------------
def encode_value(value: Any) -> Any:
    """``value`` as JSON-ready data (tagged where JSON has no form for it)."""
    return _encode(value, 0)


def _encode(value: Any, depth: int) -> Any:
    if depth > 200:
        raise Uncacheable("nested too deeply")
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if kind is list:
        return [_encode(v, depth + 1) for v in value]
    if kind is dict:
        if all(type(k) is str for k in value) and TAG not in value:
            return {k: _encode(v, depth + 1) for k, v in value.items()}
        return {TAG: "dict", "v": [[_encode(k, depth + 1), _encode(v, depth + 1)] for k, v in value.items()]}
    if kind in (tuple, set, frozenset):
        return {TAG: kind.__name__, "v": [_encode(v, depth + 1) for v in value]}
    if kind is bytes:
        return {TAG: "bytes", "v": base64.b64encode(value).decode()}
    numpy = sys.modules.get("numpy")
    if numpy is not None and kind is numpy.ndarray:
        if value.dtype.hasobject:
            raise Uncacheable("a numpy array of Python objects")
        return {TAG: "ndarray", "dtype": _descr(numpy, value.dtype), "shape": list(value.shape),
                "v": base64.b64encode(numpy.ascontiguousarray(value).tobytes()).decode()}
    if numpy is not None and isinstance(value, numpy.generic) and not value.dtype.hasobject:
        return {TAG: "npscalar", "dtype": _descr(numpy, value.dtype), "v": base64.b64encode(value.tobytes()).decode()}
    found = _encode_langchain(value, depth)
    if found is not None:
        return found
    if hasattr(kind, "model_fields") and hasattr(value, "model_dump") and "<locals>" not in kind.__qualname__:
        return {TAG: "pydantic", "cls": f"{kind.__module__}:{kind.__qualname__}",
                "v": _encode(value.model_dump(mode="json"), depth + 1)}
    raise Uncacheable(f"a {kind.__module__}.{kind.__qualname__}")


def _descr(numpy: Any, dtype: Any) -> Any:
    return numpy.lib.format.dtype_to_descr(dtype)


def _encode_langchain(value: Any, depth: int) -> Any:
    if "langchain_core" not in sys.modules:
        return None
    from langchain_core.documents import Document
    from langchain_core.messages import BaseMessage, message_to_dict
    from langchain_core.prompt_values import ChatPromptValue, StringPromptValue

    kind = type(value)
    if isinstance(value, str) and kind.__qualname__ == "TextAccessor" and kind.__module__.startswith("langchain_core"):
        return {TAG: "lc_text", "v": str(value)}  # what ``StrOutputParser`` returns: a str
    if isinstance(value, BaseMessage) and kind.__module__.startswith("langchain_core."):
        return {TAG: "lc_message", "v": _encode(message_to_dict(value), depth + 1)}
    if kind is Document:
        return {TAG: "lc_document", "v": _encode({"page_content": value.page_content, "metadata": value.metadata,
                                                   "id": value.id}, depth + 1)}
    if kind is ChatPromptValue:
        return {TAG: "lc_chat_prompt", "v": [_encode(m, depth + 1) for m in value.messages]}
    if kind is StringPromptValue:
        return {TAG: "lc_string_prompt", "v": value.text}
    return None


def decode_value(data: Any) -> Any:
    """The value ``encode_value`` encoded; ``ValueError``/``TypeError``/``KeyError`` for anything else."""
    if isinstance(data, list):
        return [decode_value(v) for v in data]
    if not isinstance(data, dict):
        return data
    tag = data.get(TAG)
    if tag is None:
        return {k: decode_value(v) for k, v in data.items()}
    decode = _DECODERS.get(tag)
    if decode is None:
        raise ValueError(f"unknown tag {tag!r}")
    return decode(data)


def _decode_array(data: dict[str, Any]) -> Any:
    import numpy

    dtype = numpy.lib.format.descr_to_dtype(_descr_back(data["dtype"]))
    raw = base64.b64decode(data["v"], validate=True)
    return numpy.frombuffer(raw, dtype=dtype).reshape(data["shape"]).copy()


def _decode_scalar(data: dict[str, Any]) -> Any:
    import numpy

    dtype = numpy.lib.format.descr_to_dtype(_descr_back(data["dtype"]))
    return numpy.frombuffer(base64.b64decode(data["v"], validate=True), dtype=dtype)[0]


def _descr_back(descr: Any) -> Any:
    """A structured dtype's descr comes back from JSON as lists; numpy wants tuples."""
    if isinstance(descr, list):
        return [tuple(_descr_back(part) for part in field) if isinstance(field, list) else field for field in descr]
    return descr


def _decode_message(data: dict[str, Any]) -> Any:
    from langchain_core.messages import messages_from_dict

    return messages_from_dict([decode_value(data["v"])])[0]


def _decode_document(data: dict[str, Any]) -> Any:
    from langchain_core.documents import Document

    fields = decode_value(data["v"])
    return Document(page_content=fields["page_content"], metadata=fields["metadata"], id=fields["id"])


def _decode_chat_prompt(data: dict[str, Any]) -> Any:
    from langchain_core.prompt_values import ChatPromptValue

    return ChatPromptValue(messages=[decode_value(m) for m in data["v"]])


def _decode_string_prompt(data: dict[str, Any]) -> Any:
    from langchain_core.prompt_values import StringPromptValue

    return StringPromptValue(text=data["v"])


def _decode_text(data: dict[str, Any]) -> Any:
    try:
        from langchain_core.messages.base import TextAccessor
    except ImportError:  # pragma: no cover - another langchain-core: a plain str is what it stands for
        return str(data["v"])
    return TextAccessor(str(data["v"]))


def _decode_pydantic(data: dict[str, Any]) -> Any:
    """Only a class already imported here, and only a pydantic model: an entry never makes us import
    a module or build anything else."""
    module_name, _, qualname = str(data["cls"]).partition(":")
    module = sys.modules.get(module_name)
    pydantic = sys.modules.get("pydantic")
    if module is None or pydantic is None:
        raise ValueError(f"class {data['cls']} is not imported in this process")
    cls: Any = module
    for part in qualname.split("."):
        cls = getattr(cls, part)
    if not (isinstance(cls, type) and issubclass(cls, pydantic.BaseModel)):
        raise ValueError(f"{data['cls']} is not a pydantic model")
    return cast(Any, cls).model_validate(decode_value(data["v"]))


_DECODERS: dict[str, Any] = {
    "dict": lambda d: {decode_value(k): decode_value(v) for k, v in d["v"]},
    "tuple": lambda d: tuple(decode_value(v) for v in d["v"]),
    "set": lambda d: {decode_value(v) for v in d["v"]},
    "frozenset": lambda d: frozenset(decode_value(v) for v in d["v"]),
    "bytes": lambda d: base64.b64decode(d["v"], validate=True),
    "ndarray": _decode_array,
    "npscalar": _decode_scalar,
    "lc_message": _decode_message,
    "lc_document": _decode_document,
    "lc_chat_prompt": _decode_chat_prompt,
    "lc_string_prompt": _decode_string_prompt,
    "lc_text": _decode_text,
    "pydantic": _decode_pydantic,
}


# ---- entries ---------------------------------------------------------------------------------------------------
def make_entry(key: str, value: Any, step: str, ttl: float | None) -> bytes:
    """One entry's bytes; ``Uncacheable`` when the value has no form here."""
    now = time.time()
    entry = {"format": FORMAT, "key": key, "step": step, "created": now,
             "expires": None if ttl is None else now + ttl, "value": encode_value(value)}
    try:
        return json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError) as exc:
        raise Uncacheable(str(exc)) from None


def is_whole_entry(data: bytes) -> bool:
    """Whether ``data`` is one whole JSON document (a torn read of an object being replaced is not)."""
    try:
        json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def read_entry(data: bytes, key: str, now: float | None = None) -> tuple[Any, str]:
    """``(value, "")`` for an entry of ``key`` that holds; ``(MISS, why)`` for anything else."""
    try:
        entry = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        return MISS, f"not a cache entry ({type(exc).__name__}: {exc})"
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        found = entry.get("format") if isinstance(entry, dict) else type(entry).__name__
        return MISS, f"another format ({found!r}, expected {FORMAT!r})"
    if entry.get("key") != key:
        return MISS, f"the entry of another key ({str(entry.get('key'))[:16]}...)"
    expires = entry.get("expires")
    if expires is not None and (not isinstance(expires, (int, float)) or expires <= (now or time.time())):
        return MISS, "expired"
    try:
        return decode_value(entry["value"]), ""
    except Exception as exc:  # a value that does not decode is a miss, whatever the reason
        return MISS, f"its value does not decode ({type(exc).__name__}: {exc})"
