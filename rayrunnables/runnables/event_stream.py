"""``astream_events(version="v2")``: the run events of a streamed call, as LangChain's event dicts.

The chain is streamed (on any backend) with one more consumer of its run events: each recorded
callback becomes the event LangChain's v2 stream gives for it (``on_chain_start``, ``on_chain_stream``,
``on_prompt_end``, ``on_chat_model_stream``...), with the same ``data`` shapes, ``parent_ids`` and
filters. Events recorded in a Ray worker arrive on the stream's channel, so they come as they happen.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from uuid import UUID

from ..engine.events import STREAM_EVENT, Dispatcher, RunSink, recorder_for

__all__ = ["astream_events", "EventsV2"]

_DONE = object()
# the positional parameters of LangChain's callback methods, by name
_PARAMS: dict[str, tuple[str, ...]] = {
    "on_chain_start": ("serialized", "inputs"), "on_chat_model_start": ("serialized", "messages"),
    "on_llm_start": ("serialized", "prompts"), "on_tool_start": ("serialized", "input_str"),
    "on_retriever_start": ("serialized", "query"), "on_llm_new_token": ("token",), "on_chain_end": ("outputs",),
    "on_llm_end": ("response",), "on_tool_end": ("output",), "on_retriever_end": ("documents",),
    "on_custom_event": ("name", "data"),
}


class EventsV2:
    """Callback events in, LangChain v2 stream events out (``__call__`` returns the events one makes)."""

    def __init__(self, root_input: Any) -> None:
        self.root_input = root_input
        self.runs: dict[UUID, dict[str, Any]] = {}
        self.parents: dict[UUID, UUID | None] = {}
        self.root: UUID | None = None

    def parent_ids(self, run_id: UUID) -> list[str]:
        ids: list[str] = []
        parent = self.parents.get(run_id)
        while parent is not None:
            ids.append(str(parent))
            parent = self.parents.get(parent)
        return ids[::-1]

    def _event(self, kind: str, run_id: UUID, data: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        info = self.runs[run_id]
        return {"event": f"on_{info['run_type']}_{kind}", "data": data, "run_id": str(run_id),
                "name": name or info["name"], "tags": info["tags"], "metadata": info["metadata"],
                "parent_ids": self.parent_ids(run_id)}

    def _start(self, run_id: UUID, kwargs: dict[str, Any], run_type: str, data: dict[str, Any],
               inputs: Any) -> list[dict[str, Any]]:
        parent = kwargs.get("parent_run_id")
        self.parents[run_id] = parent if parent in self.runs else None
        if self.root is None:
            self.root = run_id
            data = {"input": self.root_input}
        self.runs[run_id] = {"name": kwargs.get("name") or run_type, "tags": list(kwargs.get("tags") or []),
                             "metadata": dict(kwargs.get("metadata") or {}), "run_type": run_type, "inputs": inputs}
        return [self._event("start", run_id, data)]

    def __call__(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], meta: Any) -> list[dict[str, Any]]:
        params = _PARAMS.get(method)
        if params is not None:  # LangChain passes some of these by keyword: one shape for both
            given = dict(zip(params, args, strict=False))
            kwargs = {**kwargs, **given}
        run_id: UUID = kwargs.get("run_id")  # type: ignore[assignment]
        if method.endswith("_start") and not kwargs.get("name"):  # as LangChain names an unnamed model run
            serialized = kwargs.get("serialized") or {}
            kwargs["name"] = serialized.get("name") or (serialized.get("id") or ["Unknown"])[-1]
        if method == "on_chain_start":
            inputs = kwargs["inputs"]
            deferred = kwargs.get("defers_inputs") or inputs == {"input": ""}
            return self._start(run_id, kwargs, kwargs.get("run_type") or "chain", {} if deferred else {"input": inputs},
                               None if deferred else inputs)
        if method == "on_chat_model_start":
            inputs = {"messages": kwargs["messages"]}
            return self._start(run_id, kwargs, "chat_model", {"input": inputs}, inputs)
        if method == "on_llm_start":
            inputs = {"prompts": kwargs["prompts"]}
            return self._start(run_id, kwargs, "llm", {"input": inputs}, inputs)
        if method == "on_tool_start":
            inputs = kwargs.get("inputs") or kwargs["input_str"]
            return self._start(run_id, kwargs, "tool", {"input": inputs}, inputs)
        if method == "on_retriever_start":
            inputs = {"query": kwargs["query"]}
            return self._start(run_id, kwargs, "retriever", {"input": inputs}, inputs)
        if run_id not in self.runs:
            return []
        info = self.runs[run_id]
        if method == STREAM_EVENT:
            return [self._event("stream", run_id, {"chunk": args[0]})]
        if method == "on_llm_new_token":
            return [self._event("stream", run_id, {"chunk": _token_chunk(info["run_type"], kwargs["token"], kwargs)})]
        if method in ("on_chain_end", "on_tool_end", "on_retriever_end", "on_llm_end"):
            output = kwargs[_PARAMS[method][0]]
            if method == "on_llm_end":
                output = _llm_output(info["run_type"], output)
            if run_id == self.root:
                data = {"output": output}
            else:
                inputs = kwargs.get("inputs") if kwargs.get("inputs") is not None else info["inputs"]
                data = {"output": output, "input": inputs if inputs is not None else {}}
            event = self._event("end", run_id, data)
            self.runs.pop(run_id)
            return [event]
        if method == "on_custom_event":
            return [self._event("stream", run_id, kwargs["data"], kwargs["name"]) | {"event": "on_custom_event"}]
        return []


def _token_chunk(run_type: str, token: str, kwargs: dict[str, Any]) -> Any:
    chunk = kwargs.get("chunk")
    if run_type == "chat_model":
        if chunk is not None:
            return chunk.message
        from langchain_core.messages import AIMessageChunk

        return AIMessageChunk(content=token)
    if chunk is not None:
        return chunk
    from langchain_core.outputs import GenerationChunk

    return GenerationChunk(text=token)


def _llm_output(run_type: str, response: Any) -> Any:
    generations = getattr(response, "generations", None)
    if not generations or not generations[0]:
        return response
    first = generations[0][0]
    if run_type == "chat_model":
        return getattr(first, "message", first)
    return {"generations": generations, "llm_output": getattr(response, "llm_output", None)}


def _keep(event: dict[str, Any], filters: Mapping[str, Sequence[str] | None]) -> bool:
    """LangChain's include/exclude filters by run name, run type and tag."""
    run_type = event["event"].split("_", 1)[1].rsplit("_", 1)[0]
    name, tags = event["name"], event.get("tags") or []
    include = [filters.get("include_names"), filters.get("include_types"), filters.get("include_tags")]
    keep = not any(include) or (
        name in (include[0] or ()) or run_type in (include[1] or ()) or any(t in (include[2] or ()) for t in tags)
    )
    if filters.get("exclude_names") and name in (filters["exclude_names"] or ()):
        keep = False
    if filters.get("exclude_types") and run_type in (filters["exclude_types"] or ()):
        keep = False
    if filters.get("exclude_tags") and any(t in (filters["exclude_tags"] or ()) for t in tags):
        keep = False
    return keep


