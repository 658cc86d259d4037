"""LangServe's wire format, written from its protocol: request bodies in, JSON and server-sent events out.

Why a module of its own: LangServe's ``RemoteRunnable`` clients are everywhere, so the bytes must be
the ones they read. A request is ``{"input", "config", "kwargs"}`` (``/batch``: ``"inputs"`` and one
config or a list); an answer is ``{"output", "metadata": {"run_id", "feedback_tokens"}}``; a stream is
server-sent events named ``metadata`` (the run id, first), ``data`` (one JSON value each), ``error``
(``{"status_code", "message"}``) and ``end``. Values are JSON, with LangChain's pydantic objects
(messages, documents, prompt values) written as their ``model_dump()``, whose ``"type"`` field lets
either side rebuild them. Nothing here imports FastAPI or Ray.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = [
    "CLIENT_KEYS", "IGNORED_KEYS", "RequestError", "dumps", "decode_value", "check_config", "sse", "metadata_event",
]

# what a client may set in "config"; everything else would let a caller steer the server (its backend,
# its cache, its callbacks), so it is refused
CLIENT_KEYS = ("configurable", "tags", "metadata", "run_name")
# keys LangChain's own client fills in from its local defaults on every call (a RemoteRunnable sends
# ``recursion_limit: 25`` even when its caller set nothing): they describe the client's run, so they are
# dropped rather than refused, as LangServe drops them
IGNORED_KEYS = ("recursion_limit", "max_concurrency")
_KEY_TYPES: dict[str, tuple[type, str]] = {
    "configurable": (dict, "an object"), "tags": (list, "a list of strings"), "metadata": (dict, "an object"),
    "run_name": (str, "a string"),
}


class RequestError(Exception):
    """A request the server refuses before running anything: ``status`` (422, 413...) and a message that
    says which part of the request is wrong."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


def _default(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)  # a pydantic model: LangChain's messages, documents, prompts
    if callable(dump):
        return dump()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _lenient(obj: Any) -> Any:
    try:
        return _default(obj)
    except TypeError:
        return repr(obj)


def dumps(value: Any, lenient: bool = False) -> str:
    """``value`` as JSON text, LangChain objects as their ``model_dump()`` (what LangServe writes).
    ``lenient``: what is not JSON becomes its ``repr`` (run events carry arbitrary step values) instead
    of a ``TypeError``."""
    return json.dumps(value, default=_lenient if lenient else _default, ensure_ascii=False, separators=(",", ":"))


def _well_known() -> dict[str, Any]:
    """The LangChain classes a client sends as ``{"type": TAG, ...}``, by tag (empty without langchain-core)."""
    try:
        from langchain_core import messages as m
        from langchain_core.documents import Document
        from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation
        from langchain_core.prompt_values import ChatPromptValueConcrete, StringPromptValue
    except ImportError:
        return {}
    classes: list[Any] = [m.AIMessage, m.HumanMessage, m.ChatMessage, m.SystemMessage, m.FunctionMessage, m.ToolMessage,
               m.AIMessageChunk, m.HumanMessageChunk, m.ChatMessageChunk, m.SystemMessageChunk,
               m.FunctionMessageChunk, m.ToolMessageChunk, Document, StringPromptValue, ChatPromptValueConcrete,
               ChatGeneration, Generation, ChatGenerationChunk]
    known = {}
    for cls in classes:
        tag = cls.model_fields["type"].default
        known[tag] = cls
    return known


_KNOWN: dict[str, Any] | None = None


def decode_value(value: Any) -> Any:
    """Rebuild the LangChain objects in a JSON value (a ``{"type": "human", ...}`` becomes a HumanMessage)."""
    global _KNOWN
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if not isinstance(value, dict):
        return value
    value = {k: decode_value(v) for k, v in value.items()}
    tag = value.get("type")
    if isinstance(tag, str):
        if _KNOWN is None:
            _KNOWN = _well_known()
        cls = _KNOWN.get(tag)
        if cls is not None:
            try:
                return cls.model_validate(value)
            except Exception:  # not that object after all: keep the dict
                return value
    return value


def check_config(config: Any, where: str = "config") -> dict[str, Any]:
    """The client's config, reduced to ``CLIENT_KEYS``; any other key (but ``IGNORED_KEYS``) or a value of
    the wrong type is a 422 naming it."""
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise RequestError(422, f"{where} must be an object, got {type(config).__name__}", where)
    out: dict[str, Any] = {}
    value: Any
    for key, value in config.items():
        if key in IGNORED_KEYS:
            continue
        if key not in CLIENT_KEYS:
            raise RequestError(422, f"{where}: key {key!r} is not accepted; a client may set "
                               f"{', '.join(CLIENT_KEYS)}", f"{where}.{key}")
        if value is None:
            continue
        kind, said = _KEY_TYPES[key]
        items: Any = value
        if not isinstance(value, kind) or (key == "tags" and not all(isinstance(t, str) for t in items)):
            raise RequestError(422, f"{where}.{key} must be {said}, got {type(value).__name__}", f"{where}.{key}")
        if key in ("configurable", "metadata", "tags") and not value:
            continue
        out[key] = value
    return out


def sse(event: str, data: str | None = None) -> bytes:
    """One server-sent event; ``data`` is one line of JSON (JSON text has no raw newline)."""
    if data is None:
        return f"event: {event}\r\n\r\n".encode()
    return f"event: {event}\r\ndata: {data}\r\n\r\n".encode()


def metadata_event(run_id: str) -> bytes:
    """The first event of a stream, as LangServe sends it: the run's id."""
    return sse("metadata", json.dumps({"run_id": run_id}))
