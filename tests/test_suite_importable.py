"""The conformance suite is importable (``rayrunnables.testing.conformance``): a backend written outside
the project runs it with one fixture, as the project's own three backends do (``conftest.py``)."""

from __future__ import annotations

import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import rayrunnables
from rayrunnables.testing import conformance
from rayrunnables.testing.conformance import suite

ELSEWHERE = '''
from concurrent.futures import ThreadPoolExecutor

import pytest

from rayrunnables.backends.executor import ExecutorBackend
from rayrunnables.engine.registry import get_backend
from rayrunnables.testing.conformance.suite import *  # noqa: F403


class ThreadsBackend(ExecutorBackend):
    """A backend written elsewhere: the executor backend's chunks on a thread pool, under its own name."""

    name = "threads"


@pytest.fixture
def conformance_backend():
    with ThreadPoolExecutor(2) as pool:
        yield ThreadsBackend(pool)


def test_the_suite_runs_on_this_backend(cfg):
    assert type(get_backend(cfg["backend"])).__name__ == "ThreadsBackend"
'''

# a few tests of each kind: calls, a .map() inside a chain, an error crossing a pickle, a ray_only one
SUBSET = (
    "test_the_suite_runs_on_this_backend or test_batch_keeps_order or test_map_inside_sequence or "
    "test_stream_last_step_of_sequence or test_an_error_that_cannot_be_rebuilt_is_named or "
    "test_remote_traceback_is_kept_as_cause_in_invoke"
)


def test_the_suite_gathers_every_test_of_every_module() -> None:
    """``suite`` holds each module of the package, and each one's every test: none left out, none shadowed."""
    names = {m.name for m in pkgutil.iter_modules(conformance.__path__)} - {"suite"}
    assert {m.__name__.rsplit(".", 1)[1] for m in suite.MODULES} == names
    for module in suite.MODULES:
        for name in (n for n in vars(module) if n.startswith("test_")):
            assert getattr(suite, name) is getattr(module, name), f"{module.__name__}.{name} is not in the suite"
            assert name in suite.__all__
    assert {"backend", "cfg", "folders", "kind"} <= set(suite.__all__)


@pytest.mark.slow
def test_a_backend_written_elsewhere_runs_the_suite_with_one_fixture(tmp_path: Path) -> None:
    (tmp_path / "test_mine.py").write_text(ELSEWHERE)
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["rayrunnables.testing.plugin"]\n')
    root = str(Path(rayrunnables.__file__).resolve().parents[1])  # this checkout, not another install
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error::pytest.PytestUnknownMarkWarning",
         "-k", SUBSET, "test_mine.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    # 4 of the suite's tests and the file's own pass; the ray_only one is skipped on a backend named "threads"
    assert re.match(r"5 passed, 1 skipped", summary), summary
