"""The conformance suite: what every backend must do the same way, as pytest tests.

One module per area, each a plain module of ``test_*`` functions (not collected by itself: its name
does not start with ``test_``), importable by name, so Ray's and an executor's workers import the steps
the tests send them:

- ``core``: the calls (invoke, batch, stream, async, imap...) and the shapes of the algebra;
- ``wrappers``: retry, fallbacks, config, listeners, names, options, explain, recursion;
- ``errors``: the first failure in time, step paths and item indexes, cancellation, ``max_concurrency``;
- ``portable_errors``: a client's exception crossing processes whole;
- ``cache``: ``with_cache``; ``rate_limits``: ``with_rate_limit``.

``rayrunnables.testing.conformance.suite`` gathers them all for one ``import *`` (see its docstring);
every test takes the ``backend``/``cfg`` fixtures of ``rayrunnables.testing.plugin``, made from the one
fixture a backend's author defines, ``conformance_backend``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["exported", "backend_name"]


def exported(namespace: Mapping[str, Any], fixtures: tuple[str, ...] = ()) -> list[str]:
    """A suite module's ``__all__``: its own ``test_*`` functions and ``fixtures``, nothing else, so an
    ``import *`` of it brings no helper, no ``pytestmark`` and no other module's tests."""
    own = namespace["__name__"]
    tests = [
        name for name, obj in namespace.items()
        if name.startswith("test_") and callable(obj) and getattr(obj, "__module__", None) == own
    ]
    return [*tests, *fixtures]


def backend_name(cfg: Mapping[str, Any]) -> str:
    """The name of the backend a test's ``cfg`` routes to (``"local"``, ``"ray"``, ``"executor"``, or a
    backend's own ``name``): what a test checks for behaviour that differs by backend by design."""
    from ...engine.registry import get_backend

    return get_backend(cfg["backend"]).name
