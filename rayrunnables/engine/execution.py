"""Computing steps and waiting steps: which of a chain's branches and items may share a thread.

Threads help a step that waits (an HTTP call, an LLM, a sleep) and hurt a step that computes: pure
Python under the GIL only fights its sibling threads for it. So every step has an *execution class*:

- declared: ``with_options(io_bound=True)`` (waiting) or ``io_bound=False`` (computing); an ``async``
  function is waiting;
- otherwise learned from its first calls in this process. A call that never blocked (no voluntary
  context switch of its thread, where the OS reports them) computed all along, however long other
  processes kept it off the CPU. Otherwise the thread CPU time it used is compared with the CPU time
  it could have had: under a GIL shared by ``k`` busy threads a computing call gets only about ``1/k``
  of its wall time, so "could have had" is the wall time less what the other threads of the process
  used (never below ``wall / k``). A computing call takes most of it, a waiting call almost none.

A subtree is *waiting* if any step in it waits, *computing* once every step in it is known to compute,
and *unknown* until then (the engine then keeps today's threads). What a process learned is never
pickled (every Ray worker learns for itself), but a step keeps an id when it is pickled, so a worker
that unpickles the same step again for every chunk finds what it learned from the earlier chunks. A
forked child learns for itself too: what it learned lives in ``process_state``, and a profile from an
earlier epoch (the parent's, found on a step the child inherited) is started afresh.
Once learned, a class costs one attribute read: no lock, no clock on the hot path.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from ..protocols import Node
from .process_state import STATE

__all__ = [
    "COMPUTING",
    "WAITING",
    "UNKNOWN",
    "StepProfile",
    "profile_of",
    "step_state",
    "measured",
    "call_step",
    "subtree_class",
    "describe_class",
    "SAMPLES_TO_LEARN",
]

COMPUTING, WAITING, UNKNOWN = "computing", "waiting", "unknown"
SAMPLES_TO_LEARN = 3
RESAMPLE_EVERY = 64
RESAMPLE_WEIGHT = 0.25
#: share of the available CPU a call must use to count as computing. Waiting calls use ~0 (a sleep, an
#: HTTP or LLM call); the margin is for other processes taking the CPU from a computing one.
COMPUTING_SHARE = 0.3

try:
    import resource

    _RUSAGE_THREAD: int | None = getattr(resource, "RUSAGE_THREAD", None)
except ImportError:  # not on this platform: the CPU share alone decides
    _RUSAGE_THREAD = None


def _voluntary_switches() -> int:
    return resource.getrusage(_RUSAGE_THREAD).ru_nvcsw if _RUSAGE_THREAD is not None else -1


class StepProfile:
    """What this process has measured of one step's calls.

    The class is decided by the mean CPU share of the first ``SAMPLES_TO_LEARN`` calls (or by one call
    that ran alone). After that, every call of a waiting step and one call in ``RESAMPLE_EVERY`` of a
    computing step is measured again and moves a running average, so a class learned in a moment of
    contention (or a step that changes, such as a cache that stops hitting) is corrected. A computing
    step's hot path is one decrement of ``countdown``: no clock, no lock.
    """

    __slots__ = ("countdown", "epoch", "kind", "samples", "share")

    def __init__(self) -> None:
        self.epoch = STATE.epoch  # learned in this process (a forked child's epoch is a new one)
        self.share = 0.0
        self.samples = 0
        self.kind = UNKNOWN
        self.countdown = 0  # measure while < 0

    def observe(self, share: float, alone: bool = False) -> None:
        """One call's CPU share; a call that ran ``alone`` (no other thread of this process busy) is
        trusted at once, the others are averaged over ``SAMPLES_TO_LEARN`` calls."""
        self.samples += 1
        if alone and self.kind == UNKNOWN:
            self.share = share
        elif self.samples <= SAMPLES_TO_LEARN and self.kind == UNKNOWN:
            self.share += (share - self.share) / self.samples  # the running mean
            if self.samples < SAMPLES_TO_LEARN:
                self.countdown = 0
                return
        else:
            self.share += RESAMPLE_WEIGHT * (share - self.share)
        kind = COMPUTING if self.share >= COMPUTING_SHARE else WAITING
        if kind != self.kind:
            self.kind = kind
            STATE.generation += 1
        # a waiting call is slow anyway: every one is measured, so a computing step taken for a waiting one
        # in a moment of contention is set right within a few calls once it passes
        self.countdown = RESAMPLE_EVERY if kind == COMPUTING else 0


def profile_of(node: Any) -> StepProfile:
    """The node's profile in this process, created on first use."""
    profile = _known_profile(node)
    if profile is None:
        profile = StepProfile()
        step_id = node.__dict__.get("_step_id")
        if step_id is not None:
            profile = STATE.profiles.setdefault(step_id, profile)
        object.__setattr__(node, "_profile", profile)  # frozen dataclass: bookkeeping, not a field
    return profile


