"""LangChain interop: LCEL chains translated by ``from_langchain`` give LangChain's own results on every
backend, and ``to_langchain(ours)`` behaves like ours inside LangChain.

Every chain is built by a module-level factory so each run gets fresh objects (a fake model's internal
state, a flaky step's attempt counter). Step functions are module-level or lambdas of this module: the
Ray backend ships this module to the workers by value.
"""

from __future__ import annotations

import asyncio
import functools
import operator
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import pytest

pytest.importorskip("langchain_core")

from keyed import by_key
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel, FakeListChatModel, FakeListLLM
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from langchain_core.runnables import (
    ConfigurableField,
    Runnable,
    RunnableBranch,
    RunnableGenerator,
    RunnableLambda,
    RunnableParallel,
    RunnablePassthrough,
)
from langchain_core.runnables import RunnableConfig as LCConfig
from langchain_core.runnables.base import RunnableEach, RunnableSequence
from langchain_core.runnables.fallbacks import RunnableWithFallbacks
from langchain_core.runnables.passthrough import RunnableAssign, RunnablePick
from langchain_core.runnables.retry import RunnableRetry

import rayrunnables as rr
from rayrunnables.interop.langchain import (
    LangChainStep,
    RayRunnable,
    from_langchain,
    lazy_langchain_step,
    to_langchain,
)

pytestmark = pytest.mark.timeout(120)


# ---- steps -------------------------------------------------------------------------------------------------
def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return x * 2


def square(x: int) -> int:
    return x * x


def total(d: dict[str, Any]) -> int:
    return sum(d.values())


def tags_and_metadata(x: Any, config: LCConfig) -> dict[str, Any]:
    return {"x": x, "tags": sorted(config.get("tags", [])), "metadata": dict(config.get("metadata", {}))}


def scaled(x: int, config: LCConfig) -> int:
    return int(x * config.get("configurable", {}).get("factor", 1))


def shout_pieces(chunks: Iterator[str]) -> Iterator[str]:
    for chunk in chunks:
        for word in chunk.split():
            yield word.upper() + " "


def count_up(n: int) -> Iterator[int]:
    yield from range(n + 1)


async def ainc(x: int) -> int:
    await asyncio.sleep(0)
    return x + 1


def route(x: int) -> Runnable[Any, Any]:
    """A function returning a LangChain runnable: LangChain runs it on the same input."""
    return RunnableLambda(double) if x % 2 == 0 else RunnableLambda(inc) | RunnableLambda(square)


def fail(x: Any) -> Any:
    raise ValueError(f"primary failed on {x!r}")


def recover(d: dict[str, Any]) -> str:
    return f"recovered {d['q']} after {type(d['error']).__name__}"


class Flaky:
    """Fails the first ``times`` calls for each input, then adds one (state lives in this copy)."""

    def __init__(self, times: int) -> None:
        self.times = times
        self.seen: dict[Any, int] = {}

    def __call__(self, x: int) -> int:
        self.seen[x] = self.seen.get(x, 0) + 1
        if self.seen[x] <= self.times:
            raise ConnectionError(f"transient failure {self.seen[x]} for {x}")
        return x + 1


class Suffix(Runnable[str, str]):
    """A runnable that takes call-time kwargs, as chat models do (``model.bind(stop=...)``)."""

    def invoke(self, input: str, config: LCConfig | None = None, **kwargs: Any) -> str:
        return input + kwargs.get("suffix", "")


class EchoChatModel(BaseChatModel):
    """A chat model whose answer depends only on its prompt (so batch results are comparable)."""

    prefix: str = "echo"

    @property
    def _llm_type(self) -> str:
        return "echo"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        text = " | ".join(str(m.content) for m in messages)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=f"{self.prefix}: {text}"))])


