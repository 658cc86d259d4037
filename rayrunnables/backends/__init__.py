"""Backends by name, and which one a call runs on: the registry (``rayrunnables.engine.registry``).

It lives in the engine layer so the algebra can look a backend up without importing this layer; the
backends themselves (``local``, ``executor``, ``ray``) are the modules of this package, imported by
name on first use.
"""

from __future__ import annotations

from ..engine.registry import Backend, available_backends, get_backend, register_backend, resolve_backend, use

__all__ = ["Backend", "register_backend", "get_backend", "available_backends", "use", "resolve_backend"]
