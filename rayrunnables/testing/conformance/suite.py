"""The whole conformance suite for one ``import *``: how a backend written outside the project runs it.

In a test module of your own (its name starting with ``test_``)::

    import pytest
    from rayrunnables.testing.conformance.suite import *  # noqa: F403

    @pytest.fixture
    def conformance_backend():
        return MyBackend()  # a Backend, a registered name, or a concurrent.futures.Executor

pytest collects every test of the suite's modules in that module, each taking ``backend``/``cfg``
(``rayrunnables.testing.plugin``, re-exported here) made from your ``conformance_backend``; parametrize
that fixture to run the suite on several backends. Tests marked ``ray_only`` are skipped unless the
backend's ``name`` is ``"ray"``; checks of behaviour that differs by design between the project's
backends (whether an error was pickled on its way back) are made for them by name and left out for a
backend of another name. The steps the tests send live in this installed package, so any worker that
can import ``rayrunnables`` runs them.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from ..plugin import backend, cfg
from . import cache, core, errors, portable_errors, rate_limits, wrappers

#: the suite's modules, in the order their tests are collected
MODULES: tuple[ModuleType, ...] = (core, wrappers, errors, portable_errors, cache, rate_limits)


def _gather(modules: tuple[ModuleType, ...]) -> dict[str, Any]:
    """Every module's tests and fixtures by name; two modules exporting one name is an error (one test
    would silently shadow the other)."""
    found: dict[str, Any] = {}
    for module in modules:
        for name in module.__all__:
            if name in found:
                raise ImportError(f"{module.__name__}.{name} shadows a test or fixture of another suite module")
            found[name] = getattr(module, name)
    return found


_SUITE = _gather(MODULES)
globals().update(_SUITE)

__all__ = ["backend", "cfg", *_SUITE]