class LockedClient(Runnable[Any, Any]):
    """Holds a lock, like a real HTTP/DB client: it cannot be pickled."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def invoke(self, input: Any, config: LCConfig | None = None, **kwargs: Any) -> Any:
        with self.lock:
            return f"client saw {input}"


def make_locked_client() -> LockedClient:
    return LockedClient()


# ---- the chains ------------------------------------------------------------------------------------------------
def qa_prompt() -> ChatPromptTemplate:
    return ChatPromptTemplate.from_messages([("system", "Answer briefly."), ("human", "{question}")])


@dataclass
class Case:
    name: str
    make: Callable[[], Any]
    inputs: list[Any]
    is_async: bool = False  # LangChain can only ainvoke it (its function is async)


CASES = [
    Case(
        "dict_parallel_with_passthrough",
        lambda: RunnableLambda(inc)
        | {"orig": RunnablePassthrough(), "doubled": RunnableLambda(double)}
        | RunnableLambda(lambda d: d["orig"] + d["doubled"]),
        [1, 5, -3],
    ),
    Case("map_over_list", lambda: RunnableLambda(inc).map(), [[1, 2, 3], [], [10]]),
    Case("map_over_sequence", lambda: (RunnableLambda(inc) | RunnableLambda(square)).map(), [[1, 2, 3], [4]]),
    Case(
        "fan_out_fan_in",
        lambda: RunnableLambda(inc)
        | RunnableParallel(a=RunnableLambda(double), b=RunnableLambda(square), c=lambda x: -x)
        | RunnableLambda(total),
        [0, 2, 7],
    ),
    Case(
        "assign",
        lambda: RunnablePassthrough.assign(sum=lambda d: d["a"] + d["b"], prod=lambda d: d["a"] * d["b"]),
        [{"a": 1, "b": 2}, {"a": 3, "b": 4}],
    ),
    Case(
        "assign_after_parallel_then_pick",
        lambda: RunnableParallel(a=RunnableLambda(inc), b=RunnableLambda(double))
        .assign(c=lambda d: d["a"] * d["b"])
        .pick("c"),
        [1, 4],
    ),
    Case("pick_one_key", lambda: RunnableParallel(a=inc, b=double).pick("b"), [3, 9]),
    Case(
        "pick_keys_missing_gives_none",
        lambda: RunnablePassthrough().pick(["x", "y"]),
        [{"x": 1, "y": 2, "z": 3}, {"z": 0}, {"y": 5}],
    ),
    Case(
        "branch",
        lambda: RunnableBranch(
            (lambda x: x > 10, RunnableLambda(lambda x: f"big {x}")),
            (lambda x: x < 0, RunnableLambda(inc) | RunnableLambda(lambda x: f"negative+1 {x}")),
            RunnableLambda(lambda x: f"small {x}"),
        ),
        [42, -5, 3],
    ),
    Case(
        "retry",
        lambda: RunnableLambda(inc)
        | RunnableLambda(Flaky(2)).with_retry(
            retry_if_exception_type=(ConnectionError,), stop_after_attempt=3, wait_exponential_jitter=False
        ),
        [1, 2, 3],
    ),
    Case(
        "fallbacks",
        lambda: RunnableLambda(fail).with_fallbacks([RunnableLambda(lambda x: f"fallback got {x}")]),
        ["a", "b"],
    ),
    Case(
        "fallbacks_with_exception_key",
        lambda: RunnableLambda(fail).with_fallbacks([RunnableLambda(recover)], exception_key="error"),
        [{"q": "why"}, {"q": "how"}],
    ),
    Case(
        "retry_then_fallbacks",
        lambda: RunnableLambda(Flaky(5))
        .with_retry(stop_after_attempt=2, wait_exponential_jitter=False)
        .with_fallbacks([RunnableLambda(double)]),
        [1, 6],
    ),
    Case(
        "nested_sequences",
        lambda: (RunnableLambda(inc) | (RunnableLambda(double) | RunnableLambda(square)))
        | ({"x": RunnableLambda(inc) | RunnableLambda(inc), "y": RunnablePassthrough()} | RunnableLambda(total)),
        [1, 2, 3],
    ),
    Case(
        "binding_with_config",
        lambda: RunnableLambda(inc)
        | RunnableLambda(tags_and_metadata).with_config(tags=["t1"], metadata={"team": "search"}, run_name="inspect"),
        [1, 2],
    ),
    Case(
        "binding_configurable",
        lambda: (RunnableLambda(inc) | RunnableLambda(scaled)).with_config(configurable={"factor": 3}),
        [1, 2, 10],
    ),
    Case("binding_kwargs", lambda: RunnableLambda(str.strip) | Suffix().bind(suffix="!"), ["  hi ", "yo"]),
    Case(
        "binding_max_concurrency",
        lambda: RunnableLambda(inc).map().with_config(max_concurrency=2),
        [[1, 2, 3, 4, 5]],
    ),
    Case(
        "runnable_generator",
        lambda: RunnableLambda(lambda s: s.strip()) | RunnableGenerator(shout_pieces),
        ["hello big world", "one"],
    ),
    Case("generator_lambda", lambda: RunnableLambda(count_up), [3, 0]),
    Case("async_lambda", lambda: RunnableLambda(ainc) | RunnableLambda(double), [1, 2], is_async=True),
    Case("lambda_returning_runnable", lambda: RunnableLambda(route), [2, 3]),
    Case(
        "passthrough_with_func",
        lambda: RunnablePassthrough(lambda x: None) | RunnableLambda(inc),
        [1, 2],
    ),
    Case(
        "prompt_fake_chat_model_parser",
        lambda: qa_prompt() | FakeListChatModel(responses=["Forty-two."]) | StrOutputParser(),
        [{"question": "meaning of life?"}, {"question": "why?"}],
    ),
    Case(
        "prompt_echo_chat_model_parser",
        lambda: qa_prompt() | EchoChatModel() | StrOutputParser(),
        [{"question": "a?"}, {"question": "b?"}, {"question": "c?"}],
    ),
    Case(
        "rag_shape_parallel_prompt_model",
        lambda: {
            "context": itemgetter("question") | RunnableLambda(lambda q: f"docs about {q}"),
            "question": itemgetter("question"),
        }
        | ChatPromptTemplate.from_messages([("human", "Context: {context}\nQ: {question}")])
        | EchoChatModel(prefix="rag")
        | StrOutputParser(),
        [{"question": "ray"}, {"question": "dask"}],
    ),
    Case(
        "fake_llm_in_branch_of_parallel",
        lambda: RunnableParallel(
            answer=PromptTemplate.from_template("Q: {q}") | FakeListLLM(responses=["A."]),
            q=itemgetter("q"),
        ),
        [{"q": "x"}, {"q": "y"}],
    ),
    Case(
        "named_sequence_with_run_name",
        lambda: (RunnableLambda(inc) | RunnableLambda(double)).with_config(run_name="pipeline"),
        [1, 2],
    ),
]


def lc_invoke(case: Case, x: Any) -> Any:
    chain = case.make()
    return asyncio.run(chain.ainvoke(x)) if case.is_async else chain.invoke(x)


def lc_batch(case: Case, xs: list[Any]) -> list[Any]:
    chain = case.make()
    return asyncio.run(chain.abatch(xs)) if case.is_async else chain.batch(xs)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_invoke_and_batch_match_langchain(case: Case, cfg: dict[str, Any]) -> None:
    x = case.inputs[0]
    assert from_langchain(case.make()).invoke(x, cfg) == lc_invoke(case, x)
    assert from_langchain(case.make()).batch(case.inputs, cfg) == lc_batch(case, case.inputs)


def test_there_are_at_least_twenty_chains() -> None:
    assert len(CASES) >= 20


def test_async_lambda_ainvoke(cfg: dict[str, Any]) -> None:
    case = next(c for c in CASES if c.name == "async_lambda")
    assert asyncio.run(from_langchain(case.make()).ainvoke(5, cfg)) == lc_invoke(case, 5)


def test_generator_streams_chunks(cfg: dict[str, Any]) -> None:
    chain = RunnableLambda(lambda s: s.strip()) | RunnableGenerator(shout_pieces)
    assert list(from_langchain(chain).stream(" a b c ", cfg)) == list(chain.stream(" a b c "))


# ---- structure: each LangChain node becomes ours --------------------------------------------------------------
def test_structure_is_translated_node_by_node() -> None:
    chain = (
        RunnableLambda(inc)
        | {"a": RunnablePassthrough(), "b": RunnableLambda(double).map()}
        | RunnablePassthrough.assign(c=itemgetter("a"))
        | RunnableBranch((lambda d: d["a"] > 1, RunnableLambda(str)), RunnableLambda(repr))
    )
    ours = from_langchain(chain)
    assert isinstance(ours, rr.RunnableSequence)
    kinds = [type(step) for step in ours.steps]
    assert kinds == [rr.RunnableLambda, rr.RunnableParallel, rr.RunnableAssign, rr.RunnableBranch]
    parallel = ours.steps[1]
    assert isinstance(parallel, rr.RunnableParallel)
    assert isinstance(parallel.steps["a"], rr.RunnablePassthrough)
    assert isinstance(parallel.steps["b"], rr.RunnableEach)
    assert "parallel['b']" in ours.explain()


ALGEBRA = (
    RunnableBranch,
    RunnableGenerator,
    RunnableLambda,
    RunnableParallel,
    RunnablePassthrough,
    RunnableSequence,
    RunnableAssign,
    RunnablePick,
    RunnableEach,
    RunnableWithFallbacks,
    RunnableRetry,
)


def opaque_objects(node: rr.Runnable[Any, Any]) -> list[Any]:
    found = [node.func.obj] if isinstance(node, rr.RunnableLambda) and isinstance(node.func, LangChainStep) else []
    for _, child in node.children():
        found += opaque_objects(child)
    return found


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_only_non_algebra_runnables_are_opaque(case: Case) -> None:
    opaque = opaque_objects(from_langchain(case.make()))
    assert not [obj for obj in opaque if isinstance(obj, ALGEBRA)]


def test_wrappers_translate_with_their_settings() -> None:
    retry = RunnableLambda(inc).with_retry(
        retry_if_exception_type=(KeyError,), stop_after_attempt=4, wait_exponential_jitter=False
    )
    ours = from_langchain(retry)
    assert isinstance(ours, rr.RunnableRetry)
    assert ours.retry_if_exception_type == (KeyError,)
    assert ours.stop_after_attempt == 4 and not ours.wait_exponential_jitter
    fallbacks = from_langchain(RunnableLambda(fail).with_fallbacks([RunnableLambda(inc)], exception_key="e"))
    assert isinstance(fallbacks, rr.RunnableWithFallbacks) and fallbacks.exception_key == "e"


def test_binding_keeps_tags_metadata_run_name_and_its_callbacks_here() -> None:
    handler = BaseCallbackHandler()
    chain = RunnableLambda(inc).with_config(
        tags=["t"], metadata={"m": 1}, run_name="named", callbacks=[handler], max_concurrency=3
    )
    ours = from_langchain(chain)
    assert isinstance(ours, rr.RunnableBinding)
    callbacks = ours.config.pop("callbacks")
    assert ours.config == {"tags": ["t"], "metadata": {"m": 1}, "run_name": "named", "max_concurrency": 3}
    assert callbacks.handlers == [handler]  # kept in this process; a worker gets the key only
    assert ours.get_name() == "named"


def test_run_name_tags_metadata_reach_functions_that_take_config(cfg: dict[str, Any]) -> None:
    seen = from_langchain(
        RunnableLambda(lambda x, config: [config.get("run_name"), config.get("tags"), config.get("metadata")])
        .with_config(run_name="step", tags=["a"], metadata={"k": "v"})
    ).invoke(1, cfg)
    assert seen == ["step", ["a"], {"k": "v"}]


def test_configurable_reaches_an_opaque_configurable_model(cfg: dict[str, Any]) -> None:
    def make() -> Any:
        model = FakeListChatModel(responses=["default"]).configurable_fields(
            responses=ConfigurableField(id="answers")
        )
        return (qa_prompt() | model | StrOutputParser()).with_config(configurable={"answers": ["configured"]})

    x = {"question": "q"}
    assert from_langchain(make()).invoke(x, cfg) == make().invoke(x) == "configured"


def test_other_runnables_are_one_opaque_step_named_after_them() -> None:
    ours = from_langchain(qa_prompt() | EchoChatModel() | StrOutputParser())
    assert isinstance(ours, rr.RunnableSequence)
    names = [step.get_name() for step in ours.steps]
    assert names == ["ChatPromptTemplate", "EchoChatModel", "StrOutputParser"]
    assert all(isinstance(step, rr.RunnableLambda) and isinstance(step.func, LangChainStep) for step in ours.steps)


def test_dicts_and_functions_are_coerced_like_langchain(cfg: dict[str, Any]) -> None:
    assert from_langchain({"a": inc, "b": double}).invoke(3, cfg) == {"a": 4, "b": 6}
    assert from_langchain(square).invoke(3, cfg) == 9


def test_langchain_runs_as_ray_node_round_trip() -> None:
    ours: rr.Runnable[Any, Any] = rr.RunnableLambda(inc) | rr.RunnableLambda(double)
    assert from_langchain(to_langchain(ours)) is ours


def test_importing_rayrunnables_does_not_import_langchain() -> None:
    code = "import sys, rayrunnables; sys.exit('langchain_core' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ---- unpicklable clients ------------------------------------------------------------------------------------
@pytest.mark.ray_only
def test_unpicklable_opaque_step_is_refused_by_name_on_ray(backend: str) -> None:
    ours = from_langchain(qa_prompt() | LockedClient() | StrOutputParser())
    with pytest.raises(rr.UnpicklableStepError, match="LockedClient"):
        ours.invoke({"question": "q"}, {"backend": backend})


def test_unpicklable_client_works_in_process() -> None:
    ours = from_langchain(RunnableLambda(inc) | LockedClient())
    assert ours.invoke(1, {"backend": "local"}) == "client saw 2"


def test_lazy_step_builds_the_client_inside_the_worker(cfg: dict[str, Any]) -> None:
    ours = from_langchain(RunnableLambda(inc)) | lazy_langchain_step(make_locked_client) | rr.RunnableLambda(str.upper)
    assert ours.invoke(1, cfg) == "CLIENT SAW 2"
    assert ours.batch([1, 2, 3], cfg) == ["CLIENT SAW 2", "CLIENT SAW 3", "CLIENT SAW 4"]


# ---- to_langchain: ours inside LangChain --------------------------------------------------------------------
def ours_chain() -> rr.Runnable[Any, Any]:
    return rr.RunnableLambda(inc) | {"doubled": rr.RunnableLambda(double), "same": rr.RunnablePassthrough()}


def test_to_langchain_invoke_batch_stream_async(backend: str, cfg: dict[str, Any]) -> None:
    ours = ours_chain()
    lc = to_langchain(ours, backend=backend)
    assert isinstance(lc, Runnable) and isinstance(lc, RayRunnable)
    assert lc.invoke(1) == ours.invoke(1, cfg) == {"doubled": 4, "same": 2}
    assert lc.batch([1, 2, 3]) == ours.batch([1, 2, 3], cfg)
    # a dict streams {key: chunk} as each branch finishes: the order across keys is the branches' race
    assert by_key(list(lc.stream(4))) == by_key(list(ours.stream(4, cfg))) == {"doubled": [10], "same": [5]}
    assert asyncio.run(lc.ainvoke(5)) == ours.invoke(5, cfg)
    assert asyncio.run(lc.abatch([6, 7])) == ours.batch([6, 7], cfg)


def test_to_langchain_streams_a_generator(backend: str) -> None:
    lc = to_langchain(rr.RunnableLambda(inc) | rr.RunnableLambda(count_up), backend=backend)
    assert list(lc.stream(2)) == [0, 1, 2, 3]

    async def collect() -> list[int]:
        return [chunk async for chunk in lc.astream(1)]

    assert asyncio.run(collect()) == [0, 1, 2]


def test_to_langchain_composes_inside_a_langchain_chain(backend: str) -> None:
    def render(prompt_value: Any) -> str:
        return prompt_value.to_string().upper()

    ours: rr.Runnable[Any, Any] = rr.RunnableLambda(render)
    lc_chain = qa_prompt() | to_langchain(ours, backend=backend) | StrOutputParser()
    reference = qa_prompt() | RunnableLambda(render) | StrOutputParser()
    xs = [{"question": "one?"}, {"question": "two?"}]
    assert lc_chain.invoke(xs[0]) == reference.invoke(xs[0])
    assert lc_chain.batch(xs) == reference.batch(xs)


class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.starts: list[str] = []
        self.ends = 0

    def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
        self.starts.append(kwargs.get("name") or "")

    def on_chain_end(self, outputs: Any, **kwargs: Any) -> None:
        self.ends += 1


def test_to_langchain_passes_shared_config_and_traces_one_driver_run(backend: str) -> None:
    def shared_keys(x: Any, config: dict[str, Any]) -> dict[str, Any]:
        return {"tags": config.get("tags"), "meta": config.get("metadata"), "conf": config.get("configurable")}

    ours: rr.Runnable[Any, Any] = rr.RunnableLambda(shared_keys)
    lc = to_langchain(ours, backend=backend, name="remote_part")
    recorder = Recorder()
    got = lc.invoke(
        1, {"tags": ["t"], "metadata": {"m": 1}, "configurable": {"k": 2}, "callbacks": [recorder], "run_id": None}
    )
    assert got == {"tags": ["t"], "meta": {"m": 1}, "conf": {"k": 2}}
    assert recorder.starts == ["remote_part"] and recorder.ends == 1


def test_to_langchain_batch_return_exceptions(backend: str) -> None:
    lc = to_langchain(rr.RunnableLambda(lambda x: 10 // x), backend=backend)
    out = lc.batch([1, 0, 5], return_exceptions=True)
    assert out[0] == 10 and out[2] == 2 and isinstance(out[1], ZeroDivisionError)
    with pytest.raises(ZeroDivisionError):
        lc.batch([1, 0])


def test_to_langchain_batch_with_per_item_configs(backend: str) -> None:
    lc = to_langchain(rr.RunnableLambda(scaled), backend=backend)
    configs: list[LCConfig] = [{"configurable": {"factor": 2}}, {"configurable": {"factor": 3}}, {}]
    assert lc.batch([1, 1, 1], configs) == [2, 3, 1]


async def _astream_all(lc: Any, x: Any) -> list[Any]:
    out: list[Any] = []
    stream: AsyncIterator[Any] = lc.astream(x)
    async for chunk in stream:
        out.append(chunk)
    return out


def test_to_langchain_inside_from_langchain_keeps_ours(cfg: dict[str, Any]) -> None:
    ours = ours_chain()
    lc_chain = RunnableLambda(inc) | to_langchain(ours) | RunnableLambda(itemgetter("doubled"))
    translated = from_langchain(lc_chain)
    assert isinstance(translated, rr.RunnableSequence)
    assert translated.invoke(1, cfg) == lc_chain.invoke(1) == 6
    chunks = asyncio.run(_astream_all(to_langchain(ours), 1))  # a dict streams key by key, as LangChain's
    assert functools.reduce(operator.add, chunks) == ours.invoke(1)
