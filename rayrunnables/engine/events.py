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

import ast
import inspect
import logging
import os
import random
import re
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..context import RunContext

__all__ = [
    "Event", "Recorder", "Buffer", "Dispatcher", "RunSink", "recorder_for", "run_invoke", "run_transform",
    "run_batch_items", "LISTENER_EVENT", "PARENT_RUN_KEY", "STREAM_EVENT", "Listeners", "Run", "notify_listener",
    "enter_run", "position_tags", "Scoped", "ScopedCallbacks", "scoped_callbacks", "Meta",
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
# keys a run's children do not inherit: they name or identify that one run
_RUN_ONLY_KEYS = ("run_name", "run_id")


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


def recorder_for(config: Mapping[str, Any], listens: bool = False) -> tuple[Recorder | None, uuid.UUID | None]:
    """The recorder a run reports to, and the parent of its root run, from ``config["callbacks"]``.

    Accepts a list of handlers, a LangChain callback manager (its handlers, under its parent run: how a
    LangChain chain hands a child its callbacks), or a ``RunSink`` (a nested call of ours). ``listens``:
    the chain has ``with_listeners`` bindings, which are served from the same events.
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
    if not handlers and not listens:
        return None, None
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


# ---- runs ------------------------------------------------------------------------------------------------------
_POSITION = re.compile(r"^(?:step (\d+)|parallel\[(.+)\]|branch\[(\d+)\]( condition)?|branch (default))$")


def position_tags(segments: tuple[str, ...]) -> list[str]:
    """LangChain's tag for a run's place in its parent (``seq:step:2``, ``map:key:a``, ``condition:1``,
    ``branch:1``, ``branch:default``), from the last segment of its step path."""
    match = _POSITION.match(segments[-1]) if segments else None
    if match is None:
        return []
    step, key, branch, condition, default = match.groups()
    if step:
        return [f"seq:step:{step}"]
    if key:
        try:
            return [f"map:key:{ast.literal_eval(key)}"]
        except (ValueError, SyntaxError):
            return []
    if default:
        return ["branch:default"]
    return [f"{'condition' if condition else 'branch'}:{int(branch) + 1}"]


def _start(
    ctx: RunContext, node: Any, input: Any, path: str, **extra: Any
) -> tuple[uuid.UUID, dict[str, Any], tuple[int, int] | None]:
    config = ctx.config
    given = config.get("run_id")
    run_id = given if isinstance(given, uuid.UUID) else uuid.uuid4()
    tags = [*position_tags(ctx.path), *(config.get("tags") or ())]
    ids: dict[str, Any] = {"run_id": run_id, "parent_run_id": ctx.run_id, "tags": tags}
    start = {**ids, "metadata": dict(config.get("metadata") or {}),
             "name": config.get("run_name") or node.run_name(), "run_type": None, **extra}
    assert ctx.events is not None
    trace_id = ctx.events.trace_id
    span = None if trace_id is None else (trace_id, random.getrandbits(64) or 1)
    ctx.events.emit("on_chain_start", (None, input), start, path, span=span)
    return run_id, ids, span


def _traced(span: tuple[int, int] | None, call: Callable[[], Any]) -> Any:
    """``call()`` with the run's span as OpenTelemetry's current one, so what the step itself traces (an
    instrumented HTTP client in a Ray worker) is that span's child."""
    if span is None:
        return call()
    try:
        from opentelemetry import context as otel_context
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - planned only when the caller has OpenTelemetry
        return call()
    sampled = trace.TraceFlags(trace.TraceFlags.SAMPLED)
    current = trace.SpanContext(span[0], span[1], is_remote=True, trace_flags=sampled)
    token = otel_context.attach(trace.set_span_in_context(trace.NonRecordingSpan(current)))
    try:
        return call()
    finally:
        otel_context.detach(token)


def _path(ctx: RunContext, node: Any) -> str:
    """The step path of ``node``'s run, as errors name it (``step 1 > parallel['a'] > lambda 'f'``)."""
    return ctx.child(node.label()).path_str


def enter_run(ctx: RunContext, node: Any, run_id: uuid.UUID) -> RunContext:
    """The context ``node``'s own work runs in: its children report under ``run_id``."""
    assert ctx.events is not None
    config = {k: v for k, v in ctx.config.items() if k not in _RUN_ONLY_KEYS}
    config["callbacks"] = RunSink(ctx.events, run_id)
    return ctx.in_run(node, run_id, config)


def run_invoke(node: Any, impl: Callable[..., Any], input: Any, ctx: RunContext) -> Any:
    """``impl(node, input, ctx)`` as one run: start, then end with the output or error with the exception."""
    if not node.reports_run():
        return impl(node, input, ctx)
    path = _path(ctx, node)
    run_id, ids, span = _start(ctx, node, input, path)
    events = ctx.events
    assert events is not None
    try:
        inner = enter_run(ctx, node, run_id)
        output = impl(node, input, inner) if span is None else _traced(span, lambda: impl(node, input, inner))
    except BaseException as exc:
        events.emit("on_chain_error", (exc,), ids, path)
        raise
    events.emit("on_chain_end", (output,), ids, path)
    return output


def run_batch_items(node: Any, impl: Callable[..., Any], inputs: list[Any], ctx: RunContext) -> list[Any]:
    """A vectorized call over a chunk: one run per item, as LangChain's ``batch`` gives."""
    if not node.reports_run() or not inputs:
        return list(impl(node, inputs, ctx))
    events = ctx.events
    assert events is not None
    path = _path(ctx, node)
    runs = [_start(ctx, node, value, path) for value in inputs]
    try:
        outputs = impl(node, inputs, enter_run(ctx, node, runs[0][0]))
    except BaseException as exc:
        for _, ids, _ in runs:
            events.emit("on_chain_error", (exc,), ids, path)
        raise
    for (_, ids, _), output in zip(runs, outputs, strict=False):
        events.emit("on_chain_end", (output,), ids, path)
    return list(outputs)


def run_transform(node: Any, impl: Callable[..., Any], chunks: Iterator[Any], ctx: RunContext) -> Iterator[Any]:
    """A streamed run: its input is known at the end (``defers_inputs``, as LangChain reports it); its
    chunks are ``STREAM_EVENT``s when someone wants them; the end carries the added-up output and input."""
    if not node.reports_run():
        yield from impl(node, chunks, ctx)
        return
    from ..runnables.chunks import NOTHING, add_chunk

    events = ctx.events
    assert events is not None
    # the first input chunk before the run starts, as LangChain does: the step that feeds this one starts
    # (and may fail) first
    chunks = iter(chunks)
    first = next(chunks, NOTHING)
    path = _path(ctx, node)
    run_id, ids, _ = _start(ctx, node, {"input": ""}, path, defers_inputs=True)
    seen: list[Any] = [None]

    def tapped() -> Iterator[Any]:
        if first is not NOTHING:
            seen[0] = first
            yield first
        for chunk in chunks:
            seen[0] = add_chunk(seen[0], chunk)
            yield chunk

    output: Any = None
    named = {**ids, "name": ctx.config.get("run_name") or node.run_name(),
             "metadata": dict(ctx.config.get("metadata") or {})}
    try:
        for chunk in impl(node, tapped(), enter_run(ctx, node, run_id)):
            output = add_chunk(output, chunk)
            if events.streams:
                events.emit(STREAM_EVENT, (chunk,), named, path)
            yield chunk
    except BaseException as exc:
        events.emit("on_chain_error", (exc,), {**ids, "inputs": seen[0]}, path)
        raise
    events.emit("on_chain_end", (output,), {**ids, "inputs": seen[0]}, path)


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
