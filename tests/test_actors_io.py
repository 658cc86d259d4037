"""Stateful steps (actor pools), vectorized steps, IO-bound steps and rate limits, on both backends.

Observations travel in the outputs (instance ids, pids, timestamps), never through driver-side state,
so the same assertions hold in-process and on Ray.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

import pytest

import rayrunnables as rr
from rayrunnables import RunnableActor, RunnableLambda, StepConstructionError, VectorizedOutputError
from rayrunnables.testing.steps.intervals import max_overlap


class Tagger:
    """Each instance has its own id: counting distinct ids counts constructor runs."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.instance = uuid.uuid4().hex

    def __call__(self, item: int) -> tuple[str, str, int]:
        return (self.prefix, self.instance, item * 2)


class VectorTagger(Tagger):
    def batch(self, items: list[int]) -> list[tuple[str, str, int, int]]:
        return [(self.prefix, self.instance, item * 2, len(items)) for item in items]


class Stamper:
    def __call__(self, item: int) -> tuple[int, float, int]:
        return (item, time.time(), os.getpid())


class Broken:
    def __init__(self) -> None:
        raise RuntimeError("model file missing")

    def __call__(self, item: Any) -> Any:
        return item


class WrongCount:
    def batch(self, items: list[Any]) -> list[Any]:
        return [*items, "extra"]


def double_all(items: list[int]) -> list[tuple[int, int]]:
    return [(item * 2, len(items)) for item in items]


def drop_last(items: list[int]) -> list[int]:
    return items[:-1]


def sleepy(item: int) -> tuple[float, float, int, str]:
    start = time.time()
    time.sleep(0.1)
    return (start, time.time(), os.getpid(), threading.current_thread().name)


EXECUTOR_WORKERS = 2  # the conformance suite's ProcessPoolExecutor


def expected_instances(backend: str, pool_size: int) -> range:
    """Ray builds the class once per actor of the pool; the local backend once per process; the executor
    backend once in each of its worker processes that got a chunk."""
    if backend == "ray":
        return range(pool_size, pool_size + 1)
    return range(1, EXECUTOR_WORKERS + 1) if backend == "executor" else range(1, 2)


@pytest.mark.slow
def test_constructor_runs_once_per_actor_for_1000_items(cfg: dict[str, Any], backend: str) -> None:
    step = RunnableActor(Tagger, "t", pool_size=2)
    out = step.map().invoke(list(range(1000)), config=cfg)
    assert [o[2] for o in out] == [i * 2 for i in range(1000)]
    assert len({o[1] for o in out}) in expected_instances(backend, 2)
    again = step.batch(list(range(1000)), config=cfg)  # the pool is reused, not rebuilt
    assert len({o[1] for o in out} | {o[1] for o in again}) in expected_instances(backend, 2)


def test_actor_in_a_chain_and_invoke(cfg: dict[str, Any]) -> None:
    step = RunnableActor(Tagger, "p", pool_size=2)
    chain = RunnableLambda(lambda n: list(range(n))) | step.map() | (lambda rows: [r[2] for r in rows])
    assert chain.invoke(5, config=cfg) == [0, 2, 4, 6, 8]
    assert step.invoke(21, config=cfg)[2] == 42


def test_vectorized_actor_gets_whole_chunks(cfg: dict[str, Any], backend: str) -> None:
    step = RunnableActor(VectorTagger, "v", pool_size=2)
    out = step.batch(list(range(2000)), config=cfg)
    assert [o[2] for o in out] == [i * 2 for i in range(2000)]
    assert max(o[3] for o in out) > 1  # called once per chunk, not once per item
    assert len({o[1] for o in out}) in expected_instances(backend, 2)


