"""The OpenAI-compatible test server, driven by the real ``langchain_openai.ChatOpenAI`` and ``openai`` clients.

Limits are high and buckets short (fractions of a second) so the whole file runs in a few seconds. The
rate-limit invariants are checked from the server's own admission log, which is stamped under the same
lock and clock as its buckets, so they hold exactly however slow the machine is.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

openai = pytest.importorskip("openai")
langchain_openai = pytest.importorskip("langchain_openai")

from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage  # noqa: E402

from rayrunnables.testing.openai_server import (  # noqa: E402
    DEFAULT_MAX_TOKENS,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_REPLY,
    Admission,
    OpenAIServer,
    count_prompt_tokens,
    count_tokens,
    fake_reply,
    format_duration,
)

pytestmark = pytest.mark.timeout(60)

TEXT = "The quick brown fox, it seems, jumps over the lazy dog again and again!"
DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")


def chat(server: OpenAIServer, **kwargs: Any) -> Any:
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("max_tokens", 8)
    return langchain_openai.ChatOpenAI(base_url=server.base_url, api_key="test", model="test-model", **kwargs)


def raw_client(server: OpenAIServer, **kwargs: Any) -> Any:
    kwargs.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=server.base_url, api_key="test", **kwargs)


def rate_limit_error(call: Callable[[], Any], attempts: int = 50) -> Any:
    """Call until the server answers 429 (the bucket is empty); the error."""
    for _ in range(attempts):
        try:
            call()
        except openai.RateLimitError as exc:
            return exc
    raise AssertionError(f"no 429 in {attempts} calls")


def fire(call: Callable[[], Any], n: int, threads: int = 4) -> tuple[int, list[Exception]]:
    """``n`` calls from ``threads`` threads at once: (successes, errors)."""
    barrier = threading.Barrier(threads)

    def worker(count: int) -> list[Exception | None]:
        barrier.wait()
        results: list[Exception | None] = []
        for _ in range(count):
            try:
                call()
                results.append(None)
            except Exception as exc:
                results.append(exc)
        return results

    with ThreadPoolExecutor(threads) as pool:
        outcomes = [r for f in [pool.submit(worker, n // threads) for _ in range(threads)] for r in f.result()]
    errors = [e for e in outcomes if e is not None]
    return len(outcomes) - len(errors), errors


def assert_windows_hold(admissions: list[Admission], capacity: float, per_minute: float, cost: str) -> None:
    """For every run of consecutive admissions i..j: their cost <= capacity + refill over (t_i, t_j)."""
    costs = [1 if cost == "requests" else a.cost for a in admissions]
    rate = per_minute / 60
    for i in range(len(admissions)):
        total = 0
        for j in range(i, len(admissions)):
            total += costs[j]
            allowed = max(capacity, max(costs[i : j + 1])) + rate * (admissions[j].time - admissions[i].time)
            assert total <= allowed + 1e-6, (i, j, total, allowed)


# ------------------------------------------------------------------------------------------- rules


def test_token_rule_and_fake_reply() -> None:
    assert count_tokens("Hello, world!") == 4
    assert count_tokens("don't stop...") == 7  # don ' t stop . . .
    assert count_tokens("  ") == 0
    # deliberately unlike a client's ~4 characters per token
    assert count_tokens("Internationalization considerations") == 2
    assert count_tokens("a, b; c") == 5
    assert count_tokens(TEXT) == 17
    body = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": TEXT}]}
    assert count_prompt_tokens(body) == TOKENS_PER_REPLY + 2 * TOKENS_PER_MESSAGE + 3 + 17
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a b"}, {"type": "image_url"}]}]}
    assert count_prompt_tokens(parts) == TOKENS_PER_REPLY + TOKENS_PER_MESSAGE + 2
    assert fake_reply("one two, three") == "three , two one"
    assert fake_reply(TEXT, 3) == "! again and"
    assert fake_reply("", 5) == "ok"
    assert count_tokens(fake_reply(TEXT * 3)) == DEFAULT_MAX_TOKENS


def test_format_duration_is_openais() -> None:
    assert [format_duration(s) for s in (0, 0.0001, 0.12, 1, 1.5, 59.999, 360, 3723.5)] == [
        "0s",
        "1ms",
        "120ms",
        "1s",
        "1.5s",
        "59.999s",
        "6m0s",
        "1h2m3.5s",
    ]


def test_the_module_imports_neither_ray_nor_langchain() -> None:
    code = (
        "import sys, rayrunnables.testing.openai_server\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('ray', 'langchain_core', 'langchain_openai', 'openai')]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------------- answers


def test_invoke_usage_equals_the_server_counters() -> None:
    with OpenAIServer(latency=0) as server:
        llm = chat(server, max_tokens=8)
        message = llm.invoke([SystemMessage("Be brief."), HumanMessage(TEXT)])
        stats = server.stats()
        assert message.content == fake_reply(TEXT, 8)
        assert message.response_metadata["finish_reason"] == "length"
        assert message.usage_metadata["input_tokens"] == stats.prompt_tokens == TOKENS_PER_REPLY + 6 + 3 + 17
        assert message.usage_metadata["output_tokens"] == stats.completion_tokens == 8
        assert message.usage_metadata["total_tokens"] == stats.total_tokens == stats.prompt_tokens + 8
        assert stats.requests_admitted == 1 and stats.rejected == 0
        # what ChatOpenAI sends: max_tokens as max_completion_tokens, a bearer key
        last = server.last_request
        assert last is not None
        assert last["body"]["max_completion_tokens"] == 8 and "max_tokens" not in last["body"]
        assert last["headers"]["authorization"] == "Bearer test"
        [admission] = server.admissions
        assert admission.cost == stats.prompt_tokens + 8 and not admission.stream

        # without max_tokens the completion is cut to the default, which is also what it costs
        server.reset()
        long = chat(server, max_tokens=None).invoke(TEXT * 2)
        assert long.usage_metadata["output_tokens"] == DEFAULT_MAX_TOKENS
        assert server.admissions[0].max_tokens == DEFAULT_MAX_TOKENS
        short = chat(server, max_tokens=None).invoke("two words")
        assert short.content == "words two" and short.response_metadata["finish_reason"] == "stop"


def test_stream_chunks_add_up_with_usage() -> None:
    with OpenAIServer(latency=0.2) as server:
        llm = chat(server, max_tokens=6)
        invoked = llm.invoke(TEXT)
        server.reset()
        arrivals: list[float] = []
        chunks: list[AIMessageChunk] = []
        for chunk in llm.stream(TEXT, stream_usage=True):
            chunks.append(chunk)
            if chunk.content:
                arrivals.append(time.monotonic())
        total = chunks[0]
        for chunk in chunks[1:]:
            total = total + chunk
        stats = server.stats()
        assert total.content == invoked.content
        assert len(arrivals) == 6  # one chunk per token, spread over the latency (one every 0.2 / 6 s)
        assert arrivals[-1] - server.admission_times[0] >= 0.2 and arrivals[-1] - arrivals[0] >= 0.05
        assert total.usage_metadata is not None
        assert total.usage_metadata["input_tokens"] == stats.prompt_tokens
        assert total.usage_metadata["output_tokens"] == stats.completion_tokens == 6
        assert total.usage_metadata["total_tokens"] == stats.total_tokens
        assert server.last_request["body"]["stream_options"] == {"include_usage": True}  # type: ignore[index]
        assert server.admissions[0].stream

        # ChatOpenAI with a base_url leaves stream_usage off: no usage in the stream, still counted
        quiet = list(llm.stream(TEXT))
        assert all(c.usage_metadata is None for c in quiet)
        assert server.stats().completion_tokens == 12


def test_async_client_and_concurrent_requests_overlap() -> None:
    together = threading.Barrier(4, timeout=20)  # passed only when all four requests are being served at once

    def reply(body: dict[str, Any]) -> str:
        together.wait()
        return str(body["messages"][-1]["content"])

    with OpenAIServer(latency=0, reply=reply) as server:
        llm = chat(server)

        async def four() -> list[Any]:
            return await asyncio.gather(*(llm.ainvoke(f"request {i}") for i in range(4)))

        answers = asyncio.run(four())
        assert [a.content for a in answers] == [f"request {i}" for i in range(4)]
        assert server.requests_admitted == 4


def test_a_reply_callable_gives_the_text_cut_to_max_tokens() -> None:
    def reply(body: dict[str, Any]) -> str:
        if body["messages"][-1]["content"] == "fail":
            raise RuntimeError("no reply")
        return "Summary: " + body["messages"][-1]["content"].upper()

    with OpenAIServer(latency=0, reply=reply) as server:
        llm = chat(server, max_tokens=4, max_retries=2)
        assert llm.invoke("short text").content == "Summary: SHORT TEXT"  # 4 tokens: kept as it is
        assert llm.invoke("one two three four").content == "Summary : ONE TWO"
        with pytest.raises(openai.InternalServerError, match="no reply"):
            llm.invoke("fail")
        assert server.stats().requests_admitted == 2
        assert server.last_request["headers"]["x-stainless-retry-count"] == "0"  # type: ignore[index]  # not retried


# ------------------------------------------------------------------------------------------- limits


def test_request_limit_answers_429_with_retry_after_and_holds() -> None:
    with OpenAIServer(requests_per_minute=300, burst_seconds=0.5, latency=0) as server:
        assert server.request_capacity == 2.5 and server.token_capacity is None
        llm = chat(server)
        successes, errors = fire(lambda: llm.invoke("hi"), 16)
        assert errors and successes >= 2
        for exc in errors:
            assert isinstance(exc, openai.RateLimitError) and exc.status_code == 429
            headers = exc.response.headers
            assert 0 < float(headers["retry-after"]) <= 0.2 + 1e-9
            assert int(headers["retry-after-ms"]) == round(float(headers["retry-after"]) * 1000)
            assert headers["x-ratelimit-limit-requests"] == "300"
            assert int(headers["x-ratelimit-remaining-requests"]) in (0, 1)
            assert DURATION.match(headers["x-ratelimit-reset-requests"])
            assert "x-ratelimit-limit-tokens" not in headers
            assert exc.body["type"] == "requests" and exc.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
        stats = server.stats()
        assert (stats.requests_admitted, stats.rate_limited_requests) == (successes, len(errors))
        assert server.rate_limited == {"requests": len(errors), "tokens": 0}
        assert_windows_hold(server.admissions, 2.5, 300, "requests")

        # waiting the retry-after time lets the next one through
        exc = rate_limit_error(lambda: llm.invoke("hi"))
        time.sleep(float(exc.response.headers["retry-after"]))
        assert llm.invoke("hi").content == "hi"


def test_token_limit_answers_429_and_admitted_cost_never_exceeds_the_bucket() -> None:
    with OpenAIServer(tokens_per_minute=60_000, burst_seconds=0.5, latency=0) as server:
        assert server.token_capacity == 500
        llm = chat(server, max_tokens=100)
        successes, errors = fire(lambda: llm.invoke("a b c d e"), 24)  # 11 prompt + 100 = 111 tokens each
        assert errors and successes >= 4
        for exc in errors:
            assert isinstance(exc, openai.RateLimitError) and exc.status_code == 429
            headers = exc.response.headers
            assert 0 < float(headers["retry-after"]) <= 0.111 + 1e-9
            assert headers["x-ratelimit-limit-tokens"] == "60000"
            assert 0 <= int(headers["x-ratelimit-remaining-tokens"]) < 111
            assert DURATION.match(headers["x-ratelimit-reset-tokens"])
            assert "x-ratelimit-limit-requests" not in headers
            assert exc.body["type"] == "tokens"  # type: ignore[index]
        admissions = server.admissions
        assert {a.cost for a in admissions} == {TOKENS_PER_REPLY + TOKENS_PER_MESSAGE + 5 + 100}
        assert server.rate_limited == {"requests": 0, "tokens": len(errors)}
        assert_windows_hold(admissions, 500, 60_000, "tokens")

        exc = rate_limit_error(lambda: llm.invoke("a b c d e"))
        time.sleep(float(exc.response.headers["retry-after"]))
        llm.invoke("a b c d e")


def test_the_binding_limit_names_the_429() -> None:
    with OpenAIServer(requests_per_minute=6000, tokens_per_minute=6000, burst_seconds=1, latency=0) as server:
        llm = chat(server, max_tokens=50)
        exc = rate_limit_error(lambda: llm.invoke("x"))  # 57 tokens a request, 100 in the bucket: tokens bind
        assert exc.body["type"] == "tokens"
        assert {"x-ratelimit-limit-requests", "x-ratelimit-limit-tokens"} <= set(exc.response.headers)


def test_the_openai_client_retries_429s_by_itself_after_retry_after() -> None:
    with OpenAIServer(requests_per_minute=300, burst_seconds=0.1, latency=0) as server:
        assert server.request_capacity == 1
        llm = chat(server, max_retries=2)
        llm.invoke("one")
        assert llm.invoke("two").content == "two"  # a 429 first, then a retry after its retry-after
        stats = server.stats()
        assert stats.requests_admitted == 2 and stats.rate_limited_requests >= 1
        assert server.last_request["headers"]["x-stainless-retry-count"] == "1"  # type: ignore[index]


def test_a_request_larger_than_the_limit_is_not_retried() -> None:
    with OpenAIServer(tokens_per_minute=60, latency=0) as server:
        llm = chat(server, max_tokens=100, max_retries=2)
        with pytest.raises(openai.RateLimitError) as info:
            llm.invoke("hi")
        headers = info.value.response.headers
        assert "Request too large" in info.value.body["message"]  # type: ignore[index]
        assert headers["x-should-retry"] == "false" and "retry-after" not in headers
        assert server.too_large == 1 and server.rejected == 1 and server.requests_admitted == 0
        # a request larger than the bucket but within the minute's limit waits for a full bucket
        assert chat(server, max_tokens=40).invoke("hi").content == "hi"


def test_headers_on_success_and_limit_headers_off() -> None:
    with OpenAIServer(requests_per_minute=600, tokens_per_minute=60_000, latency=0) as server:
        response = raw_client(server).chat.completions.with_raw_response.create(
            model="test-model", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        headers = response.headers
        assert headers["x-ratelimit-limit-requests"] == "600" and headers["x-ratelimit-limit-tokens"] == "60000"
        assert headers["x-ratelimit-remaining-requests"] == "9"  # 10 in the bucket, 1 taken
        assert headers["x-ratelimit-remaining-tokens"] == str(1000 - (TOKENS_PER_REPLY + TOKENS_PER_MESSAGE + 1 + 4))
        assert headers["x-ratelimit-reset-requests"] == "100ms"
        assert DURATION.match(headers["x-ratelimit-reset-tokens"])
        assert response.parse().usage.total_tokens == server.total_tokens

    with OpenAIServer(requests_per_minute=600, burst_seconds=0.1, latency=0, limit_headers=False) as server:
        response = raw_client(server).chat.completions.with_raw_response.create(
            model="test-model", messages=[{"role": "user", "content": "hi"}]
        )
        assert not [h for h in response.headers if h.startswith("x-ratelimit")]
        exc = rate_limit_error(lambda: chat(server).invoke("hi"))
        assert not [h for h in exc.response.headers if h.startswith("x-ratelimit")]
        assert float(exc.response.headers["retry-after"]) > 0

    with OpenAIServer(requests_per_minute=600, burst_seconds=0.1, latency=0, retry_after_headers=False) as server:
        exc = rate_limit_error(lambda: chat(server).invoke("hi"))
        assert "retry-after" not in exc.response.headers and "retry-after-ms" not in exc.response.headers
        assert "x-ratelimit-reset-requests" in exc.response.headers


# ------------------------------------------------------------------------------------------- counters, life cycle


def test_counters_and_reset() -> None:
    with OpenAIServer(requests_per_minute=60, burst_seconds=2, latency=0) as server:
        llm = chat(server, max_tokens=3)
        before = time.monotonic()
        exc = rate_limit_error(lambda: llm.invoke(TEXT))
        assert exc.status_code == 429
        stats = server.stats()
        assert stats.requests_admitted == 2 and stats.rate_limited_requests == 1
        assert stats.completion_tokens == 6 and stats.total_tokens == stats.prompt_tokens + 6
        times = server.admission_times
        assert len(times) == 2 and before <= times[0] <= times[1] <= time.monotonic()

        server.reset()
        assert server.stats() == type(stats)(0, 0, 0, 0, 0, 0, 0, 0, 0)
        assert server.admissions == [] and server.last_request is None
        assert llm.invoke(TEXT).usage_metadata["output_tokens"] == 3  # the bucket is full again
        server.reset(buckets=False)
        assert server.stats().requests_admitted == 0

        # malformed requests are 400s, counted apart
        client = raw_client(server)
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="m", messages=[])
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], n=2)
        assert server.stats().bad_requests == 2
        assert next(m.id for m in client.models.list()) == "test-model"


def test_close_frees_the_port_and_drops_requests_in_flight() -> None:
    server = OpenAIServer(latency=30)
    port = server.port
    assert server.base_url == f"http://127.0.0.1:{port}/v1"
    llm = chat(server, timeout=20)
    failure: list[BaseException] = []
    caller = threading.Thread(target=lambda: failure.extend(_raised(lambda: llm.invoke("hi"))))
    caller.start()
    deadline = time.monotonic() + 5
    while server.requests_admitted == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    closer = threading.Thread(target=server.close)
    closer.start()
    closer.join(15)
    assert not closer.is_alive()  # it did not wait for the request in flight (30 s of latency)
    caller.join(5)
    assert not caller.is_alive() and isinstance(failure[0], openai.APIConnectionError)
    assert server.closed and not server._thread.is_alive()
    server.close()  # idempotent
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds (TIME_WAIT is left)
        probe.bind(("127.0.0.1", port))  # the port is free


def _raised(call: Callable[[], Any]) -> list[BaseException]:
    try:
        call()
    except BaseException as exc:
        return [exc]
    return []


def test_safety_bounds() -> None:
    with OpenAIServer(max_requests=2, latency=0) as server:
        llm = chat(server, max_retries=2)
        llm.invoke("a")
        llm.invoke("b")
        with pytest.raises(openai.InternalServerError) as info:
            llm.invoke("c")
        assert info.value.status_code == 503 and info.value.response.headers["x-should-retry"] == "false"
        assert server.stats().refused == 1  # not retried
    server = OpenAIServer(max_seconds=0.2, latency=0)
    deadline = time.monotonic() + 5
    while not server.closed and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.closed
    server._thread.join(2)
    assert not server._thread.is_alive()


def test_a_server_left_open_stops_at_exit() -> None:
    code = (
        "import atexit\n"
        "servers = []\n"
        "atexit.register(lambda: print(servers[0].closed))  # runs after the module's own hook\n"
        "from rayrunnables.testing.openai_server import OpenAIServer\n"
        "servers.append(OpenAIServer(latency=0))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
