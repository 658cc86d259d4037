"""What may leave a worker process: a step's output is checked before it is sent back, so one that
cannot be pickled is reported as that item's error, naming the step, instead of failing the whole
chunk inside the serializer. Used by Ray's tasks and actor pools and by the executor backend.
"""

from __future__ import annotations

from typing import Any

from ..context import RunContext
from ..engine.events import Buffer, Event
from ..engine.inprocess import ChunkResult
from ..errors import UnpicklableOutputError, attach_step
from ..runnables.sequence import RunnableSequence
from .portable import PLAIN_TYPES, cloudpickle, portable

__all__ = [
    "PLAIN_TYPES", "cloudpickle", "producer", "sendable_events", "sendable_outcomes", "take_events", "unsendable",
]

_PLAIN = frozenset(PLAIN_TYPES)


def _needs_pickle_check(value: Any, budget: list[int]) -> bool:
    """Whether ``value`` holds anything but plain data, numpy arrays and containers of them (a bounded
    look: past ``budget`` values, the rest is trusted). Plain data always pickles; the rest is tried."""
    budget[0] -= 1
    if budget[0] < 0 or type(value) in _PLAIN:
        return False
    if type(value) in (list, tuple):
        return any(_needs_pickle_check(item, budget) for item in value)
    if type(value) is dict:
        return any(_needs_pickle_check(k, budget) or _needs_pickle_check(v, budget) for k, v in value.items())
    return type(value).__module__ != "numpy"


def producer(node: Any, path: tuple[str, ...]) -> str:
    """The path of the step whose output ``node`` returns: a sequence's is its last step's."""
    parts = list(path)
    while isinstance(node, RunnableSequence) and node.steps:
        if node.name:
            parts.append(f"'{node.name}'")
        parts.append(f"step {len(node.steps)}")
        node = node.steps[-1]
    parts.append(node.label())
    return " > ".join(parts)


def unsendable(value: Any, path: str, index: int | None = None) -> UnpicklableOutputError | None:
    """The error to report if ``value`` cannot leave this worker, naming the step (and the item).

    Ray would otherwise fail while storing the task's result, with a bare ``TypeError`` naming neither,
    and lose every other item of the chunk with it."""
    if not _needs_pickle_check(value, [256]):
        return None
    try:
        cloudpickle.dumps(value)
    except Exception as exc:
        item = "" if index is None else f" for item {index}"
        error = UnpicklableOutputError(
            f"{path}: its output{item} ({type(value).__name__}) cannot be sent back from the worker: "
            f"{type(exc).__name__}: {exc}. Return plain data (or build the object where it is used)."
        )
        attach_step(error, path, index)
        return error
    return None


def sendable_events(events: list[Event]) -> list[Event]:
    """Run events as they may travel: an error they report is made ``portable``; a payload that cannot
    leave the worker (a value passed between two steps that run here, say a lock) is replaced by its type's
    name, never failing the results with it."""
    out = []
    for method, args, kwargs, meta in events:
        if any(isinstance(a, BaseException) for a in args):  # ``on_chain_error``'s error, say
            args = tuple(portable(a) if isinstance(a, BaseException) else a for a in args)
        if any(_needs_pickle_check(a, [256]) for a in (*args, kwargs.get("inputs"))):
            try:
                cloudpickle.dumps((args, kwargs))
            except Exception:
                args = tuple(_stand_in(a) for a in args)
                kwargs = {**kwargs, "inputs": _stand_in(kwargs["inputs"])} if "inputs" in kwargs else kwargs
        out.append((method, args, kwargs, meta))
    return out


def _stand_in(value: Any) -> Any:
    try:
        cloudpickle.dumps(value)
        return value
    except Exception:
        return f"<{type(value).__name__}: cannot leave the worker>"


def take_events(ctx: RunContext) -> list[Event] | None:
    """What a worker recorded for the caller (``None`` when nobody listens)."""
    return sendable_events(ctx.events.take()) if isinstance(ctx.events, Buffer) else None


def sendable_outcomes(result: ChunkResult, node: Any, ctx: RunContext, return_exceptions: bool) -> ChunkResult:
    """Outputs that cannot leave the worker become that item's error; the chunk's other results stay; item
    errors are made ``portable``; the run events recorded here go with them."""
    result.events = take_events(ctx)
    path = producer(node, ctx.path)
    outcomes = result.outcomes
    for n, (index, ok, value, tb) in enumerate(outcomes):
        if not ok:
            outcomes[n] = (index, ok, portable(value), tb)
        elif type(value) not in _PLAIN:  # plain values (most items) cost one set lookup
            error = unsendable(value, path, index)
            if error is not None:
                outcomes[n] = (index, False, error, None)
                if not return_exceptions:
                    del outcomes[n + 1 :]
                    break
    return result
