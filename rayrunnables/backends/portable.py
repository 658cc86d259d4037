"""Errors that leave a worker process whole: the user's exception arrives with its type and attributes.

pickle rebuilds an exception as ``cls(*exc.args)`` and then restores its ``__dict__``. That fails on the
receiving side for every class whose constructor takes other arguments than its ``args``: openai's and
anthropic's ``APIStatusError`` family (``RateLimitError(message, *, response, body)``), httpx's
``HTTPStatusError(message, *, request, response)``, any class with keyword-only parameters. Ray then
reports a ``RaySystemError`` or an ``UnserializableException``, a process pool a ``TypeError``: the
user's type is lost.

``portable(exc)``, called where a backend sends a worker's errors back, leaves alone what already makes
the trip (tried once, here). Otherwise it gives this one instance its own ``__reduce_ex__`` (pickle and
``copy`` look it up on the instance): the receiver makes the object with ``errors.rebuild_error``, that
is ``cls.__new__(cls, *args)``, and restores ``args`` and ``__dict__`` (``status_code``, ``body``,
``response``, notes, step path and item index...) without calling ``__init__``. An attribute that cannot
be pickled is replaced by a stand-in: an HTTP response by a ``ResponseSnapshot`` (status code, headers,
the body if it was read), anything else by its type's name. ``__cause__``, ``__context__`` and the
traceback travel as for any pickled exception, that is not at all: the remote traceback text becomes
the ``__cause__`` on arrival.
Where even that cannot be rebuilt, the error sent is an ``UnportableError`` naming the original type
and keeping its message, step path and item index.
"""

from __future__ import annotations

import functools
import json
import pickle
from typing import Any, NoReturn

from ..errors import UnportableError, attach_step, item_index_of, rebuild_error, step_path_of

try:  # the standalone package when installed; else the copy Ray ships (a core dependency)
    import cloudpickle
except ImportError:  # pragma: no cover - depends on the environment
    from ray import cloudpickle

__all__ = ["PLAIN_TYPES", "ResponseSnapshot", "cloudpickle", "portable", "raise_portable"]

PLAIN_TYPES = (str, int, float, bool, bytes, type(None))

_HOOK = "__reduce_ex__"  # an instance attribute of this name is what pickle and copy call


def portable(exc: BaseException) -> BaseException:
    """``exc`` ready to be pickled and rebuilt in another process with its type: itself, unchanged if it
    already makes the trip, else with its own way to pickle; or, if even that fails, an ``UnportableError``."""
    return _portable(exc, set())


def raise_portable(exc: BaseException) -> NoReturn:
    """Raise ``exc`` out of a worker as ``portable`` makes it (called in an ``except`` block)."""
    sent = portable(exc)
    if sent is exc:
        raise exc
    raise sent from exc


def _portable(exc: BaseException, seen: set[int]) -> BaseException:
    if id(exc) in seen or _round_trips(exc):
        return exc
    seen.add(id(exc))
    # what cannot travel is chosen now; the rest of ``__dict__`` is read when pickled (the run events a
    # worker attaches to a failure on its way out are added after this call)
    replaced = {
        name: _sendable(value, seen)
        for name, value in vars(exc).items()
        if name != _HOOK and _replaceable(value)
    }
    args = tuple(_sendable(arg, seen) if _replaceable(arg) else arg for arg in exc.args)
    vars(exc)[_HOOK] = functools.partial(_reduce, exc, args, replaced)
    try:
        back = pickle.loads(cloudpickle.dumps(exc))
        if type(back) is type(exc):
            return exc
        reason = f"it comes back as {type(back).__module__}.{type(back).__qualname__}"
    except Exception as err:
        reason = f"{type(err).__name__}: {err}"
    del vars(exc)[_HOOK]
    return _unportable(exc, reason)


def _round_trips(exc: BaseException) -> bool:
    """Whether pickle already rebuilds ``exc`` with its type (a built-in one holding plain data surely does)."""
    if type(exc).__module__ == "builtins" and all(_plain(v) for v in (*exc.args, *vars(exc).values())):
        return True
    try:
        return type(pickle.loads(cloudpickle.dumps(exc))) is type(exc)
    except Exception:
        return False


def _plain(value: Any) -> bool:
    if type(value) in (list, tuple):
        return all(type(v) in PLAIN_TYPES for v in value)  # notes: a list of strings
    return type(value) in PLAIN_TYPES


def _replaceable(value: Any) -> bool:
    """Whether ``value`` is an exception to make portable in turn, or something that cannot be pickled."""
    if _plain(value):
        return False
    if isinstance(value, BaseException) or (
        type(value) in (list, tuple) and any(isinstance(v, BaseException) for v in value)
    ):
        return True
    try:
        cloudpickle.dumps(value)
        return False
    except Exception:
        return True


def _sendable(value: Any, seen: set[int]) -> Any:
    if isinstance(value, BaseException):
        return _portable(value, seen)
    if type(value) in (list, tuple):  # an exception group's list of exceptions, say
        return type(value)(_sendable(v, seen) if _replaceable(v) else v for v in value)
    return _stand_in(value)


def _reduce(exc: BaseException, args: tuple[Any, ...], replaced: dict[str, Any], protocol: int) -> Any:
    state = {name: replaced.get(name, value) for name, value in vars(exc).items() if name != _HOOK}
    return rebuild_error, (type(exc), args, state)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _unportable(exc: BaseException, reason: str) -> UnportableError:
    original = _qualname(type(exc))
    error = UnportableError(
        f"{original}: {exc} (this exception cannot be rebuilt in another process, so it is sent as "
        f"an UnportableError: {reason})",
        original,
    )
    path = step_path_of(exc)
    if path is not None:
        attach_step(error, path, item_index_of(exc))
    return error


class ResponseSnapshot:
    """What a worker saw of an HTTP response that cannot leave it (a live stream, a client): the status
    code, the headers, the URL and the body if it had been read (``None`` if not)."""

    def __init__(self, response: Any) -> None:
        self.status_code: int = response.status_code
        self.reason_phrase: str | None = _text_or_none(getattr(response, "reason_phrase", None))
        self.url = str(getattr(response, "url", "") or "")
        headers = response.headers
        try:
            cloudpickle.dumps(headers)
        except Exception:
            headers = dict(headers.items())
        self.headers: Any = headers
        content = vars(response).get("_content")  # httpx and requests keep a read body here
        self.content: bytes | None = content if isinstance(content, bytes) else None
        self.text: str | None = None
        if self.content is not None:
            try:
                self.text = _text_or_none(response.text)
            except Exception:
                self.text = self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        if self.content is None:
            raise ValueError("the response's body had not been read in the worker")
        return json.loads(self.content)

    def __repr__(self) -> str:
        return f"<ResponseSnapshot [{self.status_code}]>"


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _stand_in(value: Any) -> Any:
    """A picklable stand-in for ``value``, which cannot be pickled."""
    if isinstance(getattr(value, "status_code", None), int) and hasattr(getattr(value, "headers", None), "items"):
        try:
            return ResponseSnapshot(value)
        except Exception:
            pass
    return f"<{type(value).__name__}: cannot leave the worker>"
