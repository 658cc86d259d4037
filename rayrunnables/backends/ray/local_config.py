"""Settings of a local Ray that this package starts itself (the Ray backend, ``rayrunnables serve``).

A module with no imports, so the command line can name them without importing Ray."""

from __future__ import annotations

from typing import Any

__all__ = ["LOCAL_RAY_CONFIG"]

#: Ray's ``_system_config`` for a local Ray this package starts (the caller's ``_system_config`` keys win). Ray stops a
#: task worker idle for 1 s while more workers than CPUs exist, and a map task (it holds no CPU) is a worker
#: beyond them: a chain with a ``.map()`` called again after a pause started a process each time (64 CPU
#: items: 2.1 s against batch's 1.6 s; kept 60 s, 1.6 s), as did a server's requests (``rayrunnables
#: serve``, whose replicas and proxy are workers too: 39 workers started and 21 stopped as idle in one
#: bench_serve run of the CPU chain through Ray tasks, 8.6 and 15.8 req/s; kept 60 s, 17 and 5, 19.4 and
#: 18.7 req/s).
LOCAL_RAY_CONFIG: dict[str, Any] = {"idle_worker_killing_time_threshold_ms": 60_000}
