"""What this process keeps across runs, in one place, and made anew in a forked child.

A process made by ``fork`` (a ``ProcessPoolExecutor`` or ``multiprocessing`` with the default start
method on Linux before Python 3.14, a plain ``os.fork()``) starts with a copy of its parent's memory but
only the thread that forked. What rayrunnables keeps across runs would lie to such a child: a thread pool
believes its threads are there and idle, so a branch submitted to it never starts (a dict-parallel chain
in a forked ``ProcessPoolExecutor`` worker hung for good); a lock another thread held at the fork stays
held forever; the count of running calls counts calls that are not there; a stateful step's instance (a
model, a client with open connections) or a named backend's process pool would be shared with the
parent. So all of it lives on ``STATE``, ``reset()`` builds it anew, and
``os.register_at_fork(after_in_child=reset)`` does so in every forked child. A spawned process imports
the package afresh and needs nothing.

In a forked child what was inherited is kept referenced and never touched again: its threads, locks and
connections belong to the parent (closing a client there, or running a finalizer, could end the parent's
session). An explicit ``reset()`` in the same process shuts its old thread pools down without waiting.

Other modules read ``STATE``'s attributes when they use them and never keep them, so they see the new
ones after a reset.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..recent import Recent
from ..services import LocalServices

__all__ = ["STATE", "ProcessState", "RunningCalls", "reset", "PROFILES_KEPT"]

PROFILES_KEPT = 4096  # learned classes of pickled steps, the most recently used (a long-lived worker)


class RunningCalls:
    """How many measured calls run in this process right now (``execution`` weighs a call's CPU by it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def enter(self) -> int:
        with self._lock:
            self.count += 1
            return self.count

    def leave(self) -> int:
        with self._lock:
            n = self.count
            self.count -= 1
            return n


class ProcessState:
    """The state of this process; one instance, ``STATE``."""

    def __init__(self) -> None:
        #: bumped whenever a step's class changes, and at a reset: a subtree caches its class for one generation
        self.generation = 0
        #: how many resets this process's memory went through: a step profile from an earlier epoch was
        #: learned by another process (the parent) and is learned again here
        self.epoch = 0
        self._inherited: list[dict[str, Any]] = []
        self._build()

    def _build(self) -> None:
        self.pid = os.getpid()
        #: the elastic pool where waiting branches and chunks overlap (``inprocess``, the Ray driver's fan-out)
        self.threads = ThreadPoolExecutor(max_workers=1024, thread_name_prefix="rayrunnables")
        #: one thread that lives as long as this process, for work whose effects end with the thread that
        #: did it (``ray.init``: a local Ray's head processes die with the thread that started them)
        self.lasting = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rayrunnables-lasting")
        #: stateful steps' instances, rate limits' buckets, lazily built LangChain steps: one each per process
        self.services = LocalServices()
        #: what this process learned of steps that arrived pickled, by step id (``execution``)
        self.profiles: Recent[str, Any] = Recent(PROFILES_KEPT)
        self.running = RunningCalls()
        #: the named backends' shared instances (``backends.get_backend``), with their pools and connections
        self.backends: dict[str, Any] = {}
        #: this process is a worker of ours (a Ray worker): a timed call on its main thread may be stopped
        #: by SIGINT at its deadline (``runnables.timeout``); never in the caller's process
        self.interruptible_worker = False

    def reset(self) -> None:
        """Make every piece anew. In a forked child the inherited pieces are kept, untouched; in the same
        process the old thread pools are shut down (running work ends, no new thread starts)."""
        old = {key: value for key, value in vars(self).items() if key not in ("generation", "epoch", "_inherited")}
        if os.getpid() == self.pid:
            for pool in (self.threads, self.lasting):
                pool.shutdown(wait=False)
        else:
            self._inherited.append(old)
        self.generation += 1
        self.epoch += 1
        self._build()


STATE = ProcessState()


def reset() -> None:
    """Forget this process's thread pools, services, learned step classes and backend instances."""
    STATE.reset()


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(after_in_child=reset)
