"""Folders of files for ``rayrunnables run`` on Ray Data: the reader, the shard writers, and resume.

- **Reading.** One ``FileBasedDatasource`` for JSON Lines (``.jsonl``/``.json``, compressed too) and
  Parquet. Every row carries its source file and its 0-based line (or row) number, so a record names
  its item without the driver. JSON Lines are read as raw lines and decoded in the worker: a line
  that is not JSON becomes an error record there, never a failed read.
- **Inputs.** Paths or URIs (``s3://bucket/docs/``, globs too), all on one filesystem; a file is named by
  its path relative to the input root, in ids and in the commit log, so a run can move between machines
  and buckets.
- **Writing.** Each batch's outputs and error records are written by the worker that ran it, per input
  file, as shards under new names, then committed by a marker (``shardlog``): an object store has no
  atomic rename, so a shard counts only once its marker exists.
- **Resume.** The reader of each input file reads that file's markers and skips what they hold (a file
  all done is skipped whole); the driver lists names only, so its memory does not grow with the
  documents done.

Only JSON and Parquet are read: nothing here unpickles what it reads. This module imports Ray Data;
only the data engine imports it.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import posixpath
import re
import urllib.parse
import uuid
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import pyarrow as pa
import pyarrow.fs as pafs
from ray.data.datasource import FileBasedDatasource

from .data import run_values
from .errors import step_path_of
from .jsonl import BadLine, dumps_line
from .records import error_record, output_record
from .runnables.base import Runnable
from .shardlog import CommitLog, FileState, is_local, new_attempt, shard_key, write_whole
from .usage import ItemUsageCounter, UsageCounter, zero_usage

__all__ = ["ChainFiles", "Inputs", "ShardJob", "Shards", "resolve_inputs", "resolve_dir", "SUMMARY_COLUMNS",
           "USAGE_COLUMN"]

PATH, LINE, TEXT = "__rr_path", "__rr_line", "__rr_text"
JSON_EXTENSIONS = ["jsonl", "json", "jsonl.gz", "json.gz", "jsonl.zst", "json.zst"]
EXTENSIONS = [*JSON_EXTENSIONS, "parquet"]
SUMMARY_COLUMNS = ("ok", "failed", "malformed")
USAGE_COLUMN = "usage"  # a batch's tokens per model, as JSON ({"model": {"input_tokens", ...}})
_GLOB = set("*?[")


@dataclass
class Inputs:
    """The files of a run: one filesystem, the input root (ids and markers name a file by its path relative to
    it, so a run can move between machines and buckets), and the paths Ray Data reads (files or folders)."""

    fs: pafs.FileSystem
    root: str
    paths: list[str]

    def rel(self, path: str) -> str:
        return relative(path, self.root)


def relative(path: str, root: str) -> str:
    if root and path.startswith(root.rstrip("/") + "/"):
        return path[len(root.rstrip("/")) + 1 :]
    return path.lstrip("/")


def resolve_inputs(inputs: Iterable[str]) -> Inputs:
    """Each ``--input`` (a file, a folder, a glob; a path or a URI such as ``s3://bucket/docs/*.jsonl``) as paths
    in one filesystem, and the input root: the folder the inputs have in common (a file's own folder, a glob's
    folder before its first wildcard). On a URI, ``?`` starts the query (``?endpoint_override=...``): its
    wildcards are ``*`` and ``[...]``."""
    found = [_resolve(path) for path in inputs]
    if not found:
        raise ValueError("no --input given")
    fs = found[0][0]
    for other, _, _ in found[1:]:
        if not fs.equals(other):
            raise ValueError("every --input must be on one filesystem (all local, or all in one store)")
    roots = [root for _, _, root in found]
    root = posixpath.commonpath(roots) if all(r.startswith("/") for r in roots) or not any(
        r.startswith("/") for r in roots) else ""
    return Inputs(fs, root, [p for _, paths, _ in found for p in paths])


def _resolve(path: str) -> tuple[pafs.FileSystem, list[str], str]:
    if "://" in path:
        return _resolve_uri(path)
    fs = pafs.LocalFileSystem()
    if _GLOB & set(path):
        matched = sorted(glob.glob(path))
        if not matched:
            raise FileNotFoundError(f"{path}: no file matches")
        return fs, [os.path.abspath(p) for p in matched], os.path.abspath(os.path.dirname(_static_part(path)) or ".")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or folder")
    full = os.path.abspath(path)
    return fs, [full], full if os.path.isdir(full) else os.path.dirname(full)


def _static_part(pattern: str) -> str:
    """The pattern up to its last ``/`` before the first wildcard."""
    first = min(pattern.index(c) for c in _GLOB if c in pattern)
    return pattern[: pattern.rfind("/", 0, first) + 1]


def _resolve_uri(uri: str) -> tuple[pafs.FileSystem, list[str], str]:
    parts = urllib.parse.urlsplit(uri)
    if not (set("*[") & set(parts.path)):
        fs, path = pafs.FileSystem.from_uri(uri)
        path = path.rstrip("/")
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{uri}: no such file or folder")
        return fs, [path], path if info.type == pafs.FileType.Directory else posixpath.dirname(path)
    static = parts.path[: parts.path.rfind("/", 0, min(parts.path.index(c) for c in "*[" if c in parts.path)) + 1]
    fs, base = pafs.FileSystem.from_uri(urllib.parse.urlunsplit(parts._replace(path=static)))
    base = base.rstrip("/")
    pattern = (base + "/" + parts.path[len(static):]).split("/")
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except FileNotFoundError:
        infos = []
    matched = sorted(i.path for i in infos if i.type == pafs.FileType.File and _matches(i.path.split("/"), pattern))
    if not matched:
        raise FileNotFoundError(f"{uri}: no file matches")
    return fs, matched, base


def _matches(segments: list[str], pattern: list[str]) -> bool:
    """Glob semantics per path segment: ``*`` never crosses a ``/``."""
    if len(segments) != len(pattern):
        return False
    return all(fnmatch.fnmatchcase(s, p) for s, p in zip(segments, pattern, strict=True))


class ChainFiles(FileBasedDatasource):
    """JSON Lines and Parquet files as rows that know their file and line: ``__rr_path`` (relative to the input
    root), ``__rr_line``, and ``__rr_text`` (a raw JSON line) or the Parquet file's own columns.

    With ``resume``, the reader of a file reads that file's markers first (``shardlog``): a file all done is
    skipped whole, and a partly done one yields only the items not done. At a file's end it records the
    file's item count and size, which is how the next ``--resume`` knows a file is all done."""

    def __init__(self, inputs: Inputs, log: CommitLog, id_field: str | None = None, resume: bool = False,
                 rows_per_block: int = 10_000, run_id: str | None = None) -> None:
        super().__init__(inputs.paths, filesystem=inputs.fs, file_extensions=EXTENSIONS)
        self.fs, self.root, self.log = inputs.fs, inputs.root, log
        self.id_field, self.resume, self.rows_per_block = id_field, resume, rows_per_block
        self.run_id = run_id  # this run's own markers never change what a read yields (``CommitLog.file_state``)

    def estimate_rows(self) -> int | None:
        """About how many items the inputs hold: their bytes over the bytes per item of the first file's first
        MiB (its footer for Parquet); ``None`` for compressed files or when it cannot tell."""
        try:
            total, first = self.estimate_inmemory_data_size(), self._paths()[0]
            size = self.fs.get_file_info(first).size
            if not total or not size:
                return None
            if first.endswith(".parquet"):
                import pyarrow.parquet as pq

                with self.fs.open_input_file(first) as f:
                    return int(total * pq.ParquetFile(f).metadata.num_rows / size)
            if not first.endswith((".jsonl", ".json")):
                return None
            with self.fs.open_input_stream(first) as f:
                head = f.read(1 << 20)
            return int(total * max(head.count(b"\n"), 1) / len(head)) if head else None
        except (OSError, ValueError, IndexError):
            return None

    def _open_input_source(self, filesystem: Any, path: str, **open_args: Any) -> Any:
        if path.endswith(".parquet"):  # Parquet reads its footer first: it needs a seekable file
            return filesystem.open_input_file(path)
        return super()._open_input_source(filesystem, path, **open_args)

    def _read_stream(self, f: Any, path: str) -> Iterator[pa.Table]:
        rel = relative(path, self.root)
        size = self.fs.get_file_info(path).size
        state = self.log.file_state(rel, size, self.id_field is not None, self.run_id) if self.resume else FileState()
        if state.complete:
            return
        if path.endswith(".parquet"):
            items = yield from self._read_parquet(f, rel, state)
        else:
            items = yield from self._read_lines(f, rel, state)
        if size is not None:
            self.log.record_items(rel, items, size)

    def _skip(self, state: FileState, rel: str, numbers: list[int], values: Iterable[Any]) -> list[bool]:
        """Which of these items are done already (always none on a fresh run)."""
        if not state.count:
            return [False] * len(numbers)
        if self.id_field is None:
            return [state.done(n, None) for n in numbers]
        return [state.done(n, id_key(item_id(rel, n, v, self.id_field))) for n, v in zip(numbers, values, strict=True)]

    def _read_parquet(self, f: Any, rel: str, state: FileState) -> Generator[pa.Table, None, int]:
        import pyarrow.parquet as pq

        start = 0
        for batch in pq.ParquetFile(f).iter_batches(batch_size=self.rows_per_block):
            table = pa.Table.from_batches([batch])
            numbers = list(range(start, start + len(table)))
            start += len(table)
            has_id = self.id_field is not None and self.id_field in table.column_names
            values = ({self.id_field: v} for v in table.column(self.id_field).to_pylist()) if has_id else (
                None for _ in numbers)
            skip = self._skip(state, rel, numbers, values)
            if any(skip):
                table = table.filter(pa.array([not s for s in skip]))
                numbers = [n for n, s in zip(numbers, skip, strict=True) if not s]
            if len(table):
                table = table.append_column(PATH, _repeat(rel, len(table)))
                yield table.append_column(LINE, pa.array(numbers, pa.int64()))
        return start

    def _read_lines(self, f: Any, rel: str, state: FileState) -> Generator[pa.Table, None, int]:
        lines: list[bytes] = []
        numbers: list[int] = []
        number, rest, items = 0, b"", 0
        while True:
            data = f.read(4 << 20)
            parts = (rest + data).split(b"\n")
            rest = parts.pop() if data else b""
            # blank lines are not items, but they count: line numbers stay the file's
            kept = [(n, raw) for n, raw in enumerate(parts, number) if raw and not raw.isspace()]
            number += len(parts)
            items += len(kept)
            if kept and state.count:
                values = (_decode(raw) for _, raw in kept) if self.id_field else (None for _ in kept)
                skip = self._skip(state, rel, [n for n, _ in kept], values)
                kept = [k for k, s in zip(kept, skip, strict=True) if not s]
            numbers.extend(n for n, _ in kept)
            lines.extend(raw for _, raw in kept)
            while len(lines) >= self.rows_per_block or (not data and lines):
                size = self.rows_per_block
                yield _lines_table(rel, numbers[:size], lines[:size])
                del numbers[:size], lines[:size]
            if not data:
                return items


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
    """The shard files of one output or errors folder: listing, writing each under a new name, deleting."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.fs, self.root = resolve_dir(uri)

    def make(self) -> None:
        if is_local(self.fs):  # an object store has no folders to make
            self.fs.create_dir(self.root, recursive=True)

    def files(self, prefixes: tuple[str, ...]) -> list[str]:
        """Shards (not the temporary files a killed local writer leaves) whose names start with ``prefixes``."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        except FileNotFoundError:
            return []
        return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.startswith(prefixes))

    def leftovers(self) -> list[str]:
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        except FileNotFoundError:
            return []
        return [i.path for i in infos if i.base_name.startswith(".") and ".tmp-" in i.base_name]

    def write(self, name: str, data: bytes | pa.Table) -> None:
        """``name`` (a new name) appears whole or not at all."""
        write_whole(self.fs, f"{self.root}/{name}", data)

    def tidy(self, prefixes: tuple[str, ...], trusted: set[str]) -> int:
        """Delete the shards no trusted marker names (their writer died before committing, or another attempt
        of the same piece won) and a killed local writer's temporary files; return how many."""
        doomed = [p for p in self.files(prefixes) if shard_key(posixpath.basename(p)) not in trusted]
        doomed += self.leftovers()
        for path in doomed:
            self.fs.delete_file(path)
        return len(doomed)


