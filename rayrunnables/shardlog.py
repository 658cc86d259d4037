"""The commit log of a data-engine run: which input items are done, kept per input file in the output folder.

Why per file: ``--resume`` must skip what is done without one process holding every finished id (at a
hundred million documents that set is gigabytes, in the driver and in every worker). Here the worker
that reads an input file reads only that file's entries, and the driver only lists names.

Why markers: an object store has no atomic rename, and an object rewritten while it is read can read
torn. So every object is written once, under a name of its own, and a batch's shards count only once
a **marker** names them. A worker writes, per input file its batch read from (a *piece*):

1. the outputs shard ``part-<piece>.<attempt>.jsonl`` (or ``.parquet``) and the errors shard
   ``errors-<piece>.<attempt>.jsonl``, each a single object (locally: a temporary file, then renamed);
2. then the marker ``_rr/files/<key>/<piece>.<attempt>.<n>.json``: the file's path (relative to the
   input root), the shards' names, and the lines (with ``--id-field``: also the ids) of its ``n`` items.

``key`` is a hash of the file's relative path; ``piece`` names the run, the file and the batch's span of
lines, so a retried batch (Ray re-runs a task whose worker died) has the same piece; ``attempt`` is
random. Two attempts of one piece may both commit (a worker dies after its marker, before Ray heard
back): readers trust the smallest attempt only, and the driver deletes the others' files. A shard no
trusted marker names (its writer died before committing) is deleted when a run ends or resumes.

A reader that reaches the end of an input file records its size and item count as
``_rr/files/<key>/items.<n>.<size>``: on ``--resume``, a file whose trusted markers hold ``n`` items and
whose size is unchanged is skipped whole, without reading it or its ids.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from .jsonl import IndexSet

__all__ = ["CommitLog", "FileState", "Scan", "file_key", "write_whole", "new_attempt"]

LOG_DIR = "_rr/files"


def file_key(rel: str) -> str:
    """A short, path-safe folder name for an input file's entries."""
    return hashlib.blake2b(rel.encode(), digest_size=10).hexdigest()


def new_attempt() -> str:
    return uuid.uuid4().hex[:12]


def is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem) or getattr(fs, "type_name", "") == "local"


def write_whole(fs: pafs.FileSystem, path: str, data: bytes | Any) -> None:
    """``path`` appears whole or not at all. Locally: written under a temporary name, then renamed. On an
    object store: one object (a single upload, or a multipart one the store completes at once), which is
    why every name written is new."""
    folder, _, name = path.rpartition("/")
    target = f"{folder}/.{name}.tmp-{uuid.uuid4().hex[:8]}" if is_local(fs) else path
    if is_local(fs):
        fs.create_dir(folder, recursive=True)
    if isinstance(data, bytes):
        with fs.open_output_stream(target) as f:
            f.write(data)
    else:  # a pyarrow Table
        import pyarrow.parquet as pq

        pq.write_table(data, target, filesystem=fs)
    if target != path:
        fs.move(target, path)


def line_ranges(numbers: Iterable[int]) -> list[list[int]]:
    """Sorted line numbers as inclusive ``[first, last]`` runs: a batch's lines of a file are a few runs."""
    out: list[list[int]] = []
    for n in numbers:
        if out and n == out[-1][1] + 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return out


@dataclass
class FileState:
    """What is done of one input file: ``complete`` (skip it whole), else the lines and ids to skip."""

    complete: bool = False
    lines: IndexSet = field(default_factory=IndexSet)
    ids: set[str] = field(default_factory=set)
    count: int = 0
    untagged: IndexSet = field(default_factory=IndexSet)  # lines of markers without ids (a run without --id-field)

    def done(self, number: int, item_id: str | None) -> bool:
        """By id when the run has ``--id-field`` (and by line for what an earlier run without it committed)."""
        if item_id is None:
            return number in self.lines
        return item_id in self.ids or number in self.untagged


@dataclass
class Scan:
    """The driver's view, from names alone: trusted ``piece.attempt`` names, the markers to delete, items done."""

    trusted: set[str]
    superseded: list[str]
    done: int


def _marker_parts(name: str) -> tuple[str, str, int] | None:
    """``piece.attempt.n.json`` -> (piece, attempt, n); None for any other name."""
    parts = name.split(".")
    if len(parts) != 4 or parts[3] != "json" or not parts[2].isdigit():
        return None
    return parts[0], parts[1], int(parts[2])


