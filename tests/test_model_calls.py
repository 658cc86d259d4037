"""Reading a model call's cost and a provider's "too many requests" from the real objects (langchain, openai, httpx)."""

from __future__ import annotations

import email.utils
import time

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.prompts import ChatPromptTemplate

from rayrunnables.model_calls import (
    charged_tokens,
    estimate_tokens,
    is_rate_limit_error,
    limit_kind_of,
    named_limits_of,
    retry_after_of,
    usage_of,
)

URL = "http://127.0.0.1/v1/chat/completions"


def rate_limit_error(headers: dict[str, str], body: object = None, message: str = "Rate limit"
                     ) -> openai.RateLimitError:
    response = httpx.Response(429, headers=headers, request=httpx.Request("POST", URL))
    return openai.RateLimitError(message, response=response, body=body)


def test_estimates_from_strings_messages_prompt_values_and_prompt_variables() -> None:
    text = "x" * 400
    assert estimate_tokens(text) == 100
    messages = [SystemMessage("s" * 40), HumanMessage(text)]
    assert estimate_tokens(messages) == 110 + 8
    prompt = ChatPromptTemplate.from_messages([("human", "{q}")]).invoke({"q": text})
    assert estimate_tokens(prompt) == 104
    assert estimate_tokens({"q": text, "n": 3}) == 101
    assert estimate_tokens([("human", text)]) == 104
    assert estimate_tokens([{"role": "user", "content": [{"type": "text", "text": text}]}]) == 104
    assert estimate_tokens(None) == 0


def test_usage_from_messages_chunks_results_and_dicts() -> None:
    usage = {"input_tokens": 30, "output_tokens": 7, "total_tokens": 37}
    assert usage_of(AIMessage("hi", usage_metadata=usage)) == (30, 7)
    assert usage_of(AIMessageChunk(content="", usage_metadata=usage)) == (30, 7)
    assert usage_of(AIMessage("hi")) is None
    result = LLMResult(generations=[[ChatGeneration(message=AIMessage("a", usage_metadata=usage))]])
    assert usage_of(result) == (30, 7)
    old_style = {"token_usage": {"prompt_tokens": 5, "completion_tokens": 2}}
    assert usage_of(LLMResult(generations=[], llm_output=old_style)) == (5, 2)
    assert usage_of({"answer": AIMessage("a", usage_metadata=usage), "other": 1}) == (30, 7)
    assert usage_of("text") is None
    assert charged_tokens((30, 7), 50) == 80  # the provider booked max_tokens when it admitted the call
    assert charged_tokens((30, 7), None) == 37


def test_rate_limit_errors_are_recognised_with_their_wait_and_limits() -> None:
    err = rate_limit_error({"retry-after": "2", "x-ratelimit-limit-requests": "600",
                            "x-ratelimit-limit-tokens": "60000"}, body={"type": "tokens", "message": "m"})
    assert is_rate_limit_error(err)
    assert retry_after_of(err) == 2.0
    assert named_limits_of(err) == (10.0, 1000.0)
    assert limit_kind_of(err) == "tokens"
    assert retry_after_of(rate_limit_error({"retry-after-ms": "250", "retry-after": "1"})) == 0.25
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < (retry_after_of(rate_limit_error({"retry-after": date})) or 0) <= 30
    assert retry_after_of(rate_limit_error({})) is None
    assert named_limits_of(rate_limit_error({})) == (None, None)
    text = "Rate limit reached for gpt-4o on requests per min (RPM): Limit 3, Used 3, Requested 1."
    assert limit_kind_of(rate_limit_error({}, message=text)) == "requests"


def test_what_is_not_a_rate_limit() -> None:
    response = httpx.Response(500, request=httpx.Request("POST", URL))
    assert not is_rate_limit_error(openai.InternalServerError("boom", response=response, body=None))
    assert not is_rate_limit_error(ValueError("429"))
    http = httpx.HTTPStatusError("too many", request=httpx.Request("GET", URL),
                                 response=httpx.Response(429, request=httpx.Request("GET", URL)))
    assert is_rate_limit_error(http)
    try:
        try:
            raise rate_limit_error({})
        except openai.RateLimitError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert is_rate_limit_error(outer)  # a library that wraps the provider's error


@pytest.mark.parametrize("value", [0, -1, "5", True, float("inf")])
def test_bad_limits_name_the_step(value: object) -> None:
    from rayrunnables import OptionsError, RunnableLambda

    step = RunnableLambda(str, name="call_model")
    for kwargs in ({"requests_per_minute": value}, {"tokens_per_minute": value}, {"requests_per_second": value}):
        with pytest.raises(OptionsError, match="call_model"):
            step.with_rate_limit(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(OptionsError, match="tokens must be a callable"):
        step.with_rate_limit(tokens_per_minute=100, tokens=5)  # type: ignore[arg-type]
    with pytest.raises(OptionsError, match="burst"):
        step.with_rate_limit(10, burst=0)
