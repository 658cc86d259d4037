"""``with_cache`` on every backend: hits and misses, errors never cached, vectorized steps called with the
misses only, hits reported to callbacks, and one store shared by the driver, Ray's workers and a process pool.

Calls are counted by lines appended to files (``rayrunnables.testing.steps.cache``), so a call in any process counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler

import rayrunnables as rr

from ..steps.cache import (
    Embedder,
    calls,
    make_embed,
    make_embed_batch,
    make_flaky,
    make_summarize,
    make_summarize_edited,
)
from . import exported

N_DOCS = 1000


def docs(n: int = N_DOCS) -> list[dict[str, Any]]:
    return [{"text": f"document {i} about {'actors' if i % 3 else 'tasks'}"} for i in range(n)]


@pytest.fixture
def folders(tmp_path: Path) -> tuple[str, str]:
    """(where calls are counted, the cache's folder)."""
    counts, store = tmp_path / "calls", tmp_path / "cache"
    counts.mkdir()
    return str(counts), str(store)


def pipeline(counts: str, store: str, style: str) -> rr.Runnable[Any, Any]:
    embed = rr.RunnableLambda(make_embed(counts), name="embed").with_cache(store)
    summarize = rr.RunnableLambda(make_summarize(counts, style), name="summarize").with_cache(store)
    return embed | summarize


@pytest.mark.timeout(240)
def test_a_changed_step_is_computed_again_alone_and_an_identical_run_computes_nothing(
        cfg: dict[str, Any], folders: tuple[str, str]) -> None:
    counts, store = folders
    inputs = docs()
    first = pipeline(counts, store, "short").batch(inputs, cfg)
    assert (calls(counts, "embed"), calls(counts, "summarize")) == (N_DOCS, N_DOCS)
    assert first[4] == "short: document 4 a (23)"

    second = pipeline(counts, store, "long").batch(inputs, cfg)  # summarize changed
    assert (calls(counts, "embed"), calls(counts, "summarize")) == (N_DOCS, 2 * N_DOCS)
    assert second[4] == "long: document 4 a (23)"

    third = pipeline(counts, store, "long").batch(inputs, cfg)  # identical: nothing computed
    assert (calls(counts, "embed"), calls(counts, "summarize")) == (N_DOCS, 2 * N_DOCS)
    assert third == second


@pytest.mark.timeout(240)
def test_entries_written_in_this_process_are_hits_in_every_worker(
        cfg: dict[str, Any], folders: tuple[str, str]) -> None:
    counts, store = folders
    inputs = docs(300)
    expected = pipeline(counts, store, "short").batch(inputs)  # written by the in-process backend
    assert calls(counts, "embed") == 300
    again = pipeline(counts, store, "short").batch(inputs, cfg)  # read by the backend under test
    assert again == expected
    assert (calls(counts, "embed"), calls(counts, "summarize")) == (300, 300)
    assert pipeline(counts, store, "short").invoke(inputs[7], cfg) == expected[7]
    assert calls(counts, "summarize") == 300


@pytest.mark.timeout(240)
def test_errors_are_never_cached(cfg: dict[str, Any], folders: tuple[str, str]) -> None:
    counts, store = folders
    step = rr.RunnableLambda(make_flaky(counts), name="flaky").with_cache(store)
    first = step.batch([1, 2, 3], cfg, return_exceptions=True)
    assert all(isinstance(e, ValueError) for e in first)
    assert step.batch([1, 2, 3], cfg) == [10, 20, 30]  # computed: the errors were not kept
    assert step.batch([1, 2, 3], cfg) == [10, 20, 30]  # now kept
    assert calls(counts, "flaky") == 6


@pytest.mark.timeout(240)
def test_a_vectorized_step_is_called_with_the_misses_only(cfg: dict[str, Any], folders: tuple[str, str]) -> None:
    counts, store = folders
    step = rr.RunnableLambda(make_embed_batch(counts), batched=True, name="embed_batch").with_cache(store)
    assert step.vectorized
    assert step.batch(["a", "ab", "abc"], cfg) == [[1.0, 1.0], [2.0, 1.0], [3.0, 1.0]]
    assert calls(counts, "embed_batch_items") == 3
    out = step.batch(["a", "ab", "abc", "bb", "aaaa"], cfg)
    assert out == [[1.0, 1.0], [2.0, 1.0], [3.0, 1.0], [2.0, 0.0], [4.0, 4.0]]
    assert calls(counts, "embed_batch_items") == 5  # only the 2 new texts
    assert step.batch(["aaaa", "a"], cfg) == [[4.0, 4.0], [1.0, 1.0]]
    assert calls(counts, "embed_batch_items") == 5


@pytest.mark.timeout(240)
def test_a_stateful_vectorized_step(cfg: dict[str, Any], folders: tuple[str, str]) -> None:
    counts, store = folders
    step = rr.RunnableActor(Embedder, counts, 2.0, pool_size=1).with_cache(store)
    assert step.map().invoke(["a", "bb"], cfg) == [2.0, 4.0]
    assert step.map().invoke(["a", "bb", "ccc"], cfg) == [2.0, 4.0, 6.0]
    assert calls(counts, "actor_items") == 3
    other = rr.RunnableActor(Embedder, counts, 3.0).with_cache(store)  # another argument: another step
    assert other.invoke("a", cfg) == 3.0
    assert calls(counts, "actor_items") == 4


class Runs(BaseCallbackHandler):
    def __init__(self) -> None:
        self.started: list[tuple[str, dict[str, Any]]] = []
        self.ended: list[Any] = []

    def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
        self.started.append((kwargs.get("name"), dict(kwargs.get("metadata") or {})))

    def on_chain_end(self, outputs: Any, **kwargs: Any) -> None:
        self.ended.append(outputs)


@pytest.mark.timeout(240)
def test_a_hit_reports_its_run_as_cached(cfg: dict[str, Any], folders: tuple[str, str]) -> None:
    counts, store = folders
    chain = rr.RunnableLambda(make_embed(counts), name="embed").with_cache(store) | rr.RunnableLambda(
        lambda d: d["vector"][0], name="length")
    miss, hit = Runs(), Runs()
    assert chain.invoke({"text": "abc"}, {**cfg, "callbacks": [miss], "metadata": {"user": "u"}}) == 3.0
    assert chain.invoke({"text": "abc"}, {**cfg, "callbacks": [hit], "metadata": {"user": "u"}}) == 3.0
    assert calls(counts, "embed") == 1
    miss_names = [name for name, _ in miss.started]
    assert [name for name, _ in hit.started] == miss_names  # the same runs, in the same tree
    embed_miss = dict(miss.started)["embed"]
    embed_hit = dict(hit.started)["embed"]
    assert "cached" not in embed_miss and embed_miss["user"] == "u"
    assert embed_hit["cached"] is True and embed_hit["user"] == "u" and len(embed_hit["cache_key"]) == 64
    assert {"doc": "abc", "vector": [3.0, 3.0]} in hit.ended


@pytest.mark.timeout(240)
def test_the_runs_default_store_and_streaming(cfg: dict[str, Any], folders: tuple[str, str]) -> None:
    counts, store = folders
    step = rr.RunnableLambda(make_embed(counts), name="embed").with_cache()  # no store of its own
    config = {**cfg, "cache": store}
    first = step.invoke({"text": "abc"}, config)
    assert list(Path(store).glob("*/*.json")), "the entry is in the run's store"
    assert list(step.stream({"text": "abc"}, config)) == [first]
    assert step.batch([{"text": "abc"}], config) == [first]
    assert calls(counts, "embed") == 1
    uncached = rr.RunnableLambda(make_embed(counts), name="embed_again")
    branches = rr.RunnableParallel(a=step, b=uncached).with_cache(store)
    streamed = list(branches.stream({"text": "xyz"}, cfg))  # {key: chunk} pieces, added up into the entry
    assert len(streamed) >= 2 and calls(counts, "embed") == 3
    embedded = step.invoke({"text": "xyz"}, cfg)  # a hit
    assert branches.invoke({"text": "xyz"}, cfg) == {"a": embedded, "b": embedded}
    assert calls(counts, "embed") == 3  # the streamed sum was kept: neither branch ran again
    assert "the run's store" in step.explain()


@pytest.mark.timeout(240)
def test_an_input_that_cannot_be_hashed(cfg: dict[str, Any], folders: tuple[str, str]) -> None:
    _, store = folders
    strict = rr.RunnableLambda(lambda d: len(d["items"]), name="size").with_cache(store)
    with pytest.raises(rr.UnhashableInputError, match=r"lambda 'size'.*input\['items'\]\[0\] is a builtins.object"):
        strict.invoke({"items": [object()]}, cfg)
    out = strict.batch([{"items": [1]}, {"items": [object()]}], cfg, return_exceptions=True)
    assert out[0] == 1 and isinstance(out[1], rr.UnhashableInputError)
    assert rr.step_path_of(out[1]) and "size" in rr.step_path_of(out[1])  # type: ignore[operator]
    loose = rr.RunnableLambda(lambda d: len(d["items"]), name="size").with_cache(store, on_unhashable="miss")
    assert loose.invoke({"items": [object(), 2]}, cfg) == 2
    keyed = rr.RunnableLambda(lambda d: len(d["items"]), name="size").with_cache(store, key=lambda d: d["id"])
    assert keyed.invoke({"id": "a", "items": [object()]}, cfg) == 1
    assert keyed.invoke({"id": "a", "items": [object(), object()]}, cfg) == 1  # the key says it is the same


@pytest.mark.timeout(240)
def test_version_stands_for_the_code(cfg: dict[str, Any], folders: tuple[str, str]) -> None:
    counts, store = folders
    v1 = rr.RunnableLambda(make_summarize(counts, "a"), name="s").with_cache(store, version="2024-1")
    v1_again = rr.RunnableLambda(make_summarize_edited(counts, "a"), name="s").with_cache(store, version="2024-1")
    v2 = rr.RunnableLambda(make_summarize(counts, "a"), name="s").with_cache(store, version="2024-2")
    value = {"doc": "text", "vector": [1.0, 2.0]}
    assert v1.invoke(value, cfg) == v1_again.invoke(value, cfg) == "a: text (1)"
    assert v2.invoke(value, cfg) == "a: text (1)"
    assert calls(counts, "summarize") == 2
    other_values = rr.RunnableLambda(make_summarize(counts, "b"), name="s").with_cache(store, version="2024-1")
    assert other_values.invoke(value, cfg) == "b: text (1)"  # what it closes over still counts
    assert calls(counts, "summarize") == 3


@pytest.mark.timeout(240)
def test_with_cache_checks_its_arguments_when_built() -> None:
    step = rr.RunnableLambda(lambda x: x, name="f")
    for kwargs, message in (({"ttl": 0}, "ttl"), ({"ttl": "1"}, "ttl"), ({"version": ""}, "version"),
                            ({"key": "id"}, "key"), ({"on_unhashable": "skip"}, "on_unhashable")):
        with pytest.raises(rr.OptionsError, match=rf"lambda 'f'.with_cache: {message}"):
            step.with_cache(**kwargs)
    with pytest.raises(TypeError, match=r"lambda 'f'\.with_cache"):
        step.with_cache(42)
    with pytest.raises(rr.ConfigError, match="config\\['cache'\\]"):
        step.invoke(1, {"cache": 42})


__all__ = exported(globals(), fixtures=("folders",))
