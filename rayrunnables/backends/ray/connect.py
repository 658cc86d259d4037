"""Reaching an existing Ray cluster: fail within a deadline, and say why, instead of hanging in ``ray.init``.

``ray.init(address=...)`` tries the GCS about 20 times, one second apart. Against a port where nothing
answers each try can wait ~40 s, so the call hangs for many minutes; a missing or wrong token surfaces,
after ~20 s, only as ``ConnectionError: Failed to connect to Ray cluster``; and a ``RAY_AUTH_TOKEN_PATH``
that cannot be read makes Ray's C++ core abort the whole process. So before ``ray.init`` we check, all
within one deadline: the token settings, a TCP connection to the address, and one GCS handshake (the
place where the cluster accepts or refuses the token). Each failure is a ``BackendError`` naming the
address, the reason and what to change.
"""

from __future__ import annotations

import importlib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from ...errors import BackendError

__all__ = ["check_cluster", "init_failure_hint"]

_FIX_TOKEN = (
    "Give this driver the cluster's token: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=<a file readable only "
    "by you> (or RAY_AUTH_TOKEN=<token>); see cluster/README.md"
)


# Ray's compiled core: the handshake and token classes live there (typed loosely: no stubs for them)
_RAYLET: Any = importlib.import_module("ray._raylet")

def check_cluster(address: str, timeout: float) -> None:
    """Raise ``BackendError`` unless the Ray cluster at ``address`` accepts this driver, within ``timeout`` s.

    ``address`` is a GCS address (``host:port``) or a Ray Client address (``ray://host:port``, only its
    port is checked); ``local``/``auto`` are left to ``ray.init``."""
    if address in ("local", "auto"):
        return
    if address.startswith(("http://", "https://")):
        raise BackendError(
            f"{address!r} looks like the dashboard / Jobs API address: a driver attaches to the cluster's GCS "
            "(host:6379 by default), or to ray://host:10001 with Ray Client; submit to the Jobs API with "
            f"`ray job submit --address {address} -- ...` instead"
        )
    client = address.startswith("ray://")
    host, port = _split(address.removeprefix("ray://"), address)
    deadline = time.monotonic() + timeout
    if not client:
        _check_token_settings(address)
    try:
        socket.create_connection((host, port), timeout=max(0.1, timeout)).close()
    except socket.gaierror as exc:
        raise BackendError(f"cannot reach Ray at {address!r}: unknown host {host!r} ({exc})") from exc
    except TimeoutError as exc:
        raise BackendError(f"cannot reach Ray at {address!r}: no answer within {timeout:g} s "
                           "(wrong address, a firewall, or the cluster is down)") from exc
    except OSError as exc:
        raise BackendError(f"cannot reach Ray at {address!r}: {exc.strerror or exc} "
                           "(is the cluster running, and is this its GCS port?)") from exc
    if not client:
        _handshake(address, f"{host}:{port}", max(0.5, deadline - time.monotonic()))


def init_failure_hint(address: str) -> str:
    """What to add to a failed ``ray.init``'s message: Ray Client hides a refused token as a timeout."""
    if address.startswith("ray://"):
        return (" (Ray Client reports a missing or wrong token as a connection timeout: check RAY_AUTH_MODE=token "
                "and RAY_AUTH_TOKEN_PATH, or attach to the GCS address host:6379 for a clearer error)")
    return ""


def _split(hostport: str, address: str) -> tuple[str, int]:
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise BackendError(f"bad Ray address {address!r}: expected host:port (e.g. 10.0.0.5:6379) or ray://host:port")
    return host.strip("[]"), int(port)


def _auth_mode() -> tuple[bool, bool]:
    """(whether this Ray has token auth, whether it is on for this process)."""
    mode, get_mode = getattr(_RAYLET, "AuthenticationMode", None), getattr(_RAYLET, "get_authentication_mode", None)
    if mode is None or get_mode is None:  # Ray < 2.52: no token authentication
        return False, False
    return True, bool(get_mode() == mode.TOKEN)


def _token_source() -> str:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "the RAY_AUTH_TOKEN variable"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"RAY_AUTH_TOKEN_PATH={os.environ['RAY_AUTH_TOKEN_PATH']}"
    return f"{Path.home() / '.ray' / 'auth_token'}"


def _check_token_settings(address: str) -> None:
    """With token auth on, a token must be found: Ray's core aborts the process when it is not."""
    supported, enabled = _auth_mode()
    if not (supported and enabled):
        return
    try:
        found = _RAYLET.AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True)
    except Exception as exc:  # e.g. RAY_AUTH_TOKEN_PATH names a missing or empty file
        message = getattr(exc, "message", None) or str(exc)
        raise BackendError(f"cannot connect to Ray at {address!r}: the token is misconfigured: {message}") from exc
    if not found:
        raise BackendError(
            f"cannot connect to Ray at {address!r}: RAY_AUTH_MODE=token but no token was found (looked in "
            f"RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH and {_token_source()}). {_FIX_TOKEN}"
        )


def _handshake(address: str, gcs: str, timeout: float) -> None:
    """One GCS handshake in a helper thread, so a peer that accepts but never answers cannot hold us."""
    GcsClient = _RAYLET.GcsClient

    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            GcsClient(address=gcs)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=attempt, name="rayrunnables-gcs-check", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        raise BackendError(f"cannot connect to Ray at {address!r}: no GCS handshake within {timeout:.0f} s "
                           "(is this the GCS port of a Ray cluster?)")
    error = outcome[0]
    if error is None:
        return
    if type(error).__name__ == "AuthenticationError":
        _, enabled = _auth_mode()
        sent = f"the token from {_token_source()}" if enabled else "no token (RAY_AUTH_MODE is not 'token')"
        message = getattr(error, "message", None) or str(error)
        raise BackendError(
            f"Ray at {address!r} refused this driver: it requires token authentication and this driver sent "
            f"{sent}, which it rejected ({message}). {_FIX_TOKEN}"
        ) from error
    raise BackendError(f"cannot connect to Ray at {address!r}: {type(error).__name__}: {error}") from error
