"""Chains on Ray Data: ``apply(chain, dataset)`` and what every Ray Data worker does with a batch.

Ray Data already is the engine for datasets too big for one process (parallel readers and writers,
streaming execution, backpressure, actor pools), so a chain joins it as one ``map_batches`` stage
rather than as a second engine beside it. Inside a worker the chain runs with the in-process engine
(``{"backend": "local"}``): the worker already is a Ray process, and one Ray task per item would only
add hand-off cost. Plain chains run as Ray Data tasks; a chain with ``RunnableActor`` steps runs in an
actor pool (one instance of each stateful step per actor, built once), as big as its largest
``pool_size``; a vectorized step gets the whole batch in one call, alone or inside a sequence.

Ray is imported inside the functions only: ``import rayrunnables`` never imports Ray or Ray Data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import validate_config
from .engine.steps import walk
from .errors import step_path_of
from .records import error_record
from .runnables.actor import RunnableActor
from .runnables.base import Runnable, coerce_to_runnable
from .runnables.sequence import RunnableSequence

if TYPE_CHECKING:
    import pyarrow
    import ray.data

__all__ = ["apply", "run_values", "map_batches_args"]

ERROR_MODES = ("column", "raise", "dataset")
_RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory", "resources")


def run_values(chain: Runnable[Any, Any], values: list[Any], callbacks: list[Any] | None = None,
               parents: list[Any] | None = None, cache: Any = None) -> list[Any]:
    """The chain on every value, in this process: each output, or the item's exception, in input order.

    A vectorized chain gets all the values as one chunk (one call); any other chain runs through the
    in-process scheduler, which runs computing steps inline and overlaps waiting ones in threads.
    ``callbacks``: handlers of the run's events (a token counter); ``parents``: a run id per value, under
    which that item's runs nest (so a handler can tell items apart; a vectorized step's call serves many
    items and nests under none); ``cache``: the store of the cached steps that have none of their own
    (``config["cache"]``).
    """
    outputs: list[Any] = [None] * len(values)
    if not values:
        return outputs
    _share_pacers()
    config: dict[str, Any] = {"backend": "local"}
    if cache is not None:
        config["cache"] = cache
    if callbacks:
        config["callbacks"] = callbacks
    if isinstance(chain, RunnableSequence) and not chain.vectorized and any(s.vectorized for s in chain.steps):
        return _run_by_step(chain, values, config, parents)
    chunk = len(values) if chain.vectorized else None
    items = values if parents is None or chain.vectorized else _per_item(values, parents)
    for index, output in chain.imap_as_completed(items, config, return_exceptions=True, chunk_size=chunk):
        outputs[index] = output
    return outputs


def _per_item(values: list[Any], parents: list[Any]) -> list[Any]:
    from .engine.inprocess import PerItem

    return [PerItem.nested(value, parent) for value, parent in zip(values, parents, strict=True)]


def _run_by_step(chain: RunnableSequence[Any, Any], values: list[Any], config: dict[str, Any],
                 parents: list[Any] | None = None) -> list[Any]:
    """A sequence holding a vectorized step, one step at a time over the whole batch: the vectorized step
    gets every item still alive in one call (``embed`` over 1,024 texts at once), the others run item by
    item as usual. An item that fails at a step keeps its error (named by its full step path) and goes no
    further; the others go on."""
    from .engine.events import RunSink, recorder_for
    from .engine.inprocess import ThreadChunkRunner, local_root_context
    from .engine.scheduler import iter_batch

    outputs: list[Any] = list(values)
    alive = list(range(len(values)))
    if config.get("callbacks"):  # the run's handlers hear every step's runs (as ``imap`` would record them)
        config = {**config, "callbacks": RunSink(*recorder_for(config))}
    ctx = chain.scope(local_root_context(config))
    runner = ThreadChunkRunner()
    for n, step in enumerate(chain.steps, 1):
        inputs = [outputs[i] for i in alive]
        if parents is not None and not step.vectorized:
            inputs = _per_item(inputs, [parents[i] for i in alive])
        survivors: list[int] = []
        for position, output in iter_batch(runner, step, inputs, ctx.child(f"step {n}"), return_exceptions=True,
                                           ordered=False, chunk_size=len(inputs) if step.vectorized else None):
            outputs[alive[position]] = output
            if not isinstance(output, Exception):
                survivors.append(alive[position])
        alive = sorted(survivors)
        if not alive:
            break
    return outputs


def map_batches_args(
    chain: Runnable[Any, Any], job: Any, concurrency: int | None = None, batch_size: int | None = None,
    tasks_queued: int | None = None,
) -> dict[str, Any]:
    """``map_batches`` arguments that run ``job`` (a callable taking a batch): tasks for plain chains, an
    actor pool of up to the largest ``pool_size`` when the chain holds ``RunnableActor`` steps, and the
    most of every step's ``num_cpus``/``num_gpus``/``memory``/``resources``. ``tasks_queued``: the most tasks
    in flight when ``concurrency`` is not given (tasks only)."""
    from .backends.ray.planner import plan, task_options

    resources = {k: v for k, v in task_options(plan(chain)).items() if k in _RESOURCE_KEYS}
    pools = [node.pool_size for node in walk(chain) if isinstance(node, RunnableActor)]
    args: dict[str, Any] = {"batch_size": batch_size, "batch_format": "pyarrow", **resources}
    if pools:
        # an autoscaling pool (1 to the largest pool_size): a fixed pool that takes every CPU would leave none
        # for the reads that feed it, and Ray Data would wait forever
        args.update(fn=_PoolActor, fn_constructor_kwargs={"job": job}, concurrency=concurrency or (1, max(pools)))
    else:
        args.update(fn=job, concurrency=concurrency or tasks_queued)
    return args


class _PoolActor:
    """A Ray Data actor: holds the job, so stateful steps stay built between batches."""

    def __init__(self, job: Any) -> None:
        self.job = job

    def __call__(self, batch: Any) -> Any:
        return self.job(batch)


def prepare(chain: Runnable[Any, Any]) -> None:
    """Ship the user's modules to the workers and refuse, by step, a chain that cannot be sent; start the
    run's one pacer per rate-limit key, which every worker reaches (``_share_pacers``)."""
    from .backends.ray.services import start_limiters
    from .backends.ray.shipping import check_sendable

    check_sendable(chain)
    start_limiters(chain)


