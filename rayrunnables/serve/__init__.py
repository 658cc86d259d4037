"""Serve a chain over HTTP with LangServe's protocol on Ray Serve: ``app(chain)`` and ``rayrunnables serve``.

Needs the ``[serve]`` extra (Ray Serve, FastAPI). Nothing is imported until used, so the command line
can list ``serve`` without loading FastAPI, and ``import rayrunnables`` never loads this package.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app", "ServeOptions", "build_api", "schemas_for"]


def app(chain: Any, **kwargs: Any) -> Any:
    """A Ray Serve application serving ``chain`` (options: ``deployment.app``); run it with
    ``ray.serve.run(app(chain), route_prefix="/name")``."""
    from .deployment import app as make

    return make(chain, **kwargs)


def __getattr__(name: str) -> Any:
    if name in ("ServeOptions", "build_api"):
        from . import api

        return getattr(api, name)
    if name == "schemas_for":
        from .schemas import schemas_for

        return schemas_for
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
