"""LangChain interop: run an existing LCEL chain on our backends, and drop one of ours into LangChain.

``from_langchain(chain)`` rebuilds a LangChain runnable node by node out of rayrunnables nodes, so each
part becomes its own unit of work on Ray (sequences fuse, dicts fan out, ``.map()`` is chunked).
Structurally translated (exact classes only; a subclass may change behaviour, so it stays opaque):

    RunnableSequence, RunnableParallel, RunnableLambda (sync, async, generator; ``config`` parameter),
    RunnablePassthrough (+ func), RunnableAssign, RunnablePick, RunnableEach, RunnableBranch,
    RunnableWithFallbacks, RunnableRetry (exception types as a tuple), RunnableBinding (config; kwargs),
    RunnableGenerator

Everything else (prompt templates, chat models, parsers, retrievers, configurable alternatives, a
lambda that takes ``run_manager``, a binding made by ``with_listeners``) is one *opaque* step: a
``RunnableLambda`` around ``LangChainStep(obj)``, which calls ``obj.invoke`` where the step runs (in a
Ray worker on the Ray backend). Such an object must pickle; if it holds a lock, a socket or a client,
the Ray backend refuses it before submitting anything (``UnpicklableStepError`` naming the step). The
way out is to build it inside the worker: ``lazy_langchain_step(factory)``.

Config: ``tags``, ``metadata``, ``run_name``, ``configurable``, ``max_concurrency`` and
``recursion_limit`` of a ``with_config`` binding are kept in our config, and reach (also in Ray
workers) every function that takes a ``config`` parameter. A binding's own ``callbacks`` are dropped
(give callbacks at the call). Callbacks given at the call see the same run tree LangChain gives: our
steps' runs recorded where they run, an opaque step's runs (a model's tokens too) reported by LangChain
itself into the same record, all replayed into the handlers in the calling process.

``to_langchain(ours)`` goes the other way: a ``langchain_core`` ``Runnable`` whose calls run through our
backends. Its runs nest under the LangChain run that calls it, step by step, as a LangChain chain's would.

langchain-core is imported here only; ``import rayrunnables`` never loads it.
"""

from __future__ import annotations

import contextvars
import inspect
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from functools import update_wrapper
from typing import Any, cast

from langchain_core.callbacks import BaseCallbackHandler, CallbackManager
from langchain_core.runnables.base import Runnable as LCRunnable
from langchain_core.runnables.base import RunnableBinding as LCBinding
from langchain_core.runnables.base import RunnableBindingBase as LCBindingBase
from langchain_core.runnables.base import RunnableEach as LCEach
from langchain_core.runnables.base import RunnableGenerator as LCGenerator
from langchain_core.runnables.base import RunnableLambda as LCLambda
from langchain_core.runnables.base import RunnableParallel as LCParallel
from langchain_core.runnables.base import RunnableSequence as LCSequence
from langchain_core.runnables.base import coerce_to_runnable as lc_coerce
from langchain_core.runnables.branch import RunnableBranch as LCBranch
from langchain_core.runnables.config import RunnableConfig as LCConfig
from langchain_core.runnables.config import get_config_list
from langchain_core.runnables.fallbacks import RunnableWithFallbacks as LCFallbacks
from langchain_core.runnables.passthrough import RunnableAssign as LCAssign
from langchain_core.runnables.passthrough import RunnablePassthrough as LCPassthrough
from langchain_core.runnables.passthrough import RunnablePick as LCPick
from langchain_core.runnables.retry import RunnableRetry as LCRetry

from .._aio import run_coro_sync
from ..engine.events import AMBIENT_SOURCES, STREAM_EVENT, Recorder, RunSink
from ..engine.process_state import STATE
from ..runnables import (
    Runnable,
    RunnableAssign,
    RunnableBranch,
    RunnableLambda,
    RunnableParallel,
    RunnablePassthrough,
    RunnablePick,
    RunnableSequence,
)
from ..runnables.chunks import add_chunk
from ..runnables.generator import RunnableGenerator
from .clients import arrived, travelling

