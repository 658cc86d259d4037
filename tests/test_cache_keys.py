"""What a cache key is made of: a step's fingerprint, an input's canonical digest, and entries that decode.

No backend here: the fingerprint module, the canonical digest and the entry codec on their own.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict, namedtuple
from typing import Any

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompt_values import ChatPromptValue, StringPromptValue
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

import rayrunnables as rr
from rayrunnables.cache import Uncacheable, Unhashable, fingerprint, input_digest
from rayrunnables.cache.codec import FORMAT, MISS, decode_value, encode_value, make_entry, read_entry
from rayrunnables.interop.langchain import from_langchain, lazy_langchain_step


def compiled(source: str, name: str = "f") -> Any:
    """A function from source, as a person's edit of their file gives it (its own file, its own lines)."""
    scope: dict[str, Any] = {"__name__": "user_pipeline"}
    exec(compile(source, "user_pipeline.py", "exec"), scope)
    return scope[name]


# ---- fingerprints -------------------------------------------------------------------------------------------
def test_code_counts_comments_docstrings_and_line_numbers_do_not() -> None:
    base = compiled("def f(x):\n    return x + 1\n")
    moved = compiled("# a comment\n\n\n\ndef f(x):\n    # why\n    return x + 1  # the answer\n")
    documented = compiled('def f(x):\n    """Adds one."""\n    return x + 1\n')
    changed = compiled("def f(x):\n    return x + 2\n")
    renamed_var = compiled("def f(y):\n    return y + 1\n")
    assert fingerprint(base) == fingerprint(moved) == fingerprint(documented)
    assert fingerprint(base) != fingerprint(changed)
    assert fingerprint(base) != fingerprint(renamed_var)  # the argument's name is part of the code


def test_lambdas_by_code_and_by_what_they_close_over() -> None:
    def adder(n: Any) -> Any:
        return lambda x: x + n

    assert fingerprint(rr.RunnableLambda(adder(1))) == fingerprint(rr.RunnableLambda(adder(1)))
    assert fingerprint(rr.RunnableLambda(adder(1))) != fingerprint(rr.RunnableLambda(adder(2)))
    assert fingerprint(rr.RunnableLambda(adder([1, 2]))) != fingerprint(rr.RunnableLambda(adder([1, 3])))
    assert fingerprint(rr.RunnableLambda(lambda x: x + 1)) != fingerprint(rr.RunnableLambda(lambda x: x - 1))


def test_defaults_partials_and_bound_methods_count() -> None:
    import functools

    def scale(x: float, k: float = 2.0) -> float:
        return x * k

    other = compiled("def scale(x, k=3.0):\n    return x * k\n", "scale")
    assert fingerprint(scale) != fingerprint(other)
    assert fingerprint(functools.partial(scale, k=2)) != fingerprint(functools.partial(scale, k=3))

    class Box:
        def __init__(self, n: int) -> None:
            self.n = n

        def get(self, x: int) -> int:
            return x + self.n

    assert fingerprint(Box(1).get) == fingerprint(Box(1).get)
    assert fingerprint(Box(1).get) != fingerprint(Box(2).get)


def test_a_helper_the_function_calls_counts_mutable_module_state_does_not() -> None:
    v1 = compiled("PROMPT = 'short'\nSEEN = []\ndef helper(x):\n    return x * 2\n"
                  "def f(x):\n    SEEN.append(x)\n    return PROMPT + str(helper(x))\n")
    v2 = compiled("PROMPT = 'short'\nSEEN = []\ndef helper(x):\n    return x * 3\n"
                  "def f(x):\n    SEEN.append(x)\n    return PROMPT + str(helper(x))\n")
    v3 = compiled("PROMPT = 'long'\nSEEN = []\ndef helper(x):\n    return x * 2\n"
                  "def f(x):\n    SEEN.append(x)\n    return PROMPT + str(helper(x))\n")
    before = fingerprint(v1)
    assert before != fingerprint(v2)  # the helper's code changed
    assert before != fingerprint(v3)  # a module-level constant it reads changed
    v1("a")
    assert fingerprint(v1) == before  # a list it appends to is state, not a setting


def test_library_callables_by_what_they_are() -> None:
    import operator

    pairs = [(operator.itemgetter("a"), operator.itemgetter("b")), (str.upper, str.lower), (np.sqrt, np.exp),
             ("-".join, "+".join), (len, abs), (operator.attrgetter("x"), operator.attrgetter("y"))]
    for one, other in pairs:
        assert fingerprint(rr.RunnableLambda(one)) == fingerprint(rr.RunnableLambda(one))
        assert fingerprint(rr.RunnableLambda(one)) != fingerprint(rr.RunnableLambda(other)), (one, other)


def test_how_a_step_runs_does_not_count() -> None:
    step = rr.RunnableLambda(lambda x: x * 2)
    wrapped = (step.with_options(num_cpus=2, max_retries=3).with_retry(stop_after_attempt=5).with_timeout(30)
               .with_rate_limit(requests_per_minute=100))
    assert fingerprint(step) == fingerprint(wrapped)
    assert fingerprint(step) == fingerprint(step.with_name("renamed"))
    assert fingerprint(step) != fingerprint(step.with_config(configurable={"mode": "x"}))


