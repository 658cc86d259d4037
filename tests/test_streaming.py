"""Streaming, chunk for chunk as LangChain streams: langchain-core running the same chain is the oracle.

Every case runs on every backend (on Ray the chain streams from a worker, as a generator task). Dicts
stream ``{key: chunk}`` pieces whose order between keys depends on timing, so those are compared key by
key; everything else chunk by chunk.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from keyed import by_key
from langchain_core.language_models.fake import FakeStreamingListLLM
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import JsonOutputParser, StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from langchain_core.runnables import RunnableGenerator as LCGenerator
from langchain_core.runnables import RunnableLambda as LCLambda
from langchain_core.runnables import RunnableParallel as LCParallel
from langchain_core.runnables import RunnablePassthrough as LCPassthrough

import rayrunnables as rr
from rayrunnables import RunnableGenerator, RunnableLambda
from rayrunnables.interop.langchain import from_langchain


def words(text: str) -> Iterator[str]:
    for word in text.split():
        yield word + " "


def shout(text: str) -> str:
    return text.upper()


def exclaim(text: str) -> str:
    return text + "!"


def chars(text: str) -> Iterator[str]:
    yield from text.strip()


def upper_each(chunks: Iterator[str]) -> Iterator[str]:
    for chunk in chunks:
        yield chunk.upper()


def count_words(text: str) -> int:
    return len(text.split())


def topic_words(d: dict[str, Any]) -> Iterator[str]:
    yield from words(d["topic"])


def broken_words(text: str) -> Iterator[str]:
    raise ValueError("no words today")
    yield text


def chat() -> FakeListChatModel:
    return FakeListChatModel(responses=["one two three"])


def json_chat() -> FakeListChatModel:
    return FakeListChatModel(responses=['{"name": "ray", "tags": ["a", "b"]}'])


PROMPT = ChatPromptTemplate.from_messages([("human", "say {topic}")])

CHAINS: dict[str, Callable[[], Any]] = {
    "generator after lambda": lambda: LCLambda(exclaim) | LCLambda(words),
    "lambda after generator": lambda: LCLambda(words) | LCLambda(shout),
    "generator after generator": lambda: LCLambda(words) | LCLambda(chars),
    "RunnableGenerator transform": lambda: LCLambda(words) | LCGenerator(upper_each),
    "assign": lambda: LCPassthrough.assign(said=LCLambda(topic_words)),
    "fallbacks before the first chunk": lambda: LCLambda(broken_words).with_fallbacks([LCLambda(words)]),
    "prompt | chat model | StrOutputParser": lambda: PROMPT | chat() | StrOutputParser(),
    "prompt | chat model | JsonOutputParser": lambda: PROMPT | json_chat() | JsonOutputParser(),
    "prompt | streaming LLM": lambda: PromptTemplate.from_template("say {topic}")
    | FakeStreamingListLLM(responses=["hello world"]),
}
INPUTS: dict[str, Any] = {
    "generator after lambda": "a b c",
    "lambda after generator": "a b c",
    "generator after generator": "ab cd",
    "RunnableGenerator transform": "a b c",
    "fallbacks before the first chunk": "a b c",
}
DICT_CHAINS: dict[str, Callable[[], Any]] = {
    "dict of a generator and a lambda": lambda: LCParallel({"a": LCLambda(words), "b": LCLambda(count_words)}),
    "sequence inside a dict": lambda: LCParallel({"a": LCLambda(exclaim) | LCLambda(words), "b": LCPassthrough()}),
    "dict holding a chat model chain": lambda: LCParallel(
        {"answer": PROMPT | chat() | StrOutputParser(), "topic": LCLambda(lambda d: d["topic"])}
    ),
}
DICT_INPUTS: dict[str, Any] = {"dict of a generator and a lambda": "a b c", "sequence inside a dict": "x y"}


def _input(name: str, table: dict[str, Any]) -> Any:
    return table.get(name, {"topic": "ray"})


@pytest.mark.parametrize("name", list(CHAINS))
def test_stream_gives_langchains_chunks(name: str, cfg: dict[str, Any]) -> None:
    x = _input(name, INPUTS)
    expected = list(CHAINS[name]().stream(x))
    got = list(from_langchain(CHAINS[name]()).stream(x, cfg))
    assert got == expected
    assert len(expected) > 1 or name == "lambda after generator"


@pytest.mark.parametrize("name", list(DICT_CHAINS))
def test_a_dict_streams_each_key_as_langchain_does(name: str, cfg: dict[str, Any]) -> None:
    x = _input(name, DICT_INPUTS)
    expected = list(DICT_CHAINS[name]().stream(x))
    got = list(from_langchain(DICT_CHAINS[name]()).stream(x, cfg))
    assert by_key(got) == by_key(expected)
    assert sum(got[1:], got[0]) == DICT_CHAINS[name]().invoke(x)  # the pieces add up to the invoke output


def test_astream_gives_what_stream_gives(cfg: dict[str, Any]) -> None:
    chain = from_langchain(PROMPT | chat() | StrOutputParser())

    async def collect() -> list[Any]:
        stream: AsyncIterator[Any] = chain.astream({"topic": "ray"}, cfg)
        return [chunk async for chunk in stream]

    assert asyncio.run(collect()) == list(chain.stream({"topic": "ray"}, cfg))


def test_native_steps_stream_too(cfg: dict[str, Any]) -> None:
    chain = RunnableLambda(exclaim) | RunnableLambda(words) | RunnableGenerator(upper_each)
    assert list(chain.stream("a b", cfg)) == ["A ", "B! "]
    picked = rr.RunnableParallel({"w": RunnableLambda(words), "n": RunnableLambda(count_words)}).pick("w")
    assert list(picked.stream("a b", cfg)) == ["a ", "b "]
    assert chain.invoke("a b", cfg) == "A B! "


def pid_words(text: str) -> Iterator[str]:
    for word in text.split():
        yield f"{word}@{os.getpid()}"


@pytest.mark.ray_only
def test_on_ray_the_streaming_step_runs_in_a_worker(cfg: dict[str, Any]) -> None:
    got = list((RunnableLambda(exclaim) | RunnableLambda(pid_words)).stream("a b", cfg))
    assert [chunk.split("@")[0] for chunk in got] == ["a", "b!"]
    assert {int(chunk.split("@")[1]) for chunk in got} != {os.getpid()}


def beats(path: str) -> Iterator[int]:
    yield from range(3)
    for i in range(600):  # then a minute of work before the next chunk: only a cancel stops it
        Path(path).write_text(str(i))
        time.sleep(0.1)
    yield 3


@pytest.mark.ray_only
@pytest.mark.timeout(60)
def test_closing_the_stream_early_stops_the_producer(cfg: dict[str, Any], tmp_path: Path) -> None:
    heartbeat = tmp_path / "beat"
    stream = RunnableLambda(beats).stream(str(heartbeat), cfg)
    for chunk in stream:
        if chunk >= 2:
            break
    time.sleep(0.5)
    assert heartbeat.exists()  # the producer was working on
    stream.close()
    time.sleep(1.0)  # a second for the cancel to land, then the file must stop changing
    seen = heartbeat.read_text()
    time.sleep(1.0)
    assert heartbeat.read_text() == seen


def test_a_failing_stream_raises_the_steps_error(cfg: dict[str, Any]) -> None:
    def breaks(text: str) -> Iterator[str]:
        yield "first"
        raise ValueError("broken stream")

    got: list[str] = []
    with pytest.raises(ValueError, match="broken stream") as info:
        for chunk in (RunnableLambda(exclaim) | RunnableLambda(breaks)).stream("a", cfg):
            got.append(chunk)
    assert got == ["first"]
    assert "breaks" in (rr.step_path_of(info.value) or "")


@pytest.mark.ray_only
@pytest.mark.timeout(60)
def test_cancelling_the_async_reader_stops_the_producer(cfg: dict[str, Any], tmp_path: Path) -> None:
    heartbeat = tmp_path / "beat"

    async def read_three() -> None:
        stream: AsyncIterator[int] = RunnableLambda(beats).astream(str(heartbeat), cfg)
        async for chunk in stream:
            if chunk >= 2:
                break
        await asyncio.sleep(0.5)
        await stream.aclose()  # type: ignore[attr-defined]

    asyncio.run(read_three())
    time.sleep(1.0)
    seen = heartbeat.read_text()
    time.sleep(1.0)
    assert heartbeat.read_text() == seen


def lock_chunks(text: str) -> Iterator[Any]:
    import threading

    yield "fine"
    yield threading.Lock()  # cannot leave a worker


@pytest.mark.ray_only
def test_a_chunk_that_cannot_leave_the_worker_names_the_step(cfg: dict[str, Any]) -> None:
    got: list[Any] = []
    with pytest.raises(rr.UnpicklableOutputError, match="lock_chunks") as info:
        for chunk in (RunnableLambda(exclaim) | RunnableLambda(lock_chunks)).stream("a", cfg):
            got.append(chunk)
    assert got == ["fine"]
    assert isinstance(info.value, TypeError)


class Tokens:
    """A stateful step whose call is a generator (a model loaded once, then streaming its output)."""

    def __call__(self, text: str) -> Iterator[str]:
        for word in text.split():
            yield word + " "


def test_a_stateful_step_with_a_generator_call(cfg: dict[str, Any]) -> None:
    step = rr.RunnableActor(Tokens)
    assert step.invoke("a b c", cfg) == "a b c "  # invoke adds the chunks up, as for a generator lambda
    assert step.batch(["a b", "c"], cfg) == ["a b ", "c "]
    chunks = list(step.stream("a b c", cfg))
    assert "".join(chunks) == "a b c "
    if cfg["backend"] != "ray":  # on Ray the pool actor sends its output whole: one chunk (see the README)
        assert chunks == ["a ", "b ", "c "]
