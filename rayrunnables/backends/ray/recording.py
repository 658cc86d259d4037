"""Run events of one Ray ``invoke``, kept in submission order and replayed into the caller's recorder.

The plan's tasks are all submitted before anything is awaited, so the log is written at submission: a
composite step's start (its input still a pending value), the reference to each task's recorded events
(its second return), the step's end (its output pending). When the invocation is over, every entry is
resolved (the values are in the object store by then) and replayed in that order, so a parent's start
always precedes its children's. A step whose input never came (an earlier step failed) is left out, as
it never started in-process either; one whose output never came ends with the invocation's error.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from typing import Any

import ray
from ray.exceptions import RayTaskError

from ...engine.events import Event, Recorder
from ...runnables.runs import position_tags
from .pending import Pending, flatten, rebuild
from .tasks import convert
from .worker import EVENTS_ATTR

__all__ = ["RunLog", "REPLAY_GRACE"]

#: after a failure, how long the replay waits for what cancelled tasks may still send back
REPLAY_GRACE = 5.0


class RunLog:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.entries: list[tuple[Any, ...]] = []
        self.deadline: float | None = None  # how long replay may wait for what tasks send back
        self._lock = threading.Lock()

    def _add(self, *entry: Any) -> None:
        with self._lock:  # branches that wait in the driver submit from threads
            self.entries.append(entry)

    def start(self, node: Any, run_id: uuid.UUID, parent: uuid.UUID | None, config: dict[str, Any],
              segments: tuple[str, ...], input: Pending, run_name: str | None) -> dict[str, Any]:
        path = " > ".join((*segments, node.label()))
        tags = [*position_tags(segments), *(config.get("tags") or ())]
        ids = {"run_id": run_id, "parent_run_id": parent, "tags": tags}
        start = {**ids, "metadata": dict(config.get("metadata") or {}), "name": run_name or node.run_name(),
                 "run_type": None}
        trace_id = self.recorder.trace_id  # an OpenTelemetry consumer: this run's span id planned here too
        span = None if trace_id is None else (trace_id, random.getrandbits(64) or 1)
        self._add("start", start, input, (time.time_ns(), path, os.getpid(), (), span))
        return ids

    def end(self, ids: dict[str, Any], output: Pending, segments: tuple[str, ...], node: Any) -> None:
        self._add("end", ids, output, " > ".join((*segments, node.label())))

    def recorded(self, events_ref: Any) -> None:
        """A task's second return: the events it recorded."""
        self._add("refs", events_ref)

    def events(self, events: list[Event]) -> None:
        """Events recorded in this process (a step that waits in a driver thread)."""
        self._add("events", events)

    def replay(self, error: BaseException | None) -> None:
        # after a success every task has ended, and each one's second return is there or about to be (it
        # may be noted a moment after the first): wait for it. After a failure, what was cancelled may
        # never return anything: give it a moment (``REPLAY_GRACE``), then leave it out.
        self.deadline = None if error is None else time.monotonic() + REPLAY_GRACE
        skipped: set[uuid.UUID] = set()
        self.parents: dict[uuid.UUID, uuid.UUID | None] = {}
        self.latest: dict[uuid.UUID, int] = {}  # the last moment anything of a run (or its children) happened
        for entry in self.entries:
            kind = entry[0]
            if kind == "start":
                _, start, input, meta = entry
                ok, value = self._resolved(input)
                if not ok:
                    skipped.add(start["run_id"])
                    continue
                self._deliver("on_chain_start", (None, value), start, meta)
            elif kind == "end":
                _, ids, output, path = entry
                if ids["run_id"] in skipped:
                    continue
                ok, value = self._resolved(output)
                # a split step ended when its last part did (its parts' events came before this entry)
                meta = (self.latest.get(ids["run_id"], time.time_ns()), path, os.getpid())
                if ok:
                    self._deliver("on_chain_end", (value,), ids, meta)
                else:
                    self._deliver("on_chain_error", (error,), ids, meta)
            else:
                for method, args, kwargs, meta in self._task_events(entry[1]) if kind == "refs" else entry[1]:
                    self._deliver(method, args, kwargs, meta)

    def _deliver(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], meta: Any) -> None:
        run_id = kwargs.get("run_id")
        if method.endswith("_start") and isinstance(run_id, uuid.UUID):
            self.parents[run_id] = kwargs.get("parent_run_id")
        while isinstance(run_id, uuid.UUID) and self.latest.get(run_id, 0) < meta[0]:
            self.latest[run_id] = meta[0]
            run_id = self.parents.get(run_id)
        self.recorder.deliver(method, args, kwargs, meta)

    def _wait(self, refs: list[Any]) -> bool:
        """Whether every one of ``refs`` is there (waiting as ``replay`` allows)."""
        timeout = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout, fetch_local=False)
        return len(ready) == len(refs)

    def _resolved(self, pending: Pending) -> tuple[bool, Any]:
        """The value of ``pending`` if every object it needs is there and fine."""
        recipe, refs = flatten(pending)
        try:
            if refs and not self._wait(refs):
                return False, None
            return True, rebuild(recipe, ray.get(refs) if refs else [], driver=True)
        except Exception:  # a task failed or was cancelled, or a recipe cannot apply
            return False, None

    def _task_events(self, ref: Any) -> list[Event]:
        try:
            if not self._wait([ref]):  # cancelled before it ended: nothing came back
                return []
            events: list[Event] = ray.get(ref)
            return events
        except RayTaskError as err:  # it failed: its events came with its error
            return list(getattr(convert(err), EVENTS_ATTR, None) or [])
        except Exception:
            return []
