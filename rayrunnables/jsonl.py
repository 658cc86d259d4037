"""JSON Lines in and out, safe to kill at any moment: the file side of ``rayrunnables run``.

- Reading keeps each value's 0-based line number, and turns a line that is not JSON into a
  ``BadLine`` instead of an exception, so one bad line never stops a run.
- Writing sends each record as ONE ``os.write`` of the whole line (no user-space buffer), so a
  process killed at any moment leaves only whole lines, except in the rare case of a kill in the
  middle of the kernel copying a large line; ``scan_done`` cuts such a trailing partial line off.
- ``scan_done`` reads back the indices already recorded, for ``--resume``, into a bitmap (one bit
  per line), so resuming a run of millions of items costs kilobytes, not a set of a million ints.

Only JSON is ever read: nothing here unpickles or evaluates what it reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

__all__ = ["BadLine", "IndexSet", "LineWriter", "ResumeError", "read_lines", "scan_done", "count_lines", "dumps_line"]


@dataclass
class BadLine:
    """A line that could not be decoded: ``JSONDecodeError``, ``UnicodeDecodeError`` or ``RecursionError``."""

    error: Exception


def read_lines(stream: IO[bytes], skip: IndexSet | None = None) -> Iterator[tuple[int, Any]]:
    """``(line_number, value)`` for every non-blank line, or ``(line_number, BadLine)`` if it is not JSON.

    Line numbers count every line (blank ones too) from 0, so they stay the items' identities across
    runs. Lines whose number is in ``skip`` are not decoded at all.
    """
    for number, raw in enumerate(stream):
        if skip is not None and number in skip:
            continue
        if not raw.strip():
            continue
        try:
            yield number, json.loads(raw)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError; absurd nesting
            yield number, BadLine(exc)


def count_lines(path: str, block: int = 1 << 20) -> int:
    """Number of lines in ``path`` (a last line without a newline counts), read in 1 MiB blocks."""
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(block):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def dumps_line(record: dict[str, Any]) -> bytes:
    """One record as a line of strict JSON (``NaN`` refused: it is not JSON). Raises if not serialisable."""
    try:
        return (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode()
    except UnicodeEncodeError:  # a lone surrogate (JSON input may hold "\ud800"): escape, still valid JSON
        return (json.dumps(record, allow_nan=False) + "\n").encode()


class LineWriter:
    """Appends whole lines to a file (or stdout for ``-``) with a single unbuffered write each."""

    def __init__(self, path: str, append: bool = False) -> None:
        self.path = path
        if path == "-":
            self.fd, self._owned = 1, False
        else:
            flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
            self.fd, self._owned = os.open(path, flags, 0o644), True

    def write_line(self, line: bytes) -> None:
        view = memoryview(line)
        while view:  # a regular file takes it all in one write; a pipe may take part of a large line
            view = view[os.write(self.fd, view) :]

    def write(self, record: dict[str, Any]) -> None:
        self.write_line(dumps_line(record))

    def close(self) -> None:
        if self._owned:
            os.close(self.fd)
            self._owned = False

    def __enter__(self) -> LineWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class IndexSet:
    """A growable bitmap of non-negative ints: 125 KB for a million lines."""

    def __init__(self) -> None:
        self._bits = bytearray()
        self.count = 0

    def add(self, index: int) -> bool:
        """Mark ``index``; return False if it was already marked."""
        byte, bit = divmod(index, 8)
        if byte >= len(self._bits):
            self._bits.extend(bytes(max(byte + 1 - len(self._bits), len(self._bits))))
        mask = 1 << bit
        if self._bits[byte] & mask:
            return False
        self._bits[byte] |= mask
        self.count += 1
        return True

    def __contains__(self, index: object) -> bool:
        if not isinstance(index, int) or index < 0:
            return False
        byte, bit = divmod(index, 8)
        return byte < len(self._bits) and bool(self._bits[byte] & (1 << bit))

    def __len__(self) -> int:
        return self.count


class ResumeError(ValueError):
    """An output or errors file that ``--resume`` cannot trust (a whole line that is not our record)."""


def scan_done(path: str, done: IndexSet, truncate: bool = True) -> int:
    """Mark the ``"index"`` of every whole record line of ``path`` in ``done``; return how many lines.

    A trailing line without its newline is what a killed writer leaves: it is cut off the file (when
    ``truncate``) and its item counts as not done. A missing file is an empty one.
    """
    if not os.path.exists(path):
        return 0
    lines, good_end = 0, 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f):
            if not raw.endswith(b"\n"):
                break  # a partial last line: cut below
            try:
                index = json.loads(raw)["index"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ResumeError(f"{path}:{number + 1}: not a rayrunnables record ({exc}); cannot resume") from None
            if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                raise ResumeError(f"{path}:{number + 1}: bad index {index!r}; cannot resume")
            done.add(index)
            lines += 1
            good_end += len(raw)
    if truncate and os.path.getsize(path) != good_end:
        os.truncate(path, good_end)
    return lines
