"""The executor backend: any ``concurrent.futures.Executor`` given as ``config["backend"]``.

The conformance suite runs every semantic test on it too (``backend == "executor"``); these tests cover
what is its own: where chunks run, what travels by value, what stays in this process.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import rayrunnables as rr
from rayrunnables import RunnableLambda


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as executor:
        yield executor


def where(x: int) -> tuple[int, int]:
    end = time.thread_time() + 0.002
    while time.thread_time() < end:
        pass
    return x, os.getpid()


def test_map_chunks_run_in_the_executors_processes(pool: ProcessPoolExecutor) -> None:
    out = RunnableLambda(where).map().invoke(list(range(200)), {"backend": pool})
    assert [x for x, _ in out] == list(range(200))
    pids = {pid for _, pid in out}
    assert os.getpid() not in pids
    assert len(pids) == 2  # both workers got chunks


def test_batch_and_imap_on_a_given_executor(pool: ProcessPoolExecutor) -> None:
    chain = RunnableLambda(lambda x: x + 1) | {"a": lambda x: x * 2, "b": RunnableLambda(where)}
    assert [o["a"] for o in chain.batch(list(range(20)), {"backend": pool})] == [2 * (i + 1) for i in range(20)]
    assert [o["a"] for o in chain.imap(iter(range(5)), {"backend": pool})] == [2, 4, 6, 8, 10]


def test_lambdas_and_closures_travel_by_value(pool: ProcessPoolExecutor) -> None:
    offset = 1000

    def add_offset(x: int) -> int:  # a closure: not importable by the workers
        return x + offset

    chain = RunnableLambda(add_offset) | RunnableLambda(lambda x: (x, os.getpid()))
    out = chain.batch(list(range(10)), {"backend": pool})
    assert [x for x, _ in out] == [1000 + i for i in range(10)]
    assert os.getpid() not in {pid for _, pid in out}


def test_functions_from_main_reach_the_workers(tmp_path: Path) -> None:
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing, os
        from concurrent.futures import ProcessPoolExecutor
        from rayrunnables import RunnableLambda

        def square(x):
            return x * x, os.getpid()

        if __name__ == "__main__":
            with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
                out = RunnableLambda(square).map().invoke(list(range(50)), {"backend": pool})
            assert [v for v, _ in out] == [i * i for i in range(50)]
            assert os.getpid() not in {pid for _, pid in out}
            print("ok")
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_a_thread_pool_executor_works_too() -> None:
    with ThreadPoolExecutor(4) as threads:
        out = RunnableLambda(lambda x: (x, threading.get_ident())).map().invoke(list(range(50)), {"backend": threads})
    assert [x for x, _ in out] == list(range(50))


def test_waiting_steps_stay_in_this_process(pool: ProcessPoolExecutor) -> None:
    def nap(x: int) -> tuple[int, int]:
        time.sleep(0.01)
        return x, os.getpid()

    out = RunnableLambda(nap).with_options(io_bound=True).batch(list(range(20)), {"backend": pool})
    assert {pid for _, pid in out} == {os.getpid()}


def lock_maker(x: int) -> Any:
    if x == 3:
        return threading.Lock()  # cannot be pickled back to the caller
    return x


def test_an_output_that_cannot_come_back_is_that_items_error(pool: ProcessPoolExecutor) -> None:
    out = RunnableLambda(lock_maker).batch(list(range(6)), {"backend": pool}, return_exceptions=True)
    assert out[:3] == [0, 1, 2] and out[4:] == [4, 5]
    assert isinstance(out[3], rr.UnpicklableOutputError)
    assert rr.item_index_of(out[3]) == 3
    assert "lock_maker" in str(out[3])


def test_explain_names_the_executor(pool: ProcessPoolExecutor) -> None:
    text = RunnableLambda(where).map().explain(pool)
    assert "on ProcessPoolExecutor" in text and "map" in text


def test_the_executor_backend_is_registered_by_name() -> None:
    assert "executor" in rr.available_backends()
    backend = rr.get_backend("executor", max_workers=1)
    try:
        assert RunnableLambda(where).map().invoke([1, 2], {"backend": backend})[0][0] == 1
    finally:
        backend.close()
