"""Backend selection (config, ``use``, environment) and the registry a third backend plugs into."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import rayrunnables
import rayrunnables.engine.registry as registry
from rayrunnables import Backend, ConfigError, RunnableLambda
from rayrunnables.backends.base import InProcessBackend
from rayrunnables.backends.local import LocalBackend
from rayrunnables.engine.inprocess import run_chunk
from rayrunnables.engine.process_state import STATE
from rayrunnables.protocols import ChunkRunner


def inc(x: int) -> int:
    return x + 1


class RecordingBackend(Backend):
    """A third backend in a few lines: delegates to the local one and records what it was asked."""

    name = "mine"

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.calls: list[str] = []
        self._local = LocalBackend()

    def invoke(self, node: Any, input: Any, config: dict[str, Any]) -> Any:
        self.calls.append("invoke")
        return self._local.invoke(node, input, config)

    def stream(self, node: Any, input: Any, config: dict[str, Any]) -> Any:
        self.calls.append("stream")
        return self._local.stream(node, input, config)

    def chunk_runner(self, node: Any, config: dict[str, Any]) -> Any:
        self.calls.append("chunk_runner")
        return self._local.chunk_runner(node, config)

    def root_context(self, config: dict[str, Any], node: Any = None) -> Any:
        return self._local.root_context(config, node)

    def explain(self, node: Any) -> str:
        return "mine: " + self._local.explain(node)


@pytest.fixture
def mine(monkeypatch: pytest.MonkeyPatch) -> RecordingBackend:
    """Register "mine" in a private copy of the registry; returns its shared instance."""
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
    monkeypatch.setattr(STATE, "backends", dict(STATE.backends))
    monkeypatch.delenv("RAYRUNNABLES_BACKEND", raising=False)
    rayrunnables.register_backend("mine", RecordingBackend)
    backend = rayrunnables.get_backend("mine")
    assert isinstance(backend, RecordingBackend)
    return backend


STEP = RunnableLambda(inc) | {"a": inc, "b": RunnableLambda(lambda x: [x, x]) | RunnableLambda(inc).map()}


def test_config_backend_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAYRUNNABLES_BACKEND", raising=False)
    assert STEP.invoke(1, config={"backend": "local"}) == {"a": 3, "b": [3, 3]}
    assert rayrunnables.get_backend("local").name == "local"


def test_use_local() -> None:
    with rayrunnables.use("local") as backend:
        assert isinstance(backend, LocalBackend)
        assert STEP.invoke(1) == {"a": 3, "b": [3, 3]}


def test_env_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYRUNNABLES_BACKEND", "local")
    assert STEP.invoke(1) == {"a": 3, "b": [3, 3]}
    assert STEP.batch([0, 1]) == [{"a": 2, "b": [2, 2]}, {"a": 3, "b": [3, 3]}]


def test_unknown_backend_name(monkeypatch: pytest.MonkeyPatch) -> None:
    step = RunnableLambda(inc)
    with pytest.raises(ConfigError, match="nope"):
        step.invoke(1, config={"backend": "nope"})
    with pytest.raises(ConfigError, match="nope"):
        step.batch([1], config={"backend": "nope"})
    with pytest.raises(ConfigError, match="nope"), rayrunnables.use("nope"):
        pass
    monkeypatch.setenv("RAYRUNNABLES_BACKEND", "nope")
    with pytest.raises(ConfigError, match="nope"):
        step.invoke(1)


def test_backend_of_wrong_type() -> None:
    with pytest.raises(ConfigError):
        RunnableLambda(inc).invoke(1, config={"backend": 42})


def test_registered_backend_by_config(mine: RecordingBackend) -> None:
    assert "mine" in rayrunnables.available_backends()
    assert STEP.invoke(1, config={"backend": "mine"}) == {"a": 3, "b": [3, 3]}
    assert mine.calls == ["invoke"]
    assert STEP.batch([0, 1], config={"backend": "mine"}) == [{"a": 2, "b": [2, 2]}, {"a": 3, "b": [3, 3]}]
    assert "chunk_runner" in mine.calls


def test_registered_backend_by_use_and_env(mine: RecordingBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    with rayrunnables.use("mine") as backend:
        assert backend is mine
        assert RunnableLambda(inc).invoke(1) == 2
    assert mine.calls == ["invoke"]
    assert RunnableLambda(inc).invoke(1) == 2  # outside the block: local again
    assert mine.calls == ["invoke"]
    monkeypatch.setenv("RAYRUNNABLES_BACKEND", "mine")
    assert RunnableLambda(inc).invoke(1) == 2
    assert mine.calls == ["invoke", "invoke"]


def test_precedence_config_over_use_over_env(mine: RecordingBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYRUNNABLES_BACKEND", "nope")
    with rayrunnables.use("mine"):
        assert RunnableLambda(inc).invoke(1, config={"backend": "local"}) == 2
        assert mine.calls == []
        assert RunnableLambda(inc).invoke(1) == 2
        assert mine.calls == ["invoke"]


def test_backend_object_in_config_and_use_kwargs(mine: RecordingBackend) -> None:
    own = RecordingBackend()
    assert RunnableLambda(inc).invoke(1, config={"backend": own}) == 2
    assert own.calls == ["invoke"] and mine.calls == []
    with rayrunnables.use("mine", flavour="x") as fresh:
        assert isinstance(fresh, RecordingBackend) and fresh is not mine
        assert fresh.kwargs == {"flavour": "x"}
        RunnableLambda(inc).invoke(1)
        assert fresh.calls == ["invoke"]
    with pytest.raises(ConfigError), rayrunnables.use(own, flavour="x"):
        pass


def test_registered_backend_default_methods(mine: RecordingBackend) -> None:
    cfg = {"backend": "mine"}
    assert asyncio.run(RunnableLambda(inc).ainvoke(1, config=cfg)) == 2
    assert list(RunnableLambda(inc).stream(1, config=cfg)) == [2]
    assert sorted(RunnableLambda(inc).batch_as_completed([1, 2], config=cfg)) == [(0, 2), (1, 3)]
    assert list(RunnableLambda(inc).imap(iter([1, 2]), config=cfg)) == [2, 3]
    assert mine.calls == ["invoke", "stream", "chunk_runner", "chunk_runner"]  # ainvoke runs invoke in a thread
    assert RunnableLambda(inc).explain(mine).startswith("mine: steps:")


def test_register_backend_by_import_string(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
    monkeypatch.setattr(STATE, "backends", dict(STATE.backends))
    rayrunnables.register_backend("also-local", "rayrunnables.backends.local:LocalBackend")
    assert RunnableLambda(inc).invoke(1, config={"backend": "also-local"}) == 2
    assert isinstance(rayrunnables.get_backend("also-local"), LocalBackend)
    assert rayrunnables.get_backend("also-local") is rayrunnables.get_backend("also-local")


# ---- the smallest backend the contract allows ---------------------------------------------------------
def fail_on_two(x: int) -> int:
    if x == 2:
        raise ValueError("two is bad")
    return x + 1


class SubmitOnly(ChunkRunner):
    """A chunk runner that writes only what the contract requires: ``submit`` and its two numbers. Its
    handles are futures of a thread pool, so waiting, results, cancels and deadlines are the defaults."""

    target_chunk_seconds = 0.01
    default_window = 2

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.pool = pool
        self.chunks = 0

    def submit(self, node: Any, items: list[tuple[int, Any]], ctx: Any, return_exceptions: bool) -> Any:
        self.chunks += 1
        return self.pool.submit(run_chunk, node, items, ctx, return_exceptions)


class Minimal(InProcessBackend):
    """A backend in two methods: where chunks go, and how ``explain`` says it."""

    name = "minimal"

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.runner = SubmitOnly(pool)

    def chunk_runner(self, node: Any, config: dict[str, Any]) -> ChunkRunner:
        return self.runner

    def placement(self) -> str:
        return "minimal: chunks on a thread pool"


def test_a_backend_of_submit_and_placement_has_every_call() -> None:
    with ThreadPoolExecutor(2) as pool:
        backend = Minimal(pool)
        cfg = {"backend": backend}
        step = RunnableLambda(inc)
        assert step.invoke(1, cfg) == 2 and list(step.stream(1, cfg)) == [2]
        assert step.batch(list(range(20)), cfg) == list(range(1, 21)) and backend.runner.chunks > 0
        out = RunnableLambda(fail_on_two).batch([1, 2, 3], cfg, return_exceptions=True)
        assert out[0] == 2 and out[2] == 4 and rayrunnables.item_index_of(out[1]) == 1
        with pytest.raises(ValueError, match="two is bad"):
            RunnableLambda(fail_on_two).batch([1, 2, 3], cfg)
        # a deadline: the runner's default slack and the default wait with a timeout
        assert RunnableLambda(inc).with_timeout(5).batch([1, 2], cfg) == [2, 3]
        assert step.explain(backend).endswith("on minimal: chunks on a thread pool")
