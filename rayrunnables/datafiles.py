"""Folders of files for ``rayrunnables run`` on Ray Data: the reader, the shard writers, and resume.

- **Reading.** One ``FileBasedDatasource`` for JSON Lines (``.jsonl``/``.json``, compressed too) and
  Parquet. Every row carries its source file and its 0-based line (or row) number, so a record names
  its item without the driver. JSON Lines are read as raw lines and decoded in the worker: a line
  that is not JSON becomes an error record there, never a failed read.
- **Writing.** Each batch's outputs and error records are written by the worker that ran it, as one
  shard each, under a temporary name and then renamed (``os.replace`` locally, a filesystem move
  elsewhere): a killed run leaves only whole shards. A shard's name holds the run's id and its
  batch's position, so a Ray retry of the same batch overwrites its own shard instead of adding one.
- **Resume.** The ids in the complete shards already there are skipped (they go to the workers in the
  object store, once).

Only JSON and Parquet are read: nothing here unpickles what it reads. This module imports Ray Data;
only the data engine imports it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from typing import Any, cast

import pyarrow as pa
import pyarrow.fs as pafs
import ray
from ray.data.datasource import FileBasedDatasource

from .data import run_values
from .errors import step_path_of
from .jsonl import BadLine, dumps_line
from .records import error_record, output_record
from .runnables.base import Runnable
from .usage import ItemUsageCounter, UsageCounter, zero_usage

__all__ = ["ChainFiles", "ShardJob", "Shards", "expand_inputs", "resolve_dir", "SUMMARY_COLUMNS", "USAGE_COLUMN"]

PATH, LINE, TEXT = "__rr_path", "__rr_line", "__rr_text"
JSON_EXTENSIONS = ["jsonl", "json", "jsonl.gz", "json.gz", "jsonl.zst", "json.zst"]
EXTENSIONS = [*JSON_EXTENSIONS, "parquet"]
SUMMARY_COLUMNS = ("ok", "failed", "malformed", "skipped")
USAGE_COLUMN = "usage"  # a batch's tokens per model, as JSON ({"model": {"input_tokens", ...}})
_GLOB = set("*?[")


def expand_inputs(inputs: Iterable[str]) -> list[str]:
    """Local paths made absolute (workers run elsewhere), local globs expanded; URIs (``s3://``) as given."""
    out: list[str] = []
    for path in inputs:
        if "://" in path:
            if _GLOB & set(path):
                raise ValueError(f"{path}: globs are for local paths; give a folder or the files")
            out.append(path)
        elif _GLOB & set(path):
            found = sorted(glob.glob(path))
            if not found:
                raise FileNotFoundError(f"{path}: no file matches")
            out.extend(os.path.abspath(p) for p in found)
        else:
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path}: no such file or folder")
            out.append(os.path.abspath(path))
    return out


class ChainFiles(FileBasedDatasource):
    """JSON Lines and Parquet files as rows that know their file and line: ``__rr_path``, ``__rr_line``,
    and ``__rr_text`` (a raw JSON line) or the Parquet file's own columns."""

    def __init__(self, paths: list[str], rows_per_block: int = 10_000) -> None:
        super().__init__(paths, file_extensions=EXTENSIONS)
        self.rows_per_block = rows_per_block

    def _open_input_source(self, filesystem: Any, path: str, **open_args: Any) -> Any:
        if path.endswith(".parquet"):  # Parquet reads its footer first: it needs a seekable file
            return filesystem.open_input_file(path)
        return super()._open_input_source(filesystem, path, **open_args)

    def _read_stream(self, f: Any, path: str) -> Iterator[pa.Table]:
        if path.endswith(".parquet"):
            yield from self._read_parquet(f, path)
        else:
            yield from self._read_lines(f, path)

    def _read_parquet(self, f: Any, path: str) -> Iterator[pa.Table]:
        import pyarrow.parquet as pq

        start = 0
        for batch in pq.ParquetFile(f).iter_batches(batch_size=self.rows_per_block):
            table = pa.Table.from_batches([batch])
            table = table.append_column(PATH, _repeat(path, len(table)))
            table = table.append_column(LINE, pa.array(range(start, start + len(table)), pa.int64()))
            start += len(table)
            yield table

    def _read_lines(self, f: Any, path: str) -> Iterator[pa.Table]:
        lines: list[bytes] = []
        numbers: list[int] = []
        number, rest = 0, b""
        while True:
            data = f.read(4 << 20)
            parts = (rest + data).split(b"\n")
            rest = parts.pop() if data else b""
            # blank lines are not items, but they count: line numbers stay the file's
            kept = [(n, raw) for n, raw in enumerate(parts, number) if raw and not raw.isspace()]
            number += len(parts)
            numbers.extend(n for n, _ in kept)
            lines.extend(raw for _, raw in kept)
            while len(lines) >= self.rows_per_block or (not data and lines):
                size = self.rows_per_block
                yield _lines_table(path, numbers[:size], lines[:size])
                del numbers[:size], lines[:size]
            if not data:
                return


