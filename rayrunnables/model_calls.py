"""What a model call costs and how a provider says "too many": read from the objects themselves.

Duck-typed on purpose, so the core imports neither langchain nor a provider's client: a LangChain
prompt value or message list is read through ``to_messages()``/``content``, usage through
``usage_metadata`` (LangChain's ``AIMessage``, streamed chunks) or ``llm_output["token_usage"]``
(``LLMResult``), and a rate-limit error through ``status_code`` / ``response.status_code`` and the
response's headers (openai's, anthropic's and httpx's errors all look like that).
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "CHARS_PER_TOKEN",
    "estimate_tokens",
    "usage_of",
    "charged_tokens",
    "is_rate_limit_error",
    "retry_after_of",
    "named_limits_of",
    "named_limits_in",
    "limit_kind_of",
    "max_tokens_of",
]

CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb for English; the pacer's running ratio corrects it
MESSAGE_OVERHEAD = 4  # tokens a chat format adds per message (role, separators)


def _text(value: Any) -> str:
    """The text a model would read from one message's content (a string, or a list of parts)."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return str(value.get("text", "")) if value.get("type", "text") == "text" else ""
    if isinstance(value, Iterable):
        return "".join(_text(part) for part in value)
    return str(value)


def _message_chars(messages: Iterable[Any]) -> tuple[int, int]:
    chars = count = 0
    for message in messages:
        count += 1
        if isinstance(message, tuple) and len(message) == 2:  # ("human", "text")
            chars += len(_text(message[1]))
        elif isinstance(message, Mapping):
            chars += len(_text(message.get("content", "")))
        else:
            chars += len(_text(getattr(message, "content", message)))
    return chars, count