def test_vectorized_lambda_called_once_per_chunk(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(double_all, batched=True)
    out = step.map().invoke(list(range(3000)), config=cfg)
    assert [o[0] for o in out] == [i * 2 for i in range(3000)]
    assert max(o[1] for o in out) > 1
    assert step.invoke(4, config=cfg) == (8, 1)


def test_vectorized_wrong_output_count_names_the_step(cfg: dict[str, Any]) -> None:
    with pytest.raises(VectorizedOutputError, match="drop_last") as info:
        RunnableLambda(drop_last, batched=True).map().invoke([1, 2, 3], config=cfg)
    assert "outputs for" in str(info.value)
    with pytest.raises(VectorizedOutputError, match="WrongCount"):
        RunnableActor(WrongCount).batch([1, 2, 3], config=cfg)
    out = RunnableActor(WrongCount).batch([1, 2, 3], config=cfg, return_exceptions=True)
    assert all(isinstance(o, VectorizedOutputError) for o in out)


def test_failing_constructor_reported_with_step_and_traceback(cfg: dict[str, Any]) -> None:
    with pytest.raises(StepConstructionError) as info:
        RunnableActor(Broken).map().invoke([1, 2], config=cfg)
    text = str(info.value) + "".join(str(c) for c in (info.value.__cause__, info.value.__context__) if c)
    assert "actor 'Broken'" in text
    assert "model file missing" in text


def test_bad_actor_arguments_fail_at_construction() -> None:
    with pytest.raises(rr.InputTypeError, match="pool_size"):
        RunnableActor(Tagger, "x", pool_size=0)
    with pytest.raises(rr.InputTypeError, match="needs a class"):
        RunnableActor(Tagger("x"))  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_rate_limit_holds_across_four_actors(cfg: dict[str, Any]) -> None:
    rate = 100
    step = RunnableActor(Stamper, pool_size=4).with_rate_limit(rate, burst=1)
    out = step.batch(list(range(200)), config=cfg)
    stamps = sorted(o[1] for o in out)
    assert [o[0] for o in out] == list(range(200))
    # in any one-second window, at most rate calls (+1 for the burst), measured from the calls' own stamps;
    # a stamp is taken a little after its grant, in another process, so a window may also hold what was
    # granted up to JITTER seconds before it (a pace per actor, 4x the rate, would put all 200 in ~0.5 s)
    jitter = 0.1
    worst = max(sum(1 for t in stamps if s <= t < s + 1.0) for s in stamps)
    assert worst <= rate * (1 + jitter) + 1, worst
    # and the whole run is paced: 200 calls at 100/s span at least ~1.9 s of call stamps
    assert stamps[-1] - stamps[0] >= (200 - 1) / rate * 0.95


def test_rate_limit_bad_arguments() -> None:
    with pytest.raises(rr.OptionsError):
        RunnableLambda(sleepy).with_rate_limit(0)
    with pytest.raises(rr.OptionsError):
        RunnableLambda(sleepy).with_rate_limit(5, burst=0)


@pytest.mark.timeout(120)
def test_io_steps_overlap_without_a_process_per_call(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(sleepy).with_options(io_bound=True)
    out = step.batch(list(range(200)), config=cfg)
    assert len(out) == 200
    assert max_overlap([(o[0], o[1]) for o in out]) >= 20  # many calls wait at the same time
    assert len({o[2] for o in out}) <= 2  # ... in one or two processes, not 200 worker processes


@pytest.mark.timeout(120)
def test_async_steps_overlap_without_a_process_per_call(cfg: dict[str, Any]) -> None:
    import asyncio

    async def asleep(item: int) -> tuple[float, float, int]:
        start = time.time()
        await asyncio.sleep(0.1)
        return (start, time.time(), os.getpid())

    out = RunnableLambda(asleep).batch(list(range(100)), config=cfg)
    assert max_overlap([(o[0], o[1]) for o in out]) >= 20
    assert len({o[2] for o in out}) <= 2


class SlowStamper:
    def __init__(self) -> None:
        self.instance = uuid.uuid4().hex

    def __call__(self, item: int) -> tuple[int, int, str]:
        time.sleep(0.02)
        return (item, os.getpid(), self.instance)


@pytest.mark.ray_only
@pytest.mark.timeout(180)
def test_killed_actor_is_replaced_and_no_item_is_lost_or_duplicated(cfg: dict[str, Any]) -> None:
    import signal

    step = RunnableActor(SlowStamper, pool_size=2)
    seen: list[tuple[int, int, str]] = []
    killed = None
    for _, out in step.imap_as_completed(range(300), config=cfg, chunk_size=5):
        seen.append(out)
        if killed is None and len(seen) >= 20:
            killed = out[1]
            os.kill(killed, signal.SIGKILL)  # one actor process of the pool dies mid-run
    assert killed is not None
    assert sorted(item for item, _, _ in seen) == list(range(300))  # each item exactly once
    late = [pid for item, pid, _ in seen[40:]]
    assert killed not in late[-20:]  # the dead process served nothing at the end: it was replaced
    assert len({inst for _, _, inst in seen}) >= 3  # a new instance was built in the replacement


@pytest.mark.timeout(120)
def test_a_steps_own_max_concurrency_caps_the_whole_batch(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(sleepy).with_options(io_bound=True).with_config(max_concurrency=3)
    out = step.batch(list(range(30)), config=cfg)
    assert len(out) == 30
    assert max_overlap([(o[0], o[1]) for o in out]) <= 3


@pytest.mark.ray_only
def test_release_stops_one_steps_pool_and_a_later_call_rebuilds_it(cfg: dict[str, Any]) -> None:
    kept, freed = RunnableActor(Tagger, "k"), RunnableActor(Tagger, "f")
    first = freed.batch([1, 2], config=cfg)[0][1]
    kept.invoke(1, config=cfg)
    backend = rr.get_backend("ray")
    backend.release(freed)  # type: ignore[attr-defined]
    assert freed.key not in backend.pools and kept.key in backend.pools  # type: ignore[attr-defined]
    assert freed.invoke(3, config=cfg)[1] != first  # a new instance: the pool was rebuilt