async def astream_events(
    node: Any, input: Any, config: dict[str, Any], filters: Mapping[str, Sequence[str] | None]
) -> AsyncIterator[dict[str, Any]]:
    """Stream ``node`` in a thread; yield each event as its record arrives, then raise its error if any."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    convert = EventsV2(input)

    def sink(method: str, args: tuple[Any, ...], kwargs: dict[str, Any], meta: Any) -> None:
        for event in convert(method, args, kwargs, meta):
            if _keep(event, filters):
                loop.call_soon_threadsafe(queue.put_nowait, event)

    recorder, parent = recorder_for(config)
    if isinstance(recorder, Dispatcher):
        dispatcher = recorder.with_sink(sink, streams=True)
    else:  # a nested call: the caller's recorder hears everything too
        dispatcher = Dispatcher(sinks=[sink, recorder.deliver], streams=True)
    config = {**config, "callbacks": RunSink(dispatcher, parent)}
    stopped = threading.Event()

    def produce() -> None:
        iterator = node.stream(input, config)
        try:
            for _ in iterator:
                if stopped.is_set():
                    break
        except BaseException as exc:
            loop.call_soon_threadsafe(queue.put_nowait, (_DONE, exc))
            return
        finally:
            iterator.close()
        loop.call_soon_threadsafe(queue.put_nowait, (_DONE, None))

    producer = loop.run_in_executor(None, produce)
    try:
        while True:
            item = await queue.get()
            if type(item) is tuple and item[0] is _DONE:
                if item[1] is not None:
                    raise item[1]
                return
            yield item
    finally:
        stopped.set()
        await asyncio.shield(producer)
