"""A pytest plugin for the conformance suite (``rayrunnables.testing.conformance``).

Every test of the suite takes ``backend`` (what ``config["backend"]`` is given) or ``cfg``
(``{"backend": backend}``). Both come from the one fixture a backend's author defines::

    @pytest.fixture
    def conformance_backend():
        return MyBackend()  # a Backend, a registered name, or a concurrent.futures.Executor

``rayrunnables.testing.conformance.suite`` re-exports the two fixtures, so an ``import *`` of it is
enough; list this module in ``pytest_plugins`` (a root ``conftest.py``) as well to register the suite's
markers (``ray_only``, and ``timeout`` where pytest-timeout is not installed) instead of being warned
about them. A ``ray_only`` test is skipped unless the backend's ``name`` is ``"ray"``.
"""

from __future__ import annotations

from typing import Any

import pytest

from ..engine.registry import get_backend

__all__ = ["backend", "cfg", "pytest_configure"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ray_only: needs the Ray backend")
    if not config.pluginmanager.hasplugin("timeout"):  # pytest-timeout registers it itself
        config.addinivalue_line("markers", "timeout(seconds): a test's time limit (with pytest-timeout)")


@pytest.fixture
def backend(conformance_backend: Any, request: pytest.FixtureRequest) -> Any:
    """The backend under test, as ``config["backend"]`` takes it (from ``conformance_backend``)."""
    if request.node.get_closest_marker("ray_only") is not None and get_backend(conformance_backend).name != "ray":
        pytest.skip("ray_only: meaningful only on the Ray backend")
    return conformance_backend


@pytest.fixture
def cfg(backend: Any) -> dict[str, Any]:
    """The config that routes a call to the backend under test: ``chain.invoke(x, config=cfg)``."""
    return {"backend": backend}