def test_a_chain_counts_every_step_and_its_structure() -> None:
    a, b = rr.RunnableLambda(lambda x: x + 1), rr.RunnableLambda(lambda x: x * 2)
    assert fingerprint(a | b) != fingerprint(b | a)
    assert fingerprint(rr.RunnableParallel(x=a, y=b)) == fingerprint(rr.RunnableParallel(y=b, x=a))
    assert fingerprint(rr.RunnableParallel(x=a, y=b)) != fingerprint(rr.RunnableParallel(x=b, y=a))


def test_an_actor_by_its_class_and_arguments_not_its_pool() -> None:
    from rayrunnables.testing.steps.cache import Embedder

    one = rr.RunnableActor(Embedder, "/tmp/x", 1.0, pool_size=1)
    assert fingerprint(one) == fingerprint(rr.RunnableActor(Embedder, "/tmp/x", 1.0, pool_size=3))
    assert fingerprint(one) != fingerprint(rr.RunnableActor(Embedder, "/tmp/x", 2.0))


def test_langchain_objects_by_their_parameters_never_their_secrets() -> None:
    def model(**kw: Any) -> Any:
        return from_langchain(ChatOpenAI(model="gpt-x", base_url="http://127.0.0.1:9/v1", **{"api_key": "a", **kw}))

    assert fingerprint(model(temperature=0.1)) == fingerprint(model(temperature=0.1, api_key="another-key"))
    assert fingerprint(model(temperature=0.1)) != fingerprint(model(temperature=0.2))
    assert fingerprint(model(max_tokens=10)) != fingerprint(model(max_tokens=20))
    prompt = from_langchain(ChatPromptTemplate.from_messages([("human", "Summarize: {doc}")]))
    other = from_langchain(ChatPromptTemplate.from_messages([("human", "Summarise: {doc}")]))
    assert fingerprint(prompt) != fingerprint(other)


def test_a_models_rate_limiter_does_not_count() -> None:
    from langchain_core.rate_limiters import InMemoryRateLimiter

    limiter = InMemoryRateLimiter(requests_per_second=5)
    step = from_langchain(ChatOpenAI(model="gpt-x", api_key="k", rate_limiter=limiter))
    before = fingerprint(step)
    limiter.acquire()  # its clock and bucket moved
    assert fingerprint(step) == before


def test_a_lazily_built_model_by_its_factory() -> None:
    def make(temperature: float) -> Any:
        return lazy_langchain_step(lambda: ChatOpenAI(model="gpt-x", temperature=temperature, api_key="k"))

    assert fingerprint(make(0.1)) == fingerprint(make(0.1))  # a token of its own per step does not count
    assert fingerprint(make(0.1)) != fingerprint(make(0.7))


def test_version_stands_for_the_code_values_still_count() -> None:
    v1 = compiled("def f(x, k=1):\n    return x + k\n")
    v2 = compiled("def f(x, k=1):\n    return x - k\n")
    v3 = compiled("def f(x, k=2):\n    return x - k\n")
    assert fingerprint(v1, code=False) == fingerprint(v2, code=False)
    assert fingerprint(v1, code=False) != fingerprint(v3, code=False)


def test_cycles_end() -> None:
    a: list[Any] = [1]
    a.append(a)
    fingerprint(a)
    rec = compiled("def f(x):\n    return f(x - 1) if x else 0\n")
    fingerprint(rec)


# ---- canonical input digests --------------------------------------------------------------------------------
def test_equal_inputs_hash_equal_and_different_ones_differ() -> None:
    assert input_digest({"a": 1, "b": [1, 2]}) == input_digest({"b": [1, 2], "a": 1})
    distinct = [1, 1.0, True, "1", b"1", [1], (1,), {1}, frozenset({1}), {"1": 1}, None, 0.0, -0.0, math.nan]
    assert len({input_digest(v) for v in distinct}) == len(distinct)
    assert input_digest({1, 2, 3}) == input_digest({3, 2, 1})


def test_numpy_arrays_by_dtype_shape_and_bytes() -> None:
    a = np.arange(6, dtype=np.float32)
    assert input_digest(a) == input_digest(a.copy())
    assert input_digest(a) != input_digest(a.astype(np.float64))
    assert input_digest(a) != input_digest(a.reshape(2, 3))
    assert input_digest(a.reshape(2, 3).T) == input_digest(np.ascontiguousarray(a.reshape(2, 3).T))
    readonly = a.copy()
    readonly.flags.writeable = False
    assert input_digest(readonly) == input_digest(a)
    assert input_digest(np.float32(1.0)) != input_digest(np.float64(1.0))


