"""Run events: LangChain callback handlers, astream_events and OpenTelemetry see the run tree LangChain gives.

langchain-core is the oracle: the same chain built from LangChain's classes runs with a recording handler,
and the multiset of (event, run name, parent's run name) ours gives must be equal, on every backend.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable
from typing import Any
from uuid import UUID

import langchain_core.runnables as lc
import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

import rayrunnables as rr
from rayrunnables.interop.langchain import from_langchain, to_langchain


class Tree(BaseCallbackHandler):
    """Records (event, run name, parent's run name) for every callback LangChain would make."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str | None, str | None]] = []
        self.names: dict[UUID, str | None] = {}

    def _start(self, event: str, run_id: UUID, parent_run_id: UUID | None, name: str | None) -> None:
        self.names[run_id] = name
        self.events.append((event, name, self.names.get(parent_run_id) if parent_run_id else None))

    def _other(self, event: str, run_id: UUID, parent_run_id: UUID | None) -> None:
        self.events.append((event, self.names.get(run_id), self.names.get(parent_run_id) if parent_run_id else None))

    def on_chain_start(self, serialized: Any, inputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
                       **kw: Any) -> None:
        self._start("chain_start", run_id, parent_run_id, kw.get("name"))

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID,
                            parent_run_id: UUID | None = None, **kw: Any) -> None:
        self._start("chat_model_start", run_id, parent_run_id, kw.get("name") or serialized.get("name"))

    def on_llm_new_token(self, token: str, *, run_id: UUID, parent_run_id: UUID | None = None, **kw: Any) -> None:
        self._other("new_token", run_id, parent_run_id)

    def on_llm_end(self, response: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kw: Any) -> None:
        self._other("llm_end", run_id, parent_run_id)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kw: Any) -> None:
        self._other("chain_end", run_id, parent_run_id)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None,
                       **kw: Any) -> None:
        self._other("chain_error", run_id, parent_run_id)


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return x * 2


def boom(x: int) -> int:
    raise ValueError(f"boom on {x}")


def pair(x: int) -> list[int]:
    return [x, x + 10]


def add_up(d: dict[str, int]) -> int:
    return d["a"] + d["b"]


# each chain built twice, from LangChain's classes and from ours (the same functions)
CHAINS: dict[str, Callable[[Any], Any]] = {
    "sequence": lambda m: m.RunnableLambda(inc) | m.RunnableLambda(double),
    "dict then lambda": lambda m: {"a": m.RunnableLambda(inc), "b": m.RunnablePassthrough()} | m.RunnableLambda(add_up),
    "failing step": lambda m: m.RunnableLambda(inc) | m.RunnableLambda(boom) | m.RunnableLambda(double),
    "map": lambda m: m.RunnableLambda(pair) | m.RunnableLambda(inc).map(),
    "assign and pick": lambda m: m.RunnablePassthrough.assign(b=m.RunnableLambda(add_up)) | m.RunnablePick("b"),
}
INPUTS = {"assign and pick": {"a": 1, "b": 2}}


def _run(chain: Any, call: str, config: dict[str, Any], input: Any) -> Any:
    try:
        if call == "batch":  # every item runs (without return_exceptions, ours stops at the first failure)
            return [type(v) if isinstance(v, Exception) else v
                    for v in chain.batch([input, input, input], config, return_exceptions=True)]
        if call == "stream":
            return list(chain.stream(input, config))
        return chain.invoke(input, config)
    except ValueError as exc:
        return type(exc)


@pytest.mark.parametrize("call", ["invoke", "batch", "stream"])
@pytest.mark.parametrize("name", list(CHAINS))
def test_handler_sees_langchains_run_tree(name: str, call: str, cfg: dict[str, Any]) -> None:
    if name == "map" and call == "stream":
        pytest.skip("LangChain's RunnableEach does not stream")
    input = INPUTS.get(name, 1)
    theirs, ours = Tree(), Tree()
    expected = _run(CHAINS[name](lc), call, {"callbacks": [theirs]}, input)
    got = _run(CHAINS[name](rr), call, {**cfg, "callbacks": [ours]}, input)
    assert got == expected
    assert Counter(ours.events) == Counter(theirs.events)
    assert ours.events[0][0] == "chain_start"  # a parent starts before its children


