"""Computing steps and waiting steps: which of a chain's branches and items may share a thread.

Threads help a step that waits (an HTTP call, an LLM, a sleep) and hurt a step that computes: pure
Python under the GIL only fights its sibling threads for it. So every step has an *execution class*:

- declared: ``with_options(io_bound=True)`` (waiting) or ``io_bound=False`` (computing); an ``async``
  function is waiting;
- otherwise learned from its first calls in this process: the thread CPU time a call used, against
  the CPU time it could have had. Under a GIL shared by ``k`` busy threads a computing call gets only
  about ``1/k`` of its wall time, so "could have had" is the wall time less what the other threads of
  the process used (never below ``wall / k``): a computing call takes all of it, a waiting call almost
  none, however busy the process is.

A subtree is *waiting* if any step in it waits, *computing* once every step in it is known to compute,
and *unknown* until then (the engine then keeps today's threads). Learned classes live on the node
object of this process (never pickled, so every Ray worker learns for itself) and once learned cost
one attribute read: no lock, no clock on the hot path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "COMPUTING",
    "WAITING",
    "UNKNOWN",
    "StepProfile",
    "profile_of",
    "measured",
    "subtree_class",
    "describe_class",
    "SAMPLES_TO_LEARN",
]

COMPUTING, WAITING, UNKNOWN = "computing", "waiting", "unknown"
SAMPLES_TO_LEARN = 3
#: share of the available CPU a call must use to count as computing
COMPUTING_SHARE = 0.5


class _Active:
    """How many measured calls run in this process right now (only while steps are being learned)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def enter(self) -> int:
        with self._lock:
            self.count += 1
            return self.count

    def leave(self) -> int:
        with self._lock:
            n = self.count
            self.count -= 1
            return n


_ACTIVE = _Active()


class StepProfile:
    """What this process has measured of one step's calls, until its class is known."""

    __slots__ = ("available", "cpu", "kind", "samples")

    def __init__(self) -> None:
        self.cpu = 0.0
        self.available = 0.0
        self.samples = 0
        self.kind = UNKNOWN

    def observe(self, cpu: float, available: float) -> None:
        self.cpu += cpu
        self.available += available
        self.samples += 1
        if self.samples >= SAMPLES_TO_LEARN:
            share = self.cpu / self.available if self.available > 0 else 1.0
            self.kind = COMPUTING if share >= COMPUTING_SHARE else WAITING


def profile_of(node: Any) -> StepProfile:
    """The node's profile in this process, created on first use."""
    profile: StepProfile | None = node.__dict__.get("_profile")
    if profile is None:
        profile = StepProfile()
        object.__setattr__(node, "_profile", profile)  # frozen dataclass: bookkeeping, not a field
    return profile


def measured(profile: StepProfile, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, adding one sample of its CPU use to ``profile``; a failing call adds none."""
    k_start = _ACTIVE.enter()
    wall0, cpu0, proc0 = time.perf_counter(), time.thread_time(), time.process_time()
    try:
        result = fn(*args)
    finally:
        wall = time.perf_counter() - wall0
        cpu = time.thread_time() - cpu0
        others = time.process_time() - proc0 - cpu
        k = max(k_start, _ACTIVE.leave())
    if wall > 0:
        profile.observe(cpu, max(wall - others, wall / k, cpu))
    return result


def _declared(node: Any) -> str | None:
    options = getattr(node, "options", None)
    if isinstance(options, dict) and "io_bound" in options:
        return WAITING if options["io_bound"] else COMPUTING
    if getattr(node, "is_async", False):
        return WAITING
    return None


def subtree_class(node: Any) -> str:
    """The class of everything ``node`` runs, cached on the node once it cannot change.

    Steps never called in this process (a fallback never needed, a branch never taken) say nothing:
    the class comes from the steps that ran, and is recomputed until every step has run and is known.
    """
    cached: str | None = node.__dict__.get("_class")
    if cached is not None:
        return cached
    kind, final = _classify(node)
    if final and kind is not None:
        object.__setattr__(node, "_class", kind)
    return kind or UNKNOWN


def _classify(node: Any) -> tuple[str | None, bool]:
    """``(class or None when nothing of it ran yet, whether that is final)``."""
    cached: str | None = node.__dict__.get("_class")
    if cached is not None:
        return cached, True
    declared = _declared(node)
    if declared is not None:
        return declared, True
    kinds: list[str | None] = []
    finals: list[bool] = []
    if getattr(node, "learns", False):
        profile: StepProfile | None = node.__dict__.get("_profile")
        kinds.append(None if profile is None else profile.kind)
        finals.append(profile is not None and profile.kind != UNKNOWN)
    for _, child in node.children():
        kind, final = _classify(child)
        kinds.append(kind)
        finals.append(final)
    if WAITING in kinds:
        return WAITING, True  # one waiting step is enough, whatever the others turn out to be
    if UNKNOWN in kinds:
        return UNKNOWN, False
    if COMPUTING in kinds or not kinds:  # no user code at all (a pick, a bare passthrough): nothing waits
        return COMPUTING, all(finals)
    return None, False


def describe_class(node: Any) -> str:
    """How ``explain()`` shows a step's class in this process."""
    declared = _declared(node)
    if declared is not None:
        return f"{declared}: declared"
    if not getattr(node, "learns", False):
        return ""
    kind = subtree_class(node)
    return "not yet learned in this process" if kind == UNKNOWN else f"{kind}: learned in this process"
