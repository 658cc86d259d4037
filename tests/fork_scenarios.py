"""Chains run in processes forked from one that already used its threads; run as a script by
``test_fork_safety.py``, in a fresh interpreter (no Ray, no pytest threads: a forked copy of the test
process would carry its Ray driver, which a fork corrupts).

``python fork_scenarios.py pool``: a fork-started ``ProcessPoolExecutor(2)``, made after this process ran
a dict-parallel chain, a ``.map()`` chain and a stateful step locally; every shape's ``batch`` and
``invoke`` with ``{"backend": pool}`` next to the local backend's.
``python fork_scenarios.py os-fork``: a plain ``os.fork()`` child runs a dict-parallel chain and a ``.map()``.

One JSON line per result on stdout. Every call is given ``CALL_SECONDS``; one that takes longer is
reported as hung, and the process kills its pool's workers and exits at once (status 3).
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from rayrunnables import (
    RunnableActor,
    RunnableBranch,
    RunnableLambda,
    RunnableParallel,
    RunnablePassthrough,
)
from rayrunnables.engine.process_state import STATE

CALL_SECONDS = 30.0


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return x * 2


def square(x: int) -> int:
    return x * x


def nap(x: int) -> int:
    time.sleep(0.005)
    return x + 100


def is_even(x: int) -> bool:
    return x % 2 == 0


def always_fails(x: int) -> int:
    raise ValueError(f"no {x}")


_attempts: dict[tuple[int, int], int] = {}


def fails_once_per_process(x: int) -> int:
    """Fails the first call for each item in each process: a retry gives the same result everywhere."""
    key = (os.getpid(), x)
    _attempts[key] = _attempts.get(key, 0) + 1
    if _attempts[key] == 1:
        raise ConnectionError(f"flaky {x}")
    return x * 10


class Owner:
    """A stateful step that says whether its instance was built in the process that calls it."""

    def __init__(self) -> None:
        self.pid = os.getpid()

    def __call__(self, x: int) -> tuple[int, bool]:
        return x * 2, self.pid == os.getpid()


ACTOR = RunnableActor(Owner)
WARM_PARALLEL = RunnableParallel(a=RunnableLambda(inc), b=RunnableLambda(nap))
WARM_MAP = RunnableLambda(nap).map()

INTS = [1, 2, 3, 4, 5]
LISTS = [[1, 2], [3], [], [4, 5, 6]]
DICTS = [{"x": n} for n in INTS]

#: name -> (chain, batch inputs, invoke input)
SHAPES: dict[str, tuple[Any, list[Any], Any]] = {
    "sequence": (RunnableLambda(inc) | RunnableLambda(double) | square, INTS, 3),
    "dict-parallel": (RunnableParallel(a=RunnableLambda(inc), b=RunnableLambda(double), c=square), INTS, 3),
    "nested-parallel-in-sequence": (
        RunnableLambda(inc) | {"x": double, "y": RunnableLambda(inc) | {"p": double, "q": square}}, INTS, 3
    ),
    "map": (RunnableLambda(square).map(), LISTS, [1, 2, 3, 4]),
    "parallel-of-maps": ({"a": RunnableLambda(inc).map(), "b": RunnableLambda(double).map()} | RunnablePassthrough(),
                         LISTS, [1, 2, 3]),
    "branch": (RunnableBranch((is_even, RunnableLambda(double)), RunnableLambda(inc)), INTS, 4),
    "passthrough-assign": (RunnablePassthrough.assign(y=lambda d: d["x"] + 1, z=lambda d: d["x"] * 3), DICTS, {"x": 7}),
    "retry": (RunnableLambda(fails_once_per_process).with_retry(
        stop_after_attempt=2, wait_exponential_jitter=False, retry_if_exception_type=(ConnectionError,)), INTS, 6),
    "fallbacks": (RunnableLambda(always_fails).with_fallbacks([RunnableLambda(inc)]), INTS, 6),
    "waiting-step-learned-here": (RunnableParallel(w=RunnableLambda(nap), c=RunnableLambda(inc)), INTS, 2),
    "waiting-step-declared": (
        RunnableParallel(w=RunnableLambda(nap).with_options(io_bound=True), c=RunnableLambda(inc)), INTS, 2
    ),
    "stateful-actor": (RunnableLambda(inc) | ACTOR, INTS, 8),
}


def report(**record: Any) -> None:
    print(json.dumps(record), flush=True)


def bounded(call: Callable[[], Any], seconds: float = CALL_SECONDS) -> Any:
    """``call()`` in a thread, waited for at most ``seconds``: a hang is reported, never waited out."""
    box: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            box.append((True, call()))
        except BaseException as exc:
            box.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if not box:
        raise TimeoutError(f"no answer within {seconds:.0f} s")
    ok, value = box[0]
    if not ok:
        raise value
    return value


def warm_up() -> int:
    """Use this process's threads and services, as a program does before it makes its pool."""
    assert bounded(lambda: WARM_PARALLEL.batch([1, 2, 3])) == [{"a": n + 1, "b": n + 100} for n in (1, 2, 3)]
    assert bounded(lambda: WARM_MAP.invoke([1, 2, 3])) == [101, 102, 103]
    assert bounded(lambda: ACTOR.invoke(1)) == (2, True)  # its instance is built here, before the fork
    return len(STATE.threads._threads)  # threads the children will not have


def run_pool() -> int:
    report(shape="_setup", threads=warm_up(), start_method="fork")
    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"))
    try:
        for name, (chain, inputs, one) in SHAPES.items():
            for mode in ("batch", "invoke"):
                call, arg = (chain.batch, inputs) if mode == "batch" else (chain.invoke, one)
                local, on_pool = functools.partial(call, arg), functools.partial(call, arg, {"backend": pool})
                try:
                    got = bounded(on_pool)
                except TimeoutError as exc:
                    report(shape=name, mode=mode, ok=False, hung=True, error=str(exc))
                    for process in list(getattr(pool, "_processes", {}).values()):
                        process.kill()
                    os._exit(3)
                except Exception as exc:
                    report(shape=name, mode=mode, ok=False, error=f"{type(exc).__name__}: {exc}")
                    continue
                want = bounded(local)
                report(shape=name, mode=mode, ok=got == want, local=repr(want), pool=repr(got))
    finally:
        pool.shutdown(cancel_futures=True)
    return 0


def run_os_fork() -> int:
    threads = warm_up()
    pid = os.fork()
    if pid == 0:  # the child: its exit status is its answer
        status = 2
        try:
            ok = bounded(lambda: WARM_PARALLEL.invoke(5)) == {"a": 6, "b": 105}
            ok = ok and bounded(lambda: WARM_MAP.invoke([1, 2])) == [101, 102]
            ok = ok and bounded(lambda: ACTOR.invoke(4)) == (8, True)  # its own instance, not the parent's
            status = 0 if ok else 1
        except TimeoutError:
            status = 3
        finally:
            os._exit(status)
    deadline = time.monotonic() + 2 * CALL_SECONDS
    while time.monotonic() < deadline:
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            report(shape="os-fork", threads=threads, exit_status=os.waitstatus_to_exitcode(code))
            return 0
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    report(shape="os-fork", threads=threads, exit_status=None, hung=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_pool() if sys.argv[1:] == ["pool"] else run_os_fork())
