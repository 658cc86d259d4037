"""Per-process services a step may need while it runs: the one instance of a stateful step's class,
and the pacer of a rate-limited step (``rayrunnables.pacing``).

A backend hands its own ``Services`` to the steps through the ``RunContext``: in this process they
are plain objects (this process's ``LocalServices`` is ``engine.process_state.STATE.services``, made anew
in a forked child); on Ray, the same questions are answered by actors shared by the whole cluster.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .pacing import Pace, Pacer
from .protocols import Services
from .recent import Recent

if TYPE_CHECKING:
    from .runnables.actor import RunnableActor

__all__ = ["Services", "LocalServices", "INSTANCES_KEPT", "PACERS_KEPT"]

INSTANCES_KEPT = 64  # stateful steps' instances (models, clients) a process keeps, the most recently used
PACERS_KEPT = 1024


class LocalServices:
    """Services of this process: one instance per stateful step, one pacer per rate-limit key, one
    object per lazily built step."""

    def __init__(self) -> None:
        # reentrant: a constructor may itself build another step's instance (a stateful step that runs a chain)
        self._lock = threading.RLock()
        # bounded: a long-lived worker receives new chains all day (``recent``)
        self._instances: Recent[str, Any] = Recent(INSTANCES_KEPT)
        self._pacers: Recent[str, Any] = Recent(PACERS_KEPT)
        # where a pacer shared by more than this process is found by key (set in a Ray Data worker, whose
        # chain runs in-process but whose pace is the run's, held by the driver's limiter actor)
        self.find_pacer: Callable[[str], Any] | None = None

    def instance(self, node: RunnableActor) -> Any:
        return self.once(node.key, node.construct)

    def once(self, key: str, build: Callable[[], Any]) -> Any:
        """``build()`` once in this process under ``key``, even when many threads ask at the same moment."""
        found = self._instances.get(key)
        if found is not None:
            return found
        with self._lock:
            found = self._instances.get(key)
            return found if found is not None else self._instances.setdefault(key, build())

    def rate_limiter(self, key: str, pace: Pace) -> Any:
        """The pacer of ``key``: the run's shared one where ``find_pacer`` knows it, else one made here on
        first use with the first step's ``pace`` (steps sharing the key share it)."""
        found = self._pacers.get(key)
        if found is not None:
            return found
        with self._lock:
            found = self._pacers.get(key)
            if found is None:
                shared = self.find_pacer(key) if self.find_pacer is not None else None
                found = self._pacers.setdefault(key, shared if shared is not None else Pacer(pace))
            return found