def _llm_chain() -> Any:
    return ChatPromptTemplate.from_template("say {x}") | FakeListChatModel(responses=["hi there"]) | StrOutputParser()


@pytest.mark.parametrize("call", ["invoke", "stream"])
def test_langchain_model_runs_inside_ours(call: str, cfg: dict[str, Any]) -> None:
    """prompt | model | parser through from_langchain: the model's start, tokens and end, under our run."""
    theirs, ours = Tree(), Tree()
    expected = _run(_llm_chain(), call, {"callbacks": [theirs]}, {"x": 1})
    got = _run(from_langchain(_llm_chain()), call, {**cfg, "callbacks": [ours]}, {"x": 1})
    assert got == expected
    assert Counter(ours.events) == Counter(theirs.events)
    if call == "stream":
        assert sum(1 for e in ours.events if e[0] == "new_token") == len("hi there")


def _events(chain: Any, input: Any, config: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    async def collect() -> list[tuple[str, str]]:
        return [(e["event"], e["name"]) async for e in chain.astream_events(input, config, version="v2")]

    return asyncio.run(collect())


@pytest.mark.parametrize("name", ["sequence", "dict then lambda", "llm"])
def test_astream_events_match_langchains(name: str, cfg: dict[str, Any]) -> None:
    if name == "llm":
        theirs, ours = _llm_chain(), from_langchain(_llm_chain())
        input: Any = {"x": 1}
    else:
        theirs, ours, input = CHAINS[name](lc), CHAINS[name](rr), 1
    assert Counter(_events(ours, input, cfg)) == Counter(_events(theirs, input))


def test_astream_events_data_shapes_and_filters(cfg: dict[str, Any]) -> None:
    async def collect(**filters: Any) -> list[dict[str, Any]]:
        chain = rr.RunnableLambda(inc) | rr.RunnableLambda(double)
        return [e async for e in chain.astream_events(1, cfg, version="v2", **filters)]

    events = asyncio.run(collect())
    root_start, root_end = events[0], events[-1]
    assert root_start["event"] == "on_chain_start" and root_start["data"] == {"input": 1}
    assert root_end["event"] == "on_chain_end" and root_end["data"] == {"output": 4}
    assert root_start["parent_ids"] == [] and root_start["run_id"] == root_end["run_id"]
    inner_end = next(e for e in events if e["event"] == "on_chain_end" and e["name"] == "double")
    assert inner_end["data"] == {"output": 4, "input": 2}
    assert inner_end["parent_ids"] == [root_start["run_id"]]
    only = asyncio.run(collect(include_names=["inc"]))
    assert {e["name"] for e in only} == {"inc"} and len(only) == 3  # start, stream, end
    with pytest.raises(NotImplementedError, match="v2"):
        asyncio.run(_first((rr.RunnableLambda(inc)).astream_events(1, version="v1")))


async def _first(events: Any) -> Any:
    async for event in events:
        return event


def test_astream_events_raises_the_steps_error_after_its_events(cfg: dict[str, Any]) -> None:
    seen: list[tuple[str, str]] = []

    async def collect() -> None:
        async for e in CHAINS["failing step"](rr).astream_events(1, cfg, version="v2"):
            seen.append((e["event"], e["name"]))

    with pytest.raises(ValueError, match="boom on 2"):
        asyncio.run(collect())
    assert ("on_chain_end", "inc") in seen and ("on_chain_start", "boom") in seen


def test_to_langchain_nests_our_steps_under_the_calling_run(backend: str) -> None:
    def inner(m: Any) -> Any:
        return m.RunnableLambda(inc) | {"a": m.RunnableLambda(double), "b": m.RunnablePassthrough()}

    theirs, ours = Tree(), Tree()
    lc.RunnableParallel(out=inner(lc)).pipe(lc.RunnableLambda(str)).invoke(1, {"callbacks": [theirs]})
    outer = lc.RunnableParallel(out=to_langchain(inner(rr), backend=backend)).pipe(lc.RunnableLambda(str))
    outer.invoke(1, {"callbacks": [ours]})
    assert Counter(ours.events) == Counter(theirs.events)
    # each item of a LangChain map over ours nests under its own item run
    theirs, ours = Tree(), Tree()
    lc.RunnableLambda(pair).pipe(inner(lc).map()).invoke(1, {"callbacks": [theirs]})
    lc.RunnableLambda(pair).pipe(to_langchain(inner(rr), backend=backend).map()).invoke(1, {"callbacks": [ours]})
    assert Counter(ours.events) == Counter(theirs.events)


def test_a_function_passing_its_config_on_nests_the_inner_chain(cfg: dict[str, Any]) -> None:
    def calls(m: Any) -> Any:
        inner = m.RunnableLambda(inc) | m.RunnableLambda(double)

        def outer(x: int, config: Any) -> int:
            return int(inner.invoke(x, config))

        return m.RunnableLambda(outer)

    theirs, ours = Tree(), Tree()
    calls(lc).invoke(1, {"callbacks": [theirs]})
    calls(rr).invoke(1, {**cfg, "callbacks": [ours]})
    assert Counter(ours.events) == Counter(theirs.events)


def test_items_nested_under_their_own_parents_pass_them_on(cfg: dict[str, Any]) -> None:
    """``PerItem.nested``: each item's runs nest under its own parent, a LangChain model's at the top of the
    chain too (what ``rayrunnables run --usage`` tells items apart by)."""
    from uuid import uuid4

    from rayrunnables.engine.inprocess import PerItem

    parents = [uuid4(), uuid4()]
    tree = Tree()
    tree.names.update({parents[0]: "item 0", parents[1]: "item 1"})
    model = from_langchain(FakeListChatModel(responses=["hi"]))
    items = [PerItem.nested(text, parent) for text, parent in zip(["a", "b"], parents, strict=True)]
    assert [m.content for m in model.imap(items, {**cfg, "callbacks": [tree]})] == ["hi", "hi"]
    assert Counter(tree.events) == Counter(
        (event, "FakeListChatModel", item) for event in ("chat_model_start", "llm_end") for item in ("item 0", "item 1")
    )


def test_handler_switches_and_errors(cfg: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    class Ignoring(Tree):
        ignore_chain = True

    class Broken(BaseCallbackHandler):
        def on_chain_start(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("handler bug")

    class Strict(Broken):
        raise_error = True

    ignoring = Ignoring()
    chain = CHAINS["sequence"](rr)
    assert chain.invoke(1, {**cfg, "callbacks": [ignoring, Broken()]}) == 4  # a broken handler is logged only
    assert ignoring.events == []
    assert "handler bug" in caplog.text
    with pytest.raises(RuntimeError, match="handler bug"):
        chain.invoke(1, {**cfg, "callbacks": [Strict()]})


def test_run_name_tags_and_metadata_reach_the_handler(cfg: dict[str, Any]) -> None:
    seen: list[tuple[str, list[str], dict[str, Any]]] = []

    class Named(BaseCallbackHandler):
        def on_chain_start(self, serialized: Any, inputs: Any, **kw: Any) -> None:
            seen.append((kw["name"], kw["tags"], kw["metadata"]))

    chain = rr.RunnableLambda(inc).with_config(run_name="first") | rr.RunnableLambda(double)
    chain.invoke(1, {**cfg, "callbacks": [Named()], "tags": ["t"], "metadata": {"m": 1}})
    assert [name for name, _, _ in seen] == ["RunnableSequence", "first", "double"]
    assert [tags for _, tags, _ in seen] == [["t"], ["seq:step:1", "t"], ["seq:step:2", "t"]]
    assert all(meta == {"m": 1} for _, _, meta in seen)


def test_listeners_are_served_from_the_events_in_this_process(cfg: dict[str, Any]) -> None:
    """A listener in a chain that runs in workers is still called here, once per run, in order."""
    calls: list[tuple[str, Any]] = []
    step = rr.RunnableLambda(double).with_listeners(
        on_start=lambda run: calls.append(("start", run.inputs)), on_end=lambda run: calls.append(("end", run.outputs))
    )
    chain = rr.RunnableLambda(inc) | step
    assert chain.batch([1, 2], cfg) == [4, 6]
    assert sorted(calls) == sorted([("start", 2), ("end", 4), ("start", 3), ("end", 6)])
    calls.clear()
    assert (rr.RunnableLambda(pair) | step.map()).invoke(1, cfg) == [2, 22]
    assert sorted(calls) == sorted([("start", 1), ("end", 2), ("start", 11), ("end", 22)])


@pytest.mark.ray_only
def test_otel_span_tree_across_two_ray_workers(ray_session: Any) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from rayrunnables.interop.otel import OpenTelemetryTracer

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    chain = rr.RunnableLambda(slow_inc) | {"a": rr.RunnableLambda(double), "b": rr.RunnablePassthrough()}
    otel = OpenTelemetryTracer(tracer_provider=provider)
    with tracer.start_as_current_span("request") as request:
        out = list(chain.imap(range(6), {"backend": "ray", "callbacks": [otel]}, chunk_size=1))
    assert out == [{"a": 2 * (i + 1), "b": i + 1} for i in range(6)]
    spans = exporter.get_finished_spans()
    by_id = {span.context.span_id: span for span in spans}
    roots = [s for s in spans if s.parent is not None and s.parent.span_id == request.get_span_context().span_id]
    assert len(roots) == 6 and {s.name for s in roots} == {"sequence"}
    assert all(s.context.trace_id == request.get_span_context().trace_id for s in spans)
    leaf = next(s for s in spans if s.name == "step 2 > parallel['a'] > lambda 'double'")
    parent = by_id[leaf.parent.span_id]  # type: ignore[union-attr]
    assert parent.name == "step 2 > parallel" and by_id[parent.parent.span_id] in roots  # type: ignore[union-attr]
    worker_pids = {s.attributes["process.pid"] for s in spans if s.name == "step 1 > lambda 'slow_inc'"}  # type: ignore[index]
    assert len(worker_pids) == 2  # the items ran in both workers, and their spans are in one tree
    assert all(s.end_time >= s.start_time for s in spans)  # type: ignore[operator]


def slow_inc(x: int) -> int:
    import time

    time.sleep(0.3)
    return x + 1


def test_ray_started_from_a_short_lived_thread_survives_it(tmp_path: Any) -> None:
    """A first call from ``asyncio``'s worker threads starts Ray; Ray must outlive that thread."""
    script = tmp_path / "astream_first.py"
    script.write_text(textwrap.dedent("""
        import asyncio, ray, rayrunnables as rr

        def inc(x):
            return x + 1

        async def main():
            return [c async for c in rr.RunnableLambda(inc).astream(1, {"backend": "ray"})]

        assert asyncio.run(main()) == [2]  # Ray started inside asyncio.to_thread's pool thread
        @ray.remote
        def ping():
            return "alive"
        print(ray.get(ping.remote(), timeout=30))
        ray.shutdown()
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180,
                          env={**__import__("os").environ, "RAY_ADDRESS": ""})
    assert "alive" in done.stdout, done.stderr[-2000:]


class Counter1:
    """A stateful step (RunnableActor) for the plan test."""

    def __call__(self, x: int) -> int:
        return x + 1


async def wait_inc(x: int) -> int:
    await asyncio.sleep(0.01)
    return x + 1


@pytest.mark.ray_only
def test_ray_invoke_keeps_its_tasks_when_recorded(ray_session: Any) -> None:
    """With callbacks, a Ray invoke still fans out (a task per branch, chunk tasks for a .map() of a
    computed list, the actor pool, io-bound steps in driver threads); the run tree is LangChain's."""
    def build(m: Any, ours: bool) -> Any:
        inc_step = rr.RunnableActor(Counter1, name="inc", pool_size=1) if ours else m.RunnableLambda(inc)
        io_step = m.RunnableLambda(wait_inc, name="wait_inc") if ours else m.RunnableLambda(inc, name="wait_inc")
        return m.RunnableLambda(pair) | {
            "each": m.RunnableLambda(double).map(),
            "first": m.RunnableLambda(lambda xs: xs[0], name="first") | inc_step | io_step,
        }

    theirs, ours = Tree(), Tree()
    expected = build(lc, False).invoke(1, {"callbacks": [theirs]})
    got = build(rr, True).invoke(1, {"backend": "ray", "callbacks": [ours]})
    assert got == expected == {"each": [2, 22], "first": 3}
    assert Counter(ours.events) == Counter(theirs.events)
    tasks = rr.get_backend("ray").last_run.tasks  # type: ignore[attr-defined]
    assert len(tasks) >= 3  # not one task for the whole chain


@pytest.mark.ray_only
def test_ray_invoke_failing_branch_reports_errors_up_the_tree(ray_session: Any) -> None:
    chain = rr.RunnableLambda(inc) | {"ok": rr.RunnableLambda(double), "bad": rr.RunnableLambda(boom)}
    ours = Tree()
    with pytest.raises(ValueError, match="boom on 2"):
        chain.invoke(1, {"backend": "ray", "callbacks": [ours]})
    got = Counter(e for e in ours.events if e[1] != "double")  # the sibling may be cancelled or finish
    assert got == Counter([
        ("chain_start", "RunnableSequence", None), ("chain_start", "inc", "RunnableSequence"),
        ("chain_end", "inc", "RunnableSequence"), ("chain_start", "RunnableParallel<ok,bad>", "RunnableSequence"),
        ("chain_start", "boom", "RunnableParallel<ok,bad>"), ("chain_error", "boom", "RunnableParallel<ok,bad>"),
        ("chain_error", "RunnableParallel<ok,bad>", "RunnableSequence"), ("chain_error", "RunnableSequence", None),
    ])


def test_a_bindings_own_callbacks_hear_the_runs_inside_it(cfg: dict[str, Any]) -> None:
    """``with_config(callbacks=[h])``: ``h`` sees the bound step's runs (and what runs inside them), from
    any worker, as LangChain's binding gives; the call's own handlers see everything."""
    def build(m: Any, handler: Any) -> Any:
        inner = (m.RunnableLambda(inc) | {"a": m.RunnableLambda(double), "b": m.RunnablePassthrough()})
        return m.RunnableLambda(inc) | inner.with_config(callbacks=[handler]) | m.RunnableLambda(add_up)

    theirs, ours = Tree(), Tree()
    theirs_all, ours_all = Tree(), Tree()
    assert build(lc, theirs).invoke(1, {"callbacks": [theirs_all]}) == build(rr, ours).invoke(
        1, {**cfg, "callbacks": [ours_all]}
    )
    assert Counter(ours.events) == Counter(theirs.events)
    assert Counter(ours_all.events) == Counter(theirs_all.events)
    theirs, ours = Tree(), Tree()
    build(lc, theirs).batch([1, 2])
    build(rr, ours).batch([1, 2], cfg)  # no call-level callbacks at all: the binding's still hear
    assert Counter(ours.events) == Counter(theirs.events)


def test_runs_carry_langchains_position_tags(cfg: dict[str, Any]) -> None:
    seen: dict[str, list[tuple[str, tuple[str, ...]]]] = {"lc": [], "rr": []}

    def tagger(side: str) -> Any:
        class Tags(BaseCallbackHandler):
            def on_chain_start(self, serialized: Any, inputs: Any, **kw: Any) -> None:
                seen[side].append((kw["name"], tuple(kw["tags"])))

        return Tags()

    def build(m: Any) -> Any:
        branch = m.RunnableBranch((m.RunnableLambda(lambda x: x > 100, name="big"), m.RunnableLambda(double)),
                                  m.RunnableLambda(inc))
        return m.RunnableLambda(inc) | {"a": branch, "b": m.RunnablePassthrough()} | m.RunnableLambda(add_up)

    build(lc).invoke(1, {"callbacks": [tagger("lc")], "tags": ["mine"]})
    build(rr).invoke(1, {**cfg, "callbacks": [tagger("rr")], "tags": ["mine"]})
    assert Counter(seen["rr"]) == Counter(seen["lc"])


def test_position_tags_name_odd_branch_keys_as_langchain_does() -> None:
    """Branch keys with quotes, escapes and non-Latin characters come back whole in ``map:key:`` tags
    (read from the step path without ``ast``, whose parser is not thread-safe on CPython 3.11)."""
    keys = ["it's", 'say "hi"', "tab\there", "back\\slash", "漢字", "😀", "é"]
    seen: dict[str, set[tuple[str, ...]]] = {"lc": set(), "rr": set()}

    def tagger(side: str) -> Any:
        class Tags(BaseCallbackHandler):
            def on_chain_start(self, serialized: Any, inputs: Any, **kw: Any) -> None:
                seen[side].add(tuple(kw["tags"]))

        return Tags()

    for m, side in ((lc, "lc"), (rr, "rr")):
        m.RunnableParallel({k: m.RunnableLambda(inc) for k in keys}).invoke(1, {"callbacks": [tagger(side)]})
    assert seen["rr"] == seen["lc"]
    assert {f"map:key:{k}" for k in keys} <= {t for tags in seen["rr"] for t in tags}


@pytest.mark.parametrize("bad", ["a string", print, {"on_chain_start": 1}, 42])
def test_what_is_not_a_handler_is_a_clear_error_at_the_call(bad: Any) -> None:
    chain = rr.RunnableLambda(inc) | rr.RunnableLambda(double)
    with pytest.raises(rr.ConfigError, match=r"callbacks'\]\[0\].*not a callback handler"):
        chain.invoke(1, {"callbacks": [bad]})
    with pytest.raises(rr.ConfigError, match="not a callback handler"):
        chain.with_config(callbacks=[bad])


def whoami(x: int) -> list[str]:
    """The OpenTelemetry span current while this step runs (in whatever process), as hex ids."""
    from opentelemetry import trace

    current = trace.get_current_span().get_span_context()
    return [format(current.trace_id, "032x"), format(current.span_id, "016x")]


def test_otel_trace_context_travels_with_the_work(cfg: dict[str, Any]) -> None:
    """Inside a step (a Ray worker too) the current span is the step's own span, made by the caller's
    tracer with that same id: what the step traces itself nests under it."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from rayrunnables.interop.otel import OpenTelemetryTracer

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    chain = rr.RunnableLambda(inc) | {"who": rr.RunnableLambda(whoami), "same": rr.RunnablePassthrough()}
    with provider.get_tracer("test").start_as_current_span("request") as request:
        out = chain.invoke(1, {**cfg, "callbacks": [OpenTelemetryTracer(tracer_provider=provider)]})
    trace_id, span_id = out["who"]
    step = next(s for s in exporter.get_finished_spans() if s.name.endswith("lambda 'whoami'"))
    assert format(step.context.span_id, "016x") == span_id
    assert format(step.context.trace_id, "032x") == trace_id == format(request.get_span_context().trace_id, "032x")
    # without a span around the call, the trace is a new one, still the same on both sides
    exporter.clear()
    out = chain.invoke(1, {**cfg, "callbacks": [OpenTelemetryTracer(tracer_provider=provider)]})
    step = next(s for s in exporter.get_finished_spans() if s.name.endswith("lambda 'whoami'"))
    assert [format(step.context.trace_id, "032x"), format(step.context.span_id, "016x")] == out["who"]
