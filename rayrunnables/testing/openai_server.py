"""An OpenAI-compatible chat-completions server with real rate limits, for tests and benchmarks.

``OpenAIServer`` answers ``POST /v1/chat/completions`` (plain JSON, or server-sent events with
``"stream": true``) and ``GET /v1/models`` the way OpenAI's API does, well enough for the real
``openai`` client and ``langchain_openai.ChatOpenAI`` to talk to it::

    from langchain_openai import ChatOpenAI
    from rayrunnables.testing.openai_server import OpenAIServer

    with OpenAIServer(requests_per_minute=600, tokens_per_minute=60_000, latency=0.05) as server:
        llm = ChatOpenAI(base_url=server.base_url, api_key="test", model="test-model", max_retries=0)
        llm.invoke("Hello there").usage_metadata  # == the server's own counters
        server.stats()  # requests admitted, 429s by type, tokens served

It uses the standard library only (no Ray, no LangChain, no tokenizer download).

**Completions** are fake and deterministic: the word-and-punctuation tokens of the last user message in
reverse order, joined by single spaces (``"ok"`` when there are none), cut to ``max_completion_tokens``
(or ``max_tokens``; :data:`DEFAULT_MAX_TOKENS` when neither is sent), ``finish_reason`` ``"length"`` when
cut. A ``reply`` callable may supply other text; it is cut the same way. See :func:`fake_reply`.

**Tokens** are counted by a rule of its own, deliberately unlike a client's "4 characters per token"
estimate, so clients must correct their estimates from ``usage``: one token per match of
:data:`TOKEN_PATTERN` (``\\w+|[^\\w\\s]``: each run of word characters, and each other non-space character),
plus :data:`TOKENS_PER_MESSAGE` (3) per message and :data:`TOKENS_PER_REPLY` (3) per request. A message's
text is its ``content`` (a string, or the ``text`` of its text parts), its ``name`` and its tool calls'
function names and arguments; ``tools``/``functions`` definitions count as the tokens of their JSON. See
:func:`count_tokens` and :func:`count_prompt_tokens`. Every answer carries ``usage`` = {prompt_tokens,
completion_tokens, total_tokens}; a stream carries it in a last chunk when the request asks for it with
``"stream_options": {"include_usage": true}`` (``ChatOpenAI(stream_usage=True)``), as OpenAI's does.

**Rate limits** are enforced as providers do, per minute and over shorter windows too: each limit is a
token bucket that refills continuously at ``limit / 60`` per second and holds ``burst_seconds`` worth of
the limit (at least 1). A request costs 1 request and ``prompt_tokens + max_tokens`` tokens (the completion
budget it asks for, :data:`DEFAULT_MAX_TOKENS` when it asks for none), charged when it is admitted and never
refunded. A request is admitted when each bucket holds its cost, or is full when the cost is larger than
the bucket (the bucket then goes into debt), so the cost admitted in any window of ``w`` seconds is at most
``max(capacity, largest cost) + w * limit / 60``. Otherwise it is answered **429** with OpenAI's error body
``{"error": {"message", "type": "requests" | "tokens", "param": null, "code": "rate_limit_exceeded"}}``
and ``retry-after-ms`` (integer milliseconds) and ``retry-after`` (seconds, with 3 decimals) giving the
time until it would fit. A request whose token cost exceeds both the per-minute limit and the bucket can
never fit: it is answered 429 with type ``"tokens"``, a "Request too large" message, ``x-should-retry:
false`` and no ``retry-after`` (the openai client then does not retry it).

Every answer to a chat request, 200 or 429, carries OpenAI's ``x-ratelimit-limit-{requests,tokens}`` (the
per-minute limit), ``x-ratelimit-remaining-{requests,tokens}`` (what the bucket holds now, after this
request, rounded down) and ``x-ratelimit-reset-{requests,tokens}`` (the time until the bucket is full again,
formatted like OpenAI's: ``"120ms"``, ``"1.5s"``, ``"6m0s"``), for each limit that is set, unless
``limit_headers=False``.

**Security**: this is a test double. It binds the loopback interface (``127.0.0.1``) on a free port by
default, accepts any bearer key (or none), does no authentication, and trusts its client; do not bind it to
a public interface.
"""