__all__ = ["from_langchain", "to_langchain", "lazy_langchain_step", "LangChainStep", "RayRunnable"]

# Config keys that mean the same on both sides and are passed across; everything else is dropped.
_SHARED_KEYS = ("tags", "metadata", "run_name", "configurable", "max_concurrency", "recursion_limit")


def _to_lc_config(config: Mapping[str, Any] | None, *, keep_run_name: bool = True) -> LCConfig:
    """Our config -> a LangChain ``RunnableConfig`` (no ``backend``). Inside a recorded run, LangChain gets
    a callback manager whose parent is that run: what LangChain runs there (a model's start, tokens and end)
    is recorded as our own steps are, in whatever process it runs."""
    keys = _SHARED_KEYS if keep_run_name else tuple(k for k in _SHARED_KEYS if k != "run_name")
    out: dict[str, Any] = {k: config[k] for k in keys if config and config.get(k) is not None}
    sink = config.get("callbacks") if config else None
    if isinstance(sink, RunSink):
        recording = (StreamingRecordingHandler if sink.recorder.streams else RecordingHandler)(sink.recorder)
        out["callbacks"] = CallbackManager([recording], [recording], parent_run_id=sink.run_id)
    return cast(LCConfig, out)


# ---- LangChain's context-variable handlers (``get_usage_metadata_callback()``, tracing hooks) --------------------
def _hook_handlers() -> list[Any]:
    """The handlers LangChain's configure hooks hold in this thread: ours to replay from every worker."""
    return [var.get() for var in _hook_vars() if var.get() is not None]


try:  # LangChain's own list (hooks registered later are appended to it): looked up once, read on every call
    from langchain_core.tracers.context import _configure_hooks as _HOOKS
except ImportError:  # pragma: no cover - a langchain-core without hooks
    _HOOKS = []


def _hook_vars() -> list[Any]:
    return [hook[0] for hook in _HOOKS if hook[2] is None]  # set by a context manager, not an env var


AMBIENT_SOURCES.append(_hook_handlers)
_END = object()


def _without_hooks(config: Mapping[str, Any] | None) -> contextvars.Context | None:
    """Inside a recorded run, LangChain must not also add its hook handlers itself (they already hear the
    run's events through our recorder, which took them at the call): a context with them unset."""
    if not config or not isinstance(config.get("callbacks"), RunSink):
        return None
    active = [var for var in _hook_vars() if var.get() is not None]
    if not active:
        return None
    context = contextvars.copy_context()
    for var in active:
        context.run(var.set, None)
    return context


