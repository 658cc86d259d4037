"""Steps for the cancellation tests: a branch that beats a heartbeat file, and a branch that fails once
the heartbeat has started, so the cancel always meets a running task.

A heartbeat never ends by itself within any wait of a test (``LONG``): only a cancel, a kill, or the
stop file the test writes when it is over (``stop``, in a ``finally``) ends it. So a call that waits for
an uncancelled heartbeat returns only when a ``watchdog`` stops it (and the test fails on that), and one
that returns leaving it running sees it beat on (``stops_beating`` is False).

Module-level in an installed package, so Ray's and an executor's workers and the subprocess driver of
the SIGINT test import the very same steps by name. The input of the branches is the heartbeat file's path.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator

LONG = 600.0  # seconds a heartbeat goes on when nothing stops it: longer than any test waits
BEAT = 0.1  # seconds between beats
QUIET = 3.0  # a heartbeat that has not beaten for this long (30 beats) has stopped
SETTLE = 60.0  # the most a test waits for a cancelled heartbeat to go quiet


def stop_file(path: str) -> str:
    return path + ".stop"


def stop(path: str) -> None:
    """End every heartbeat on ``path`` that is still running (a test's clean-up, in a ``finally``)."""
    with open(stop_file(path), "w"):
        pass


def heartbeat(path: str) -> str:
    """A busy loop that appends a byte every 0.1 s, running whatever the machine's load, until cancelled,
    killed, or ``stop``-ped (or ``LONG`` seconds pass)."""
    heartbeat_for(path, time.monotonic() + LONG)
    return path


def fail_once_beating(path: str) -> str:
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    raise ValueError("the fail branch failed")


def beats(path: str) -> int:
    return os.path.getsize(path) if os.path.exists(path) else 0


def stops_beating(path: str, within: float = SETTLE, quiet: float = QUIET) -> bool:
    """Whether the heartbeat on ``path`` goes quiet (no beat for ``quiet`` seconds) within ``within``
    seconds: a cancelled one does; one left running beats on until ``stop`` (and this returns False)."""
    deadline = time.monotonic() + within
    last, since = beats(path), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(BEAT)
        now = beats(path)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return True
    return False


def stubborn_heartbeat(path: str) -> str:
    """A heartbeat that swallows ``KeyboardInterrupt`` (as a C call that never returns to Python would
    ignore it): only killing its process (or ``stop``) stops it."""
    end = time.monotonic() + LONG
    while time.monotonic() < end and not os.path.exists(stop_file(path)):
        try:
            heartbeat_for(path, end)
        except KeyboardInterrupt:
            continue
    return path


def heartbeat_for(path: str, end: float) -> None:
    next_beat = 0.0
    stopper = stop_file(path)
    while time.monotonic() < end:
        if time.monotonic() >= next_beat:
            if os.path.exists(stopper):
                return
            with open(path, "a") as f:
                f.write(".")
            next_beat = time.monotonic() + BEAT


@contextlib.contextmanager
def watchdog(path: str, seconds: float = SETTLE) -> Iterator[Callable[[], bool]]:
    """Stop the heartbeats on ``path`` if the block has not ended ``seconds`` after it began; yields
    whether it had to (read it after the block: a call that waited for an uncancelled heartbeat returns
    only then, and the test fails on it instead of hanging)."""
    fired = threading.Event()

    def fire() -> None:
        fired.set()
        stop(path)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield fired.is_set
    finally:
        timer.cancel()
