"""Fixtures shared by the conformance suite: one parametrized ``backend`` name, and Ray started lazily.

Every semantic test asks for ``backend`` (or ``cfg``) and so runs once per registered backend name.
Ray is started once per session, and only when a test on the "ray" backend actually runs.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import pytest

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
        ray.init(address="local", num_cpus=2, include_dashboard=False)
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
    backend = rayrunnables.get_backend("executor")
    backend.runner.executor.submit(os.getpid).result()  # a fork pool starts all its workers at its first call
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(params=BACKENDS, ids=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The NAME of the backend under test ("local", "ray" or "executor")."""
    name: str = request.param
    if name == "ray":  # a broken Ray backend must fail the suite, never skip it quietly
        request.getfixturevalue("ray_session")
    if name == "executor":
        request.getfixturevalue("executor_session")
    return name


@pytest.fixture
def cfg(backend: str) -> dict[str, Any]:
    """The config that routes a call to the backend under test: ``chain.invoke(x, config=cfg)``."""
    return {"backend": backend}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ray_only: needs the Ray backend")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A ``ray_only`` test parametrized over ``backend`` runs only for the "ray" case."""
    for item in items:
        if item.get_closest_marker("ray_only") is None:
            continue
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("backend", "ray") != "ray":
            item.add_marker(pytest.mark.skip(reason="ray_only: meaningful only on the Ray backend"))
