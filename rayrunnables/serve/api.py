"""The HTTP routes of LangServe's protocol around one chain, as a FastAPI app (what a Serve replica runs).

Why FastAPI: Ray Serve's ingress takes a FastAPI app, so the same app runs in a replica, in a test, or
under plain uvicorn. Each request runs the chain through the configured backend (``"ray"`` in a
replica: heavy steps as tasks and actors in the cluster, waiting steps in the replica's threads). A
request that leaves early (the client disconnected, Serve cancelled it) cancels its chain's work:
``ainvoke`` cancels its Ray tasks and a stream closes its producer.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import traceback
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from ..engine.execution import COMPUTING, subtree_class
from ..errors import step_path_of
from .batching import RequestBatcher, has_vectorized_step
from .schemas import Schemas
from .timeline import TimelineRecorder
from .wire import RequestError, check_config, decode_value, dumps, metadata_event, sse

__all__ = ["ServeOptions", "build_api", "error_body"]

_FILTERS = ("include_names", "include_types", "include_tags", "exclude_names", "exclude_types", "exclude_tags")


@dataclass
class ServeOptions:
    """What the server enforces. ``token``: the bearer token every route but the playground page needs
    (None: no check; the command line requires one for a non-loopback bind). ``max_body_bytes``: larger
    request bodies get 413. ``debug``: error answers carry the message and traceback (never in
    production: they may hold secrets). ``backend``: where each request's chain runs."""

    token: str | None = None
    max_body_bytes: int = 1 << 20
    debug: bool = False
    backend: Any = "ray"
    extra_config: dict[str, Any] = field(default_factory=dict)
    # concurrent /invoke requests held this long (or until batch_max_size wait) become one batch call, when
    # the chain has a vectorized step (None: 10 ms then; 0: never batch)
    batch_wait_s: float | None = None
    batch_max_size: int = 64
    # threads of the replica's event loop for the chain's blocking parts (``asyncio.to_thread``): Python's
    # default (CPUs + 4) would make requests wait for each other's Ray waits
    threads: int = 128
    # with ``backend="local"``, requests of a chain whose every step computes (learned from its first calls)
    # run this many at a time in a replica, the rest wait their turn in order (0: no bound). The GIL runs one
    # anyway: 128 at once only time-sliced it, so every request in flight finished late, and it cost 77 ms of
    # replica CPU per 66 ms request against 69 ms one or two at a time. Replicas are the parallelism.
    computing_slots: int = 1


def error_body(exc: BaseException, debug: bool) -> dict[str, Any]:
    """What a client learns of a failed run: its type and the step that raised it (the message and
    traceback with ``debug`` only, since a message may carry a key or a user's data)."""
    step = step_path_of(exc)
    where = f" at {step}" if step else ""
    body: dict[str, Any] = {"status_code": 500, "error_type": type(exc).__name__, "step": step,
                            "message": f"{type(exc).__name__}{where}"}
    if debug:
        body["message"] += f": {exc}"
        body["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return body


def _refusal(exc: RequestError) -> JSONResponse:
    return JSONResponse({"status_code": exc.status, "detail": exc.message, "field": exc.field}, exc.status)


async def _read_json(request: Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object, refused (413) past ``limit`` bytes, declared or streamed."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {int(declared):,} bytes is over the limit of {limit:,} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks) or b"{}")
    except ValueError as exc:
        raise RequestError(422, f"request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError(422, f"request body must be a JSON object, got {type(body).__name__}")
    return body


class _Guard:
    """Plain ASGI (no per-request task, unlike ``BaseHTTPMiddleware``, so streams and cancellation pass
    through untouched): the bearer token check, and the replica's thread pool set on first use."""

    def __init__(self, app: Any, token: str | None, threads: int) -> None:
        self.app = app
        self.token = None if token is None else token.encode()
        self.threads = threads
        self.pool: ThreadPoolExecutor | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            if self.pool is None:  # the chain's waits run in threads (to_thread): one per request it may run
                self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="rayrunnables-serve")
                asyncio.get_running_loop().set_default_executor(self.pool)
            if self.token is not None and not scope["path"].endswith("/playground") and not self._authorized(scope):
                refusal = JSONResponse({"status_code": 401, "detail": "missing or wrong bearer token"}, 401,
                                       headers={"WWW-Authenticate": "Bearer"})
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Any) -> bool:
        given = dict(scope.get("headers") or ()).get(b"authorization", b"")
        scheme, _, token = given.partition(b" ")
        assert self.token is not None
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.token)


