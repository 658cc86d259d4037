"""The chain as a Ray Serve application: one FastAPI ingress deployment, replicas fixed or autoscaled.

Why Serve: its proxy takes the HTTP connections, queues past each replica's ``max_ongoing_requests``,
answers 503 once ``max_queued_requests`` wait, cancels a request whose client went away, and scales
replicas on ongoing requests. Each replica runs the chain through the Ray backend of the same cluster.

Why a replica takes many requests at once (256) and the proxy's router polls fast (``ROUTER_MAX_BACKOFF_S``):
a request the proxy queues because every replica is full is routed by at most 2 routing tasks per
replica, each polling the replicas with a backoff that grows to Serve's 0.5 s and is not reset when a
replica frees a slot (the slot goes to the oldest queued request, not the polling task's own). Once the
queue had formed, a replica that answers in milliseconds got 2 requests per 0.5 s: 4.0 requests/s for
one replica (200 clients, 64 at a time), with the replica, the proxy and the client idle; 8 per 0.5 s with
a 0.25 s cap, no stall with 0.05 s or with no queue (measured with a FastAPI app that only answers). A
replica mostly waits on the cluster's tasks (or its own threads with ``backend="local"``), so holding
a request there costs a coroutine, and the proxy queues only past real overload.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.config import AutoscalingConfig, RequestRouterConfig

from ..backends.ray.shipping import check_sendable, ship_user_modules
from ..runnables.base import Runnable
from .api import ServeOptions, build_api
from .schemas import schemas_for

__all__ = ["app", "deployment_options", "MAX_ONGOING_REQUESTS", "ROUTER_MAX_BACKOFF_S"]

#: requests one replica runs at once by default (Serve's own default is 5)
MAX_ONGOING_REQUESTS = 256
#: the longest pause of Serve's router between two looks at full replicas (its default 0.5 s capped a queued
#: deployment at 2 requests per replica per 0.5 s: the module's docstring)
ROUTER_MAX_BACKOFF_S = 0.05


def deployment_options(replicas: int | str = 1, max_ongoing_requests: int = MAX_ONGOING_REQUESTS,
                       max_queued_requests: int = 256) -> dict[str, Any]:
    """Serve's options: a fixed number of replicas, or ``"auto"`` (1 to 4, on ongoing requests per replica)."""
    opts: dict[str, Any] = {
        "max_ongoing_requests": max_ongoing_requests, "max_queued_requests": max_queued_requests,
        # validated from a dict: Ray's pydantic fields read as another signature to mypy
        "request_router_config": RequestRouterConfig.model_validate({"max_backoff_s": ROUTER_MAX_BACKOFF_S}),
    }
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
    max_ongoing_requests: int = MAX_ONGOING_REQUESTS,
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
