"""``rayrunnables serve MODULE:ATTR``: the chain behind Ray Serve's HTTP proxy until Ctrl-C.

Why the checks come first: a server reachable from other machines runs whatever its chain does for
anyone who can reach it, so a non-loopback ``--host`` needs ``--auth-token-file`` (a bearer token every
route but the playground page checks), and the command refuses to start without one.
"""

from __future__ import annotations

import ipaddress
import os
import time
from typing import Any

import click

__all__ = ["serve_command", "is_loopback", "read_token"]


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server to this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: str) -> str:
    """The bearer token in ``path`` (its first line); a file others can read, or an empty one, is refused."""
    try:
        mode = os.stat(path).st_mode
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
    except OSError as exc:
        raise click.UsageError(f"--auth-token-file: {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise click.UsageError(f"--auth-token-file: {path} can be read by others: chmod 600 it")
    if len(token) < 16:
        raise click.UsageError(f"--auth-token-file: {path}: the token must be at least 16 characters")
    return token


def _replicas(value: str) -> int | str:
    if value == "auto":
        return value
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise click.BadParameter(f"expected a number of replicas (1 or more) or 'auto', got {value!r}")


@click.command("serve")
@click.argument("target")
@click.option("--route", default="/", show_default=True, help="URL prefix of the chain's routes.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback needs --auth-token-file.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--replicas", default="1", show_default=True, help="Serve replicas: a number, or 'auto' "
              "(1 to 4, scaled on ongoing requests).")
@click.option("--auth-token-file", default=None, metavar="PATH",
              help="File holding the bearer token clients must send (Authorization: Bearer ...).")
@click.option("--max-body-bytes", default=1 << 20, show_default=True, type=click.IntRange(min=1),
              help="Larger request bodies get 413.")
@click.option("--max-ongoing-requests", default=256, show_default=True, type=click.IntRange(min=1),
              help="Requests one replica runs at once (the proxy queues the rest).")
@click.option("--max-queued-requests", default=256, show_default=True, type=click.IntRange(min=0),
              help="Requests waiting for a replica; past it, 503.")
@click.option("--address", default=None, help="Ray cluster to serve from (default: start a local Ray).")
@click.option("--backend", type=click.Choice(["ray", "local"]), default="ray", show_default=True,
              help="Where each request's steps run: ray (tasks and actors in the cluster) or local (the replica's "
              "own process and threads, as LangServe runs them: less overhead for light chains).")
@click.option("--debug", is_flag=True, help="Error answers carry the message and traceback (may leak secrets).")
def serve_command(target: str, route: str, host: str, port: int, replicas: str, auth_token_file: str | None,
                  max_body_bytes: int, max_ongoing_requests: int, max_queued_requests: int, address: str | None,
                  backend: str, debug: bool) -> None:
    """Serve TARGET (MODULE:ATTR, a rayrunnables or LangChain chain) with LangServe's protocol:
    POST ROUTE/invoke, /batch, /stream, /stream_events; GET /input_schema, /output_schema,
    /config_schema, /playground. LangServe's RemoteRunnable(url) is a client."""
    count = _replicas(replicas)
    token = read_token(auth_token_file) if auth_token_file else None
    if token is None and not is_loopback(host):
        raise click.UsageError(f"--host {host} is reachable from other machines: give --auth-token-file "
                               "(clients then send Authorization: Bearer <token>)")
    if not route.startswith("/"):
        raise click.UsageError(f"--route must start with '/', got {route!r}")
    from ..targets import load_target

    chain = load_target(target, coerce=False)  # a LangChain chain keeps its schemas
    import ray
    from ray import serve

    from .api import ServeOptions
    from .deployment import app

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address:  # a cluster keeps its own settings
            ray.init(address=address, include_dashboard=False)
        else:  # idle task workers kept 60 s: a server's replicas and proxy are workers beyond the CPUs too
            from ..backends.ray.backend import LOCAL_RAY_CONFIG

            ray.init(address="local", include_dashboard=False, _system_config=LOCAL_RAY_CONFIG)
    serve.start(http_options={"host": host, "port": port})
    options = ServeOptions(token=token, max_body_bytes=max_body_bytes, debug=debug, backend=backend)
    served: Any = app(chain, options=options, replicas=count, max_ongoing_requests=max_ongoing_requests,
                      max_queued_requests=max_queued_requests)
    serve.run(served, name="rayrunnables", route_prefix=route)
    base = f"http://{host}:{port}{route.rstrip('/')}"
    click.echo(f"serving {target} at {base}/ (playground: {base}/playground); Ctrl-C stops", err=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
