"""How a node's call becomes a run: start, then end or error, recorded into the run context's recorder.

``Runnable`` wraps each run method of its classes with these (``runnables.base``); they only run when
someone records (``rayrunnables.engine.events`` has the records, their transport and their delivery).
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..engine.events import STREAM_EVENT, RunSink
from .chunks import NOTHING, add_chunk

if TYPE_CHECKING:
    from ..context import RunContext

__all__ = ["run_invoke", "run_batch_items", "run_transform", "enter_run", "position_tags", "report_run"]

# keys a run's children do not inherit: they name or identify that one run
_RUN_ONLY_KEYS = ("run_name", "run_id")
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
        return [f"map:key:{_unrepr(key)}"]
    if default:
        return ["branch:default"]
    return [f"{'condition' if condition else 'branch'}:{int(branch) + 1}"]


def _unrepr(text: str) -> str:
    """The string whose ``repr`` is ``text`` (a branch key). Not ``ast.literal_eval``: CPython 3.11's AST
    constructor keeps its recursion depth per interpreter, so two threads parsing at once can fail with
    ``SystemError: AST constructor recursion depth mismatch`` (gh-106905), and branches run in threads."""
    if len(text) < 2 or text[0] not in "'\"" or text[-1] != text[0]:
        return text
    # non-Latin-1 characters stand literally in a repr: escape them so unicode_escape reads them back
    return text[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")


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


def report_run(ctx: RunContext, node: Any, input: Any, output: Any, metadata: dict[str, Any]) -> None:
    """A run of ``node`` that did not call it (its output came from the cache): its start and its end, with
    ``metadata`` added to the config's (``{"cached": True, ...}``), where ``node``'s own run would be."""
    if ctx.events is None:
        return
    path = _path(ctx, node)
    _, ids, _ = _start(ctx, node, input, path, metadata={**(ctx.config.get("metadata") or {}), **metadata})
    ctx.events.emit("on_chain_end", (output,), ids, path)


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
