"""What runs inside Ray workers: a fused unit of steps, a chunk of items, a stream (a ``.map()``: ``maps``).

Every function here rebuilds a ``RunContext`` from plain, picklable state and then runs the nodes'
own in-process meaning, so a step computes exactly what it computes on the local backend.
"""

from __future__ import annotations

from typing import Any

import ray
import ray.cloudpickle as ray_pickle
from ray.exceptions import RayTaskError

from ...config import sendable_config
from ...context import RunContext
from ...engine.inprocess import ChunkResult, PerItem
from ...engine.sharing import freeze, isolate
from ...errors import RemoteTraceback
from ...protocols import ContextState
from ..outputs import PLAIN_TYPES, producer, take_events, unsendable
from ..portable import raise_portable
from .pending import rebuild
from .services import WORKER_SERVICES
from .worker import chunk_here, interruptible, steps_here

__all__ = [
    "convert",
    "pack",
    "raise_converted",
    "run_chunk_task",
    "run_task",
    "stream_task",
    "RecordedEvents",
]



def make_context(state: ContextState, path: tuple[str, ...] | None = None) -> RunContext:
    return RunContext.from_state(state, WORKER_SERVICES, path)


def convert(err: BaseException) -> BaseException:
    """Ray's wrapper off, the user's exception back, the remote traceback kept as ``__cause__``."""
    if isinstance(err, RayTaskError) and isinstance(err.cause, BaseException):
        cause = err.cause
        if cause.__cause__ is None:
            cause.__cause__ = RemoteTraceback(getattr(err, "traceback_str", str(err)))
        return cause
    return err


def raise_converted(err: BaseException) -> None:
    """Raise the user's exception from a Ray error, keeping the remote traceback as ``__cause__``."""
    exc = convert(err)
    raise exc from exc.__cause__


@ray.remote
def run_task(steps: list[tuple[tuple[str, ...], Any]], state: ContextState, recipe: Any, *values: Any) -> Any:
    """A fused unit: the steps of a sequence segment, one after the other, in this worker."""
    interruptible()
    return steps_here(steps, rebuild(recipe, values), make_context(state), state)


def pack(items: list[tuple[int, Any]]) -> bytes:
    """Items as one pickle: Ray would otherwise msgpack every ``(index, value)`` tuple one by one.

    One pickle keeps shared references shared, so an object that appears twice in a chunk is copied
    here; every other item is private once unpickled and the worker need not copy it again.
    """
    seen: set[int] = set()

    def unshared(value: Any) -> Any:
        if id(value) in seen:
            value = isolate(value)
        seen.add(id(value))
        return value

    private = []
    for index, value in items:
        if not isinstance(value, PLAIN_TYPES):
            if type(value) is PerItem:  # its own config, less what stays in the driver (as ``state`` does)
                inner = value.value if isinstance(value.value, PLAIN_TYPES) else unshared(value.value)
                value = PerItem(sendable_config(value.config), inner)
            else:
                value = unshared(value)
        private.append((index, value))
    return ray_pickle.dumps(private)


@ray.remote
def run_chunk_task(node: Any, packed: bytes, state: ContextState, return_exceptions: bool) -> ChunkResult:
    """A chunk of ``batch``/``imap`` items; item errors come back as values with their tracebacks."""
    interruptible()
    return chunk_here(node, packed, make_context(state), return_exceptions)


@ray.remote(num_returns="streaming")
def stream_task(node: Any, state: ContextState, input: Any) -> Any:
    """A streamed chain in one worker: its chunks go back through Ray's streaming generator as they are
    produced (a chunk that cannot leave the worker is an error naming the step)."""
    interruptible()
    path = producer(node, state.path)
    ctx = make_context(state)
    try:
        for chunk in node._stream(freeze(input), ctx):
            error = unsendable(chunk, path)
            if error is not None:
                raise error
            events = take_events(ctx)
            if events:  # the run events so far travel on the same channel, ahead of the chunk they led to
                yield RecordedEvents(events)
            yield chunk
    except Exception as exc:
        raise_portable(exc)
    finally:
        events = take_events(ctx)
        if events:
            yield RecordedEvents(events)


class RecordedEvents(list):  # type: ignore[type-arg]
    """Run events on a stream's channel (never a chunk of the stream)."""
