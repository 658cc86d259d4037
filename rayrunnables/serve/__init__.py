"""Serve a chain over HTTP with LangServe's protocol on Ray Serve: ``app(chain)`` and ``rayrunnables serve``.

Imported on its own (``import rayrunnables.serve``): it needs the ``[serve]`` extra (Ray Serve, FastAPI),
which ``import rayrunnables`` never loads.
"""

from __future__ import annotations

from typing import Any

from .api import ServeOptions, build_api
from .schemas import Schemas, schemas_for

__all__ = ["app", "ServeOptions", "build_api", "Schemas", "schemas_for"]


def app(chain: Any, **kwargs: Any) -> Any:
    """A Ray Serve application serving ``chain`` (see ``deployment.app`` for the options)."""
    from .deployment import app as make

    return make(chain, **kwargs)