def warm_workers(cpus: int, most: int = 64) -> None:
    """Start this job's worker processes now, one per CPU (up to ``most``), without waiting for them, and have
    each import what a batch needs (Ray Data, pyarrow, this package).

    Workers belong to a job, so every ``rayrunnables run`` starts its own, and Ray starts one only when a
    task is waiting for it: the first batches would wait for a process start and those imports (together
    1-2 s here) after the driver's planning. Started right after connecting, they happen while the driver
    imports Ray Data, lists the files and plans. The function is defined here, so it is sent by value: a
    worker that cannot import this package still runs it (and the batch then reports why)."""
    import ray

    def start() -> None:
        import importlib

        try:
            importlib.import_module("rayrunnables.datafiles")
        except ImportError:
            pass

    starter = ray.remote(num_cpus=1, max_retries=0)(start).options(name="rayrunnables: start a worker")
    for _ in range(min(cpus, most)):
        starter.remote()


def _share_pacers() -> None:
    """In a Ray worker, a rate-limited step's pace is the run's (the driver's limiter actor), not this
    process's own: every worker holds the same requests and tokens per minute together."""
    from .engine.process_state import STATE

    if STATE.services.find_pacer is None:
        import ray

        if ray.is_initialized():
            from .backends.ray.services import find_pacer

            STATE.services.find_pacer = find_pacer