def build_api(chain: Any, schemas: Schemas, options: ServeOptions) -> FastAPI:
    """A FastAPI app answering LangServe's routes for ``chain`` (a rayrunnables runnable)."""
    api = FastAPI(title=f"rayrunnables: {chain.label()}", docs_url=None, redoc_url=None, openapi_url=None)
    wait = 0.01 if options.batch_wait_s is None else options.batch_wait_s
    batcher = RequestBatcher(chain, options.batch_max_size, wait) if wait > 0 and has_vectorized_step(chain) else None
    api.state.batcher = batcher
    in_replica = getattr(options.backend, "name", options.backend) == "local"
    turns = asyncio.Semaphore(options.computing_slots) if in_replica and options.computing_slots > 0 else None

    async def run(value: Any, config: dict[str, Any]) -> Any:
        """``ainvoke``, one computing request at a time in this process (``ServeOptions.computing_slots``)."""
        if turns is None or subtree_class(chain) != COMPUTING:  # unknown or waiting: overlap in threads
            return await chain.ainvoke(value, config)
        async with turns:
            return await chain.ainvoke(value, config)

    @api.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError) -> JSONResponse:
        return _refusal(exc)

    api.add_middleware(_Guard, token=options.token, threads=options.threads)

    def config_of(raw: Any, where: str = "config") -> dict[str, Any]:
        return {**options.extra_config, **check_config(raw, where), "backend": options.backend,
                "run_id": uuid.uuid4()}

    def input_of(body: dict[str, Any], key: str = "input") -> Any:
        if key not in body:
            raise RequestError(422, f"request body has no {key!r}", key)
        value = decode_value(body[key])
        if key == "input":
            schemas.check(value)
        return value

    def check_kwargs(body: dict[str, Any]) -> None:
        if body.get("kwargs"):
            raise RequestError(422, "kwargs are not supported: put them in the input", "kwargs")

    def failed(exc: Exception) -> JSONResponse:
        return JSONResponse(error_body(exc, options.debug), 500)

    @api.post("/invoke")
    async def invoke(request: Request) -> Response:
        body = await _read_json(request, options.max_body_bytes)
        check_kwargs(body)
        value, config = input_of(body), config_of(body.get("config"))
        try:
            if batcher is not None:  # no run id of its own: items with equal configs share the step's calls
                output = await batcher.invoke(value, {k: v for k, v in config.items() if k != "run_id"})
            else:
                output = await run(value, config)
        except Exception as exc:
            return failed(exc)
        return _json(output, {"run_id": str(config["run_id"]), "feedback_tokens": []})

    @api.post("/batch")
    async def batch(request: Request) -> Response:
        body = await _read_json(request, options.max_body_bytes)
        check_kwargs(body)
        raw = body.get("inputs")
        if not isinstance(raw, list):
            raise RequestError(422, "request body needs 'inputs', a list", "inputs")
        inputs = [decode_value(v) for v in raw]
        for i, value in enumerate(inputs):
            schemas.check(value, f"inputs[{i}]")
        given = body.get("config")
        if isinstance(given, list):
            if len(given) != len(inputs):
                raise RequestError(422, f"{len(given)} configs for {len(inputs)} inputs: give one, or one per input",
                                   "config")
            configs = [config_of(c, f"config[{i}]") for i, c in enumerate(given)]
        else:
            one = check_config(given)
            configs = [config_of(one) for _ in inputs]
        if not inputs:
            return _json([], {"run_ids": [], "responses": []})
        try:
            outputs = await chain.abatch(inputs, configs)
        except Exception as exc:
            return failed(exc)
        run_ids = [str(c["run_id"]) for c in configs]
        responses = [{"run_id": r, "feedback_tokens": []} for r in run_ids]
        return _json(outputs, {"run_ids": run_ids, "responses": responses})

    def events_response(chunks: AsyncIterator[bytes]) -> StreamingResponse:
        return StreamingResponse(chunks, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def _sse(source: AsyncIterator[Any], first: bytes | None,
                   timeline: TimelineRecorder | None = None) -> AsyncIterator[bytes]:
        if first is not None:
            yield first
        try:
            async for item in source:
                yield sse("data", dumps(item, lenient=True))
        except Exception as exc:  # a failed run ends its stream with an error event, as LangServe's does
            yield sse("error", dumps(error_body(exc, options.debug)))
            return
        finally:
            close = getattr(source, "aclose", None)
            if close is not None:
                await close()
        if timeline is not None:  # the playground's extra event, after the run's own
            yield sse("timeline", dumps(timeline.snapshot(), lenient=True))
        yield sse("end")

    @api.post("/stream")
    async def stream(request: Request) -> Response:
        body = await _read_json(request, options.max_body_bytes)
        check_kwargs(body)
        value, config = input_of(body), config_of(body.get("config"))
        return events_response(_sse(chain.astream(value, config), metadata_event(str(config["run_id"]))))

    @api.post("/stream_events")
    async def stream_events(request: Request) -> Response:
        body = await _read_json(request, options.max_body_bytes)
        check_kwargs(body)
        value, config = input_of(body), config_of(body.get("config"))
        version = body.get("version") or "v2"
        if version != "v2":
            raise RequestError(422, f"stream_events: version {version!r} is not served; this server gives "
                               "LangChain's v2 events (LangServe's client asks for none and reads them)", "version")
        filters = {k: body[k] for k in _FILTERS if body.get(k) is not None}
        timeline = TimelineRecorder() if body.get("timeline") is True else None
        if timeline is not None:
            config["callbacks"] = [timeline]
        return events_response(_sse(chain.astream_events(value, config, version="v2", **filters), None, timeline))

    @api.get("/input_schema")
    async def input_schema() -> dict[str, Any]:
        return schemas.input_json()

    @api.get("/output_schema")
    async def output_schema() -> dict[str, Any]:
        return schemas.output_json()

    @api.get("/config_schema")
    async def config_schema() -> dict[str, Any]:
        return schemas.config

    @api.get("/playground")
    async def playground() -> HTMLResponse:
        page = resources.files(__package__).joinpath("playground.html").read_text(encoding="utf-8")
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'self' 'unsafe-inline'"})

    return api


def _json(output: Any, metadata: dict[str, Any]) -> Response:
    try:
        text = dumps({"output": output, "metadata": metadata})
    except (TypeError, ValueError) as exc:  # the chain's output is not JSON: say so, as a failed run
        return JSONResponse({"status_code": 500, "error_type": type(exc).__name__, "step": "output",
                             "message": f"the chain's output cannot be sent as JSON: {exc}"}, 500)
    return Response(text, media_type="application/json")
