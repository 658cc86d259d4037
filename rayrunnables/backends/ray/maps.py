"""A ``.map()`` inside a chain on Ray: its list cut into chunk tasks (by the driver, or by a fan-out task
beside a list an earlier task computed), their outputs gathered in order. A chunk lost with its process
is run again through the one scheduler, which splits it until the item that kills its process is alone:
only that item fails, with the map's step path and its index.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import RayTaskError

from ...context import RunContext
from ...engine.events import Buffer
from ...engine.scheduler import iter_batch
from ...protocols import ContextState
from ..portable import raise_portable
from .chunks import RayChunkRunner
from .failures import is_lost
from .pending import rebuild
from .services import WORKER_SERVICES
from .tasks import cancel_pending, convert, make_context, pack, run_list_task
from .worker import interruptible

__all__ = ["map_chunk_size", "map_chunks", "run_fanout_task", "rerun_lost", "gather_map"]


def map_chunk_size(n_items: int, parallelism: int) -> int:
    """Items per chunk task of a ``.map()`` inside a chain: enough chunks to spread over the cluster."""
    return math.ceil(n_items / max(1, min(n_items, 4 * max(1, parallelism))))


def map_chunks(
    each: Any, items: list[Any], state: ContextState, options: dict[str, Any], parallelism: int, pool: Any = None
) -> tuple[list[Any], list[Any]]:
    """Submit one task per chunk of ``items`` (sized to spread over the cluster): the refs of their
    outputs, and of the run events they recorded (none when nobody records)."""
    if not items:
        return [], []
    size = map_chunk_size(len(items), parallelism)
    inner = state._replace(path=(*state.path, "map"))
    name = "/".join((*state.path, "map", each.bound.label()))
    node_ref = ray.put(each.bound)
    chunks = [pack(list(enumerate(items[i : i + size], start=i))) for i in range(0, len(items), size)]
    returns = {"num_returns": 2} if state.recording else {}
    refs = []
    if pool is not None:  # a stateful step: its pool serves the chunks, spread evenly
        for chunk in chunks:
            index = pool.pick()
            refs.append(pool.actors[index].run_list.options(**returns).remote(node_ref, chunk, inner))
            pool.done(index)
    else:
        refs = [run_list_task.options(name=name, **options, **returns).remote(node_ref, chunk, inner)
                for chunk in chunks]
    if state.recording:
        return [value for value, _ in refs], [events for _, events in refs]
    return refs, []


def rerun_lost(
    each: Any,
    items: list[tuple[int, Any]],  # consecutive indexes
    state: ContextState,
    options: dict[str, Any],
    parallelism: int,
    pool: Any = None,
    replace: Callable[[str], Any] | None = None,
) -> tuple[list[Any], list[Any]]:
    """Run again, through the one scheduler, the items of a chunk of a ``.map()`` inside a chain (``each``)
    that was lost with its process: it splits them until the item that kills its process is alone, so the
    others get their values, returned in order with the run events recorded (when someone records); that
    item's ``WorkerLost`` is raised, naming the map's step path and the item's index."""
    node = each.bound
    ctx = RunContext.from_state(state._replace(path=(*state.path, "map")), WORKER_SERVICES)
    runner = RayChunkRunner(node, pool, parallelism, options=options, replace=replace)
    first = items[0][0] if items else 0
    out: list[Any] = [None] * len(items)
    values = [value for _, value in items]
    for index, value in iter_batch(runner, node, values, ctx, return_exceptions=False, ordered=False, first=first):
        out[index - first] = value
    events = ctx.events.take() if isinstance(ctx.events, Buffer) else []
    return out, events


def gather_map(
    refs: list[Any],
    event_refs: list[Any],
    each: Any,
    items: list[Any],
    size: int,
    state: ContextState,
    options: dict[str, Any],
    parallelism: int,
) -> tuple[list[Any], list[Any]]:
    """The outputs of a ``.map()``'s chunk tasks (``size`` items each), in order, and their run events
    (``event_refs``, when recorded). A chunk lost with its process is run again (``rerun_lost``): only the
    item that kills its process fails. A user's exception is raised as Ray gives it."""
    outputs: list[Any] = []
    events: list[Any] = []
    for n, ref in enumerate(refs):
        try:
            outputs.extend(ray.get(ref))
            if event_refs:
                events.extend(ray.get(event_refs[n]))
        except Exception as err:
            if not is_lost(err):
                raise
            start = n * size
            values, found = rerun_lost(each, list(enumerate(items[start : start + size], start)), state, options,
                                       parallelism)
            outputs.extend(values)
            events.extend(found)
    return outputs, events


@ray.remote
def run_fanout_task(
    each: Any, state: ContextState, options: dict[str, Any], recipe: Any, *values: Any
) -> Any:
    """A ``.map()`` over a list an earlier task computed: split here, beside the data, not in the driver."""
    interruptible()
    items = each.check_input(rebuild(recipe, values), make_context(state))
    parallelism = int(ray.cluster_resources().get("CPU", 1))
    refs, event_refs = map_chunks(each, items, state, options, parallelism)
    try:  # a chunk lost with its process is run again, split: only the item that kills it fails (``failures``)
        outputs, events = gather_map(refs, event_refs, each, items, map_chunk_size(len(items), parallelism), state,
                                     options, parallelism)
    except RayTaskError as err:
        cancel_pending(refs)
        raise_portable(convert(err))  # rebuilt here from another worker: made portable for the next trip
    except Exception as exc:  # an item's error met re-running a lost chunk, or the lost item's WorkerLost
        cancel_pending(refs)
        raise_portable(exc)
    except BaseException:
        cancel_pending(refs)
        raise
    return (outputs, events) if state.recording else outputs


