"""Failures at one edge: a process that dies costs only the item that killed it, on Ray and on a process pool.

A step that kills its process (``os._exit``, as a segfault or an out-of-memory kill does) reaches the
caller as ``rayrunnables.WorkerLost`` (``ActorLost`` for a stateful step's actor), with the step path and
item index every other error carries and the backend's own error as ``__cause__``. In ``batch``/``imap``
and ``.map()`` the scheduler splits a lost chunk until that item is alone, so every other item gets its
value. Ray's retries are turned off (``max_retries=0``) where a test would otherwise wait for them.

Step functions live at module level (this module is shipped to Ray's workers by value).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

import rayrunnables as rr
from rayrunnables import RunnableActor, RunnableLambda
from rayrunnables.context import RunContext
from rayrunnables.engine.inprocess import ChunkResult
from rayrunnables.engine.scheduler import iter_batch

pytestmark = pytest.mark.timeout(180)

RAY = {"backend": "ray"}
CRASH = 137


def crash_on(x: int) -> int:
    if x == CRASH:
        os._exit(1)  # as a segfault or the OOM killer: no exception, the process is gone
    return 2 * x


def listing(n: int) -> list[int]:
    return list(range(n))


def total(xs: list[int]) -> int:
    return sum(xs)


def same(x: Any) -> Any:
    return x


CRASHING = RunnableLambda(crash_on).with_options(max_retries=0)


# ---- the scheduler alone: a runner that loses chunks, as a dead process does ----------------------------
class LosingRunner:
    """Runs chunks at once, here. A chunk holding ``crash`` is lost, as if its process died; ``shared``: as
    a process pool, where one process dying loses every chunk in flight with it."""

    target_chunk_seconds = 0.001
    default_window = 4

    def __init__(self, crash: int, shared: bool = False) -> None:
        self.crash, self.shared = crash, shared
        self.live: dict[Any, list[tuple[int, Any]]] = {}
        self.runs: list[tuple[list[int], int]] = []  # each run's indexes, and how many ran beside it
        self.doomed: set[Any] = set()

    def runs_inline(self, node: Any) -> bool:
        return False

    def submit(self, node: Any, items: list[tuple[int, Any]], ctx: Any, return_exceptions: bool) -> Any:
        handle = object()
        self.live[handle] = items
        self.runs.append(([i for i, _ in items], len(self.live) - 1))
        return handle

    def wait(self, handles: list[Any], timeout: float | None = None) -> list[Any]:
        crashed = [h for h in handles if any(v == self.crash for _, v in self.live[h])]
        self.doomed = set(handles if self.shared and crashed else crashed)
        return list(handles)

    def result(self, handle: Any) -> ChunkResult:
        items = self.live.pop(handle)
        if handle in self.doomed:
            lost = rr.WorkerLost("the process died")
            lost.shared = self.shared
            raise lost
        return ChunkResult([(i, True, 2 * v, None) for i, v in items], 0.001)

    def cancel(self, handles: list[Any]) -> None:
        for handle in handles:
            self.live.pop(handle, None)

    def abandon(self, handles: list[Any]) -> None:
        self.cancel(handles)


@pytest.mark.parametrize("shared", [False, True], ids=["own-process", "shared-process"])
def test_a_lost_chunk_is_split_until_the_item_that_kills_its_process_is_alone(shared: bool) -> None:
    runner = LosingRunner(crash=CRASH, shared=shared)
    pairs = list(iter_batch(runner, RunnableLambda(crash_on), range(200), RunContext(), return_exceptions=True,
                            ordered=True, chunk_size=16))
    assert [i for i, _ in pairs] == list(range(200))  # every item once, in order
    values = dict(pairs)
    lost = values.pop(CRASH)
    assert isinstance(lost, rr.WorkerLost)
    assert rr.item_index_of(lost) == CRASH and rr.step_path_of(lost) == "lambda 'crash_on'"
    assert values == {i: 2 * i for i in range(200) if i != CRASH}
    with_crasher = [(run, beside) for run, beside in runner.runs if CRASH in run]
    assert [len(run) for run, _ in with_crasher][-1] == 1  # it was alone at the end...
    assert len(with_crasher) <= 8  # ...bisected, not retried without end: 16, (16,) 8, 4, 2, 1
    if shared:  # a loss in a shared process is only blamed on a run that had nothing beside it
        assert all(beside == 0 for _, beside in with_crasher[1:])


def test_without_return_exceptions_the_lost_item_is_raised_with_its_index() -> None:
    runner = LosingRunner(crash=5)
    with pytest.raises(rr.WorkerLost) as caught:
        list(iter_batch(runner, RunnableLambda(crash_on), range(40), RunContext().child("map"),
                        return_exceptions=False, ordered=False, chunk_size=8))
    assert rr.item_index_of(caught.value) == 5
    assert rr.step_path_of(caught.value) == "map > lambda 'crash_on'"


# ---- Ray ------------------------------------------------------------------------------------------------
def test_rays_own_failures_are_translated_into_ours() -> None:
    ray = pytest.importorskip("ray")
    from rayrunnables.backends.ray.failures import translate

    x = ray.exceptions
    cases = [
        (x.WorkerCrashedError(), rr.WorkerLost),
        (x.OutOfMemoryError("killed for memory"), rr.OutOfMemory),
        (x.ActorDiedError(), rr.ActorLost),
        (x.ActorUnavailableError("restarting", None), rr.ActorLost),
        (x.OwnerDiedError("ff" * 28, None, ""), rr.ObjectLost),
        (x.NodeDiedError("node gone"), rr.WorkerLost),
        (x.RuntimeEnvSetupError("pip failed"), rr.BackendError),
    ]
    for err, kind in cases:
        ours = translate(err, "step 2 > lambda 'f'", 7)
        assert type(ours) is kind and isinstance(ours, rr.BackendError), err
        assert ours.__cause__ is err
        assert rr.step_path_of(ours) == "step 2 > lambda 'f'" and rr.item_index_of(ours) == 7
    assert translate(x.OutOfMemoryError("m")).shared is False  # type: ignore[attr-defined]
    assert translate(x.ActorDiedError()).shared and translate(x.NodeDiedError("n")).shared  # type: ignore[attr-defined]
    # what Ray passes on to a task whose argument was lost, or a task raised after a nested ray.get
    wrapped = x.RayTaskError("f", "Traceback ...", x.WorkerCrashedError()).as_instanceof_cause()
    assert type(translate(wrapped)) is rr.WorkerLost
    # the user's own exceptions, and cancellations, are not ours to translate
    user = ValueError("bad item")
    assert translate(user) is user
    assert translate(x.TaskCancelledError()).__class__ is x.TaskCancelledError


@pytest.fixture
def ray_backend(ray_session: Any) -> Any:
    return rr.get_backend("ray")


@pytest.mark.slow
def test_a_crash_in_a_batch_of_200_costs_only_its_item(ray_backend: Any) -> None:
    ray = pytest.importorskip("ray")
    out = CRASHING.batch(list(range(200)), RAY, return_exceptions=True)
    errors = {i: o for i, o in enumerate(out) if isinstance(o, BaseException)}
    assert list(errors) == [CRASH]
    lost = errors[CRASH]
    assert type(lost) is rr.WorkerLost and isinstance(lost, rr.BackendError)
    assert rr.item_index_of(lost) == CRASH and rr.step_path_of(lost) == "lambda 'crash_on'"
    assert isinstance(lost.__cause__, ray.exceptions.WorkerCrashedError)
    assert [o for i, o in enumerate(out) if i != CRASH] == [2 * i for i in range(200) if i != CRASH]

    with pytest.raises(rr.WorkerLost) as caught:  # ours, not Ray's
        CRASHING.batch(list(range(200)), RAY)
    assert rr.item_index_of(caught.value) == CRASH


@pytest.mark.slow
def test_a_crash_inside_a_map_inside_a_chain(ray_backend: Any) -> None:
    chain = RunnableLambda(listing) | CRASHING.map() | RunnableLambda(total)
    # invoke: the list is computed by a task, split beside it; the lost chunk is run again, split
    with pytest.raises(rr.WorkerLost) as caught:
        chain.invoke(200, RAY)
    assert rr.step_path_of(caught.value) == "step 2 > map > lambda 'crash_on'"
    assert rr.item_index_of(caught.value) == CRASH
    # a list given by the caller is split in the driver: the same error
    with pytest.raises(rr.WorkerLost) as caught:
        (CRASHING.map() | RunnableLambda(total)).invoke(list(range(200)), RAY)
    assert rr.step_path_of(caught.value) == "step 1 > map > lambda 'crash_on'"
    assert rr.item_index_of(caught.value) == CRASH
    # batch: the item whose map holds the crasher fails, the others get their values
    out = chain.batch([10, 100, 200, 30], RAY, return_exceptions=True)
    assert out[0] == 90 and out[1] == 9900 and out[3] == 870
    assert isinstance(out[2], rr.WorkerLost) and rr.item_index_of(out[2]) == 2


def test_invoke_names_the_step_whose_process_died(ray_backend: Any) -> None:
    # three tasks (the middle one has options of its own): the last fails only because its input was lost
    chain = RunnableLambda(same) | CRASHING | RunnableLambda(same)
    with pytest.raises(rr.WorkerLost) as caught:
        chain.invoke(CRASH, RAY)
    assert rr.step_path_of(caught.value) == "step 2 > lambda 'crash_on'"
    assert chain.invoke(3, RAY) == 6
    with pytest.raises(rr.WorkerLost):
        list(CRASHING.stream(CRASH, RAY))


class Stamper:
    """Built once per actor; ``CRASH`` kills its actor's process."""

    def __call__(self, x: int) -> tuple[int, int]:
        if x == CRASH:
            os._exit(1)
        return x, os.getpid()


