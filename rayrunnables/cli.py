"""The ``rayrunnables`` command. Built on click, which Ray already depends on (no extra install).

Exit codes: 0 every item succeeded; 1 some items failed (or the run stopped part-way: rerun with
``--resume``); 2 usage or set-up error (bad MODULE:ATTR, unreadable file, Ray unreachable); 3 failure
budget exceeded (``--max-failures``: more items failed; what finished is recorded, rerun with ``--resume``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
import uuid
from collections.abc import Iterator
from typing import IO, Any

import click

from .backends import available_backends, get_backend
from .data_cli import echo_usage, wants_data_engine
from .engine.inprocess import PerItem
from .errors import BackendError, ConfigError, FailureBudgetExceeded, UnpicklableStepError, step_path_of
from .jsonl import BadLine, IndexSet, LineWriter, ResumeError, count_lines, dumps_line, read_lines, scan_done
from .progress import Progress
from .records import error_record, output_record
from .runnables.base import Runnable
from .targets import load_target
from .usage import ItemUsageCounter, UsageCounter, reports_model_calls, zero_usage


class SetupError(click.ClickException):
    """A failure before any item could run (a file, the backend): exit status 2, like a usage error."""

    exit_code = 2


@click.group()
@click.version_option(package_name="rayrunnables")
def main() -> None:
    """Run LangChain-style chains in-process, on a local Ray, or on a Ray cluster."""


@main.command()
@click.option("--address", default=None, help="Ray address (default: start a local Ray).")
@click.option("--docs", "n_docs", default=48, show_default=True, help="Documents to embed.")
def demo(address: str | None, n_docs: int) -> None:
    """Research-agent fan-out/fan-in + CPU-heavy embeddings: in-process vs on Ray."""
    from .demo import run_demo

    run_demo(address=address, n_docs=n_docs, echo=click.echo)


@main.command()
@click.argument("target")
@click.option("--backend", default="local", type=click.Choice(available_backends()), show_default=True)
def explain(target: str, backend: str) -> None:
    """Print the plan of TARGET (MODULE:ATTR): every step, its path, options and tasks."""
    click.echo(load_target(target).explain(backend))


@main.command()
@click.argument("target")
@click.option("--input", "inputs", required=True, multiple=True, metavar="PATH",
              help="JSON Lines file; - = stdin. A folder, a glob, several --input, Parquet or a URI: the data engine.")
@click.option("--output", "output_path", required=True, metavar="PATH",
              help="Output records; - = stdout. The data engine: a folder of shards.")
@click.option("--errors", "errors_path", default=None, metavar="PATH",
              help="Error records (default: printed to stderr, and failed items are retried by --resume). "
              "The data engine: a folder of shards (default: the output folder).")
@click.option("--engine", type=click.Choice(["driver", "data"]), default=None,
              help="driver: this process reads and writes every record; data: Ray Data reads, runs and writes "
              "in the workers (default: data for a folder, a glob, several files, Parquet or a URI).")
@click.option("--output-format", type=click.Choice(["jsonl", "parquet"]), default="jsonl", show_default=True,
              help="Data engine: output shards as JSON Lines or Parquet (error shards are JSON Lines).")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Data engine: tasks or pool actors running the chain (default: Ray Data's; pool_size).")
@click.option("--backend", default=None, type=click.Choice(available_backends()),
              help="Where the chain runs (default: local; ray when --address is given).")
@click.option("--address", default=None, help="Ray address to attach to (default: start a local Ray).")
@click.option("--id-field", default=None, metavar="NAME", help="Copy this field of each input object into its records.")
@click.option("--resume", is_flag=True, help="Skip items already in the output or errors file; append.")
@click.option("--unordered", is_flag=True, help="Write outputs as they finish instead of in input order.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None,
              help="Items per task (default: adaptive; data engine: items per batch and shard, 10,000, fewer for a "
              "small run).")
@click.option("--max-in-flight", type=click.IntRange(min=1), default=None, help="Chunks running at once.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress on stderr.")
@click.option("--timeout", "timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Per item, on the whole chain: a longer item becomes a TimeoutError record.")
@click.option("--max-failures", type=click.IntRange(min=0), default=None, metavar="N",
              help="Stop once more than N items failed (exit code 3); finish with --resume.")
@click.option("--cache", "cache", default=None, metavar="URI",
              help="Where the steps that have with_cache() without a store keep their outputs: a folder, "
              "s3://bucket/prefix (any URI pyarrow opens) or redis://host:port/db (default: $RAYRUNNABLES_CACHE, "
              "else ~/.cache/rayrunnables/steps).")
@click.option("--usage", "record_usage", is_flag=True,
              help="Add each item's model tokens to its record: \"usage\": {input_tokens, output_tokens, "
              "total_tokens} (zeros when it made no model call).")
def run(
    target: str, inputs: tuple[str, ...], output_path: str, errors_path: str | None, engine: str | None,
    output_format: str, concurrency: int | None, backend: str | None, address: str | None, id_field: str | None,
    resume: bool, unordered: bool, chunk_size: int | None, max_in_flight: int | None, progress: bool,
    timeout: float | None, max_failures: int | None, record_usage: bool, cache: str | None = None,
) -> None:
    """Run TARGET (MODULE:ATTR) over every line of a JSON Lines file, or over folders of files on Ray Data.

    Each output line is {"index": i, "output": ...} (plus "id" with --id-field), i being the item's
    0-based line number; each failed item (a malformed line too) becomes an error record
    {"index", "id", "step", "error_type", "message", "traceback"} and the run goes on. Every record
    is written whole as soon as it is known, so a killed run can be finished with --resume, and then
    every item appears exactly once across the output and errors files. Blank lines are not items.

    On the data engine the records are the same, written as shard files by the workers; "index" is the
    line (or Parquet row) in its file and "id" is the --id-field value or, when there is none,
    "FILE:LINE" (counted from 1). --resume skips the ids already in complete shards.

    Tokens: when the chain holds LangChain steps (from_langchain, lazy_langchain_step) or --usage is
    given, the tokens its model calls report are counted; the totals are printed at the end (per model),
    and the progress shows tokens per second (driver engine).
    """
    if engine is None:
        engine = "data" if wants_data_engine(inputs) else "driver"
    cache = cache_store(cache)
    if engine == "data":
        if max_failures is not None:
            raise click.UsageError("--max-failures is for the driver engine")
        _run_data_engine(target, inputs, output_path, errors_path, output_format, concurrency, backend, address,
                         id_field, resume, chunk_size, max_in_flight, progress, timeout, record_usage, cache)
        return
    if len(inputs) != 1:
        raise click.UsageError("the driver engine reads one file (or -): use --engine data for several")
    if output_format != "jsonl" or concurrency is not None:
        raise click.UsageError("--output-format and --concurrency are for the data engine")
    input_path = inputs[0]
    if backend not in (None, "ray") and address:
        raise click.UsageError("--address is for --backend ray")
    if resume and output_path == "-":
        raise click.UsageError("--resume reads back the output file: --output cannot be - (stdout)")
    if errors_path == "-":
        raise click.UsageError("--errors must be a file (stderr is the default)")
    if errors_path is not None and os.path.abspath(errors_path) == os.path.abspath(output_path):
        raise click.UsageError("--errors and --output must be different files")
    chain = load_target(target)
    counter = usage_counter(chain, record_usage)
    if timeout is not None:
        chain = chain.with_timeout(timeout)

    done = IndexSet()
    if resume:
        try:
            for path in (output_path, errors_path):
                if path is not None:
                    scan_done(path, done)
        except (ResumeError, OSError) as exc:
            raise SetupError(str(exc)) from None
    with contextlib.ExitStack() as stack:
        try:
            stream: IO[bytes] = sys.stdin.buffer if input_path == "-" else stack.enter_context(open(input_path, "rb"))
            out = stack.enter_context(LineWriter(output_path, append=resume))
            errs = stack.enter_context(LineWriter(errors_path, append=resume)) if errors_path else None
            total = count_lines(input_path) - len(done) if progress and input_path != "-" else None
        except OSError as exc:
            raise SetupError(f"{exc.filename}: {exc.strerror}") from None
        if output_path == "-":  # keep stdout for records: prints of the chain (and Ray's logs) go to stderr
            stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        bar = stack.enter_context(Progress(total=total, desc="items", enabled=progress))
        job = _Job(chain, out, errs, bar, id_field, max_failures, counter)
        config: dict[str, Any] = {"backend": backend or "local"}
        if cache is not None:
            config["cache"] = cache
        if counter is not None:
            config["callbacks"] = [counter]
        if backend == "ray" or (backend is None and address):
            config["backend"] = get_backend("ray", address=address)
        try:
            job.run(read_lines(stream, skip=done), config, unordered, chunk_size, max_in_flight)
        except KeyboardInterrupt:
            echo_usage(counter)
            click.echo(f"interrupted: {job.counts()}; finish with --resume", err=True)
            sys.exit(130)
        except FailureBudgetExceeded as exc:
            echo_usage(counter)
            click.echo(f"failure budget exceeded: more than {max_failures:,} items failed ({exc}); "
                       f"{job.counts()}; finish with --resume", err=True)
            sys.exit(3)
        except BrokenPipeError:  # e.g. `rayrunnables run ... --output - | head`
            echo_usage(counter)
            click.echo(f"output closed by the reader: {job.counts()}", err=True)
            sys.exit(1)
        except (BackendError, UnpicklableStepError, ConfigError) as exc:
            raise SetupError(f"{type(exc).__name__}: {exc}") from None
        except Exception as exc:
            traceback.print_exc()
            echo_usage(counter)
            raise click.ClickException(f"run stopped ({type(exc).__name__}: {exc}); {job.counts()}; "
                                       "finish with --resume") from None
    echo_usage(counter)
    click.echo(job.counts() + (f"; {len(done):,} already done" if resume else ""), err=True)
    if job.failed:
        sys.exit(1)


def cache_store(uri: str | None) -> str | None:
    """``--cache``: the store's address as every process reaches it (a folder made absolute), checked now
    (an unknown URI or a missing extra is a usage error)."""
    if uri is None:
        return None
    from .cache import open_store

    try:
        return open_store(uri).uri
    except (TypeError, ValueError, ImportError) as exc:
        raise click.UsageError(f"--cache: {exc}") from None


def usage_counter(chain: Runnable[Any, Any], record_usage: bool) -> UsageCounter | None:
    """The counter of the run's model tokens: per item with ``--usage``; totals only for a chain with
    LangChain steps (the steps that report model calls); none otherwise, so a chain without them records
    no run events at all."""
    if record_usage:
        if chain.vectorized:
            raise click.UsageError(f"--usage: {chain.label()} is vectorized (one call serves many items), so its "
                                   "model calls cannot be told apart by item")
        return ItemUsageCounter()
    return UsageCounter() if reports_model_calls(chain) else None


def _run_data_engine(
    target: str, inputs: tuple[str, ...], output_path: str, errors_path: str | None, output_format: str,
    concurrency: int | None, backend: str | None, address: str | None, id_field: str | None, resume: bool,
    chunk_size: int | None, max_in_flight: int | None, progress: bool, timeout: float | None = None,
    record_usage: bool = False, cache: str | None = None,
) -> None:
    if "-" in inputs or output_path == "-" or errors_path == "-":
        raise click.UsageError("the data engine reads and writes files and folders, not - (standard input/output)")
    if backend not in (None, "ray"):
        raise click.UsageError("the data engine runs on Ray: --backend is for the driver engine")
    if max_in_flight is not None:
        raise click.UsageError("--max-in-flight is for the driver engine (the data engine: --concurrency)")
    from .data_cli import run_data

    chain = load_target(target)
    counter = usage_counter(chain, record_usage)
    if timeout is not None:  # per item, as on the driver engine
        chain = chain.with_timeout(timeout)
    status = run_data(chain, inputs, output_path, errors_path, address, id_field, resume,
                      chunk_size, output_format, concurrency, progress, SetupError, counter, cache)
    import ray

    ray.shutdown()  # now: Ray's own exit hook took 0.3-0.8 s longer here, after the run had ended
    if status:
        sys.exit(status)


class _Job:
    """One ``run``: feeds parsed lines to the chain, writes each result as one whole line."""

    def __init__(
        self, chain: Runnable[Any, Any], out: LineWriter, errs: LineWriter | None, bar: Progress, id_field: str | None,
        max_failures: int | None = None, counter: UsageCounter | None = None,
    ) -> None:
        self.chain, self.out, self.errs, self.bar, self.id_field = chain, out, errs, bar, id_field
        self.max_failures = max_failures
        self.counter = counter
        # --usage: each item's runs nest under a run id of its own, so its model calls are told apart
        self.items = counter if isinstance(counter, ItemUsageCounter) else None
        self.ok = self.failed = self.malformed = 0
        # position in the stream given to the chain -> (line number, id, item key); only items in flight are here
        self.meta: dict[int, tuple[int, Any, Any]] = {}

    def values(self, lines: Iterator[tuple[int, Any]]) -> Iterator[Any]:
        """The values sent to the chain; a malformed line is recorded here and never sent."""
        position = 0
        for number, value in lines:
            if isinstance(value, BadLine):
                self.malformed += 1
                self.error(number, None, "input", value.error, prefix=f"input line {number + 1}: ", key=None)
                continue
            item_id = value.get(self.id_field) if self.id_field and isinstance(value, dict) else None
            key = None
            if self.items is not None:
                key = uuid.uuid4()
                self.items.expect(key)
                value = PerItem.nested(value, key)
            self.meta[position] = (number, item_id, key)
            position += 1
            yield value

    def usage(self, key: Any) -> dict[str, int] | None:
        """The item's usage for its record (--usage), zeros for an item that never ran (a malformed line)."""
        if self.items is None:
            return None
        return self.items.take(key) if key is not None else zero_usage()

    def run(
        self, lines: Iterator[tuple[int, Any]], config: dict[str, Any], unordered: bool,
        chunk_size: int | None, max_in_flight: int | None,
    ) -> None:
        # the chain's own failures stop the scheduler at once (cancelling what runs); malformed lines and
        # outputs that are not JSON count too, checked as they are recorded (``error``)
        options: dict[str, Any] = {"return_exceptions": True, "chunk_size": chunk_size, "max_in_flight": max_in_flight,
                                   "max_failures": self.max_failures}
        values = self.values(lines)
        results: Iterator[tuple[int, Any]] = (
            self.chain.imap_as_completed(values, config, **options)
            if unordered
            else enumerate(self.chain.imap(values, config, **options))
        )
        for position, output in results:
            number, item_id, key = self.meta.pop(position)
            if self.counter is not None:
                self.bar.set_tokens(self.counter.total_tokens)
            if isinstance(output, Exception):
                self.error(number, item_id, step_path_of(output) or self.chain.label(), output, key=key)
                continue
            usage = self.usage(key)
            try:
                line = dumps_line(output_record(number, item_id, output, bool(self.id_field), usage))
            except (TypeError, ValueError, RecursionError) as exc:  # not JSON: that item failed
                self.error(number, item_id, "output", exc, usage=usage)
                continue
            self.out.write_line(line)
            self.ok += 1
            self.bar.update(1)

    def error(self, number: int, item_id: Any, step: str, exc: BaseException, prefix: str = "", *,
              key: Any = None, usage: dict[str, int] | None = None) -> None:
        self.failed += 1
        if usage is None:
            usage = self.usage(key)
        line = dumps_line(error_record(number, item_id, step, exc, prefix, usage))
        if self.errs is not None:
            self.errs.write_line(line)
        else:
            self.bar.write(line.decode().rstrip("\n"))
        self.bar.update(1, errors=1)
        if self.max_failures is not None and self.failed > self.max_failures:
            raise FailureBudgetExceeded(f"{self.failed} items failed", self.failed, self.ok)

    def counts(self) -> str:
        malformed = f" ({self.malformed:,} malformed lines)" if self.malformed else ""
        return f"{self.ok:,} ok, {self.failed:,} failed{malformed}"


def _add_serve() -> None:
    from .serve.command import serve_command  # click only: FastAPI and Ray Serve load when it runs

    main.add_command(serve_command)


_add_serve()


if __name__ == "__main__":
    main()
