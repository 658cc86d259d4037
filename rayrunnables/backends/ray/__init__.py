"""The Ray backend: chains as fused Ray tasks, ``ObjectRef``s between them, actor pools for stateful steps.

One module a job: ``backend`` (the ``Backend``: start-up, invoke, the chunk runner for batches),
``planner`` (node tree -> tasks, fan-outs, maps; ``explain``), ``invocation`` (one ``invoke``: submit
everything, then gather), ``tasks`` (what runs inside workers), ``services`` (actor pools, limiter
actors), ``pending`` (values that may not exist yet), ``worker`` (the chunk entry point in a worker),
``shipping`` (getting the user's code to workers), ``connect`` (reaching a cluster).
"""

from .backend import RayBackend, RunStats

__all__ = ["RayBackend", "RunStats"]
