"""The served chain's JSON Schemas (``/input_schema``...) and the check of each request's input against one.

Why: LangServe answers these three routes, and a client (or the playground) reads them to know what to
send; a server that checks inputs before running refuses bad ones with a 422 naming the field instead of
failing deep inside a worker. A LangChain chain brings its own schemas (``get_input_schema()``); a
rayrunnables chain has none, so ``app(..., input_schema=T)`` gives one (a pydantic model or any type
pydantic can validate, e.g. ``dict[str, str]``); without one any JSON input is accepted.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter, ValidationError

from .wire import CLIENT_KEYS, RequestError

__all__ = ["Schemas", "schemas_for"]


class Schemas:
    """Input and output validators (``TypeAdapter``s) and the config schema, with their JSON Schemas."""

    def __init__(self, input_type: Any = Any, output_type: Any = Any, config: dict[str, Any] | None = None) -> None:
        self.input = TypeAdapter(input_type)
        self.output = TypeAdapter(output_type)
        self.config = config or _config_schema()
        self.checks_input = input_type is not Any

    def input_json(self) -> dict[str, Any]:
        return _titled(self.input.json_schema(), "Input")

    def output_json(self) -> dict[str, Any]:
        return _titled(self.output.json_schema(), "Output")

    def check(self, value: Any, where: str = "input") -> None:
        """Raise a 422 ``RequestError`` naming the first wrong field when ``value`` does not fit the input
        schema (``where``: ``input`` or ``inputs[3]``)."""
        if not self.checks_input:
            return
        try:
            self.input.validate_python(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ()) if p != "__root__")
            field = f"{where}.{loc}" if loc else where
            raise RequestError(422, f"{field}: {first.get('msg', 'invalid')}", field) from None


def _titled(schema: dict[str, Any], title: str) -> dict[str, Any]:
    return schema if "title" in schema else {"title": title, **schema}


def _config_schema() -> dict[str, Any]:
    """The config a client may send: the keys ``CLIENT_KEYS``, each with its JSON type."""
    types = {"configurable": {"type": "object"}, "tags": {"type": "array", "items": {"type": "string"}},
             "metadata": {"type": "object"}, "run_name": {"type": "string"}}
    return {"title": "Config", "type": "object", "properties": {k: types[k] for k in CLIENT_KEYS},
            "additionalProperties": False}


def schemas_for(chain: Any, input_schema: Any = None, output_schema: Any = None) -> Schemas:
    """The schemas of ``chain``: LangChain's own for a LangChain runnable, else the types given (or Any)."""
    config = None
    if input_schema is None and output_schema is None and _is_langchain(chain):
        input_schema = chain.get_input_schema()
        output_schema = chain.get_output_schema()
        try:
            config = chain.config_schema(include=["configurable", "tags", "metadata", "run_name"]).model_json_schema()
        except Exception:  # a schema LangChain cannot build is no reason to refuse to serve
            config = None
    return Schemas(Any if input_schema is None else input_schema, Any if output_schema is None else output_schema,
                   config)


def _is_langchain(chain: Any) -> bool:
    return any(c.__module__.startswith("langchain_core.") and c.__name__ == "Runnable" for c in type(chain).__mro__)
