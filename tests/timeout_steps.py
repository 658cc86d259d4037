"""Steps for the timeout, backup and failure-budget tests, importable by Ray and executor workers.

A hung item sleeps far longer than any test waits (a thread in this process cannot be killed: it ends
by itself). "First attempt" is told by a marker file, so it holds across processes.
"""

from __future__ import annotations

import os
import time

HANG = 120.0


def maybe_hang(x: int) -> int:
    """Items 7, 47, 87, ... (5 of 200) hang; the others answer at once."""
    if x % 40 == 7:
        time.sleep(HANG)
    return x * 2


def maybe_hang_marked(item: tuple[str, int]) -> int:
    """``maybe_hang`` that leaves ``<x>.ended`` in ``folder`` if a hang ever runs to its end."""
    folder, x = item
    out = maybe_hang(x)
    if x % 40 == 7:
        open(os.path.join(folder, f"{x}.ended"), "w").close()
    return out


def hang_first_time(marker: str) -> str:
    """Hangs on its first call for ``marker`` (the file does not exist yet), answers on any later one."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return "second"
    os.close(fd)
    time.sleep(HANG)
    return "first"


def straggle_once(item: tuple[str, int]) -> int:
    """Item 5 straggles (20 s) on its first attempt; every item takes 20 ms."""
    folder, x = item
    time.sleep(0.02)
    if x == 5:
        try:
            fd = os.open(os.path.join(folder, "5.first"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return x
        os.close(fd)
        time.sleep(20)
        open(os.path.join(folder, "5.first-ended"), "w").close()
    return x


def fail_every_fifth(x: int) -> int:
    if x % 5 == 0:
        raise ValueError(f"item {x} fails")
    return x
