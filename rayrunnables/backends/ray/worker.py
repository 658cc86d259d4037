"""The one entry point for chunks of items inside a Ray worker, for tasks and actor pools alike."""

from __future__ import annotations

import signal
import threading
from typing import Any

import ray.cloudpickle as ray_pickle

from ...context import RunContext
from ...engine.inprocess import ChunkResult, run_chunk
from ...engine.process_state import STATE
from ...protocols import ContextState
from ...runnables.timeout import interrupt_on_deadline
from ..outputs import producer, sendable_outcomes, take_events, unsendable
from ..portable import portable

__all__ = ["chunk_here", "steps_here", "interruptible", "attach_events", "EVENTS_ATTR"]

#: where a failing task leaves the run events it recorded before its error (they travel with the exception)
EVENTS_ATTR = "_rayrunnables_events"


def chunk_here(node: Any, packed: bytes, ctx: RunContext, return_exceptions: bool) -> ChunkResult:
    """A chunk of ``batch``/``imap`` items; item errors come back as values with their tracebacks, and an
    output that cannot leave the worker becomes its item's error."""
    result = run_chunk(node, ray_pickle.loads(packed), ctx, return_exceptions, remote=True)
    return sendable_outcomes(result, node, ctx, return_exceptions)


def interruptible() -> None:
    """Let ``ray.cancel`` interrupt this worker's running task (once per worker process).

    Ray's non-forced cancel raises ``KeyboardInterrupt`` through Python's SIGINT handler. A driver started
    as a background job (``python job.py &``, ``nohup``) has SIGINT ignored, as POSIX shells do for
    asynchronous commands; Ray's processes inherit that, Python then installs no handler, and a cancel
    does nothing: the first failure would leave its running siblings to run to the end.
    """
    if STATE.interruptible_worker:  # done in this process already
        return
    interrupt_on_deadline()  # a worker is ours: a timed call on its main thread is stopped at its deadline
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except (ValueError, OSError):  # not the main thread after all, or no signals here
        pass


def steps_here(steps: list[tuple[tuple[str, ...], Any]], value: Any, ctx: RunContext, state: ContextState) -> Any:
    """Steps of an ``invoke`` one after the other, here (a fused task's, or a pool actor's one step): the
    last one's output, checked to be sendable, and the run events recorded when someone records. A failure
    leaves made ``portable``, carrying the run events recorded before it."""
    try:
        for path, node in steps:
            value = node._invoke(value, ctx.at(path))
        if steps:
            path, node = steps[-1]
            error = unsendable(value, producer(node, path))
            if error is not None:
                raise error
    except BaseException as exc:
        sent = portable(exc)  # rebuilt with its type in the caller's process, or an UnportableError
        attach_events(sent, take_events(ctx))  # its second return is the error too
        if sent is exc:
            raise
        raise sent from exc
    return (value, take_events(ctx) or []) if state.recording else value


def attach_events(exc: BaseException, events: list[Any] | None) -> None:
    if events:
        setattr(exc, EVENTS_ATTR, [*(getattr(exc, EVENTS_ATTR, None) or []), *events])