from __future__ import annotations

import atexit
import itertools
import json
import math
import re
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_REPLY",
    "TOKEN_PATTERN",
    "Admission",
    "OpenAIServer",
    "ServerStats",
    "count_prompt_tokens",
    "count_tokens",
    "fake_reply",
    "format_duration",
]

TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")
"""One token per run of word characters and per other non-space character."""
TOKENS_PER_MESSAGE = 3
"""Overhead tokens for each message of a request (its role and framing)."""
TOKENS_PER_REPLY = 3
"""Overhead tokens for each request (priming the reply)."""
DEFAULT_MAX_TOKENS = 16
"""The completion budget of a request that sends neither ``max_completion_tokens`` nor ``max_tokens``:
its completion has at most this many tokens, and its token cost counts this many."""

_PIECE = re.compile(r"\s*(?:\w+|[^\w\s])")
_EPSILON = 1e-9


# --------------------------------------------------------------------------------------------- tokens


def count_tokens(text: str) -> int:
    """The number of tokens in ``text``: matches of :data:`TOKEN_PATTERN`."""
    return len(TOKEN_PATTERN.findall(text))


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                texts.append(part["text"])
        return "\n".join(texts)
    return ""


def count_prompt_tokens(request: Mapping[str, Any]) -> int:
    """The prompt tokens of a chat-completions request body, by the module's rule (see its docstring)."""
    total = TOKENS_PER_REPLY
    for message in request.get("messages") or []:
        if not isinstance(message, Mapping):
            continue
        total += TOKENS_PER_MESSAGE + count_tokens(_content_text(message.get("content")))
        if isinstance(message.get("name"), str):
            total += count_tokens(message["name"])
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(function, Mapping):
                total += count_tokens(str(function.get("name") or ""))
                total += count_tokens(str(function.get("arguments") or ""))
    for key in ("tools", "functions"):
        if request.get(key):
            total += count_tokens(json.dumps(request[key], sort_keys=True))
    return total


def _last_user_text(request: Mapping[str, Any]) -> str:
    messages = [m for m in request.get("messages") or [] if isinstance(m, Mapping)]
    users = [m for m in messages if m.get("role") == "user"] or messages
    return _content_text(users[-1].get("content")) if users else ""


def _cut(text: str, max_tokens: int) -> tuple[str, str]:
    """``text`` cut to ``max_tokens`` tokens (then joined by single spaces), and its finish reason."""
    tokens = TOKEN_PATTERN.findall(text)
    if len(tokens) > max_tokens:
        return " ".join(tokens[:max_tokens]), "length"
    return text, "stop"


def fake_reply(text: str, max_tokens: int = DEFAULT_MAX_TOKENS) -> str:
    """The server's default completion for a last user message ``text``: its tokens reversed, joined by
    single spaces, at most ``max_tokens`` of them (``"ok"`` when ``text`` has none)."""
    tokens = TOKEN_PATTERN.findall(text)
    return _cut(" ".join(reversed(tokens)) if tokens else "ok", max_tokens)[0]


def _pieces(text: str) -> list[str]:
    """``text`` split into one piece per token (with the space before it); the pieces add up to ``text``."""
    pieces = _PIECE.findall(text)
    rest = text[sum(map(len, pieces)) :]
    if rest:
        if pieces:
            pieces[-1] += rest
        else:
            pieces.append(rest)
    return pieces


