"""Computing steps run inline, waiting steps overlap in threads: the classes are learned, or declared.

Each test builds its own steps (a learned class lives on the node, in the process that ran it), and
observes where calls ran through what the calls return (thread ids, pids, time intervals), so the
same assertions hold inside Ray workers. Nothing here asserts a duration.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from typing import Any

import pytest

import rayrunnables as rr
from rayrunnables import RunnableLambda, RunnableParallel
from rayrunnables.engine.execution import COMPUTING, RESAMPLE_EVERY, UNKNOWN, WAITING, profile_of, subtree_class
from rayrunnables.testing.steps.intervals import max_overlap


def spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:  # CPU time, not wall time: a busy loop that really computes
        pass


def busy(x: Any) -> Any:
    spin(0.002)
    return x


def nap(x: Any) -> Any:
    time.sleep(0.01)
    return x


def where(x: Any) -> tuple[int, int]:
    spin(0.001)
    return os.getpid(), threading.get_ident()


def three(x: Any) -> list[int]:
    return [x, x, x]


def busy_interval(x: Any) -> tuple[float, float]:
    start = time.time()
    spin(0.15)
    return start, time.time()


def nap_interval(x: Any) -> tuple[float, float]:
    start = time.time()
    time.sleep(0.15)
    return start, time.time()


# ---- learning ------------------------------------------------------------------------------------------
def test_a_computing_step_is_learned_as_computing() -> None:
    step = RunnableLambda(busy)
    assert subtree_class(step) == UNKNOWN
    assert "not yet learned" in step.explain()
    for i in range(3):
        step.invoke(i)
    assert subtree_class(step) == COMPUTING
    assert "computing: learned in this process" in step.explain()


def test_a_sleeping_step_is_learned_as_waiting() -> None:
    step = RunnableLambda(nap)
    step.batch([1, 2, 3])
    assert subtree_class(step) == WAITING
    assert "waiting: learned in this process" in step.explain()


def test_computing_items_in_many_threads_are_still_learned_as_computing() -> None:
    """The first items of a fresh step run in threads that share the GIL; each gets a fraction of its
    wall time as CPU, and is still recognised as computing."""
    step = RunnableLambda(busy)
    step.map().invoke(list(range(16)))
    assert subtree_class(step) == COMPUTING
    sleeper = RunnableLambda(nap)
    sleeper.map().invoke(list(range(16)))
    assert subtree_class(sleeper) == WAITING


def test_a_declared_class_wins_over_what_is_measured() -> None:
    declared_waiting = RunnableLambda(busy).with_options(io_bound=True)
    declared_computing = RunnableLambda(nap).with_options(io_bound=False)
    assert subtree_class(declared_waiting) == WAITING
    assert subtree_class(declared_computing) == COMPUTING
    declared_waiting.batch([1, 2, 3, 4])
    declared_computing.batch([1, 2, 3, 4])
    assert subtree_class(declared_waiting) == WAITING
    assert subtree_class(declared_computing) == COMPUTING
    assert "waiting: declared" in declared_waiting.explain()


def test_async_steps_are_waiting_without_a_call() -> None:
    async def fetch(x: int) -> int:
        return x

    assert subtree_class(RunnableLambda(fetch)) == WAITING


def test_a_subtree_waits_if_any_step_in_it_waits() -> None:
    chain = RunnableLambda(busy) | RunnableLambda(nap)
    chain.batch([1, 2, 3])
    assert subtree_class(chain) == WAITING
    assert subtree_class(RunnableLambda(busy) | RunnableLambda(busy)) == UNKNOWN


def test_a_fallback_never_needed_does_not_keep_its_chain_unknown() -> None:
    chain = RunnableLambda(busy).with_fallbacks([RunnableLambda(nap)])
    chain.batch([1, 2, 3])
    assert subtree_class(chain) == COMPUTING


def test_a_class_learned_in_a_moment_of_contention_is_corrected() -> None:
    """One call in ``RESAMPLE_EVERY`` is measured again: a computing step first taken for a waiting one
    (say, while other processes held the CPU) is set right, and so is a step whose calls change."""
    step = RunnableLambda(busy)
    profile = profile_of(step)
    for _ in range(3):
        profile.observe(0.0)  # what a starved computing step might have shown
    assert subtree_class(step) == WAITING
    for i in range(6 * RESAMPLE_EVERY):
        step.invoke(i)
    assert subtree_class(step) == COMPUTING


def test_what_a_process_learned_does_not_travel_with_the_step() -> None:
    step = RunnableLambda(busy)
    step.batch([1, 2, 3])
    state = step.__getstate__()
    assert "_profile" not in state and "_class" not in state and "_step_id" in state
    copy = pickle.loads(pickle.dumps(step))
    assert subtree_class(step) == COMPUTING
    assert subtree_class(copy) == UNKNOWN  # learned before the step had an id: this copy learns anew


@pytest.mark.ray_only
def test_a_worker_keeps_what_it_learned_across_chunks(cfg: dict[str, Any]) -> None:
    """Every chunk task unpickles the chain anew; the worker still knows its steps from earlier chunks,
    so whole chunks, not only their later items, run each item's structure in one thread."""
    chain = RunnableParallel({"a": where, "b": where, "c": RunnableLambda(three) | RunnableLambda(where).map()})
    chunk = 4
    outs = list(chain.imap(range(40 * chunk), cfg, chunk_size=chunk))
    inline_chunks = [
        all(len({o["a"], o["b"], *o["c"]}) == 1 for o in outs[i : i + chunk]) for i in range(0, len(outs), chunk)
    ]
    # only a worker's first chunk teaches it (each of a few worker processes); before, no chunk ran inline
    assert sum(inline_chunks) >= 30, inline_chunks


