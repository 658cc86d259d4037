"""The project's three backends for the conformance suite (``rayrunnables.testing.conformance``), and Ray
started lazily.

``conformance_backend`` is parametrized over the backend names; ``rayrunnables.testing.plugin`` makes
``backend`` and ``cfg`` of it, so every semantic test (the suite's and this folder's own) runs once per
name, as a backend written elsewhere runs the suite with its own ``conformance_backend``. Ray is started
once per session, and only when a test on the "ray" backend actually runs: under pytest-xdist (the README's
``-n 2``) each of the two workers is a session of its own, with its own local Ray.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any

import pytest

# the deadline backstop (10 s on Ray, 5 s elsewhere) made every forced-cancel test wait it out; 5 s here, set
# before this package is imported and before Ray starts, so the workers (and the CLI subprocesses) have it too
os.environ.setdefault("RAYRUNNABLES_DEADLINE_SLACK", "5")

from rayrunnables.testing.plugin import backend, cfg, pytest_configure  # noqa: F401 - the suite's fixtures


def _forked_children_let_go_of_the_xdist_channel() -> None:
    """Under pytest-xdist a worker talks to the controller over two pipes, open before this file is read.
    A process forked without exec (the fork pool's workers) inherits them and outlives a worker that dies
    (Ray's driver aborts with ``_exit``): the controller then never reads EOF and waits forever instead of
    reporting the crash. The pipes open now are that channel; a forked child closes its copies."""
    if not os.environ.get("PYTEST_XDIST_WORKER") or not os.path.isdir("/proc/self/fd"):
        return
    import stat

    channel = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if fd > 2 and stat.S_ISFIFO(os.fstat(fd).st_mode):
                channel.append(fd)
        except OSError:
            continue

    def close_channel() -> None:
        for fd in channel:
            try:
                os.close(fd)
            except OSError:
                pass

    os.register_at_fork(after_in_child=close_channel)


_forked_children_let_go_of_the_xdist_channel()

BACKENDS = ["local", "ray", "executor"]


@pytest.fixture(scope="session")
def ray_session(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Start a local Ray instance once for the whole session; shut it down at the end.

    The executor backend's fork-started workers are started first: a process that runs Ray must not be
    forked (a child's garbage collector finalizes the parent's Ray objects through the parent's own
    connections, and the parent's Ray driver aborts a few tests later)."""
    request.getfixturevalue("executor_session")
    import ray  # a dependency: a broken install must fail the suite, never skip it

    started = False
    if not ray.is_initialized():
        from rayrunnables.backends.ray.backend import LOCAL_RAY_CONFIG

        # the settings a local Ray that the backend starts has (idle task workers kept 60 s), as users get them
        ray.init(address="local", num_cpus=2, include_dashboard=False, _system_config=LOCAL_RAY_CONFIG)
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


@pytest.fixture(scope="session")
def executor_session() -> Iterator[Any]:
    """A ProcessPoolExecutor of 2 workers as a user makes one, ``ProcessPoolExecutor(2)``: the platform's
    default start method (``fork`` on Linux before Python 3.14). Its workers start at once, when the first
    test on "executor" or "ray" needs them: after this process ran other chains (its threads and services
    in use), before it starts Ray. Shut down at the end."""
    import multiprocessing
    import os

    import rayrunnables
    from rayrunnables.backends.executor import ExecutorBackend

    default = multiprocessing.get_context()  # what ProcessPoolExecutor(mp_context=None) uses
    rayrunnables.register_backend("executor", functools.partial(ExecutorBackend, max_workers=2, mp_context=default))
    pool = rayrunnables.get_backend("executor")
    pool.runner.executor.submit(os.getpid).result()  # a fork pool starts all its workers at its first call
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(params=BACKENDS, ids=BACKENDS)
def conformance_backend(request: pytest.FixtureRequest) -> str:
    """The NAME of the backend under test ("local", "ray" or "executor"): ``backend`` and ``cfg`` follow."""
    name: str = request.param
    if name == "ray":  # a broken Ray backend must fail the suite, never skip it quietly
        request.getfixturevalue("ray_session")
    if name == "executor":
        request.getfixturevalue("executor_session")
    return name


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A ``ray_only`` test runs only for the "ray" case (skipped here, before its fixtures are set up)."""
    for item in items:
        if item.get_closest_marker("ray_only") is None:
            continue
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("conformance_backend", "ray") != "ray":
            item.add_marker(pytest.mark.skip(reason="ray_only: meaningful only on the Ray backend"))