def format_duration(seconds: float) -> str:
    """A duration the way OpenAI's ``x-ratelimit-reset-*`` headers write it: ``"0s"``, ``"120ms"``,
    ``"1.5s"``, ``"6m0s"``, ``"1h2m3s"`` (rounded up to the millisecond)."""
    ms = math.ceil(seconds * 1000 - _EPSILON) if seconds > 0 else 0
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    text = f"{hours}h" if hours else ""
    if hours or minutes:
        text += f"{minutes}m"
    return f"{text}{secs}s"


# ----------------------------------------------------------------------------------------- limits


class _Bucket:
    """A limit per minute as a token bucket: refills at ``limit / 60`` per second up to ``capacity``."""

    def __init__(self, per_minute: float, burst_seconds: float, now: float) -> None:
        self.limit = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(per_minute * burst_seconds / 60.0, 1.0)
        self.level = self.capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, cost: float) -> float:
        """Seconds until a request of ``cost`` fits (0 when it fits now)."""
        need = min(cost, self.capacity)
        return 0.0 if self.level + _EPSILON >= need else (need - self.level) / self.rate

    def too_large(self, cost: float) -> bool:
        return cost > self.capacity and cost > self.limit

    def remaining(self) -> int:
        return max(0, math.floor(self.level + _EPSILON))

    def reset_after(self) -> float:
        return max(0.0, (self.capacity - self.level) / self.rate)


@dataclass(frozen=True)
class Admission:
    """One admitted request, as logged by the server."""

    time: float
    """``time.monotonic()`` when it was admitted (its cost charged)."""
    prompt_tokens: int
    max_tokens: int
    """The completion budget charged: the request's ``max_completion_tokens``/``max_tokens``, or the default."""
    cost: int
    """Tokens charged to the token bucket: ``prompt_tokens + max_tokens``."""
    completion_tokens: int
    stream: bool


@dataclass(frozen=True)
class ServerStats:
    """A consistent snapshot of the server's counters (since it started or was last ``reset()``)."""

    requests_admitted: int
    rate_limited_requests: int
    """429s of type ``"requests"``."""
    rate_limited_tokens: int
    """429s of type ``"tokens"`` that can fit later (they carry ``retry-after``)."""
    too_large: int
    """429s of type ``"tokens"`` for requests that can never fit (``x-should-retry: false``)."""
    refused: int
    """503s answered once ``max_requests`` was spent."""
    bad_requests: int
    """400s (malformed chat requests) and 404s."""
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    """Sums of the ``usage`` of every admitted request (counted when admitted)."""

    @property
    def rejected(self) -> int:
        """Every 429 answered."""
        return self.rate_limited_requests + self.rate_limited_tokens + self.too_large


# ----------------------------------------------------------------------------------------- server


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, type_: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type_, "param": param, "code": code}}


_live_servers: weakref.WeakSet[OpenAIServer] = weakref.WeakSet()


@atexit.register
def _close_live_servers() -> None:
    for server in list(_live_servers):
        server.close()