@pytest.mark.slow
def test_a_pool_actor_dead_past_its_restarts_is_replaced(ray_backend: Any) -> None:
    step = RunnableActor(Stamper, pool_size=2)
    try:
        inputs = [*range(8), CRASH, *range(8, 16)]
        out = list(step.imap(inputs, RAY, return_exceptions=True, chunk_size=1))
        lost = out.pop(8)
        assert isinstance(lost, rr.ActorLost) and isinstance(lost, rr.WorkerLost)
        assert rr.item_index_of(lost) == 8 and rr.step_path_of(lost) == "actor 'Stamper'"
        assert [x for x, _ in out] == list(range(16))  # every other item done
        pool = ray_backend.pools[step.key]
        assert pool.replaced >= 1  # Ray restarted it 3 times, then it died for good: a new actor in its place
        assert step.invoke(3, RAY)[0] == 3  # a later call works
        with pytest.raises(rr.ActorLost) as caught:  # invoke: ours too, naming the step; the pool replaced
            step.invoke(CRASH, RAY)
        assert rr.step_path_of(caught.value) == "actor 'Stamper'"
        assert step.invoke(4, RAY)[0] == 4
    finally:
        ray_backend.release(step)


@pytest.mark.slow
def test_a_pool_actor_a_chain_calls_from_its_tasks_is_replaced_too(ray_backend: Any) -> None:
    step = RunnableActor(Stamper, pool_size=2)
    chain = RunnableLambda(same) | step  # batched as chunk tasks of the whole chain: they call the pool
    try:
        out = chain.batch([1, CRASH, 2], RAY, return_exceptions=True)
        assert out[0][0] == 1 and out[2][0] == 2
        assert isinstance(out[1], rr.ActorLost) and rr.item_index_of(out[1]) == 1
        assert ray_backend.pools[step.key].replaced == 1
        assert [o[0] for o in chain.batch([3, 4, 5, 6], RAY)] == [3, 4, 5, 6]  # the new actor serves
    finally:
        ray_backend.release(step)


