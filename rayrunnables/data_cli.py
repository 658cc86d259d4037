"""``rayrunnables run`` on Ray Data: the driver plans, the cluster reads, runs and writes.

The driver never holds a document: it lists the input files, starts one Ray Data pipeline (read ->
the chain in ``map_batches`` -> shards written and committed by the workers), and sums the per-batch
counts the workers send back. Its memory therefore does not grow with the number of documents; with
``--resume`` neither: the readers skip what each file's markers hold, and the driver lists names only
(``shardlog``).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from .runnables.base import Runnable
from .usage import ItemUsageCounter, UsageCounter

if TYPE_CHECKING:
    from .datafiles import ChainFiles

__all__ = ["run_data", "wants_data_engine", "echo_usage"]


def wants_data_engine(inputs: tuple[str, ...]) -> bool:
    """Several inputs, a folder, a glob, a URI or a Parquet file: the data engine; one JSON Lines file
    or standard input: the driver engine."""
    import os

    if len(inputs) != 1:
        return True
    path = inputs[0]
    if path == "-":
        return False
    return "://" in path or any(c in path for c in "*?[") or os.path.isdir(path) or path.endswith(".parquet")


def run_data(
    chain: Runnable[Any, Any], inputs_given: tuple[str, ...], output: str, errors: str | None, address: str | None,
    id_field: str | None, resume: bool, chunk_size: int | None, output_format: str, concurrency: int | None,
    progress: bool, setup_error: type[click.ClickException], counter: UsageCounter | None = None,
    cache: str | None = None,
) -> int:
    """Run the pipeline; return the exit status (0 all ok, 1 some failed). Set-up failures raise ``setup_error``.

    ``counter``: the workers count their batches' model tokens (each item's too, for an ``ItemUsageCounter``)
    and the driver adds them into it; the totals are printed at the end. ``cache``: the store of the cached
    steps that have none of their own (``--cache``)."""
    from .datafiles import USAGE_COLUMN, ChainFiles, ShardJob, Shards, resolve_inputs
    from .shardlog import CommitLog

    out, errs = Shards(output), Shards(errors or output)
    out_prefix, err_prefix = ("part-",), ("errors-",)
    log = CommitLog(out.fs, out.root)
    done = 0
    try:  # everything that can be refused is refused before Ray starts
        inputs = resolve_inputs(inputs_given)
        for shards in (out, errs):
            shards.make()
        existing = out.files(out_prefix) + errs.files(err_prefix)
        if (existing or log.exists()) and not resume:
            raise setup_error(f"{output}: already holds shards ({len(existing)}): add --resume to finish that "
                              "run, or give an empty folder")
        if resume and existing and not log.exists():  # never delete shards this version did not commit
            raise setup_error(f"{output}: holds shards but no commit log ({log.log}): written by an older "
                              "rayrunnables, so --resume cannot tell which are whole; give an empty folder")
        if resume:
            done = tidy(log, out, errs)
    except (OSError, ValueError) as exc:
        raise setup_error(str(exc)) from None

    from . import data as rr_data
    from .backends import get_backend
    from .errors import BackendError, UnpicklableStepError

    run_id = time.strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:6]
    try:
        get_backend("ray", address=address).ensure_started()  # type: ignore[attr-defined]
        import ray

        cpus = ray.cluster_resources().get("CPU", 1)
        rr_data.warm_workers(int(cpus))
        rr_data.prepare(chain)
        source = ChainFiles(inputs, log, id_field, resume, run_id=run_id)
    except (BackendError, UnpicklableStepError) as exc:
        raise setup_error(f"{type(exc).__name__}: {exc}") from None
    except (OSError, ValueError) as exc:
        raise setup_error(str(exc)) from None
    usage = None if counter is None else "items" if isinstance(counter, ItemUsageCounter) else "totals"
    if chunk_size is None:
        chunk_size = default_batch(source.estimate_rows(), cpus)
    job = ShardJob(chain, id_field, out, errs, output_format, run_id, usage, cache, batch_rows=chunk_size)
    source.rows_per_block = chunk_size  # a block is never bigger than a batch: each can go to another task
    fused = fuses(source, cpus)
    # The fused stage sends the driver counts only (the workers write the shards), so there is nothing in the
    # object store for Ray Data's per-operator reservation to protect, and that reservation held the second
    # CPU idle: it dispatched a task only when one ended (the second ~2 s after the first, then ~0.1 s of idle
    # CPU after every task). Without it, at most ``tasks_queued`` tasks wait in Ray's queue and a CPU that
    # finishes one starts the next at once.
    settings: dict[str, Any] = {"enable_progress_bars": progress, "print_on_execution_start": progress}
    if fused:
        settings["op_resource_reservation_enabled"] = False
    args = rr_data.map_batches_args(chain, job, concurrency, None,
                                    tasks_queued=tasks_queued(cpus) if fused else None)
    counts = dict.fromkeys(("ok", "failed", "malformed"), 0)
    try:
        with data_context(**settings):
            for batch in read_and_map(source, args, fused).iter_batches(batch_size=None, batch_format="pyarrow"):
                for key in counts:
                    counts[key] += sum(batch.column(key).to_pylist())
                if counter is not None:
                    for by_model in batch.column(USAGE_COLUMN).to_pylist():
                        counter.merge(json.loads(by_model))
    except KeyboardInterrupt:
        echo_usage(counter)
        click.echo(f"interrupted: {_counts(counts)}; finish with --resume", err=True)
        return 130
    except Exception as exc:
        echo_usage(counter)
        raise click.ClickException(f"run stopped ({type(exc).__name__}: {exc}); {_counts(counts)}; "
                                   "finish with --resume") from None
    tidy(log, out, errs)  # a retried batch may have left an attempt that lost, or one that never committed
    echo_usage(counter)
    click.echo(_counts(counts) + (f"; {done:,} already done" if resume else ""), err=True)
    return 1 if counts["failed"] else 0


@contextlib.contextmanager
def data_context(**settings: Any) -> Iterator[None]:
    """Ray Data's settings for this run only: the process's ``DataContext`` is shared (a library caller's, a
    test session's), so what the run changes is put back when it ends."""
    import ray.data

    context = ray.data.DataContext.get_current()
    before = {name: getattr(context, name) for name in settings}
    for name, value in settings.items():
        setattr(context, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(context, name, value)


def default_batch(rows: int | None, cpus: float, most: int = 10_000, least: int = 100) -> int:
    """Rows per batch (and shard) when ``--chunk-size`` is not given: 10,000, or fewer when the run is small, so
    that every CPU gets about 4 batches. With one batch per CPU or fewer, a core waits as soon as the batches
    are uneven or one starts late (8 files of 2,500 documents were 2 batches of 10,000 on 2 CPUs)."""
    if not rows:
        return most
    return max(least, min(most, -(-rows // max(1, int(cpus) * 4))))


def tidy(log: Any, out: Any, errs: Any) -> int:
    """Delete what no trusted marker names (shards of writers that died before committing, attempts that lost,
    a killed local writer's temporary files); return how many items the trusted markers hold."""
    scan = log.scan()
    for path in scan.superseded:
        log.fs.delete_file(path)
    out.tidy(("part-",), scan.trusted)
    errs.tidy(("errors-",), scan.trusted)
    return int(scan.done)


def echo_usage(counter: UsageCounter | None) -> None:
    """The run's token totals on stderr, when any model call reported usage (both engines)."""
    line = counter.summary() if counter is not None else None
    if line:
        click.echo(line, err=True)


def _counts(counts: dict[str, int]) -> str:
    malformed = f" ({counts['malformed']:,} malformed lines)" if counts["malformed"] else ""
    return f"{counts['ok']:,} ok, {counts['failed']:,} failed{malformed}"


def fuses(source: ChainFiles, cpus: float) -> bool:
    """Whether the read and the chain can be one Ray Data stage (``read_and_map``)."""
    return len(source._paths()) >= 2 * cpus


def tasks_queued(cpus: float) -> int:
    """How many fused tasks may be submitted at once: two per CPU, so a CPU that ends a task finds the next
    already queued, and Ray's queue stays short however many files there are."""
    return max(2, 2 * int(cpus))


def read_and_map(source: ChainFiles, args: dict[str, Any], fused: bool) -> Any:
    """The read and the chain as one Ray Data stage where the files allow it (``fused``): each task then reads
    its file, runs the chain on each block (one block, one batch: no ``batch_size`` is given, the reader cuts
    blocks of the batch's size) and writes the shards, with no block going through the object store between
    them.

    Ray Data fuses a read with the map after it only when the map asks for no batch size and no read task's
    output is split further, and it splits outputs when there are fewer read tasks than twice the CPUs. So
    with at least that many files, one read task per file; with fewer, Ray Data's split (two stages, the
    chain's tasks fed with the split blocks) keeps every CPU busy instead."""
    import ray.data

    if fused:
        # a map's task cap fuses with a read only when the read has the same cap; an actor pool's concurrency
        # is its size, which fuses with an uncapped read
        cap = None if "fn_constructor_kwargs" in args else args.get("concurrency")
        return ray.data.read_datasource(source, override_num_blocks=len(source._paths()),
                                        concurrency=cap).map_batches(**args)
    return ray.data.read_datasource(source).map_batches(**{**args, "batch_size": source.rows_per_block})
