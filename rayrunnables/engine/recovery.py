"""Lost chunks for the one scheduler (``engine.scheduler``): a crash costs only the item that caused it.

A chunk is *lost* when its runner's ``result`` raises ``WorkerLost``: the process running it died and the
backend's own retries (Ray's ``max_retries``/``max_task_retries``) are spent. Its items are then re-run,
each part once at most, until the item that kills its process is alone:

- a chunk whose process ran nothing else (a Ray task) is to blame: it is split in two halves, which run
  again beside the other chunks; a half that is lost again is split again; an item lost alone gets the
  error (with the step path and its index), every other item its value;
- a chunk whose process also served other chunks (``WorkerLost.shared``: a pool actor, a process pool,
  where one crash loses every chunk queued there) may be innocent: it is re-run whole, *alone* (nothing
  else in flight meanwhile), so a loss then is its own, and is split as above, its parts alone too.

Every re-run holds fewer items than the run it replaces, or is the one whole re-run alone of a shared
loss: a deterministic crasher costs about ``2 * log2(chunk size)`` more runs, never a loop.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from ..errors import WorkerLost

__all__ = ["Recovery"]


@dataclass
class _Run:
    items: list[tuple[int, Any]]
    alone: bool  # nothing else was in flight while it ran: a loss is its own


class Recovery:
    """The scheduler's re-runs of lost chunks: what to submit next, and what a loss means."""

    def __init__(self) -> None:
        self.runs: dict[Any, _Run] = {}
        self.beside: deque[list[tuple[int, Any]]] = deque()  # parts that may run beside other chunks
        self.alone: deque[list[tuple[int, Any]]] = deque()  # re-runs that must run with nothing else in flight
        self.solo: Any = None  # the handle of the re-run running alone

    def pending(self) -> bool:
        return bool(self.beside or self.alone)

    def holds_back(self) -> bool:
        """Whether nothing new may start now: a re-run waits for the chunks in flight to end, or runs alone."""
        return self.solo is not None or bool(self.alone)

    def next(self, in_flight: int) -> tuple[list[tuple[int, Any]], bool] | None:
        """The next re-run to submit ``(items, alone)``, if one may start with ``in_flight`` chunks running."""
        if self.solo is not None:
            return None
        if self.alone:
            return (self.alone.popleft(), True) if in_flight == 0 else None
        if self.beside:
            return self.beside.popleft(), False
        return None

    def started(self, handle: Any, items: list[tuple[int, Any]], alone: bool) -> None:
        self.runs[handle] = _Run(items, alone)
        if alone:
            self.solo = handle

    def forget(self, handle: Any) -> None:
        """The chunk ended (a result, a cancel, an abandoned attempt): nothing to re-run."""
        self.runs.pop(handle, None)
        if self.solo is handle:
            self.solo = None

    def lost(self, handle: Any, exc: BaseException) -> bool:
        """Whether ``exc`` lost the chunk of ``handle`` and its items were queued to run again. False: the
        error is the items' own (an item lost alone, or a failure that is not a lost process)."""
        run = self.runs.pop(handle, None)
        if self.solo is handle:
            self.solo = None
        if run is None or not isinstance(exc, WorkerLost):
            return False
        if exc.shared and not run.alone:  # maybe innocent: once more, whole, with nothing beside it
            self.alone.append(run.items)
            return True
        if len(run.items) == 1:
            return False  # the item that kills its process, alone: it gets the error
        half = len(run.items) // 2
        (self.alone if exc.shared else self.beside).extend([run.items[:half], run.items[half:]])
        return True