class OpenAIServer:
    """An OpenAI-compatible chat-completions server with request and token rate limits (module docstring).

    It binds and starts serving (in a daemon thread) when constructed; ``close()`` (or leaving a ``with``
    block, or the interpreter exiting) stops it.

    Args:
        requests_per_minute: the request limit (RPM); None for none.
        tokens_per_minute: the token limit (TPM), on ``prompt_tokens + max_tokens``; None for none.
        burst_seconds: each bucket holds this many seconds' worth of its limit (at least 1).
        latency: seconds each admitted request takes before its answer (a stream spreads its tokens over it).
        latency_per_token: more seconds per completion token.
        limit_headers: send the ``x-ratelimit-*`` headers (False: clients must learn limits from 429s alone).
        retry_after_headers: send ``retry-after``/``retry-after-ms`` on 429s.
        reply: ``reply(request_body) -> str`` gives a completion's text instead of :func:`fake_reply`'s; it
            is cut to the request's ``max_tokens`` all the same.
        max_requests: a safety bound: chat requests after this many (since start, admitted or not) are
            answered 503 with ``x-should-retry: false``.
        max_seconds: a safety bound: the server closes itself this many seconds after it started.
        host, port: where to bind; by default the loopback interface on a free port.
    """

    def __init__(
        self,
        *,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        burst_seconds: float = 1.0,
        latency: float = 0.05,
        latency_per_token: float = 0.0,
        limit_headers: bool = True,
        retry_after_headers: bool = True,
        reply: Callable[[dict[str, Any]], str] | None = None,
        max_requests: int | None = None,
        max_seconds: float | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        for name, value in (("requests_per_minute", requests_per_minute), ("tokens_per_minute", tokens_per_minute)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None, not {value!r}")
        if not burst_seconds > 0:
            raise ValueError(f"burst_seconds must be positive, not {burst_seconds!r}")
        if latency < 0 or latency_per_token < 0:
            raise ValueError("latency and latency_per_token must not be negative")
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.burst_seconds = burst_seconds
        self.latency = latency
        self.latency_per_token = latency_per_token
        self.limit_headers = limit_headers
        self.retry_after_headers = retry_after_headers
        self.reply = reply
        self.max_requests = max_requests
        self.max_seconds = max_seconds

        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._ids = itertools.count(1)
        self._received = 0
        self._connections: set[socket.socket] = set()
        self._connections_done = threading.Condition(self._lock)
        self._last_request: dict[str, Any] | None = None
        self._request_bucket: _Bucket | None = None
        self._token_bucket: _Bucket | None = None
        self._zero()
        self._fill_buckets()

        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.owner = self
        self.host: str = host
        self.port: int = self._httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self.base_url = f"{self.url}/v1"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"OpenAIServer:{self.port}"
        )
        self._thread.daemon = True
        self._thread.start()
        self._timer: threading.Timer | None = None
        if max_seconds is not None:
            self._timer = threading.Timer(max_seconds, self.close)
            self._timer.daemon = True
            self._timer.start()
        _live_servers.add(self)

    # ----------------------------------------------------------------------------------- life cycle

    def __enter__(self) -> OpenAIServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.base_url
        return (
            f"OpenAIServer({state}, requests_per_minute={self.requests_per_minute}, "
            f"tokens_per_minute={self.tokens_per_minute})"
        )

    @property
    def closed(self) -> bool:
        return self._closing.is_set()

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving, free the port, end open connections (requests in flight are dropped) and join."""
        with self._lock:
            if self._closing.is_set():
                return
            self._closing.set()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()
        self._httpd.shutdown()
        self._httpd.server_close()
        deadline = time.monotonic() + timeout
        with self._lock:
            for connection in list(self._connections):
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            while self._connections and (left := deadline - time.monotonic()) > 0:
                self._connections_done.wait(left)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        _live_servers.discard(self)

    def _opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def _ended(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)
            self._connections_done.notify_all()

    # ------------------------------------------------------------------------------------- counters

    def _zero(self) -> None:
        self._admitted = 0
        self._limited = {"requests": 0, "tokens": 0}
        self._too_large = 0
        self._refused = 0
        self._bad = 0
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._admissions: list[Admission] = []

    def _fill_buckets(self) -> None:
        now = time.monotonic()
        rpm, tpm = self.requests_per_minute, self.tokens_per_minute
        self._request_bucket = None if rpm is None else _Bucket(rpm, self.burst_seconds, now)
        self._token_bucket = None if tpm is None else _Bucket(tpm, self.burst_seconds, now)

    def reset(self, *, buckets: bool = True) -> None:
        """Zero the counters and the admission log; with ``buckets``, fill the rate-limit buckets again."""
        with self._lock:
            self._zero()
            self._last_request = None
            if buckets:
                self._fill_buckets()

    def stats(self) -> ServerStats:
        """A consistent snapshot of every counter."""
        with self._lock:
            return ServerStats(
                requests_admitted=self._admitted,
                rate_limited_requests=self._limited["requests"],
                rate_limited_tokens=self._limited["tokens"],
                too_large=self._too_large,
                refused=self._refused,
                bad_requests=self._bad,
                prompt_tokens=self._prompt_tokens,
                completion_tokens=self._completion_tokens,
                total_tokens=self._prompt_tokens + self._completion_tokens,
            )

    @property
    def requests_admitted(self) -> int:
        return self.stats().requests_admitted

    @property
    def rate_limited(self) -> dict[str, int]:
        """429s that can fit later, by type: ``{"requests": n, "tokens": n}``."""
        with self._lock:
            return dict(self._limited)

    @property
    def rejected(self) -> int:
        """Every 429 answered (rate-limited and too large)."""
        return self.stats().rejected

    @property
    def too_large(self) -> int:
        return self.stats().too_large

    @property
    def prompt_tokens(self) -> int:
        return self.stats().prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self.stats().completion_tokens

    @property
    def total_tokens(self) -> int:
        return self.stats().total_tokens

    @property
    def admissions(self) -> list[Admission]:
        """Every admitted request, in admission order (a copy)."""
        with self._lock:
            return list(self._admissions)

    @property
    def admission_times(self) -> list[float]:
        """``time.monotonic()`` of each admission, in order."""
        with self._lock:
            return [a.time for a in self._admissions]

    @property
    def last_request(self) -> dict[str, Any] | None:
        """The last chat request received: ``{"headers": {...}, "body": {...}}`` (lower-case header names)."""
        with self._lock:
            return self._last_request

    @property
    def request_capacity(self) -> float | None:
        """The request bucket's capacity (None when unlimited)."""
        return None if self._request_bucket is None else self._request_bucket.capacity

    @property
    def token_capacity(self) -> float | None:
        """The token bucket's capacity (None when unlimited)."""
        return None if self._token_bucket is None else self._token_bucket.capacity

    # ------------------------------------------------------------------------------------- requests

    def _limit_headers(self) -> dict[str, str]:
        """The x-ratelimit-* headers as the buckets stand now (call under the lock)."""
        if not self.limit_headers:
            return {}
        headers = {}
        for kind, bucket in (("requests", self._request_bucket), ("tokens", self._token_bucket)):
            if bucket is not None:
                limit = f"{bucket.limit:.0f}" if bucket.limit >= 1 else f"{bucket.limit:g}"  # integers, as OpenAI's
                headers[f"x-ratelimit-limit-{kind}"] = limit
                headers[f"x-ratelimit-remaining-{kind}"] = str(bucket.remaining())
                headers[f"x-ratelimit-reset-{kind}"] = format_duration(bucket.reset_after())
        return headers

    def _parse(self, raw: bytes) -> tuple[dict[str, Any], int, int]:
        """The request body, its prompt tokens and its completion budget; 400 when malformed."""
        try:
            body = json.loads(raw or b"null")
        except ValueError as exc:
            raise _HTTPError(400, f"could not parse the JSON body: {exc}", "invalid_request_error") from None
        if not isinstance(body, dict):
            raise _HTTPError(400, "the body must be a JSON object", "invalid_request_error")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _HTTPError(400, "'messages' must be a non-empty array", "invalid_request_error", param="messages")
        if body.get("n", 1) not in (None, 1):
            raise _HTTPError(400, "this test server answers n=1 only", "invalid_request_error", param="n")
        budget = body.get("max_completion_tokens")
        param = "max_completion_tokens"
        if budget is None:
            budget, param = body.get("max_tokens"), "max_tokens"
        if budget is None:
            budget = DEFAULT_MAX_TOKENS
        elif isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise _HTTPError(400, f"'{param}' must be an integer >= 1", "invalid_request_error", param=param)
        return body, count_prompt_tokens(body), budget

    def _admit(self, body: dict[str, Any], prompt_tokens: int, budget: int, completion_tokens: int) -> dict[str, str]:
        """Charge the request to the buckets and count it, or raise the 429 (or 503) to answer; the headers."""
        cost = prompt_tokens + budget
        model = str(body.get("model") or "test-model")
        with self._lock:
            self._received += 1
            if self.max_requests is not None and self._received > self.max_requests:
                self._refused += 1
                message = f"this test server's max_requests ({self.max_requests}) is spent"
                error = _HTTPError(503, message, "server_error", "max_requests")
                raise _Refusal(error, {"x-should-retry": "false"})
            now = time.monotonic()
            waits: dict[str, float] = {}
            for kind, bucket, amount in (("requests", self._request_bucket, 1), ("tokens", self._token_bucket, cost)):
                if bucket is not None:
                    bucket.refill(now)
                    waits[kind] = bucket.wait_for(amount)
            tokens = self._token_bucket
            if tokens is not None and tokens.too_large(cost):
                self._too_large += 1
                message = (
                    f"Request too large for {model} on tokens per min (TPM): Limit {tokens.limit:g}, "
                    f"Requested {cost}. The input or output tokens must be reduced in order to run successfully."
                )
                error = _HTTPError(429, message, "tokens", "rate_limit_exceeded")
                raise _Refusal(error, {**self._limit_headers(), "x-should-retry": "false"})
            wait = max(waits.values(), default=0.0)
            if wait > 0:
                kind = max(waits, key=lambda k: waits[k])
                self._limited[kind] += 1
                bucket = self._request_bucket if kind == "requests" else self._token_bucket
                assert bucket is not None
                what = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
                message = (
                    f"Rate limit reached for {model} on {what}: Limit {bucket.limit:g}, "
                    f"Remaining {bucket.remaining()}, Requested {1 if kind == 'requests' else cost}. "
                    f"Please try again in {format_duration(wait)}."
                )
                headers = self._limit_headers()
                if self.retry_after_headers:
                    ms = max(1, math.ceil(wait * 1000 - _EPSILON))
                    headers["retry-after-ms"] = str(ms)
                    headers["retry-after"] = f"{ms / 1000:.3f}"
                raise _Refusal(_HTTPError(429, message, kind, "rate_limit_exceeded"), headers)
            if self._request_bucket is not None:
                self._request_bucket.level -= 1
            if self._token_bucket is not None:
                self._token_bucket.level -= cost
            self._admitted += 1
            self._prompt_tokens += prompt_tokens
            self._completion_tokens += completion_tokens
            self._admissions.append(
                Admission(now, prompt_tokens, budget, cost, completion_tokens, bool(body.get("stream")))
            )
            return self._limit_headers()

    def _complete(self, body: dict[str, Any], budget: int) -> tuple[str, str]:
        if self.reply is not None:
            return _cut(self.reply(body), budget)
        tokens = TOKEN_PATTERN.findall(_last_user_text(body))
        return _cut(" ".join(reversed(tokens)) if tokens else "ok", budget)

    def _chat(self, handler: _Handler, raw: bytes) -> None:
        request_id = next(self._ids)
        headers = {"x-request-id": f"req_{request_id:012d}"}
        try:
            body, prompt_tokens, budget = self._parse(raw)
        except _HTTPError as error:
            with self._lock:
                self._bad += 1
            handler.send_json(error.status, error.body, headers)
            return
        with self._lock:
            self._last_request = {"headers": {k.lower(): v for k, v in handler.headers.items()}, "body": body}
        try:
            text, finish_reason = self._complete(body, budget)
        except Exception as exc:  # the reply callable failed: a 500 the client will not retry
            failure = _HTTPError(500, f"the reply callable raised {exc!r}", "server_error")
            handler.send_json(500, failure.body, {**headers, "x-should-retry": "false"})
            return
        completion_tokens = count_tokens(text)
        try:
            headers.update(self._admit(body, prompt_tokens, budget, completion_tokens))
        except _Refusal as refusal:
            handler.send_json(refusal.error.status, refusal.error.body, {**headers, **refusal.headers})
            return
        started = time.monotonic()
        duration = self.latency + self.latency_per_token * completion_tokens
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        common = {
            "id": f"chatcmpl-{request_id:012d}",
            "created": int(time.time()),
            "model": str(body.get("model") or "test-model"),
            "system_fingerprint": None,
        }
        if not body.get("stream"):
            if self._closing.wait(duration):
                handler.close_connection = True
                return
            answer = {
                **common,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
                "usage": usage,
            }
            handler.send_json(200, answer, headers)
            return
        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, Mapping) and bool(stream_options.get("include_usage"))
        handler.send_events(self._events(common, text, finish_reason, usage, include_usage, started, duration), headers)

    def _events(
        self,
        common: dict[str, Any],
        text: str,
        finish_reason: str,
        usage: dict[str, int],
        include_usage: bool,
        started: float,
        duration: float,
    ) -> Iterator[dict[str, Any] | None]:
        """The chunks of a stream, each sent when due (None: the server is closing; stop)."""

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**common, "object": "chat.completion.chunk", "choices": [choice]} | (
                {"usage": None} if include_usage else {}
            )

        yield chunk({"role": "assistant", "content": "", "refusal": None})
        pieces = _pieces(text)
        for i, piece in enumerate(pieces):
            if self._closing.wait(max(0.0, started + duration * (i + 1) / len(pieces) - time.monotonic())):
                yield None
                return
            yield chunk({"content": piece})
        if self._closing.wait(max(0.0, started + duration - time.monotonic())):
            yield None
            return
        yield chunk({}, finish_reason)
        if include_usage:
            yield {**common, "object": "chat.completion.chunk", "choices": [], "usage": usage}

    def _models(self) -> dict[str, Any]:
        with self._lock:
            last = self._last_request
        names = ["test-model"]
        if last is not None and isinstance(last["body"].get("model"), str) and last["body"]["model"] not in names:
            names.append(last["body"]["model"])
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "rayrunnables"} for name in names],
        }