class ApplyJob:
    """The batch function of ``apply``: the input table with an output column and an error column added."""

    def __init__(self, chain: Runnable[Any, Any], input_column: str | None, output_column: str,
                 error_column: str, errors: str, cache: Any = None) -> None:
        self.chain, self.input_column, self.output_column = chain, input_column, output_column
        self.error_column, self.errors, self.cache = error_column, errors, cache

    def __call__(self, batch: pyarrow.Table) -> dict[str, Any]:
        import numpy as np

        if self.input_column is None:
            values = batch.to_pylist()
        else:
            values = batch.column(self.input_column).to_pylist()
        outputs = run_values(self.chain, values, cache=self.cache)
        out_col = np.empty(len(values), dtype=object)
        err_col = np.empty(len(values), dtype=object)
        for n, output in enumerate(outputs):
            if isinstance(output, Exception):
                if self.errors == "raise":
                    raise output
                err_col[n] = _apply_error(n, output, self.chain)
            else:
                out_col[n] = output
        ours = (self.output_column, self.error_column)
        columns: dict[str, Any] = {name: batch.column(name).to_numpy(zero_copy_only=False)
                                   for name in batch.column_names if name not in ours}
        columns[self.output_column] = out_col
        if self.errors != "raise":
            columns[self.error_column] = err_col
        return columns


def _apply_error(n: int, exc: Exception, chain: Runnable[Any, Any]) -> dict[str, Any]:
    record = error_record(n, None, step_path_of(exc) or chain.label(), exc)
    del record["index"], record["id"]  # the row is the item: its own columns say which one
    return record


def apply(
    chain: Any,
    dataset: ray.data.Dataset,
    *,
    input_column: str | None = None,
    output_column: str = "output",
    errors: str = "column",
    error_column: str = "error",
    concurrency: int | None = None,
    batch_size: int | None = 1024,
    cache: Any = None,
) -> Any:
    """``dataset`` with ``chain`` applied to every row, lazily, as one ``map_batches`` stage.

    - ``input_column``: the chain gets that column's value; ``None`` (default) gives it the whole row as a dict.
    - ``output_column``: where each row's output goes (the row's other columns are kept).
    - ``errors``: ``"column"`` (default): a failed row gets ``None`` as output and, in ``error_column``, a dict
      ``{"step", "error_type", "message", "traceback"}`` (``None`` for rows that succeeded);
      ``"raise"``: the first failure stops the dataset's execution (Ray Data raises it);
      ``"dataset"``: returns ``(outputs, errors)``, two datasets split from one *materialized* run (kept in
      the object store, which spills to disk): the rows that succeeded, without the error column, and the
      rows that failed, with it. For a streaming run over data bigger than the object store, keep
      ``"column"`` and filter.
    - ``concurrency``: Ray Data's, for the stage (default: Ray Data's choice for tasks, the largest
      ``pool_size`` for a chain with ``RunnableActor`` steps).
    - ``batch_size``: rows per batch (a vectorized chain gets each batch in one call); ``None``: whole blocks.
    - ``cache``: the store (a URI: ``s3://...``, ``redis://...``, or a folder every worker reaches) of the steps
      that have ``with_cache()`` without one, as ``config["cache"]`` on the other engines.
    """
    if errors not in ERROR_MODES:
        raise ValueError(f"errors must be one of {ERROR_MODES}, got {errors!r}")
    runnable = coerce_to_runnable(chain)
    prepare(runnable)
    if cache is not None:
        validate_config({"cache": cache}, "apply")
    job = ApplyJob(runnable, input_column, output_column, error_column, errors, cache)
    args = map_batches_args(runnable, job, concurrency, batch_size)
    mapped = dataset.map_batches(**args)
    if errors != "dataset":
        return mapped
    done = mapped.materialize()
    ok = done.filter(lambda row: row[error_column] is None).drop_columns([error_column])
    failed = done.filter(lambda row: row[error_column] is not None)
    return ok, failed
