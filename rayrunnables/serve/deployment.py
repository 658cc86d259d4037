"""The chain as a Ray Serve application: one FastAPI ingress deployment, replicas fixed or autoscaled.

Why Serve: its proxy takes the HTTP connections, queues past each replica's ``max_ongoing_requests``,
answers 503 once ``max_queued_requests`` wait, cancels a request whose client went away, and scales
replicas on ongoing requests. Each replica runs the chain through the Ray backend of the same cluster.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.config import AutoscalingConfig

from ..backends.ray.shipping import check_sendable, ship_user_modules
from ..runnables.base import Runnable
from .api import ServeOptions, build_api
from .schemas import schemas_for

__all__ = ["app", "deployment_options"]


def deployment_options(replicas: int | str = 1, max_ongoing_requests: int = 64,
                       max_queued_requests: int = 256) -> dict[str, Any]:
    """Serve's options: a fixed number of replicas, or ``"auto"`` (1 to 4, on ongoing requests per replica)."""
    opts: dict[str, Any] = {"max_ongoing_requests": max_ongoing_requests, "max_queued_requests": max_queued_requests}
    if replicas == "auto":
        opts["autoscaling_config"] = AutoscalingConfig(
            min_replicas=1, max_replicas=4, target_ongoing_requests=max(1, max_ongoing_requests // 4),
            upscale_delay_s=2.0, downscale_delay_s=30.0,
        )
    else:
        count = int(replicas)
        if count < 1:
            raise ValueError(f"replicas must be at least 1 or 'auto', got {replicas!r}")
        opts["num_replicas"] = count
    return opts


def app(
    chain: Any,
    *,
    input_schema: Any = None,
    output_schema: Any = None,
    options: ServeOptions | None = None,
    replicas: int | str = 1,
    max_ongoing_requests: int = 64,
    max_queued_requests: int = 256,
    name: str = "rayrunnables-chain",
    ray_actor_options: dict[str, Any] | None = None,
) -> Any:
    """A Ray Serve application serving ``chain`` with LangServe's routes; run it with
    ``serve.run(app(chain), route_prefix="/name")``. ``chain``: a rayrunnables runnable, or a LangChain
    one (rebuilt with ``from_langchain``, its schemas kept)."""
    from ..runnables.base import coerce_to_runnable

    schemas = schemas_for(chain, input_schema, output_schema)
    if not isinstance(chain, Runnable) and type(chain).__module__.startswith("langchain"):
        from ..interop.langchain import from_langchain

        chain = from_langchain(chain)
    chain = coerce_to_runnable(chain)
    ship_user_modules(chain)
    check_sendable(chain)
    api = build_api(chain, schemas, options or ServeOptions())

    @serve.ingress(api)
    class ChainServer:
        """One replica: the routes run in its event loop, the chain's work in the cluster."""

    ChainServer.__name__ = ChainServer.__qualname__ = "ChainServer"
    # a replica reserves no CPU: it mostly waits, and the chain's heavy steps take the cluster's CPUs as tasks
    deployment: Any = serve.deployment(
        ChainServer, name=name, ray_actor_options=ray_actor_options or {"num_cpus": 0},
        **deployment_options(replicas, max_ongoing_requests, max_queued_requests),
    )
    return deployment.bind()