class _Refusal(Exception):
    def __init__(self, error: _HTTPError, headers: dict[str, str]) -> None:
        super().__init__(str(error))
        self.error = error
        self.headers = headers


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    owner: OpenAIServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Connections dropped by either side are part of the job: no traceback on stderr for them."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)) and not self.owner.closed:
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    server_version = "rayrunnables-test-openai"

    def setup(self) -> None:
        super().setup()
        self.server.owner._opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._ended(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: no line per request on stderr."""

    def _body(self) -> bytes:
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/")

    def do_GET(self) -> None:
        path = self._path()
        owner = self.server.owner
        if path == "/v1/models":
            self.send_json(200, owner._models(), {})
        elif path.startswith("/v1/models/"):
            name = path[len("/v1/models/") :]
            self.send_json(200, {"id": name, "object": "model", "created": 0, "owned_by": "rayrunnables"}, {})
        else:
            self._not_found(path)

    def do_POST(self) -> None:
        raw = self._body()
        path = self._path()
        if path == "/v1/chat/completions":
            self.server.owner._chat(self, raw)
        else:
            self._not_found(path)

    def _not_found(self, path: str) -> None:
        owner = self.server.owner
        with owner._lock:
            owner._bad += 1
        error = _HTTPError(404, f"this test server has no {self.command} {path}", "invalid_request_error")
        self.send_json(404, error.body, {})

    def send_json(self, status: int, body: Any, headers: Mapping[str, str]) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True

    def send_events(self, events: Iterator[dict[str, Any] | None], headers: Mapping[str, str]) -> None:
        """A server-sent-event stream in chunked transfer encoding, ended by ``data: [DONE]``."""
        try:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream; charset=utf-8")
            self.send_header("cache-control", "no-cache")
            self.send_header("transfer-encoding", "chunked")
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            for event in events:
                if event is None:
                    self.close_connection = True
                    return
                self._chunk(f"data: {json.dumps(event)}\n\n".encode())
            self._chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
