"""Per-item deadlines and straggler backups for the one scheduler (``engine.scheduler``).

Only a batch of a step with ``with_timeout`` outermost, or declared safe to run twice
(``with_options(speculative=True)`` or ``speculative_after=seconds``), is tracked: its items go one per
chunk, and each submission (an *attempt*) remembers when it started. The scheduler then wakes at the
next deadline or backup check instead of blocking until a chunk ends:

- an attempt past its deadline is abandoned (the runner stops it as hard as its backend allows) and,
  unless its twin still runs, the item becomes a ``TimeoutError``;
- an attempt running longer than the backup threshold (given, or ``BACKUP_FACTOR`` times the measured
  seconds per item) gets one twin when the window has room; the first to finish wins, the other is
  abandoned. At most one backup per item.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..context import RunContext
from ..protocols import DEADLINE_SLACK, ChunkRunner, Node

__all__ = ["Attempt", "Tracker", "BACKUP_FACTOR", "BACKUP_FLOOR", "BACKSTOP_SLACK"]

#: a learned backup threshold: this many times the step's measured seconds per item...
BACKUP_FACTOR = 4.0
#: ...but never less than this (a run of fast items must not back up every hiccup)
BACKUP_FLOOR = 0.25
#: the backstop's default slack (``ChunkRunner.deadline_slack``)
BACKSTOP_SLACK = DEADLINE_SLACK


@dataclass
class Attempt:
    items: list[tuple[int, Any]]
    ctx: RunContext
    started: float = field(default_factory=time.monotonic)
    twin: Any = None  # the other attempt's handle, once backed up
    backup: bool = False


class Tracker:
    """Attempts by handle: their deadlines and their twins."""

    def __init__(self, deadline: float | None, speculation: float | bool | None, slack: float) -> None:
        self.deadline = None if deadline is None else deadline + slack
        self.seconds = deadline
        self.after = speculation if isinstance(speculation, float) else None
        self.speculate = bool(speculation)
        self.attempts: dict[Any, Attempt] = {}

    @classmethod
    def of(cls, node: Node, runner: ChunkRunner) -> Tracker | None:
        """The tracker of a batch of ``node`` (its ``item_timeout`` and ``speculation`` hooks), or None when
        neither is set (then nothing is tracked)."""
        deadline, speculation = node.item_timeout, node.speculation
        if deadline is None and not speculation:
            return None
        return cls(deadline, speculation, runner.deadline_slack)

    def add(self, handle: Any, items: list[tuple[int, Any]], ctx: RunContext) -> None:
        self.attempts[handle] = Attempt(items, ctx)

    def threshold(self, per_item: float | None) -> float | None:
        if not self.speculate:
            return None
        if self.after is not None:
            return self.after
        return None if per_item is None else max(BACKUP_FACTOR * per_item, BACKUP_FLOOR)

    def next_wake(self, per_item: float | None, now: float) -> float:
        """Seconds until the next deadline or backup check (at least a millisecond)."""
        limits = []
        threshold = self.threshold(per_item)
        for attempt in self.attempts.values():
            if self.deadline is not None:
                limits.append(attempt.started + self.deadline)
            if threshold is not None and attempt.twin is None:
                limits.append(attempt.started + threshold)
        if not limits:
            return 1.0 if self.speculate else 60.0  # a threshold not learned yet: look again soon
        return max(0.001, min(limits) - now)

    def expired(self, now: float) -> list[Any]:
        if self.deadline is None:
            return []
        return [h for h, a in self.attempts.items() if now - a.started >= self.deadline]

    def stragglers(self, per_item: float | None, now: float, room: int) -> list[Any]:
        threshold = self.threshold(per_item)
        if threshold is None or room <= 0:
            return []
        late = [h for h, a in self.attempts.items() if a.twin is None and not a.backup and now - a.started >= threshold]
        return late[:room]

    def pair(self, original: Any, backup: Any, items: list[tuple[int, Any]], ctx: RunContext) -> None:
        self.attempts[backup] = Attempt(items, ctx, twin=original, backup=True)
        self.attempts[original].twin = backup

    def drop(self, handle: Any) -> Any:
        """Forget ``handle``; return its twin's handle if the twin still runs."""
        attempt = self.attempts.pop(handle, None)
        if attempt is None:
            return None
        attempt.ctx.cancel.cancel()
        twin = attempt.twin
        if twin is not None and twin in self.attempts:
            self.attempts[twin].twin = None
            self.attempts[twin].backup = True  # no second backup for this item
            return twin
        return None