def _trusted(names: Iterable[str]) -> tuple[dict[str, tuple[str, int, str]], list[str]]:
    """piece -> (attempt, n, marker name) for the smallest attempt of each piece; and the other markers."""
    best: dict[str, tuple[str, int, str]] = {}
    others: list[str] = []
    for name in names:
        parts = _marker_parts(name)
        if parts is None:
            continue
        piece, attempt, n = parts
        current = best.get(piece)
        if current is None or attempt < current[0]:
            if current is not None:
                others.append(current[2])
            best[piece] = (attempt, n, name)
        else:
            others.append(name)
    return best, others


class CommitLog:
    """The markers of one output folder (``fs`` and ``root``: where the outputs go)."""

    def __init__(self, fs: pafs.FileSystem, root: str) -> None:
        self.fs, self.root = fs, root
        self.log = f"{root}/{LOG_DIR}"

    def folder(self, rel: str) -> str:
        return f"{self.log}/{file_key(rel)}"

    def _names(self, folder: str, recursive: bool = False) -> list[pafs.FileInfo]:
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True, recursive=recursive))
        except FileNotFoundError:
            return []
        return [i for i in infos if i.type == pafs.FileType.File]

    def exists(self) -> bool:
        """Whether any file has entries (one listing of the log's top folder, however big the run was)."""
        try:
            return bool(self.fs.get_file_info(pafs.FileSelector(self.log, allow_not_found=True)))
        except FileNotFoundError:
            return False

    def commit(self, rel: str, piece: str, attempt: str, part: str | None, errors: str | None,
               numbers: list[int], ids: list[str] | None) -> None:
        """The piece's shards are written: make them count (one new object)."""
        body: dict[str, Any] = {"file": rel, "part": part, "errors": errors, "lines": line_ranges(sorted(numbers))}
        if ids is not None:
            body["ids"] = ids
        write_whole(self.fs, f"{self.folder(rel)}/{piece}.{attempt}.{len(numbers)}.json", json.dumps(body).encode())

    def record_items(self, rel: str, items: int, size: int) -> None:
        """The file was read to its end: ``items`` items in ``size`` bytes (an empty object; its name says it)."""
        path = f"{self.folder(rel)}/items.{items}.{size}"
        if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            write_whole(self.fs, path, b"")

    def file_state(self, rel: str, size: int | None, with_ids: bool, run_id: str | None = None) -> FileState:
        """What is done of ``rel`` (read by the worker that reads the file; nothing of other files).

        ``run_id``: the markers of that run (the one reading) are left out, so what a read yields does not
        depend on when it runs: Ray may run a read again (its blocks were lost with a node) while the run's
        own batches commit, and the blocks it rebuilds must hold the rows the first read gave."""
        infos = self._names(self.folder(rel))
        own = f"{run_id}-" if run_id else None
        best, _ = _trusted(i.base_name for i in infos if own is None or not i.base_name.startswith(own))
        state = FileState(count=sum(n for _, n, _ in best.values()))
        if not best:
            return state
        sizes = [name.split(".") for name in (i.base_name for i in infos) if name.startswith("items.")]
        if size is not None and [int(p[1]) for p in sizes if len(p) == 3 and p[2] == str(size)] == [state.count]:
            state.complete = True
            return state
        for _, _, name in best.values():
            with self.fs.open_input_stream(f"{self.folder(rel)}/{name}") as f:
                body = json.loads(f.read())
            for first, last in body["lines"]:
                for n in range(first, last + 1):
                    state.lines.add(n)
                    if with_ids and "ids" not in body:
                        state.untagged.add(n)
            if with_ids and "ids" in body:
                state.ids.update(body["ids"])
        return state

    def scan(self) -> Scan:
        """Every file's trusted markers, by name only (the driver holds names, never ids)."""
        by_folder: dict[str, list[str]] = {}
        for info in self._names(self.log, recursive=True):
            folder, _, name = info.path.rpartition("/")
            by_folder.setdefault(folder, []).append(name)
        trusted: set[str] = set()
        superseded: list[str] = []
        done = 0
        for folder, names in by_folder.items():
            best, others = _trusted(names)
            for piece, (attempt, n, _) in best.items():
                trusted.add(f"{piece}.{attempt}")
                done += n
            superseded.extend(f"{folder}/{name}" for name in others)
        return Scan(trusted, superseded, done)


def shard_key(name: str) -> str | None:
    """``part-PIECE.ATTEMPT.jsonl`` (or ``errors-...``, ``.parquet``) -> ``PIECE.ATTEMPT``."""
    stem = name.split("-", 1)[1] if "-" in name else ""
    parts = stem.split(".")
    return f"{parts[0]}.{parts[1]}" if len(parts) == 3 else None
