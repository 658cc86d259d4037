"""Which process ran each step of a request, and when: what the playground draws as a timeline.

Why a handler of the raw run records: LangChain's events say what ran but not where. Each record here
carries ``(time_ns, step_path, pid, ...)`` from the process the step ran in (a Ray worker, the replica),
so a handler with ``on_run_event`` sees where every run started and ended. Only the playground asks for
it (``"timeline": true`` in a ``/stream_events`` body); LangServe's clients never see it.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["TimelineRecorder"]


class TimelineRecorder:
    """Collects one span per run: name, step path, pid, start and end (ns, the run's own process clock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: dict[str, dict[str, Any]] = {}

    def on_run_event(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], meta: Any) -> None:
        run_id = kwargs.get("run_id")
        if run_id is None or not meta:
            return
        key = str(run_id)
        when, step, pid = meta[0], meta[1], meta[2]
        with self.lock:
            if method.endswith("_start"):
                serialized = kwargs.get("serialized") or (args[0] if args and isinstance(args[0], dict) else {})
                name = kwargs.get("name") or (serialized or {}).get("name") or method[3:-6]
                parent = kwargs.get("parent_run_id")
                self.spans[key] = {"run_id": key, "name": str(name), "step": step or "", "pid": pid, "start_ns": when,
                                   "end_ns": None, "parent": str(parent) if parent else None, "error": False}
            elif method.endswith(("_end", "_error")) and key in self.spans:
                self.spans[key]["end_ns"] = when
                self.spans[key]["error"] = method.endswith("_error")

    def snapshot(self) -> list[dict[str, Any]]:
        """The spans, earliest first; one not ended yet ends at the latest time seen."""
        with self.lock:
            spans = [dict(s) for s in self.spans.values()]
        last = max((s["end_ns"] or s["start_ns"] for s in spans), default=0)
        for s in spans:
            if s["end_ns"] is None:
                s["end_ns"] = last
        return sorted(spans, key=lambda s: s["start_ns"])
