"""A real ``ChatOpenAI`` at a provider's limits, through ``with_rate_limit``, on every backend and the data engine.

The provider is ``rayrunnables.testing.openai_server.OpenAIServer`` on 127.0.0.1: it counts tokens its own
way (not ours), books a request's prompt tokens plus ``max_tokens`` when it admits it, holds requests *and*
tokens per minute over one-second windows and answers 429 with ``retry-after`` past them. The client is
langchain-openai's ``ChatOpenAI`` with its own retries off, so every 429 reaches us.

What is asserted is behaviour: every item done and right, the provider's token count equal to what
LangChain's ``UsageMetadataCallbackHandler`` counted, and 429s a small share of the requests (a loose
bound; the 2% target and the time against the limits' bound are measured in benchmarks/bench_llm.py).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.callbacks import UsageMetadataCallbackHandler
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI

from rayrunnables import Runnable, RunnableLambda
from rayrunnables.interop.langchain import from_langchain
from rayrunnables.testing.openai_server import OpenAIServer, fake_reply

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

RPM, TPM = 3000, 480_000  # 50 requests and 8,000 tokens a second: ~200 documents in ~5 s
MAX_TOKENS = 16
WORDS = "alpha beta gamma delta epsilon river mountain cloud signal vector quantum harbor".split()


def documents(n: int, seed: int = 7) -> list[str]:
    """Documents of 400 to 1,600 characters."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(65, 260))) for _ in range(n)]


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(requests_per_minute=RPM, tokens_per_minute=TPM, latency=0.05, max_seconds=200) as running:
        yield running


def summarize(server: OpenAIServer, **limits: Any) -> Runnable[Any, Any]:
    prompt = ChatPromptTemplate.from_messages([("human", "{doc}")])
    model = ChatOpenAI(base_url=server.base_url, api_key="test", model="test-model", max_retries=0,
                       max_tokens=MAX_TOKENS, stream_usage=True)
    return from_langchain(prompt) | from_langchain(model).with_rate_limit(**limits) | from_langchain(StrOutputParser())


LIMITS = {
    "declared": {"requests_per_minute": RPM, "tokens_per_minute": TPM},
    "declared_too_high": {"requests_per_minute": RPM * 1.3, "tokens_per_minute": TPM * 1.3},
    "learned": {},
}


def check_run(server: OpenAIServer, docs: list[str], outputs: list[Any]) -> None:
    failed = [o for o in outputs if isinstance(o, Exception)]
    assert not failed, f"{len(failed)} items failed, the first: {failed[0]!r}"
    assert outputs == [fake_reply(doc, MAX_TOKENS) for doc in docs]
    stats = server.stats()
    assert stats.requests_admitted == len(docs)
    assert stats.rejected <= 0.1 * len(docs), f"{stats.rejected} 429s for {len(docs)} documents"


@pytest.mark.parametrize("limits", list(LIMITS), ids=list(LIMITS))
def test_a_document_list_at_the_providers_limits(cfg: dict[str, Any], server: OpenAIServer, limits: str) -> None:
    docs = documents(200)
    chain = summarize(server, **LIMITS[limits])
    handler = UsageMetadataCallbackHandler()
    outputs = chain.batch([{"doc": d} for d in docs], {**cfg, "callbacks": [handler]}, return_exceptions=True)
    check_run(server, docs, outputs)
    counted = handler.usage_metadata["test-model"]
    stats = server.stats()
    assert (counted["input_tokens"], counted["output_tokens"], counted["total_tokens"]) == (
        stats.prompt_tokens, stats.completion_tokens, stats.total_tokens)


@pytest.mark.ray_only
def test_the_data_engine_shares_one_pace_across_its_workers(backend: str, server: OpenAIServer) -> None:
    import ray.data

    from rayrunnables.backends.ray.services import find_pacer
    from rayrunnables.data import apply
    from rayrunnables.runnables.rate_limited import RunnableRateLimited

    docs = documents(200, seed=11)
    chain = summarize(server, requests_per_minute=RPM, tokens_per_minute=TPM)
    dataset = ray.data.from_items([{"doc": d, "i": i} for i, d in enumerate(docs)], override_num_blocks=4)
    rows = apply(chain, dataset, batch_size=25, concurrency=2).take_all()
    rows.sort(key=lambda row: row["i"])
    assert [row["error"] for row in rows] == [None] * len(docs)
    check_run(server, docs, [row["output"] for row in rows])
    limited = next(step for step in chain.steps if isinstance(step, RunnableRateLimited))
    pacer = find_pacer(limited.key)
    assert pacer is not None and pacer.stats()["requests"] >= len(docs)  # every worker booked with the one pacer


def test_a_stream_waits_out_a_429_before_its_first_chunk(cfg: dict[str, Any]) -> None:
    with OpenAIServer(requests_per_minute=60, latency=0.02, max_seconds=60) as slow:  # one request a second
        model = ChatOpenAI(base_url=slow.base_url, api_key="test", model="test-model", max_retries=0,
                           max_tokens=MAX_TOKENS, stream_usage=True)
        step = from_langchain(model).with_rate_limit()  # nothing declared: it learns the limit from the 429
        handler = UsageMetadataCallbackHandler()
        docs = documents(3, seed=3)
        for doc in docs:
            chunks = list(step.stream(doc, {**cfg, "callbacks": [handler]}))
            assert "".join(str(c.content) for c in chunks) == fake_reply(doc, MAX_TOKENS)
        stats = slow.stats()
        assert stats.requests_admitted == 3
        assert handler.usage_metadata["test-model"]["total_tokens"] == stats.total_tokens


def test_a_providers_own_way_of_saying_too_many(cfg: dict[str, Any]) -> None:
    from rayrunnables.testing.steps.provider import busy_once_unusual, is_unusual_busy

    base = 100 * (1 + ["local", "ray", "executor"].index(cfg["backend"]))  # items no other case has seen
    step = RunnableLambda(busy_once_unusual, name="call_model")
    limited = step.with_rate_limit(requests_per_second=100, rate_limit_errors=is_unusual_busy)
    assert limited.batch([base + 1, base + 2], cfg) == [10 * base + 10, 10 * base + 20]
    with pytest.raises(RuntimeError, match="quota"):  # without the hook it is an ordinary error
        step.with_rate_limit(requests_per_second=100).invoke(base + 3, cfg)


def test_get_usage_metadata_callback_counts_every_call_once(cfg: dict[str, Any], server: OpenAIServer) -> None:
    """LangChain's context-variable handler, on for the caller's thread only, hears the calls of every
    worker and thread, each once (LangChain adds it itself where a call runs in the caller's thread)."""
    from langchain_core.callbacks import get_usage_metadata_callback

    chain = summarize(server, requests_per_minute=RPM, tokens_per_minute=TPM)
    docs = documents(12, seed=5)
    with get_usage_metadata_callback() as counted:
        chain.batch([{"doc": d} for d in docs[:10]], cfg)
        chain.invoke({"doc": docs[10]}, cfg)
        list(chain.stream({"doc": docs[11]}, cfg))
    stats = server.stats()
    assert stats.requests_admitted == 12
    assert counted.usage_metadata["test-model"]["total_tokens"] == stats.total_tokens
