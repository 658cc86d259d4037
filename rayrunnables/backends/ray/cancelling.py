"""Cancelling Ray tasks without bringing the driver down.

Ray 2.60's driver aborts (``RAY_CHECK`` "Tried to complete task that was not pending", in
``TaskManager::CompletePendingTask``) when ``ray.cancel`` lands while the task's reply is being handled:
the reply handler has already taken the task off the list of executing tasks, so the cancel fails the
task itself, and the completion that follows finds it gone. Seen in this project's suite, on a batch's
in-flight chunks and on a stream's task, with the completion 44 ms after the cancel on a loaded machine.
The same family of races was fixed for retries in ray-project/ray#54798; this one is still open.

The tasks a batch cancels tend to be finishing right then (a failure stops the batch while chunks as
small as the failed one end), and a stream's reader often leaves at its generator's last item. So what is
to be cancelled first gets ``SETTLE`` seconds to finish, and only what still runs after them is
cancelled. That narrows the race to replies that arrive in the instant between the wait and the cancel;
it cannot close it, which only Ray can. A finished task is never cancelled either (ray-project/ray#54846).
"""

from __future__ import annotations

from typing import Any

import ray

__all__ = ["SETTLE", "cancel_running", "still_running", "stop_stream"]

#: seconds the tasks about to be cancelled get to finish first
SETTLE = 0.2


def still_running(refs: list[Any], settle: float = 0.0) -> list[Any]:
    """The refs whose tasks have not finished within ``settle`` seconds (each ref once)."""
    refs = list(dict.fromkeys(refs))
    if not refs:
        return []
    try:
        _, running = ray.wait(refs, num_returns=len(refs), timeout=settle, fetch_local=False)
    except Exception:  # a ref Ray no longer knows: ask one by one
        running = []
        for ref in refs:
            try:
                if not ray.wait([ref], num_returns=1, timeout=0, fetch_local=False)[0]:
                    running.append(ref)
            except Exception:  # gone already: nothing runs
                pass
    return running


def cancel_running(refs: list[Any], *, force: bool = False, settle: float = SETTLE) -> list[Any]:
    """``ray.cancel`` the tasks of ``refs`` that still run after ``settle`` seconds; those refs."""
    running = still_running(refs, settle)
    for ref in running:
        try:
            ray.cancel(ref, force=force, recursive=True)
        except Exception:  # finished or gone meanwhile
            pass
    return running


def stop_stream(chunks: Any) -> None:
    """Cancel a generator task the reader left before its end, unless it ends within ``SETTLE``."""
    try:
        if still_running([chunks.completed()], SETTLE):
            ray.cancel(chunks)
    except Exception:  # gone already: nothing to stop
        pass