def _lines_table(path: str, numbers: list[int], lines: list[bytes]) -> pa.Table:
    return pa.table({PATH: _repeat(path, len(lines)), LINE: pa.array(numbers, pa.int64()),
                     TEXT: pa.array(lines, pa.binary())})


def _repeat(path: str, n: int) -> pa.Array:
    import numpy as np

    return pa.array([path], pa.string()).take(pa.array(np.zeros(n, dtype=np.int32)))


def resolve_dir(path: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path in it: a local folder (made absolute) or any URI pyarrow reads."""
    if "://" in path:
        fs, root = pafs.FileSystem.from_uri(path)
        return fs, root.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(path)


class Shards:
    """The shard files of one output or errors folder: listing, reading ids back, writing atomically."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.fs, self.root = resolve_dir(uri)

    def make(self) -> None:
        self.fs.create_dir(self.root, recursive=True)

    def files(self, prefixes: tuple[str, ...]) -> list[str]:
        """Complete shards (not the temporary files a killed writer leaves) whose names start with ``prefixes``."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        except FileNotFoundError:
            return []
        return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.startswith(prefixes))

    def leftovers(self) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        return [i.path for i in infos if i.base_name.startswith(".") and ".tmp-" in i.base_name]

    def ids(self, prefixes: tuple[str, ...], into: set[str]) -> int:
        """Add the id (as a string) of every record in the complete shards to ``into``; return how many."""
        count = 0
        for path in self.files(prefixes):
            if path.endswith(".parquet"):
                import pyarrow.parquet as pq

                with self.fs.open_input_file(path) as f:
                    column = pq.read_table(f, columns=["id"]).column("id").to_pylist()
                for value in column:
                    into.add(id_key(value))
                    count += 1
                continue
            with self.fs.open_input_stream(path) as f:
                for number, raw in enumerate(f.read().splitlines()):
                    try:
                        into.add(id_key(json.loads(raw)["id"]))
                    except (ValueError, KeyError, TypeError) as exc:
                        raise ValueError(f"{path}:{number + 1}: not a rayrunnables record ({exc}); "
                                         "cannot resume") from None
                    count += 1
        return count

    def write(self, name: str, data: bytes | pa.Table) -> None:
        """``name`` appears whole or not at all: written under a temporary name, then moved."""
        final = f"{self.root}/{name}"
        temporary = f"{self.root}/.{name}.tmp-{uuid.uuid4().hex[:8]}"
        if isinstance(data, pa.Table):
            import pyarrow.parquet as pq

            pq.write_table(data, temporary, filesystem=self.fs)
        else:
            with self.fs.open_output_stream(temporary) as f:
                f.write(data)
        self.fs.move(temporary, final)


def id_key(value: Any) -> str:
    """How ids are compared for ``--resume``: as strings (Parquet shards store them as strings)."""
    return value if isinstance(value, str) else json.dumps(value)


class ShardJob:
    """What a Ray Data worker does with one batch of rows: decode, skip what is done, run the chain,
    write the outputs and the error records as shards; it returns only counts to the driver, and the
    tokens its model calls used (``usage``: ``None`` counts none, ``"totals"``, or ``"items"``: each
    record carries its item's own too)."""

    def __init__(self, chain: Runnable[Any, Any], id_field: str | None, out: Shards, errs: Shards,
                 output_format: str, run_id: str, done: Any = None, usage: str | None = None,
                 cache: Any = None) -> None:
        self.chain, self.id_field, self.out, self.errs = chain, id_field, out, errs
        self.output_format, self.run_id, self.done = output_format, run_id, done
        self.usage, self.cache = usage, cache

    def _done(self) -> frozenset[str]:
        if self.done is None:
            return frozenset()
        key = self.done.hex()
        if key not in _DONE_CACHE:  # one copy per worker process, however many batches it runs
            _DONE_CACHE.clear()
            _DONE_CACHE[key] = ray.get(self.done)
        return _DONE_CACHE[key]

    def __call__(self, batch: pa.Table) -> dict[str, list[Any]]:
        paths = batch.column(PATH).to_pylist()
        numbers = batch.column(LINE).to_pylist()
        if TEXT in batch.column_names:
            values: list[Any] = [_decode(raw) for raw in batch.column(TEXT).to_pylist()]
        else:
            values = batch.drop_columns([PATH, LINE]).to_pylist()
        done = self._done()
        errors: list[bytes] = []
        todo: list[tuple[int, Any, Any]] = []
        skipped = malformed = 0
        for path, number, value in zip(paths, numbers, values, strict=True):
            item_id = self.item_id(path, number, value)
            if done and id_key(item_id) in done:
                skipped += 1
            elif isinstance(value, BadLine):
                malformed += 1
                errors.append(dumps_line(error_record(number, item_id, "input", value.error,
                                                     prefix=f"{path}: input line {number + 1}: ",
                                                     usage=zero_usage() if self.usage == "items" else None)))
            else:
                todo.append((number, item_id, value))
        counter = None if self.usage is None else ItemUsageCounter() if self.usage == "items" else UsageCounter()
        keys = [uuid.uuid4() for _ in todo] if isinstance(counter, ItemUsageCounter) else None
        for key in keys or ():
            cast(ItemUsageCounter, counter).expect(key)
        outputs = run_values(self.chain, [value for _, _, value in todo], [counter] if counter else None, keys,
                             self.cache)
        records: list[Any] = []  # lines (JSON Lines) or records (Parquet)
        for n, ((number, item_id, _), output) in enumerate(zip(todo, outputs, strict=True)):
            usage = cast(ItemUsageCounter, counter).take(keys[n]) if keys is not None else None
            if isinstance(output, Exception):
                errors.append(dumps_line(error_record(number, item_id, step_path_of(output) or self.chain.label(),
                                                      output, usage=usage)))
                continue
            record = output_record(number, item_id, output, True, usage)
            try:
                line = dumps_line(record)
            except (TypeError, ValueError, RecursionError) as exc:  # not JSON: that item failed
                errors.append(dumps_line(error_record(number, item_id, "output", exc, usage=usage)))
                continue
            records.append(line if self.output_format == "jsonl" else record)
        name = self.shard_name(paths, numbers)
        if records:
            errors.extend(self.write_outputs(name, records))
        if errors:
            self.errs.write(f"errors-{name}.jsonl", b"".join(errors))
        ok = len(records)
        # the batch's tokens per model, as JSON: one string column every batch has, whatever the models
        usage_column = json.dumps(counter.by_model if counter is not None else {})
        return {"ok": [ok], "failed": [len(todo) - ok + malformed], "malformed": [malformed], "skipped": [skipped],
                USAGE_COLUMN: [usage_column]}

    def write_outputs(self, name: str, records: list[Any]) -> list[bytes]:
        """Write the outputs shard; a Parquet shard whose outputs Arrow cannot hold as one column fails whole
        (its items become error records, as outputs that are not JSON do)."""
        if self.output_format == "jsonl":
            self.out.write(f"part-{name}.jsonl", b"".join(records))
            return []
        rows = [{**r, "id": id_key(r["id"])} for r in records]
        try:
            table = pa.Table.from_pylist(rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError) as exc:
            del records[:]
            return [dumps_line(error_record(r["index"], r["id"], "output", exc, usage=r.get("usage"))) for r in rows]
        self.out.write(f"part-{name}.parquet", table)
        return []

    def item_id(self, path: str, number: int, value: Any) -> Any:
        """The ``--id-field`` value, or ``file:line`` (counted from 1) when there is none."""
        if self.id_field and isinstance(value, dict):
            found = value.get(self.id_field)
            if found is not None:
                return found
        return f"{path}:{number + 1}"

    def shard_name(self, paths: list[str], numbers: list[int]) -> str:
        """The run's id and the batch's rows: a retried batch gets the same name, another batch another."""
        digest = hashlib.blake2b(digest_size=8)
        start = 0
        for n in range(1, len(paths) + 1):  # each run of rows from one file: its path and line span
            if n == len(paths) or paths[n] != paths[start]:
                digest.update(f"{paths[start]}\0{numbers[start]}\0{numbers[n - 1]}\0{n - start}\n".encode())
                start = n
        first = os.path.basename(paths[0]).split(".")[0][:40] if paths else "empty"
        return f"{self.run_id}-{first}-{numbers[0] if numbers else 0:09d}-{digest.hexdigest()}"


_DONE_CACHE: dict[str, frozenset[str]] = {}


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError; absurd nesting
        return BadLine(exc)