def killed(ray: Any, actor: Any) -> None:
    """Kill ``actor`` for good and return once it is dead (a kill lands a moment after ``ray.kill``)."""
    ray.kill(actor, no_restart=True)
    for _ in range(300):
        try:
            ray.get(actor.ready.remote(), timeout=30)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.1)
    raise AssertionError("the actor did not die")


@pytest.mark.slow
def test_a_map_whose_pool_has_a_dead_member_finishes_on_the_others(ray_backend: Any) -> None:
    """A ``.map()`` inside a chain runs in a map task, which cannot replace a pool actor: one dead past its
    restarts is left out there, and the chunks it lost run again on the live one."""
    ray = pytest.importorskip("ray")
    step = RunnableActor(Stamper, pool_size=2)
    chain = RunnableLambda(same) | step.map()
    try:
        assert [x for x, _ in chain.invoke([1, 2], RAY)] == [1, 2]  # the pool is up
        pool = ray_backend.pools[step.key]
        killed(ray, pool.actors[0])  # dead for good, and the driver has not seen it
        out = chain.invoke(list(range(16)), RAY)
        assert [x for x, _ in out] == list(range(16))
        assert len({pid for _, pid in out}) == 1  # all on the live member
    finally:
        ray_backend.release(step)


@pytest.mark.slow
def test_pool_actors_a_map_found_dead_are_replaced_by_the_driver(ray_backend: Any) -> None:
    """A map task cannot replace a pool actor: with every member dead past its restarts the map fails,
    naming the members it found dead on its error, and the driver replaces them: the next map has a
    whole pool."""
    ray = pytest.importorskip("ray")
    step = RunnableActor(Stamper, pool_size=2)
    chain = RunnableLambda(same) | step.map()
    try:
        assert [x for x, _ in chain.invoke([1, 2], RAY)] == [1, 2]  # the pool is up
        pool = ray_backend.pools[step.key]
        for actor in pool.actors:
            killed(ray, actor)
        with pytest.raises(rr.ActorLost) as caught:
            chain.invoke(list(range(4)), RAY)
        assert rr.step_path_of(caught.value) == "step 2 > map > actor 'Stamper'"
        assert rr.item_index_of(caught.value) in range(4)
        assert pool.replaced == 2
        assert [x for x, _ in chain.invoke(list(range(16)), RAY)] == list(range(16))
    finally:
        ray_backend.release(step)


