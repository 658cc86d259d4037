"""LangChain models that hold live HTTP clients travel to other processes by their settings.

``ChatOpenAI(...)`` (and the other pydantic models of LangChain's provider packages) builds its
``client``/``async_client`` in a validator; those hold locks and connection pools that cannot be pickled,
so ``from_langchain(ChatOpenAI(...))`` could not run on Ray or in a process pool. Such a model is sent as
its class and the fields it was given, and built again where it arrives (its validator makes new
clients there). Models that pickle as they are, and everything else, travel unchanged.
"""

from __future__ import annotations

from typing import Any

__all__ = ["travelling", "arrived", "Rebuild"]

CLIENT_FIELDS = ("client", "async_client", "root_client", "root_async_client")


class Rebuild:
    """A model's class and its settings; ``build()`` makes the model again (with clients of its own)."""

    def __init__(self, cls: type, fields: dict[str, Any]) -> None:
        self.cls, self.fields = cls, fields

    def build(self) -> Any:
        return self.cls(**self.fields)


def _holds_clients(obj: Any) -> bool:
    fields = getattr(type(obj), "model_fields", None)
    if not isinstance(fields, dict) or not hasattr(obj, "model_fields_set"):
        return False
    return any(name in fields and getattr(obj, name, None) is not None for name in CLIENT_FIELDS)


def travelling(obj: Any) -> Any:
    """What to pickle for ``obj``: a ``Rebuild`` for a pydantic model holding live clients, else ``obj``."""
    if not _holds_clients(obj):
        return obj
    given = {name: getattr(obj, name) for name in obj.model_fields_set if name not in CLIENT_FIELDS}
    return Rebuild(type(obj), given)


def arrived(obj: Any) -> Any:
    """The object again, on the receiving side."""
    return obj.build() if isinstance(obj, Rebuild) else obj
