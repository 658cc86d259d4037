"""Steps for the sibling-cancellation tests: a branch that beats a heartbeat file, and a branch that
fails once the heartbeat has started, so the cancel always meets a running task.

Module-level, so the subprocess driver of the SIGINT test imports the very same steps (rayrunnables
ships this module to the workers by value). The input of both branches is the heartbeat file's path.
"""

from __future__ import annotations

import os
import time


def heartbeat(path: str) -> str:
    """Up to 20 s of a busy loop that appends a byte every 0.1 s: running whatever the machine's load."""
    heartbeat_for(path, time.monotonic() + 20)
    return path


def fail_once_beating(path: str) -> str:
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    raise ValueError("the fail branch failed")


def beats(path: str) -> int:
    return os.path.getsize(path) if os.path.exists(path) else 0


def still_beating(path: str) -> bool:
    """Whether the heartbeat goes on once a cancel has had time to land."""
    time.sleep(1.5)
    before = beats(path)
    time.sleep(2.0)
    return beats(path) != before


def stubborn_heartbeat(path: str) -> str:
    """A heartbeat that swallows ``KeyboardInterrupt`` (as a C call that never returns to Python would
    ignore it): only killing its process stops it. Ends by itself after 40 s."""
    end = time.monotonic() + 40
    while time.monotonic() < end:
        try:
            heartbeat_for(path, end)
        except KeyboardInterrupt:
            continue
    return path


def heartbeat_for(path: str, end: float) -> None:
    next_beat = 0.0
    while time.monotonic() < end:
        if time.monotonic() >= next_beat:
            with open(path, "a") as f:
                f.write(".")
            next_beat = time.monotonic() + 0.1