# ---- where calls run ---------------------------------------------------------------------------------------
def test_computing_map_items_run_on_the_calling_thread() -> None:
    step = RunnableLambda(where)
    step.map().invoke([0, 1, 2])  # learn
    places = step.map().invoke(list(range(20)))
    assert set(places) == {(os.getpid(), threading.get_ident())}


def test_computing_branches_run_on_the_calling_thread() -> None:
    chain = RunnableParallel({"a": where, "b": where, "c": RunnableLambda(three) | RunnableLambda(where).map()})
    chain.batch([0, 1, 2])  # learn
    out = chain.invoke(0)
    assert {out["a"], out["b"], *out["c"]} == {(os.getpid(), threading.get_ident())}


def test_waiting_map_items_overlap_in_threads() -> None:
    step = RunnableLambda(nap_interval)
    step.map().invoke([0, 1, 2])  # learn
    intervals = step.map().invoke(list(range(8)))
    assert max_overlap(intervals) >= 4


def test_structured_items_run_inline_in_their_worker(cfg: dict[str, Any]) -> None:
    """Each item's dict and inner ``.map()`` run in the one thread that runs the item, on every backend:
    on Ray, inside the worker running the chunk (once that process has learned the steps)."""
    chain = RunnableParallel({"a": where, "b": where, "c": RunnableLambda(three) | RunnableLambda(where).map()})
    chunk = 12
    outs = list(chain.imap(range(2 * chunk), cfg, chunk_size=chunk))
    learned = [out for n, out in enumerate(outs) if n % chunk >= 4]  # 3 calls teach a process each step
    for out in learned:
        assert len({out["a"], out["b"], *out["c"]}) == 1, out
    if cfg["backend"] == "ray":
        assert all(out["a"][0] != os.getpid() for out in outs)


def test_a_waiting_branch_overlaps_a_computing_one(cfg: dict[str, Any]) -> None:
    """The computing branch runs inline while the waiting one waits in a thread: they still overlap."""
    chain = RunnableParallel({"cpu": busy_interval, "io": nap_interval})
    outs = chain.batch([0, 1, 2, 3], cfg)  # the later items run with both classes learned
    for out in outs[2:]:
        assert max_overlap([out["cpu"], out["io"]]) == 2, out
    local_chain = RunnableParallel({"cpu": busy_interval, "io": nap_interval})
    local_chain.batch([0, 1, 2])
    assert subtree_class(local_chain.steps["cpu"]) == COMPUTING
    assert subtree_class(local_chain.steps["io"]) == WAITING


@pytest.mark.parametrize("declared", [True, False])
def test_io_bound_option_is_checked(declared: bool) -> None:
    with pytest.raises(rr.OptionsError):
        RunnableLambda(busy).with_options(io_bound="yes")
    assert subtree_class(RunnableLambda(busy).with_options(io_bound=declared)) == (WAITING if declared else COMPUTING)
