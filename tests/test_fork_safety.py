"""Fork safety: a child forked after this process used its threads and services runs every chain shape.

A forked child has only the thread that forked, so a thread pool, a lock or a stateful step's instance
copied from the parent lies to it: before ``engine.process_state`` a dict-parallel chain in a worker of a
fork-started ``ProcessPoolExecutor`` (the default on Linux before Python 3.14) waited for good on
threads that were not there. The scenarios run in a fresh interpreter (``fork_scenarios.py``): a fork of
this test process would copy its Ray driver, which a fork corrupts. Every call there is bounded, and
the interpreter is killed if it outlives ``SCENARIO_SECONDS``: a regression fails, it never hangs CI.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fork_scenarios import SHAPES

from rayrunnables import RunnableLambda

pytestmark = [
    pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="this platform cannot fork"),
    pytest.mark.timeout(180),
]

SCRIPT = Path(__file__).with_name("fork_scenarios.py")
SCENARIO_SECONDS = 120


def run_scenario(which: str) -> tuple[dict[str, Any], str]:
    """The scenario's records by ``shape/mode`` (``shape`` alone when it has no mode), and its stderr."""
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), which], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its pool's workers too are killed with it
    )
    try:
        out, err = process.communicate(timeout=SCENARIO_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        err += f"\n[killed after {SCENARIO_SECONDS} s]"
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {"/".join(filter(None, (r["shape"], r.get("mode")))): r for r in records}, err


@pytest.fixture(scope="module")
def pool_run() -> tuple[dict[str, Any], str]:
    return run_scenario("pool")


def test_the_pool_was_forked_after_the_parent_used_its_threads(pool_run: tuple[dict[str, Any], str]) -> None:
    records, err = pool_run
    setup = records.get("_setup")
    assert setup is not None, err[-3000:]
    assert setup["start_method"] == "fork"
    assert setup["threads"] > 0  # the parent's pool had threads, which its forked workers do not have


@pytest.mark.parametrize("mode", ["batch", "invoke"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_shape_on_a_fork_pool_gives_the_local_result(
    pool_run: tuple[dict[str, Any], str], shape: str, mode: str
) -> None:
    records, err = pool_run
    record = records.get(f"{shape}/{mode}")
    if record is None:
        hung = [key for key, r in records.items() if r.get("hung")]
        pytest.fail(f"not run: {hung or 'the scenario ended early'}\n{err[-3000:]}")
    assert not record.get("hung"), f"{shape} {mode} on the fork pool never answered: {record['error']}"
    assert "error" not in record, record["error"]
    assert record["ok"], f"local: {record['local']}\npool:  {record['pool']}"


def test_a_plain_os_fork_child_runs_a_dict_parallel_chain_after_the_parent_used_its_pool() -> None:
    records, err = run_scenario("os-fork")
    record = records.get("os-fork")
    assert record is not None, err[-3000:]
    assert record["threads"] > 0
    assert not record.get("hung"), "the forked child never finished: it was killed"
    # 0: right answers; 1: wrong ones (its stateful step's instance was its parent's); 3: a call hung
    assert record["exit_status"] == 0



def test_a_fork_pool_about_to_fork_a_process_that_runs_ray_is_warned_of(ray_session: Any) -> None:
    """Ray's driver is not ours to make fork-safe; a pool that would fork it is pointed out. No chunk is
    sent to these pools: nothing is forked."""
    from rayrunnables.backends.executor import ExecutorBackend

    fork = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(2, mp_context=fork) as pool:
        with pytest.warns(RuntimeWarning, match="does not survive being forked"):
            assert ExecutorBackend(pool).runner.executor is pool
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as spawned:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert ExecutorBackend(spawned).runner.executor is spawned


def busy(x: int) -> int:
    end = time.thread_time() + 0.002
    while time.thread_time() < end:  # computes: CPU time, not a sleep
        pass
    return x


def test_a_reset_forgets_what_was_learned_and_makes_new_pools_and_services(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a forked child's reset does, on a state of its own (this process's ``STATE`` is left alone)."""
    from rayrunnables.engine import execution
    from rayrunnables.engine.process_state import ProcessState

    state = ProcessState()
    monkeypatch.setattr(execution, "STATE", state)
    step = RunnableLambda(busy)
    for n in range(execution.SAMPLES_TO_LEARN):
        step.invoke(n)
    assert execution.subtree_class(step) == execution.COMPUTING
    threads, services = state.threads, state.services
    state.reset()
    assert execution.subtree_class(step) == execution.UNKNOWN  # learned in an earlier epoch: learned anew
    assert state.threads is not threads and state.services is not services
    for n in range(execution.SAMPLES_TO_LEARN):
        step.invoke(n)
    assert execution.subtree_class(step) == execution.COMPUTING