def _unhooked(config: Mapping[str, Any] | None, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    context = _without_hooks(config)
    return call(*args, **kwargs) if context is None else context.run(call, *args, **kwargs)


def _from_lc_config(config: Mapping[str, Any] | None, backend: Any = None) -> dict[str, Any]:
    """A LangChain config -> ours: the shared keys, and its callbacks (handlers, or the manager LangChain
    gives a child run: our runs then nest under the caller's); ``run_id`` and the rest dropped."""
    out: dict[str, Any] = {k: config[k] for k in _SHARED_KEYS if config and config.get(k) is not None}
    if "tags" in out:
        out["tags"] = list(out["tags"])
    callbacks = config.get("callbacks") if config else None
    if callbacks:
        out["callbacks"] = callbacks
    if backend is not None:
        out["backend"] = backend
    return out


class RecordingHandler(BaseCallbackHandler):
    """Every LangChain callback, recorded as a run event (``rayrunnables.engine.events``), unchanged."""

    run_inline = True

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder


def _recorder_method(method: str) -> Callable[..., None]:
    def record(self: RecordingHandler, *args: Any, **kwargs: Any) -> None:
        self.recorder.emit(method, args, kwargs)

    record.__name__ = method
    return record


for _method in (
    "on_chain_start", "on_chain_end", "on_chain_error", "on_llm_start", "on_chat_model_start", "on_llm_new_token",
    "on_llm_end", "on_llm_error", "on_tool_start", "on_tool_end", "on_tool_error", "on_retriever_start",
    "on_retriever_end", "on_retriever_error", "on_text", "on_retry", "on_agent_action", "on_agent_finish",
    "on_custom_event",
):
    setattr(RecordingHandler, _method, _recorder_method(_method))


class StreamingRecordingHandler(RecordingHandler):
    """For ``astream_events``: LangChain hands a streaming handler each streamed run's output (and makes
    its chat models stream): every chunk is recorded as that run's stream event."""

    def tap_output_iter(self, run_id: uuid.UUID, output: Iterator[Any]) -> Iterator[Any]:
        for chunk in output:
            self.recorder.emit(STREAM_EVENT, (chunk,), {"run_id": run_id})
            yield chunk

    async def tap_output_aiter(self, run_id: uuid.UUID, output: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for chunk in output:
            self.recorder.emit(STREAM_EVENT, (chunk,), {"run_id": run_id})
            yield chunk


def _params(func: Any) -> Mapping[str, inspect.Parameter]:
    try:
        return inspect.signature(func).parameters
    except (TypeError, ValueError):
        return {}


def _ship_with(adapter: Any, target: Any) -> None:
    """Give ``adapter`` the module of what it wraps.

    The Ray backend pickles the user's own modules by value, finding them through each step's ``func``
    ``__module__``; an adapter defined here would hide the user's module, so it borrows it.
    """
    module = getattr(target, "__module__", None) or type(target).__module__
    try:
        adapter.__module__ = module
    except (AttributeError, TypeError):  # pragma: no cover - functions and plain instances accept it
        pass


# ---- opaque steps ----------------------------------------------------------------------------------------
class LangChainStep:
    """A LangChain runnable as one step: ``obj.invoke(input, config, **kwargs)`` where the step runs.

    Must pickle to run on Ray (the whole object travels to the worker). The config it receives is ours,
    reduced to the keys LangChain knows; its runs (a prompt's, a model's) are LangChain's own, reported
    through LangChain's callbacks into our run events (``reports_runs``).
    """

    reports_runs = True

    def __init__(self, obj: Any, kwargs: Mapping[str, Any] | None = None) -> None:
        self.obj = obj
        self.kwargs = dict(kwargs or {})
        _ship_with(self, obj)

    def __call__(self, input: Any, config: Mapping[str, Any] | None = None) -> Any:
        lc_config = _to_lc_config(config, keep_run_name=False)
        return _unhooked(config, self.obj.invoke, input, lc_config, **self.kwargs)

    def transform_chunks(self, chunks: Iterator[Any], config: Mapping[str, Any] | None = None) -> Iterator[Any]:
        """Streamed through LangChain's own ``transform``: a chat model's tokens, a parser's partial objects."""
        stream = self.obj.transform(chunks, _to_lc_config(config, keep_run_name=False), **self.kwargs)
        context = _without_hooks(config)
        if context is None:
            yield from stream
            return
        while True:
            chunk = context.run(next, stream, _END)
            if chunk is _END:
                return
            yield chunk

    def __repr__(self) -> str:
        return f"LangChainStep({self.obj.get_name()})"

    def cache_identity(self) -> dict[str, Any]:
        """The LangChain object by its parameters (``with_cache``), and the call's keyword arguments."""
        return {"obj": self.obj, "kwargs": self.kwargs}

    def __getstate__(self) -> dict[str, Any]:
        """A model holding live HTTP clients travels by its settings (``interop.clients``)."""
        return {**self.__dict__, "obj": travelling(self.obj)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, obj=arrived(state["obj"]))


class _LazyStep:
    """Builds its LangChain runnable with ``factory()`` on first use in each process; pickles the factory only."""

    reports_runs = True

    def __init__(self, factory: Callable[[], Any], kwargs: Mapping[str, Any] | None = None) -> None:
        self.factory = factory
        self.kwargs = dict(kwargs or {})
        self.token = uuid.uuid4().hex
        _ship_with(self, factory)

    def cache_identity(self) -> dict[str, Any]:
        """The factory (its code: the model's parameters are in it), not this process's token."""
        return {"factory": self.factory, "kwargs": self.kwargs}

    def target(self) -> Any:
        """The runnable built in this process (each Ray worker, each forked child builds its own)."""
        return STATE.services.once(self.token, self.factory)

    def __call__(self, input: Any, config: Mapping[str, Any] | None = None) -> Any:
        obj = self.target()
        if isinstance(obj, LCRunnable):
            return _unhooked(config, obj.invoke, input, _to_lc_config(config, keep_run_name=False), **self.kwargs)
        if config and isinstance(config.get("callbacks"), RunSink):  # its run reported as LangChain's lambda's
            name = getattr(obj, "__name__", None) or type(obj).__name__
            call = LCLambda(lambda value: obj(value, **self.kwargs), name=name)
            return _unhooked(config, call.invoke, input, _to_lc_config(config, keep_run_name=False))
        return obj(input, **self.kwargs)


def lazy_langchain_step(factory: Callable[[], Any], *, name: str | None = None, **kwargs: Any) -> Runnable[Any, Any]:
    """A step whose LangChain runnable (or plain callable) is built by ``factory()`` inside the worker.

    The way to use clients that cannot be pickled (locks, sockets, HTTP sessions): only ``factory`` is
    sent; the object is built once per process on first use and reused. Compose it as any step:
    ``from_langchain(prompt) | lazy_langchain_step(lambda: ChatOpenAI(...)) | from_langchain(parser)``.
    """
    default = getattr(factory, "__name__", None)
    step_name = name or (default if default and default != "<lambda>" else "lazy_step")
    return RunnableLambda(_LazyStep(factory, kwargs), name=step_name)


def _opaque(obj: LCRunnable[Any, Any], kwargs: Mapping[str, Any] | None = None) -> Runnable[Any, Any]:
    return RunnableLambda(LangChainStep(obj, kwargs), name=obj.get_name())


# ---- function adapters -----------------------------------------------------------------------------------
def _resolve(output: Any) -> Any:
    """A function that returns a LangChain runnable has it run on the same input: translate it for us."""
    return from_langchain(output) if isinstance(output, LCRunnable) else output


class _Call:
    """A LangChain lambda's sync function: LangChain-shaped config in, LangChain runnables out translated.

    Wraps ``func`` (``__wrapped__``), so our ``RunnableLambda`` sees the function's own signature and name.
    """

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        update_wrapper(self, func)

    def cache_identity(self) -> dict[str, Any]:
        return {"func": self.func}

    def __call__(self, input: Any, **kwargs: Any) -> Any:
        if "config" in kwargs:
            kwargs["config"] = _to_lc_config(kwargs["config"])
        return _resolve(self.func(input, **kwargs))


class _ACall(_Call):
    async def __call__(self, input: Any, **kwargs: Any) -> Any:
        if "config" in kwargs:
            kwargs["config"] = _to_lc_config(kwargs["config"])
        return _resolve(await self.func(input, **kwargs))


class _AGenCall(_Call):
    """An async generator function, invoked: its chunks added up (``+``), as LangChain does."""

    async def __call__(self, input: Any, **kwargs: Any) -> Any:
        if "config" in kwargs:
            kwargs["config"] = _to_lc_config(kwargs["config"])
        output: Any = None
        async for chunk in self.func(input, **kwargs):
            output = add_chunk(output, chunk)
        return output


class _Tap:
    """A passthrough's side-effect function that takes ``config`` (sync or async): call it, return the input."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        _ship_with(self, func)

    def cache_identity(self) -> dict[str, Any]:
        return {"func": self.func}

    def __call__(self, input: Any, config: Mapping[str, Any] | None = None) -> Any:
        result = self.func(input, config=_to_lc_config(config))
        if inspect.isawaitable(result):
            run_coro_sync(cast(Any, result))
        return input


def _none_if_empty(value: Any) -> Any:
    return value or None


def _transform_step(transform: Callable[..., Any]) -> Callable[..., Any]:
    """A LangChain ``RunnableGenerator``'s transform, given LangChain's config shape when it takes one."""
    if "config" not in _params(transform):
        return transform

    def with_lc_config(chunks: Iterator[Any], config: Mapping[str, Any]) -> Iterator[Any]:
        yield from transform(chunks, config=_to_lc_config(config))

    _ship_with(with_lc_config, transform)
    return with_lc_config


class _AGenTransform(_Call):
    """An async-only ``RunnableGenerator``: its chunks added up."""

    async def __call__(self, input: Any, **kwargs: Any) -> Any:
        async def one() -> AsyncIterator[Any]:
            yield input

        output: Any = None
        async for chunk in self.func(one()):
            output = chunk if output is None else output + chunk
        return output


# ---- node translators --------------------------------------------------------------------------------------
def _named(node: Runnable[Any, Any], name: str | None) -> Runnable[Any, Any]:
    return node.with_name(name) if name else node


def _sequence(node: LCSequence[Any, Any]) -> Runnable[Any, Any]:
    return RunnableSequence.of(*(from_langchain(step) for step in node.steps), name=node.name)


def _parallel(node: LCParallel[Any]) -> Runnable[Any, Any]:
    return RunnableParallel({key: from_langchain(step) for key, step in node.steps__.items()}, name=node.name)


def _lambda(node: LCLambda[Any, Any]) -> Runnable[Any, Any]:
    func = getattr(node, "func", None)
    afunc = getattr(node, "afunc", None)
    if any("run_manager" in _params(f) for f in (func, afunc) if f is not None):
        return _opaque(node)  # it drives LangChain callbacks itself: let LangChain run it
    name = node.name if getattr(node, "name", None) else None
    target = func if func is not None else afunc
    if name is None and not hasattr(target, "__name__"):  # itemgetter, partial, callable objects
        name = type(target).__name__
    ours_afunc: Callable[..., Any] | None = None
    if afunc is not None:
        ours_afunc = _AGenCall(afunc) if inspect.isasyncgenfunction(afunc) else _ACall(afunc)
    if func is None:
        assert ours_afunc is not None
        return RunnableLambda(ours_afunc, name=name)
    if inspect.isgeneratorfunction(func):  # our lambda streams it, and adds chunks on invoke
        return RunnableLambda(func, ours_afunc, name=name)
    return RunnableLambda(_Call(func), ours_afunc, name=name)


def _passthrough(node: LCPassthrough[Any]) -> Runnable[Any, Any]:
    func = node.func if node.func is not None else node.afunc
    if func is not None and "config" in _params(func):
        return RunnableLambda(_Tap(func), name=node.name or "passthrough")
    return RunnablePassthrough(func, name=node.name)


def _assign(node: LCAssign) -> Runnable[Any, Any]:
    mapper = from_langchain(node.mapper)
    if not isinstance(mapper, RunnableParallel):
        return _opaque(node)
    return RunnableAssign(mapper, name=node.name)


def _pick(node: LCPick) -> Runnable[Any, Any]:
    if isinstance(node.keys, str):
        return RunnablePick(node.keys, name=node.name)
    # LangChain gives None, not {}, when none of several keys is present
    return RunnableSequence.of(
        RunnablePick(list(node.keys)), RunnableLambda(_none_if_empty, name="pick_or_none"), name=node.name
    )


def _each(node: LCEach[Any, Any]) -> Runnable[Any, Any]:
    return _named(from_langchain(node.bound).map(), node.name)


def _branch(node: LCBranch[Any, Any]) -> Runnable[Any, Any]:
    pairs = [(from_langchain(cond), from_langchain(step)) for cond, step in node.branches]
    return RunnableBranch(*pairs, from_langchain(node.default), name=node.name)


def _fallbacks(node: LCFallbacks[Any, Any]) -> Runnable[Any, Any]:
    ours = from_langchain(node.runnable).with_fallbacks(
        [from_langchain(f) for f in node.fallbacks],
        exceptions_to_handle=tuple(node.exceptions_to_handle),
        exception_key=node.exception_key,
    )
    return _named(ours, node.name)


def _bound(node: LCBindingBase[Any, Any]) -> Runnable[Any, Any]:
    """What a binding binds: translated, or opaque with its kwargs; then its config (callbacks dropped)."""
    inner = _opaque(node.bound, node.kwargs) if node.kwargs else from_langchain(node.bound)
    config = _from_lc_config(node.config)
    if not config:
        return inner
    ours = inner.with_config(config)
    run_name = config.get("run_name")
    return ours.with_name(run_name) if run_name else ours


def _binding(node: LCBinding[Any, Any]) -> Runnable[Any, Any]:
    if node.config_factories:  # with_listeners and friends: LangChain callbacks made per call
        return _opaque(node)
    return _named(_bound(node), node.name)


def _retry(node: LCRetry[Any, Any]) -> Runnable[Any, Any]:
    types = node.retry_exception_types
    if node.config_factories or not isinstance(types, (tuple, list)):
        return _opaque(node)  # a predicate decides what to retry: our retry takes exception types only
    ours = _bound(node).with_retry(
        retry_if_exception_type=tuple(types),
        stop_after_attempt=node.max_attempt_number,
        wait_exponential_jitter=node.wait_exponential_jitter,
        exponential_jitter_params=_jitter_params(node.exponential_jitter_params),
    )
    return _named(ours, node.name)


def _jitter_params(params: Mapping[str, Any] | None) -> dict[str, float] | None:
    return {key: float(value) for key, value in params.items()} if params else None


def _generator(node: LCGenerator[Any, Any]) -> Runnable[Any, Any]:
    transform = getattr(node, "_transform", None)
    if transform is not None:
        if "run_manager" in _params(transform):
            return _opaque(node)
        return RunnableGenerator(_transform_step(transform), name=node.name)
    return RunnableLambda(_AGenTransform(node._atransform), name=node.name)


_TRANSLATORS: dict[type, Callable[[Any], Runnable[Any, Any]]] = {
    LCSequence: _sequence,
    LCParallel: _parallel,
    LCLambda: _lambda,
    LCPassthrough: _passthrough,
    LCAssign: _assign,
    LCPick: _pick,
    LCEach: _each,
    LCBranch: _branch,
    LCFallbacks: _fallbacks,
    LCBinding: _binding,
    LCRetry: _retry,
    LCGenerator: _generator,
}


def from_langchain(runnable: Any) -> Runnable[Any, Any]:
    """A rayrunnables runnable with the structure of a LangChain one (see the module docstring).

    Accepts anything LangChain would coerce (a runnable, a dict, a function). Run it with our config:
    ``from_langchain(chain).invoke(x, {"backend": "ray"})``.
    """
    if isinstance(runnable, Runnable):
        return runnable
    if isinstance(runnable, RayRunnable):
        return runnable.runnable
    node = runnable if isinstance(runnable, LCRunnable) else lc_coerce(runnable)
    translate = _TRANSLATORS.get(_unparametrized(type(node)))
    return translate(node) if translate is not None else _opaque(node)


def _unparametrized(cls: type) -> type:
    """``RunnableParallel[dict[str, Any]]`` (a pydantic generic subclass LangChain creates) -> ``RunnableParallel``."""
    while True:
        origin = (getattr(cls, "__pydantic_generic_metadata__", None) or {}).get("origin")
        if not isinstance(origin, type) or origin is cls:
            return cls
        cls = origin


# ---- the other way: ours inside LangChain -------------------------------------------------------------------
class RayRunnable(LCRunnable[Any, Any]):
    """A LangChain ``Runnable`` whose calls run a rayrunnables chain on our backends.

    LangChain's config is accepted: the shared keys (tags, metadata, run_name, configurable,
    max_concurrency, recursion_limit) go into ours; callbacks serve the one driver-side run of this
    node, and other LangChain-only keys are dropped.
    """

    def __init__(self, runnable: Runnable[Any, Any], backend: Any = None, name: str | None = None) -> None:
        self.runnable = runnable
        self.backend = backend
        self.named = name is not None
        self.name = name or runnable.get_name()

    def __repr__(self) -> str:
        return f"RayRunnable({self.runnable!r}, backend={self.backend!r})"

    def _ours(self, config: Mapping[str, Any] | None) -> dict[str, Any]:
        ours = _from_lc_config(config, self.backend)
        if self.named and "run_name" not in ours:
            ours["run_name"] = self.name
        return ours

    def _no_kwargs(self, kwargs: Mapping[str, Any], where: str) -> None:
        if kwargs:  # our steps take no call-time kwargs: bind them inside the chain instead
            raise TypeError(f"{self.get_name()}.{where}() got unexpected keyword argument(s) {sorted(kwargs)}")

    def invoke(self, input: Any, config: LCConfig | None = None, **kwargs: Any) -> Any:
        """Our chain's own root run is the run LangChain's callbacks see (no wrapper run around it)."""
        self._no_kwargs(kwargs, "invoke")
        return self.runnable.invoke(input, self._ours(config))

    async def ainvoke(self, input: Any, config: LCConfig | None = None, **kwargs: Any) -> Any:
        self._no_kwargs(kwargs, "ainvoke")
        return await self.runnable.ainvoke(input, self._ours(config))

    def _batch_ours(self, inputs: list[Any], configs: list[LCConfig], return_exceptions: bool) -> list[Any]:
        """One batch; an item whose converted config differs from the first's carries its own."""
        result: list[Any] = self.runnable.batch(inputs, [self._ours(c) for c in configs],
                                                return_exceptions=return_exceptions)
        return result

    def batch(
        self,
        inputs: list[Any],
        config: LCConfig | list[LCConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any | None,
    ) -> list[Any]:
        self._no_kwargs(kwargs, "batch")
        if not inputs:
            return []
        return self._batch_ours(list(inputs), get_config_list(config, len(inputs)), return_exceptions)

    async def abatch(
        self,
        inputs: list[Any],
        config: LCConfig | list[LCConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any | None,
    ) -> list[Any]:
        import asyncio

        self._no_kwargs(kwargs, "abatch")
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))
        return await asyncio.to_thread(self._batch_ours, list(inputs), configs, return_exceptions)

    def stream(self, input: Any, config: LCConfig | None = None, **kwargs: Any | None) -> Iterator[Any]:
        self._no_kwargs(kwargs, "stream")
        yield from self.runnable.stream(input, self._ours(config))

    async def astream(self, input: Any, config: LCConfig | None = None, **kwargs: Any | None) -> AsyncIterator[Any]:
        self._no_kwargs(kwargs, "astream")
        async for chunk in self.runnable.astream(input, self._ours(config)):
            yield chunk


def to_langchain(runnable: Any, *, backend: Any = None, name: str | None = None) -> RayRunnable:
    """A ``langchain_core`` ``Runnable`` running ``runnable`` on our backends (``backend`` or the default).

    ``prompt | to_langchain(ours, backend="ray") | StrOutputParser()`` composes like any LangChain step.
    """
    if isinstance(runnable, RayRunnable):
        return runnable if backend is None and name is None else RayRunnable(runnable.runnable, backend, name)
    if not isinstance(runnable, Runnable):
        from ..runnables import coerce_to_runnable

        runnable = coerce_to_runnable(runnable)
    return RayRunnable(runnable, backend, name)