def estimate_tokens(input: Any) -> int:
    """Tokens a model would count in ``input``: a string, a prompt value, a list of messages, or a dict
    of prompt variables (their text; the template's own words are learned by the pacer's ratio)."""
    if hasattr(input, "to_messages"):
        input = input.to_messages()
    if isinstance(input, str):
        return -(-len(input) // CHARS_PER_TOKEN)
    if isinstance(input, Mapping):
        if "content" in input and "role" in input:
            input = [input]
        else:
            return sum(estimate_tokens(value) for value in input.values())
    if isinstance(input, (list, tuple)):
        chars, count = _message_chars(input)
        return -(-chars // CHARS_PER_TOKEN) + MESSAGE_OVERHEAD * count
    if input is None:
        return 0
    return -(-len(str(input)) // CHARS_PER_TOKEN)


def _usage_dict(usage: Any) -> tuple[int, int] | None:
    if not isinstance(usage, Mapping):
        return None
    if "input_tokens" in usage or "output_tokens" in usage:
        return int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    return None


def usage_of(output: Any) -> tuple[int, int] | None:
    """(input tokens, output tokens) the provider reported in a model's output, or None when it says none.

    Reads an ``AIMessage``/chunk's ``usage_metadata``, an ``LLMResult``'s ``llm_output["token_usage"]`` or
    its generations' messages, and a dict one level deep (``{"answer": AIMessage, ...}``)."""
    found = _usage_dict(getattr(output, "usage_metadata", None))
    if found is not None:
        return found
    llm_output = getattr(output, "llm_output", None)
    if isinstance(llm_output, Mapping):
        found = _usage_dict(llm_output.get("token_usage") or llm_output.get("usage"))
        if found is not None:
            return found
    generations = getattr(output, "generations", None)
    if isinstance(generations, list):
        return _sum(usage_of(getattr(g, "message", None)) for row in generations for g in row)
    if isinstance(output, Mapping) and not isinstance(output, str):
        return _sum(_usage_dict(getattr(v, "usage_metadata", None)) for v in output.values())
    return None


def _sum(parts: Iterable[tuple[int, int] | None]) -> tuple[int, int] | None:
    seen = [p for p in parts if p is not None]
    if not seen:
        return None
    return sum(p[0] for p in seen), sum(p[1] for p in seen)


def charged_tokens(usage: tuple[int, int], max_tokens: int | None) -> int:
    """Tokens a provider charges a call against its per-minute limit: it books ``max_tokens`` of output
    when it admits the call, and does not give back what the answer did not use."""
    prompt, completion = usage
    return prompt + max(completion, max_tokens or 0)


# ---- 429s -----------------------------------------------------------------------------------------------------
def _causes(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _status(exc: BaseException) -> Any:
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    return status


def is_rate_limit_error(exc: BaseException) -> bool:
    """A provider's "too many requests": HTTP status 429 on the error or its response (openai, anthropic,
    httpx, requests), or a class named ``RateLimitError``, on the error or any error it was raised from."""
    for err in _causes(exc):
        if _status(err) == 429 or any(cls.__name__ == "RateLimitError" for cls in type(err).__mro__):
            return True
    return False


def _headers(exc: BaseException) -> Mapping[str, Any]:
    for err in _causes(exc):
        headers = getattr(getattr(err, "response", None), "headers", None)
        if headers is not None and hasattr(headers, "get"):
            return headers  # type: ignore[no-any-return]
    return {}


def _seconds(value: Any) -> float | None:
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        pass
    try:
        when = email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def retry_after_of(exc: BaseException) -> float | None:
    """Seconds the provider asked to wait: ``retry-after-ms``, ``retry-after`` (seconds or an HTTP date),
    or a ``retry_after`` attribute; None when it did not say."""
    headers = _headers(exc)
    ms = _seconds(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000
    seconds = _seconds(headers.get("retry-after"))
    if seconds is not None:
        return seconds
    for err in _causes(exc):
        seconds = _seconds(getattr(err, "retry_after", None))
        if seconds is not None:
            return seconds
    return None


def _named_limits(headers: Mapping[str, Any]) -> tuple[float | None, float | None]:
    named = []
    for kind in ("requests", "tokens"):
        value = _seconds(headers.get(f"x-ratelimit-limit-{kind}"))
        named.append(value / 60 if value else None)
    return named[0], named[1]


def named_limits_of(exc: BaseException) -> tuple[float | None, float | None]:
    """Requests and tokens per second that the provider named in ``x-ratelimit-limit-*`` (per minute)."""
    return _named_limits(_headers(exc))


def named_limits_in(output: Any) -> tuple[float | None, float | None]:
    """The same, from a successful answer's headers where the client keeps them (LangChain's
    ``response_metadata["headers"]``, with ``ChatOpenAI(include_response_headers=True)``)."""
    metadata = getattr(output, "response_metadata", None)
    headers = metadata.get("headers") if isinstance(metadata, Mapping) else None
    if not isinstance(headers, Mapping):
        return None, None
    return _named_limits({str(k).lower(): v for k, v in headers.items()})


_KIND = re.compile(r"\b(requests|tokens) per min", re.IGNORECASE)


def limit_kind_of(exc: BaseException) -> str | None:
    """Which limit the provider said was reached (``"requests"``, ``"tokens"``), from its error body or message."""
    for err in _causes(exc):
        body = getattr(err, "body", None)
        if isinstance(body, Mapping):
            inner = body.get("error", body)
            kind = inner.get("type") if isinstance(inner, Mapping) else None
            if kind in ("requests", "tokens"):
                return str(kind)
        found = _KIND.search(str(err))
        if found:
            return found.group(1).lower()
    return None


def max_tokens_of(obj: Any, depth: int = 3) -> int | None:
    """The most output tokens a step's model may produce (``max_tokens``, ``max_completion_tokens`` or
    ``max_output_tokens``), looked for on the step and the objects it wraps, a few levels down; arguments
    bound to a call (``model.bind(max_tokens=...)``) before the model's own."""
    kwargs = getattr(obj, "kwargs", None)
    if isinstance(kwargs, Mapping):
        for attr in ("max_tokens", "max_completion_tokens"):
            value = kwargs.get(attr)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    for attr in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = getattr(obj, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    if depth == 0:
        return None
    inner = [getattr(obj, attr, None) for attr in ("bound", "func", "obj")]
    steps = getattr(obj, "steps", None)
    for step in [*inner, *(steps if isinstance(steps, (list, tuple)) else [])]:
        if step is not None and step is not obj:
            found = max_tokens_of(step, depth - 1)
            if found is not None:
                return found
    return None
