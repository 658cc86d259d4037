"""Run events as data: recorded where a step runs, carried back, replayed into the caller's handlers.

An event is LangChain's own vocabulary, ``(method, args, kwargs, meta)``: ``("on_chain_start", (None,
input), {"run_id": ..., "parent_run_id": ..., "name": ...}, (time_ns, step_path, pid, scopes))``. Replaying it is
``getattr(handler, method)(*args, **kwargs)``, so any LangChain callback handler, tracer or callback
manager works unchanged (duck-typed: nothing here imports langchain-core), and the same records feed
``astream_events``, listeners and OpenTelemetry.

Where a step runs in this process the recorder *is* the dispatcher (events reach handlers as they
happen); in a Ray worker or an executor's process it is a ``Buffer`` whose events travel back with the
chunk's results (or on the streaming channel) and are replayed here in the order they were recorded.
Nothing is recorded when nobody listens: a run context without a recorder costs one attribute test per
step.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    pass

__all__ = [
    "Event", "Recorder", "Buffer", "Dispatcher", "RunSink", "recorder_for", "checked_handlers", "LISTENER_EVENT",
    "PARENT_RUN_KEY", "STREAM_EVENT", "Listeners", "Run", "notify_listener", "Scoped", "ScopedCallbacks",
    "scoped_callbacks", "Meta",
]

logger = logging.getLogger("rayrunnables.events")

Meta = tuple[Any, ...]  # (time_ns, step path, pid, scopes): when, where and which step; scopes: see ``Scoped``
Event = tuple[str, tuple[Any, ...], dict[str, Any], Meta]

#: a chunk a streamed run produced (``astream_events``' ``on_chain_stream``); recorded only when wanted
STREAM_EVENT = "on_chain_stream"
#: the config key of a batch item whose caller's run differs from the batch's (LangChain's per-item callbacks)
PARENT_RUN_KEY = "rayrunnables_parent_run_id"
#: a ``with_listeners`` binding's run began or ended: dispatched to its listeners, in the caller's process
LISTENER_EVENT = "on_rayrunnables_listener"

# LangChain's ``ignore_*`` switches of a handler, by callback method prefix (as its callback manager reads them)
_IGNORE = (
    ("on_chain_", "ignore_chain"),
    ("on_chat_model_", "ignore_chat_model"),
    ("on_llm_", "ignore_llm"),
    ("on_retriever_", "ignore_retriever"),
    ("on_tool_", "ignore_agent"),
    ("on_agent_", "ignore_agent"),
    ("on_retry", "ignore_retry"),
    ("on_custom_event", "ignore_custom_event"),
)


class Recorder:
    """Where run events go. ``streams``: whether chunk events (``STREAM_EVENT``) are wanted at all;
    ``trace_id``: an OpenTelemetry trace the runs belong to (each run then gets its span id where it
    starts, and runs with that span as the current one: see ``interop.otel``)."""

    streams = False
    trace_id: int | None = None

    def emit(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], path: str = "",
             scopes: tuple[str, ...] = (), span: tuple[int, int] | None = None) -> None:
        raise NotImplementedError

    def replay(self, events: Iterable[Event]) -> None:
        """Events recorded elsewhere, in their recorded order."""
        for method, args, kwargs, meta in events:
            self.deliver(method, args, kwargs, meta)

    def deliver(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], meta: Meta) -> None:
        raise NotImplementedError


class Buffer(Recorder):
    """Events kept in order, to travel back with a worker's results (``take`` empties it)."""

    def __init__(self, streams: bool = False, trace_id: int | None = None) -> None:
        self.streams, self.trace_id = streams, trace_id
        self.events: list[Event] = []

    def emit(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], path: str = "",
             scopes: tuple[str, ...] = (), span: tuple[int, int] | None = None) -> None:
        self.events.append((method, args, kwargs, (time.time_ns(), path, os.getpid(), scopes, span)))  # atomic

    def deliver(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], meta: Meta) -> None:
        self.events.append((method, args, kwargs, meta))

    def take(self) -> list[Event]:
        events, self.events = self.events, []
        return events


