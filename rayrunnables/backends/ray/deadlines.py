"""The backstop of a deadline on Ray: an item whose task did not stop at its deadline is stopped here.

A timed call runs on its task's main thread, which a watchdog interrupts at the deadline
(``runnables.timeout.interrupt_on_deadline``: SIGINT, as Ray's own cancel). A call that does not return to
Python (a C call holding on) keeps its task running; the scheduler abandons it ``BACKSTOP`` seconds after
its deadline, and ``stop`` then does what Ray allows:

1. ``ray.cancel(ref)``, and after ``GRACE`` seconds, if it still runs, ``ray.cancel(ref, force=True)``: its
   worker process is killed and Ray starts another. A forced cancel is not retried, and a chunk holds one
   item when a deadline is set, so no other item is lost or run twice.
2. A stateful step's call runs on a pool actor, where Ray cannot interrupt a running call: it is
   cancelled (``ray.get_runtime_context().is_canceled()`` turns True in it), and after the grace the
   actor is killed and restarted by Ray (its constructor runs again; calls queued on it are retried).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import ray

from ...protocols import deadline_slack
from .cancelling import SETTLE, cancel_running, still_running

if TYPE_CHECKING:
    from .chunks import RayChunkRunner

__all__ = ["Deadlines", "BACKSTOP", "GRACE"]

#: seconds after an item's deadline (counted from its submission) before its task is stopped from here
#: (``RAYRUNNABLES_DEADLINE_SLACK`` sets it)
BACKSTOP = deadline_slack(10.0)
#: seconds a cancelled task may take to stop before it is force-cancelled
GRACE = 2.0


class Deadlines:
    """Stops abandoned attempts of one chunk runner: cancel now, force (or kill the actor) after ``GRACE``."""

    def __init__(self, runner: RayChunkRunner) -> None:
        self.runner = runner
        self.forced = 0  # attempts that needed the hard stop (for tests and explain)

    def stop(self, handles: list[Any]) -> None:
        actors = {ref: self.runner.release(ref) for ref in handles}
        for ref in cancel_running(handles):
            timer = threading.Timer(GRACE, self._force, (ref, actors[ref]))
            timer.daemon = True
            timer.start()

    def _force(self, ref: Any, actor: int | None) -> None:
        if not still_running([ref], SETTLE):
            return
        self.forced += 1
        try:
            if actor is None:
                ray.cancel(ref, force=True, recursive=True)
            elif self.runner.pool is not None:  # a running actor call cannot be interrupted: restart it
                ray.kill(self.runner.pool.actors[actor], no_restart=False)
        except Exception:  # finished or gone meanwhile
            pass
