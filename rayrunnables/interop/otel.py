"""OpenTelemetry spans from run events: one span per step run, wherever it ran (the ``[otel]`` extra).

``chain.invoke(x, {"callbacks": [OpenTelemetryTracer()]})``: each run of a step becomes a span named by
its step path (``step 1 > parallel['a'] > lambda 'f'``; a LangChain run inside an opaque step by its run
name), parented as the runs are, the root under the caller's current span. Steps that ran in a Ray worker
or an executor's process are recorded there and their spans made here, with the times and the process id
recorded where they ran (attribute ``process.pid``), so one trace shows the whole chain across workers
and only the caller needs an exporter.

The trace context travels with the work: the caller's trace id goes in the task payload, each run gets
its span id where it starts, and runs there with that span as OpenTelemetry's current one. So a span
the step itself makes in a worker (an instrumented HTTP or LLM client, with the worker's own exporter)
is the child of the step's span, which this tracer then makes here with that same id. That needs the
SDK's tracer (its ``id_generator``); with another tracer the spans are made, ids not planned.

Only ``opentelemetry-api`` is imported; the SDK, its exporter and sampling are the caller's choice.
"""

from __future__ import annotations

import threading
from typing import Any
from uuid import UUID

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

__all__ = ["OpenTelemetryTracer"]

_STARTS = ("on_chain_start", "on_chat_model_start", "on_llm_start", "on_tool_start", "on_retriever_start")
_ENDS = ("on_chain_end", "on_llm_end", "on_tool_end", "on_retriever_end")
_ERRORS = ("on_chain_error", "on_llm_error", "on_tool_error", "on_retriever_error")


class OpenTelemetryTracer:
    """A run-event consumer (``on_run_event``) that turns runs into spans.

    Reusable across calls: a run whose parent is not one of its open spans (a call's root) is parented
    under the span current when its start is delivered, which is the caller's (events are replayed in
    the calling thread).
    """

    def __init__(self, tracer_provider: Any = None, tracer_name: str = "rayrunnables") -> None:
        self._tracer = trace.get_tracer(tracer_name, tracer_provider=tracer_provider)
        self._spans: dict[UUID, Any] = {}
        self._lock = threading.Lock()
        generator = getattr(self._tracer, "id_generator", None)  # the SDK's tracer; not the API's no-op one
        self._ids = _PlannedIds(generator) if generator is not None else None
        if self._ids is not None:
            self._tracer.id_generator = self._ids  # type: ignore[attr-defined]

    def plan_trace(self) -> int | None:
        """At the call, in the caller: the trace its runs belong to (the current span's, else a new one),
        sent with the work so each run's span context is known where it runs."""
        if self._ids is None:
            return None
        current = trace.get_current_span().get_span_context()
        return current.trace_id if current.is_valid else int(self._ids.fallback.generate_trace_id())

    def on_run_event(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], meta: tuple[Any, ...]) -> None:
        run_id = kwargs.get("run_id")
        if not isinstance(run_id, UUID):
            return
        when, path, pid = meta[0], meta[1], meta[2]
        if method in _STARTS:
            name = _run_name(method, args, kwargs)
            with self._lock:
                parent = self._spans.get(kwargs.get("parent_run_id"))  # type: ignore[arg-type]
            parent_context = trace.set_span_in_context(parent) if parent is not None else otel_context.get_current()
            planned = meta[4] if len(meta) > 4 else None
            if planned is not None and self._ids is not None:
                self._ids.plan(planned)
            try:
                span = self._tracer.start_span(
                    path or name, context=parent_context, start_time=when,
                    attributes={"rayrunnables.run_name": name, "rayrunnables.run_id": str(run_id),
                                "rayrunnables.step_path": path, "process.pid": pid,
                                "rayrunnables.tags": [str(t) for t in kwargs.get("tags") or []]},
                )
            finally:
                if self._ids is not None:
                    self._ids.plan(None)
            with self._lock:
                self._spans[run_id] = span
            return
        if method in _ENDS or method in _ERRORS:
            with self._lock:
                span = self._spans.pop(run_id, None)
            if span is None:
                return
            if method in _ERRORS:
                error = args[0] if args else kwargs.get("error")
                if isinstance(error, BaseException):
                    span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            span.end(end_time=when)


class _PlannedIds:
    """The tracer's id generator, giving the ids a run was given where it started (this thread's plan),
    else the generator's own."""

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback
        self._plan = threading.local()

    def plan(self, ids: tuple[int, int] | None) -> None:
        self._plan.ids = ids

    def generate_span_id(self) -> int:
        ids = getattr(self._plan, "ids", None)
        return ids[1] if ids else int(self.fallback.generate_span_id())

    def generate_trace_id(self) -> int:
        ids = getattr(self._plan, "ids", None)
        return ids[0] if ids else int(self.fallback.generate_trace_id())

    def __getattr__(self, name: str) -> Any:  # the rest of the generator's interface (is_trace_id_random...)
        return getattr(self.fallback, name)


def _run_name(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    name = kwargs.get("name")
    if name:
        return str(name)
    serialized = kwargs.get("serialized") or (args[0] if args else None) or {}
    if isinstance(serialized, dict):
        return str(serialized.get("name") or (serialized.get("id") or [method[3:-6]])[-1])
    return method[3:-6]