# ---- the executor backend: a broken process pool -----------------------------------------------------
@pytest.mark.slow
def test_a_crash_on_a_process_pool_costs_only_its_item() -> None:
    from rayrunnables.backends.executor import ExecutorBackend

    backend = ExecutorBackend(max_workers=2)
    try:
        config = {"backend": backend}
        out = list(RunnableLambda(crash_on).imap(range(130, 150), config, return_exceptions=True, chunk_size=4))
        lost = out.pop(CRASH - 130)
        assert isinstance(lost, rr.WorkerLost) and rr.item_index_of(lost) == CRASH - 130
        assert out == [2 * x for x in range(130, 150) if x != CRASH]
        with pytest.raises(rr.WorkerLost) as caught:  # a .map() inside a chain too
            (RunnableLambda(listing) | RunnableLambda(crash_on).map()).invoke(140, config)
        assert rr.item_index_of(caught.value) == CRASH
        assert rr.step_path_of(caught.value) == "step 2 > map > lambda 'crash_on'"
    finally:
        backend.close()
    # a pool that is the caller's is not ours to replace: a BackendError, not a re-run
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        out = RunnableLambda(crash_on).batch([CRASH], {"backend": pool}, return_exceptions=True)
    assert isinstance(out[0], rr.BackendError) and not isinstance(out[0], rr.WorkerLost)