def id_key(value: Any) -> str:
    """How ids are compared for ``--resume``: as strings (Parquet shards store them as strings)."""
    return value if isinstance(value, str) else json.dumps(value)


def item_id(rel: str, number: int, value: Any, id_field: str | None) -> Any:
    """The ``--id-field`` value, or ``file:line`` (the file relative to the input root; lines from 1)."""
    if id_field and isinstance(value, dict):
        found = value.get(id_field)
        if found is not None:
            return found
    return f"{rel}:{number + 1}"


class ShardJob:
    """What a Ray Data worker does with one batch of rows: decode, run the chain, write the outputs and the
    error records as shards and commit them, per input file the batch read from (``shardlog``); it returns
    only counts to the driver, and the tokens its model calls used (``usage``: ``None`` counts none,
    ``"totals"``, or ``"items"``: each record carries its item's own too)."""

    def __init__(self, chain: Runnable[Any, Any], id_field: str | None, out: Shards, errs: Shards,
                 output_format: str, run_id: str, usage: str | None = None, cache: Any = None,
                 batch_rows: int | None = None) -> None:
        self.chain, self.id_field, self.out, self.errs = chain, id_field, out, errs
        self.output_format, self.run_id = output_format, run_id
        self.usage, self.cache, self.batch_rows = usage, cache, batch_rows
        self.log = CommitLog(out.fs, out.root)

    def __call__(self, batch: pa.Table) -> dict[str, list[Any]]:
        """A block bigger than ``batch_rows`` runs and commits in slices of that many rows: where the read and
        the chain are one stage, Ray Data joins the reader's blocks up to its block size (128 MiB), so a block
        can be a whole file, and ``--chunk-size`` (the chain's batch, a shard, a kill's loss) must still hold."""
        size = self.batch_rows
        if not size or batch.num_rows <= size:
            return self._one_batch(batch)
        counts = [self._one_batch(batch.slice(start, size)) for start in range(0, batch.num_rows, size)]
        usage = UsageCounter()
        for c in counts:
            usage.merge(json.loads(c[USAGE_COLUMN][0]))
        return {**{key: [sum(c[key][0] for c in counts)] for key in ("ok", "failed", "malformed")},
                USAGE_COLUMN: [json.dumps(usage.by_model)]}

    def _one_batch(self, batch: pa.Table) -> dict[str, list[Any]]:
        paths = batch.column(PATH).to_pylist()
        numbers = batch.column(LINE).to_pylist()
        if TEXT in batch.column_names:
            values: list[Any] = [_decode(raw) for raw in batch.column(TEXT).to_pylist()]
        else:
            values = batch.drop_columns([PATH, LINE]).to_pylist()
        ids = [item_id(path, number, value, self.id_field) for path, number, value in zip(paths, numbers, values,
                                                                                            strict=True)]
        # per row: (True, output line or record) or (False, error line)
        results: list[tuple[bool, Any]] = [(False, b"")] * len(values)
        todo: list[int] = []
        malformed = 0
        for n, value in enumerate(values):
            if isinstance(value, BadLine):
                malformed += 1
                results[n] = (False, dumps_line(error_record(
                    numbers[n], ids[n], "input", value.error, prefix=f"{paths[n]}: input line {numbers[n] + 1}: ",
                    usage=zero_usage() if self.usage == "items" else None)))
            else:
                todo.append(n)
        counter = None if self.usage is None else ItemUsageCounter() if self.usage == "items" else UsageCounter()
        keys = [uuid.uuid4() for _ in todo] if isinstance(counter, ItemUsageCounter) else None
        for key in keys or ():
            cast(ItemUsageCounter, counter).expect(key)
        outputs = run_values(self.chain, [values[n] for n in todo], [counter] if counter else None, keys, self.cache)
        for k, (n, output) in enumerate(zip(todo, outputs, strict=True)):
            usage = cast(ItemUsageCounter, counter).take(keys[k]) if keys is not None else None
            results[n] = self._result(numbers[n], ids[n], output, usage)
        ok = 0
        for rel, rows in _by_file(paths).items():
            ok += self.write_piece(rel, [numbers[n] for n in rows], [ids[n] for n in rows], [results[n] for n in rows])
        # the batch's tokens per model, as JSON: one string column every batch has, whatever the models
        usage_column = json.dumps(counter.by_model if counter is not None else {})
        return {"ok": [ok], "failed": [len(values) - ok], "malformed": [malformed], USAGE_COLUMN: [usage_column]}

    def _result(self, number: int, iid: Any, output: Any, usage: dict[str, int] | None) -> tuple[bool, Any]:
        if isinstance(output, Exception):
            return False, dumps_line(error_record(number, iid, step_path_of(output) or self.chain.label(), output,
                                                  usage=usage))
        record = output_record(number, iid, output, True, usage)
        try:
            line = dumps_line(record)
        except (TypeError, ValueError, RecursionError) as exc:  # not JSON: that item failed
            return False, dumps_line(error_record(number, iid, "output", exc, usage=usage))
        return True, line if self.output_format == "jsonl" else record

    def write_piece(self, rel: str, numbers: list[int], ids: list[Any], results: list[tuple[bool, Any]]) -> int:
        """One input file's rows of the batch: its shards under new names, then its marker; return the outputs."""
        piece, attempt = self.piece_name(rel, numbers), new_attempt()
        records = [value for ok, value in results if ok]
        errors = [value for ok, value in results if not ok]
        part = err = None
        if records:
            part, failed = self.write_outputs(f"{piece}.{attempt}", records)
            errors.extend(failed)
        if errors:
            err = f"errors-{piece}.{attempt}.jsonl"
            self.errs.write(err, b"".join(errors))
        self.log.commit(rel, piece, attempt, part, err, numbers,
                        [id_key(i) for i in ids] if self.id_field is not None else None)
        return len(records) if part else 0

    def write_outputs(self, stem: str, records: list[Any]) -> tuple[str | None, list[bytes]]:
        """Write the outputs shard; a Parquet shard whose outputs Arrow cannot hold as one column fails whole
        (its items become error records, as outputs that are not JSON do). Returns (its name, error lines)."""
        if self.output_format == "jsonl":
            self.out.write(f"part-{stem}.jsonl", b"".join(records))
            return f"part-{stem}.jsonl", []
        rows = [{**r, "id": id_key(r["id"])} for r in records]
        try:
            table = pa.Table.from_pylist(rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError) as exc:
            return None, [dumps_line(error_record(r["index"], r["id"], "output", exc, usage=r.get("usage")))
                          for r in rows]
        self.out.write(f"part-{stem}.parquet", table)
        return f"part-{stem}.parquet", []

    def piece_name(self, rel: str, numbers: list[int]) -> str:
        """The run, the file and the batch's lines of it: a retried batch gets the same name, another another."""
        digest = hashlib.blake2b(digest_size=8)
        digest.update(f"{self.run_id}\0{rel}\0".encode())
        digest.update(",".join(map(str, numbers)).encode())
        first = _SAFE.sub("_", posixpath.basename(rel).split(".")[0])[:40] or "file"
        return f"{self.run_id}-{first}-{numbers[0] if numbers else 0:09d}-{digest.hexdigest()}"


_SAFE = re.compile(r"[^A-Za-z0-9_-]")


def _by_file(paths: list[str]) -> dict[str, list[int]]:
    """Row positions per input file, files in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for n, path in enumerate(paths):
        groups.setdefault(path, []).append(n)
    return groups


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError; absurd nesting
        return BadLine(exc)