class Dispatcher(Recorder):
    """Delivers events to the caller's handlers, one event at a time (handlers need not be thread-safe).

    ``handlers``: LangChain callback handlers or anything with the same method names (a missing method is
    skipped); ``sinks``: our own consumers (``astream_events``, OpenTelemetry), called with every event.
    """

    def __init__(self, handlers: Iterable[Any] = (), sinks: Iterable[Callable[..., None]] = (),
                 streams: bool = False) -> None:
        self.handlers = list(handlers)
        self.sinks = list(sinks)
        self.streams = streams
        self._lock = threading.RLock()

    def with_sink(self, sink: Callable[..., None], streams: bool = False) -> Dispatcher:
        other = Dispatcher(self.handlers, [*self.sinks, sink], self.streams or streams)
        other.trace_id = self.trace_id
        return other

    def emit(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], path: str = "",
             scopes: tuple[str, ...] = (), span: tuple[int, int] | None = None) -> None:
        self.deliver(method, args, kwargs, (time.time_ns(), path, os.getpid(), scopes, span))

    def deliver(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], meta: Meta) -> None:
        with self._lock:
            if method == LISTENER_EVENT:
                _notify_listener(*args)
                return
            for sink in self.sinks:
                sink(method, args, kwargs, meta)
            for handler in self.handlers:
                _call_handler(handler, method, args, kwargs, meta)
            for key in meta[3] if len(meta) > 3 else ():  # the handlers of a ``with_config(callbacks=...)``
                scope = _SCOPES.get(key)
                for handler in scope.handlers if scope is not None else ():
                    _call_handler(handler, method, args, kwargs, meta)


class Scoped(Recorder):
    """Inside a binding with callbacks of its own: every event also names that binding's scope, so the
    caller's process hands it to those handlers too, wherever it was recorded."""

    def __init__(self, inner: Recorder, key: str) -> None:
        self.inner, self.key, self.streams, self.trace_id = inner, key, inner.streams, inner.trace_id

    def emit(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], path: str = "",
             scopes: tuple[str, ...] = (), span: tuple[int, int] | None = None) -> None:
        self.inner.emit(method, args, kwargs, path, (*scopes, self.key), span)

    def deliver(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], meta: Meta) -> None:
        scopes = meta[3] if len(meta) > 3 else ()
        self.inner.deliver(method, args, kwargs, (*meta[:3], (*scopes, self.key), *meta[4:]))


class ScopedCallbacks:
    """A binding's own handlers (``with_config(callbacks=[...])``). They stay in the process that built the
    chain, registered by ``key``; a copy sent to a worker carries the key only."""

    def __init__(self, handlers: list[Any], key: str | None = None) -> None:
        self.handlers = handlers
        self.key = key or uuid.uuid4().hex
        _SCOPES[self.key] = self

    def __reduce__(self) -> Any:
        return (_scoped_callbacks, (self.key,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ScopedCallbacks) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)


def _scoped_callbacks(key: str) -> ScopedCallbacks:
    found = _SCOPES.get(key)
    if found is not None:
        return found
    stub = ScopedCallbacks.__new__(ScopedCallbacks)
    stub.handlers, stub.key = [], key
    return stub


_SCOPES: weakref.WeakValueDictionary[str, ScopedCallbacks] = weakref.WeakValueDictionary()


def scoped_callbacks(callbacks: Any) -> ScopedCallbacks:
    """A ``with_config(callbacks=...)`` value (a list of handlers, one handler, or a LangChain manager)."""
    if isinstance(callbacks, ScopedCallbacks):
        return callbacks
    if isinstance(callbacks, (list, tuple)):
        return ScopedCallbacks(checked_handlers(list(callbacks), "with_config(callbacks=...)"))
    handlers = list(getattr(callbacks, "handlers", None) or [callbacks])
    return ScopedCallbacks(checked_handlers(handlers, "with_config(callbacks=...)"))


class RunSink:
    """What ``config["callbacks"]`` holds inside a recorded run: the recorder and the run that is the
    parent of whatever starts here. A function that passes its config on to another chain (ours, or a
    LangChain runnable through the interop) nests that chain's runs under its own."""

    __slots__ = ("recorder", "run_id")

    def __init__(self, recorder: Recorder, run_id: uuid.UUID | None) -> None:
        self.recorder, self.run_id = recorder, run_id

    def __reduce__(self) -> Any:  # never pickled with a config: a worker records into its own buffer
        return (_no_sink, ())


def _no_sink() -> None:
    return None


AMBIENT_SOURCES: list[Callable[[], list[Any]]] = []
"""Where handlers that are on for the caller without being passed come from (LangChain's context-variable
hooks, such as ``get_usage_metadata_callback()``: ``interop.langchain`` registers them). Each returns the
handlers active in the calling thread now."""


def ambient_handlers() -> list[Any]:
    """The handlers the caller has on without passing them (none, at the cost of one test, when no source)."""
    if not AMBIENT_SOURCES:
        return []
    return [handler for source in AMBIENT_SOURCES for handler in source()]