def test_langchain_messages_and_prompt_values_by_their_dict_form() -> None:
    assert input_digest(AIMessage("hi", id="run-1")) == input_digest(AIMessage("hi", id="run-2"))
    assert input_digest(AIMessage("hi")) != input_digest(HumanMessage("hi"))
    assert input_digest([HumanMessage("a")]) != input_digest([HumanMessage("b")])
    chat = ChatPromptValue(messages=[HumanMessage("hi")])
    assert input_digest(chat) == input_digest(ChatPromptValue(messages=[HumanMessage("hi", id="x")]))
    assert input_digest(StringPromptValue(text="a")) != input_digest(StringPromptValue(text="b"))
    assert input_digest(Document("a", metadata={"s": 1})) != input_digest(Document("a", metadata={"s": 2}))


def test_pydantic_models_and_dataclasses_by_class_and_fields() -> None:
    class Query(BaseModel):
        text: str
        k: int = 3

    @dataclasses.dataclass
    class Item:
        text: str

    assert input_digest(Query(text="a")) == input_digest(Query(text="a", k=3))
    assert input_digest(Query(text="a")) != input_digest(Query(text="a", k=4))
    assert input_digest(Item("a")) != input_digest(Item("b"))


def test_an_object_without_a_canonical_form_is_refused_naming_where() -> None:
    with pytest.raises(Unhashable, match=r"input\['docs'\]\[1\] is a builtins.object"):
        input_digest({"docs": [1, object()]})
    with pytest.raises(TypeError):
        input_digest(lambda x: x)


def test_the_calls_configurable_counts_less_a_frameworks_bookkeeping() -> None:
    from rayrunnables.runnables.cached import configurable_digest

    assert configurable_digest({}) == configurable_digest(None) == b""
    assert configurable_digest({"model": "a"}) != configurable_digest({"model": "b"})
    assert configurable_digest({"model": "a", "user": "u"}) == configurable_digest({"user": "u", "model": "a"})
    base = configurable_digest({"model": "a", "thread_id": "t1"})
    langgraph = {"model": "a", "thread_id": "t1", "checkpoint_id": "c-17", "checkpoint_ns": "node:1",
                 "__pregel_send": object(), "__pregel_read": lambda: None}
    assert configurable_digest(langgraph) == base
    assert configurable_digest({"model": "a", "thread_id": "t2"}) != base


# ---- entries ------------------------------------------------------------------------------------------------
class Summary(BaseModel):
    title: str
    points: list[str]


def test_values_come_back_as_they_went() -> None:
    values = [
        None, True, 3, 2.5, math.inf, "é", [1, [2]], (1, (2, 3)), {"a": (1,)}, {1: "x", (2, 3): "y"},
        {"__rr__": "looks like a tag"}, {1, 2}, frozenset({"a"}), b"\x00\xff",
        np.arange(6, dtype=np.int16).reshape(2, 3), np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")]), np.float32(1.5),
        AIMessage("hi", id="run-1", usage_metadata={"input_tokens": 1, "output_tokens": 2, "total_tokens": 3}),
        ToolMessage("ok", tool_call_id="c1"), AIMessageChunk(content="part"),
        Document("text", metadata={"source": "a"}, id="d1"), ChatPromptValue(messages=[HumanMessage("q")]),
        StringPromptValue(text="s"), Summary(title="t", points=["a", "b"]),
        StrOutputParser().invoke(AIMessage("parsed")),
    ]
    for value in values:
        back = decode_value(encode_value(value))
        if isinstance(value, np.ndarray):
            assert back.dtype == value.dtype and back.shape == value.shape and (back == value).all()
            assert back.flags.writeable
        else:
            assert type(back) is type(value) and back == value, value
    assert math.isnan(decode_value(encode_value(math.nan)))


def test_values_it_cannot_bring_back_exactly_are_refused() -> None:
    Point = namedtuple("Point", "x y")
    for value in (Point(1, 2), OrderedDict(a=1), object(), np.array([object()]), [1, object()]):
        with pytest.raises(Uncacheable):
            encode_value(value)


def test_an_entry_holds_for_its_key_only_and_until_it_expires() -> None:
    key, other = "a" * 64, "b" * 64
    entry = make_entry(key, {"x": (1, 2)}, "lambda 'f'", ttl=None)
    assert read_entry(entry, key) == ({"x": (1, 2)}, "")
    value, why = read_entry(entry, other)
    assert value is MISS and "another key" in why
    value, why = read_entry(entry[: len(entry) // 2], key)
    assert value is MISS and "not a cache entry" in why
    value, why = read_entry(entry.replace(FORMAT.encode(), b"rayrunnables-cache/0"), key)
    assert value is MISS and "another format" in why
    timed = make_entry(key, 1, "f", ttl=10)
    assert read_entry(timed, key)[0] == 1
    import time

    assert read_entry(timed, key, now=time.time() + 11) == (MISS, "expired")
    import json

    tampered = json.loads(entry)
    tampered["value"] = {"__rr__": "pickle", "v": "..."}
    value, why = read_entry(json.dumps(tampered).encode(), key)
    assert value is MISS and "does not decode" in why and "unknown tag 'pickle'" in why