_LEARNED_HERE = ("_profile", "_class")


def step_state(node: Any) -> dict[str, Any]:
    """A node's pickled state: its fields and its step id, never what this process learned of it."""
    state: dict[str, Any] = node.__dict__
    if "_step_id" not in state:
        object.__setattr__(node, "_step_id", uuid.uuid4().hex[:16])
    return {k: v for k, v in state.items() if k not in _LEARNED_HERE}


def _known_profile(node: Any) -> StepProfile | None:
    """What this process learned of ``node``: its own profile, or the one of a pickled copy of it (the
    profiles of steps that arrived pickled are kept by step id: a Ray worker unpickles a step anew for
    every chunk)."""
    profile: StepProfile | None = node.__dict__.get("_profile")
    if profile is None or profile.epoch != STATE.epoch:
        step_id = node.__dict__.get("_step_id")
        profile = None if step_id is None else STATE.profiles.get(step_id)
        if profile is not None:
            object.__setattr__(node, "_profile", profile)
    return profile


def call_step(node: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` for ``node``'s user function: measured while its class is learned, and now and then
    after; otherwise a plain call."""
    profile: StepProfile | None = node.__dict__.get("_profile")
    if profile is None or profile.epoch != STATE.epoch:
        profile = profile_of(node)
    profile.countdown -= 1
    if profile.countdown >= 0:
        return fn(*args)
    return measured(profile, fn, *args)


def measured(profile: StepProfile, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, adding one sample of its CPU share to ``profile``; a failing call adds none."""
    k_start = STATE.running.enter()
    switches0 = _voluntary_switches()
    wall0, cpu0, proc0 = time.perf_counter(), time.thread_time(), time.process_time()
    try:
        result = fn(*args)
    finally:
        wall = time.perf_counter() - wall0
        cpu = time.thread_time() - cpu0
        others = time.process_time() - proc0 - cpu
        k = max(k_start, STATE.running.leave())
        never_blocked = switches0 >= 0 and _voluntary_switches() == switches0
    alone = k == 1 and others <= 0.1 * wall
    if never_blocked or wall <= 0:
        profile.observe(1.0, alone)
    else:
        profile.observe(cpu / max(wall - others, wall / k, cpu, 1e-9), alone)
    return result


def _declared(node: Node) -> str | None:
    options = node.options
    if "io_bound" in options:
        return WAITING if options["io_bound"] else COMPUTING
    if node.waits:
        return WAITING  # an async function, or a step that says it waits (a rate-limited call to a provider)
    return None


def subtree_class(node: Node) -> str:
    """The class of everything ``node`` runs, cached on the node once it cannot change.

    Steps never called in this process (a fallback never needed, a branch never taken) say nothing:
    the class comes from the steps that ran, and is recomputed until every step has run and is known.
    """
    kind, final = _classify(node)
    if final and kind is not None:
        object.__setattr__(node, "_class", (kind, STATE.generation))
    return kind or UNKNOWN


def _classify(node: Node) -> tuple[str | None, bool]:
    """``(class or None when nothing of it ran yet, whether that is final)``."""
    cached: tuple[str, int] | None = node.__dict__.get("_class")
    if cached is not None and cached[1] == STATE.generation:
        return cached[0], True
    declared = _declared(node)
    if declared is not None:
        return declared, True
    kinds: list[str | None] = []
    finals: list[bool] = []
    if node.learns:
        profile = _known_profile(node)
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


def describe_class(node: Node) -> str:
    """How ``explain()`` shows a step's class in this process."""
    declared = _declared(node)
    if declared is not None:
        return f"{declared}: declared"
    if not node.learns:
        return ""
    kind = subtree_class(node)
    return "not yet learned in this process" if kind == UNKNOWN else f"{kind}: learned in this process"