def recorder_for(config: Mapping[str, Any]) -> tuple[Recorder, uuid.UUID | None]:
    """The recorder a run reports to, and the parent of its root run, from ``config["callbacks"]``.

    Accepts a list of handlers, a LangChain callback manager (its handlers, under its parent run: how a
    LangChain chain hands a child its callbacks), or a ``RunSink`` (a nested call of ours). Without any,
    a dispatcher with no handlers (listeners and a binding's own handlers are served from its events).
    """
    callbacks = config.get("callbacks")
    if isinstance(callbacks, RunSink):
        return callbacks.recorder, callbacks.run_id
    parent = None
    if callbacks is None:
        handlers: list[Any] = []
    elif isinstance(callbacks, (list, tuple)):
        handlers = list(callbacks)
    elif hasattr(callbacks, "handlers"):  # a LangChain callback manager
        handlers = list(callbacks.handlers)
        parent = getattr(callbacks, "parent_run_id", None)
    else:
        handlers = [callbacks]
    handlers += [h for h in ambient_handlers() if all(h is not given for given in handlers)]
    dispatcher = Dispatcher(checked_handlers(handlers))
    for handler in handlers:  # an OpenTelemetry consumer plans the trace (``interop.otel``)
        plan = getattr(handler, "plan_trace", None)
        if plan is not None:
            dispatcher.trace_id = plan()
            break
    return dispatcher, parent


_HANDLER_TYPES: set[type] = set()


def checked_handlers(handlers: list[Any], where: str = "config['callbacks']") -> list[Any]:
    """Handlers are objects with LangChain's callback methods (``on_chain_start``...) or ``on_run_event``;
    anything else (a string, a function, a dict) is a clear error at the call, not a silent no-op."""
    for n, handler in enumerate(handlers):
        if type(handler) in _HANDLER_TYPES:  # checked once per class
            continue
        if callable(handler) and not isinstance(handler, type) and not hasattr(handler, "on_chain_start"):
            is_handler = hasattr(handler, "on_run_event")
        else:
            is_handler = not isinstance(handler, (str, bytes, int, float, dict, type(None), type)) and any(
                name.startswith("on_") for name in dir(handler)
            )
        if is_handler:
            _HANDLER_TYPES.add(type(handler))
        else:
            raise ConfigError(
                f"{where}[{n}]: {type(handler).__name__} {handler!r:.60} is not a callback handler: give objects "
                "with LangChain's callback methods (a BaseCallbackHandler, a tracer) or a callback manager"
            )
    return handlers


# ---- delivery ----------------------------------------------------------------------------------------------------
def _ignored(handler: Any, method: str) -> bool:
    for prefix, switch in _IGNORE:
        if method.startswith(prefix):
            return bool(getattr(handler, switch, False))
    return False


def _call_handler(
    handler: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], meta: Meta
) -> None:
    raw = getattr(handler, "on_run_event", None)
    if raw is not None:  # a consumer of the records themselves (with when, where and which step): OpenTelemetry
        try:
            raw(method, args, kwargs, meta)
        except Exception as exc:
            logger.warning("Error in %s.on_run_event: %r", type(handler).__name__, exc)
        return
    callback = getattr(handler, method, None)
    if callback is None or _ignored(handler, method):
        return
    try:
        try:
            result = callback(*args, **kwargs)
        except NotImplementedError:
            if method != "on_chat_model_start":
                raise
            # as LangChain does for a handler without chat-model support: the messages as prompt strings
            from langchain_core.messages import get_buffer_string

            serialized, batches = args
            result = handler.on_llm_start(serialized, [get_buffer_string(m) for m in batches], **kwargs)
        if hasattr(result, "__await__"):  # an async handler, called from synchronous code
            from .._aio import run_coro_sync

            run_coro_sync(result)
    except Exception as exc:
        if getattr(handler, "raise_error", False):
            raise
        logger.warning("Error in %s.%s callback: %r", type(handler).__name__, method, exc)


# ---- with_listeners: one more consumer of the same events ----------------------------------------------------------
@dataclass(frozen=True)
class Listeners:
    """A binding's ``on_start``/``on_end``/``on_error``. They belong to the process that built the chain
    (they append to its lists, log, trace): a binding that runs elsewhere sends its runs back as events,
    and they are called here, found by ``key`` (a pickled copy has the key, not the registration)."""

    on_start: Callable[..., Any] | None = None
    on_end: Callable[..., Any] | None = None
    on_error: Callable[..., Any] | None = None
    key: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        _LISTENERS[self.key] = self


_LISTENERS: weakref.WeakValueDictionary[str, Listeners] = weakref.WeakValueDictionary()


@dataclass
class Run:
    """What a listener receives (the fields of LangChain's ``Run`` that listeners use)."""

    name: str
    inputs: Any
    outputs: Any = None
    error: BaseException | None = None
    start_time: float = field(default_factory=time.time)
    end_time: float | None = None
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


def notify_listener(listener: Callable[..., Any] | None, run: Run, config: dict[str, Any]) -> None:
    if listener is None:
        return
    try:
        n_params = len(inspect.signature(listener).parameters)
    except (TypeError, ValueError):
        n_params = 1
    if n_params >= 2:
        listener(run, config)
    else:
        listener(run)


def _notify_listener(key: str, phase: str, run: Run, config: dict[str, Any]) -> None:
    listeners = _LISTENERS.get(key)
    if listeners is not None:
        notify_listener(getattr(listeners, phase), run, config)
