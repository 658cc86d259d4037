"""The ``Runnable`` base: composition (``|``, ``map``, ``pick``...) and the calls that hand a node to a backend.

A node is frozen data. It knows its own in-process meaning (``_invoke``), which is the reference
semantics every backend must reproduce; *where* it runs is decided by a backend, never by the node.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence, Sized
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from ..config import validate_config
from ..engine.events import (
    PARENT_RUN_KEY,
    RunSink,
    ScopedCallbacks,
    ambient_handlers,
    recorder_for,
    scoped_callbacks,
)
from ..engine.execution import step_state
from ..engine.registry import resolve_backend
from ..engine.scheduler import run_batch
from ..errors import ConfigError, OptionsError
from .chunks import gather
from .runs import run_batch_items, run_invoke, run_transform

if TYPE_CHECKING:
    from ..context import RunContext
    from .each import RunnableEach
    from .wrappers import RunnableBinding, RunnableRetry, RunnableWithFallbacks

__all__ = ["Runnable", "coerce_to_runnable", "Input", "Output"]

Input = TypeVar("Input")
Output = TypeVar("Output")
Other = TypeVar("Other")
# one config for the whole batch, or one per input (LangChain's ``batch(inputs, [config, ...])``)
BatchConfig = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None


class Runnable(Generic[Input, Output]):
    """A unit of work that can be invoked, batched, streamed, mapped and composed.

    Not an ``abc.ABC`` on purpose: ``isinstance(x, Runnable)`` runs on every step's output (a function
    may return a runnable), and ABC instance checks cost more than a trivial step.
    """

    name: str | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every run method a node class defines reports its run when someone records run events."""
        super().__init_subclass__(**kwargs)
        for attr, tracer in _TRACERS.items():
            impl = cls.__dict__.get(attr)
            if impl is not None and not getattr(impl, "_traced", False):
                setattr(cls, attr, tracer(impl))

    @property
    def learns(self) -> bool:
        """Whether the node calls a user function itself, so its execution class is learned from its calls."""
        return False

    @property
    def vectorized(self) -> bool:
        """Whether ``_invoke_batch`` takes a whole chunk of items in one call."""
        return False

    # ---- the hooks the engine reads (``protocols.Node``), with their defaults ----------------------------
    #: the options recorded on the step (``with_options``): a binding holds its own, other steps none
    options: Mapping[str, Any] = MappingProxyType({})

    @property
    def item_timeout(self) -> float | None:
        """Seconds each item of a batch of this step may take (``with_timeout`` outermost): None, no deadline."""
        return None

    @property
    def speculation(self) -> float | bool | None:
        """Straggler backups for a batch of this step (``with_options(speculative=...)``): None, no backup."""
        return None

    @property
    def waits(self) -> bool:
        """Whether the step says it waits rather than computes (async, rate-limited): False, its class is
        learned from its calls (or declared with ``io_bound``)."""
        return False

    def describe(self) -> str:
        """What ``explain()`` adds after the step's line: nothing by default."""
        return ""

    def __getstate__(self) -> dict[str, Any]:
        """What a node learned in this process (``rayrunnables.engine.execution``) stays here: every process,
        every Ray worker, learns for itself."""
        return step_state(self)

    # ---- what a node is ------------------------------------------------------------------------
    def get_name(self) -> str:
        return self.name or type(self).__name__

    def run_name(self) -> str:
        """The name its runs have in callbacks and traces: LangChain's name for the same runnable."""
        return self.get_name()

    def reports_run(self) -> bool:
        """Whether calling it is a run of its own (a binding or a rate limit only changes how its step runs)."""
        return True

    def label(self) -> str:
        """How the node appears as the last segment of a step path."""
        return self.named(type(self).__name__)

    def named(self, default: str) -> str:
        """The label of a node: its name in quotes when it has one, else ``default``."""
        return f"'{self.name}'" if self.name else default

    def children(self) -> list[tuple[str, Runnable[Any, Any]]]:
        """(path segment, child) pairs, in order; leaves have none."""
        return []

    def scope(self, ctx: RunContext) -> RunContext:
        """A named sub-chain adds its name to the path of every step inside it."""
        return ctx.child(f"'{self.name}'") if self.name else ctx

    def _invoke(self, input: Input, ctx: RunContext) -> Output:
        """The in-process meaning of this node: the reference every backend reproduces."""
        raise NotImplementedError(f"{type(self).__name__} must implement _invoke")

    def _invoke_batch(self, inputs: list[Any], ctx: RunContext) -> list[Any]:
        """A chunk of items in one call (for ``vectorized`` nodes); others run item by item."""
        return [self._invoke(value, ctx) for value in inputs]

    def _transform(self, chunks: Iterator[Any], ctx: RunContext) -> Iterator[Output]:
        """Input chunks in, output chunks out (LangChain's ``transform``). A step that does not stream
        adds its input chunks up (``+``) and yields its one output."""
        yield self._invoke(gather(chunks), ctx)

    def _stream(self, input: Input, ctx: RunContext) -> Iterator[Output]:
        yield from self._transform(iter([input]), ctx)

    # ---- running ---------------------------------------------------------------------------------
    def invoke(self, input: Input, config: Mapping[str, Any] | None = None, **kwargs: Any) -> Output:
        cfg = _recording(_call_config(config, kwargs, "invoke"), self)
        result: Output = resolve_backend(cfg).invoke(self, input, cfg)
        return result

    async def ainvoke(self, input: Input, config: Mapping[str, Any] | None = None, **kwargs: Any) -> Output:
        cfg = _recording(_call_config(config, kwargs, "ainvoke"), self)
        result: Output = await resolve_backend(cfg).ainvoke(self, input, cfg)
        return result

    def batch(
        self,
        inputs: Sequence[Input],
        config: BatchConfig = None,
        *,
        return_exceptions: bool = False,
        max_failures: int | None = None,
        **kwargs: Any,
    ) -> list[Output]:
        """``max_failures`` (with ``return_exceptions=True``): once more items fail, stop, cancel what runs
        and raise ``rayrunnables.FailureBudgetExceeded``."""
        cfg, items = _batch_config(config, list(inputs), kwargs, "batch")
        cfg = _recording(cfg, self)
        out: list[Any] = [None] * len(items)
        for index, value in run_batch(
            resolve_backend(cfg), self, items, cfg, return_exceptions=return_exceptions, ordered=False,
            max_failures=max_failures,
        ):
            out[index] = value
        return out

    def batch_as_completed(
        self,
        inputs: Sequence[Input],
        config: BatchConfig = None,
        *,
        return_exceptions: bool = False,
        max_failures: int | None = None,
        **kwargs: Any,
    ) -> Iterator[tuple[int, Output | Exception]]:
        cfg, items = _batch_config(config, list(inputs), kwargs, "batch_as_completed")  # checked now
        cfg = _recording(cfg, self)
        return run_batch(resolve_backend(cfg), self, items, cfg, return_exceptions=return_exceptions, ordered=False,
                         max_failures=max_failures)

    async def abatch(
        self,
        inputs: Sequence[Input],
        config: BatchConfig = None,
        *,
        return_exceptions: bool = False,
        max_failures: int | None = None,
        **kwargs: Any,
    ) -> list[Output]:
        return await asyncio.to_thread(self.batch, inputs, config, return_exceptions=return_exceptions,
                                       max_failures=max_failures, **kwargs)

    async def abatch_as_completed(
        self,
        inputs: Sequence[Input],
        config: BatchConfig = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> AsyncIterator[tuple[int, Output | Exception]]:
        iterator = self.batch_as_completed(inputs, config, return_exceptions=return_exceptions, **kwargs)
        done = object()
        while True:
            item = await asyncio.to_thread(next, iterator, done)
            if item is done:
                return
            yield cast(Any, item)

    def imap(
        self,
        inputs: Iterable[Input],
        config: Mapping[str, Any] | None = None,
        *,
        return_exceptions: bool = False,
        chunk_size: int | None = None,
        max_in_flight: int | None = None,
        progress: bool = False,
        max_failures: int | None = None,
    ) -> Iterator[Output | Exception]:
        """Outputs in input order, consuming ``inputs`` lazily with a bounded window in flight.

        ``progress=True`` shows items done, rate, errors and ETA on stderr (``rayrunnables.progress``).
        ``max_failures`` (with ``return_exceptions=True``): once more items fail, stop and raise
        ``rayrunnables.FailureBudgetExceeded`` (what was yielded stays yielded).
        """
        cfg = _recording(_call_config(config, {}, "imap"), self)
        pairs = run_batch(
            resolve_backend(cfg), self, inputs, cfg, return_exceptions=return_exceptions, ordered=True,
            chunk_size=chunk_size, max_in_flight=max_in_flight, max_failures=max_failures,
        )
        return _values(_tracked(pairs, inputs) if progress else pairs)  # config checked at the call

    def imap_as_completed(
        self,
        inputs: Iterable[Input],
        config: Mapping[str, Any] | None = None,
        *,
        return_exceptions: bool = False,
        chunk_size: int | None = None,
        max_in_flight: int | None = None,
        progress: bool = False,
        max_failures: int | None = None,
    ) -> Iterator[tuple[int, Output | Exception]]:
        """``(index, output)`` pairs as they finish, consuming ``inputs`` lazily."""
        cfg = _recording(_call_config(config, {}, "imap_as_completed"), self)
        pairs = run_batch(
            resolve_backend(cfg), self, inputs, cfg, return_exceptions=return_exceptions, ordered=False,
            chunk_size=chunk_size, max_in_flight=max_in_flight, max_failures=max_failures,
        )
        return _tracked(pairs, inputs) if progress else pairs  # config checked at the call

    def stream(self, input: Input, config: Mapping[str, Any] | None = None, **kwargs: Any) -> Iterator[Output]:
        cfg = _recording(_call_config(config, kwargs, "stream"), self)  # checked now, not at first next()
        return resolve_backend(cfg).stream(self, input, cfg)

    async def astream(
        self, input: Input, config: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> AsyncIterator[Output]:
        iterator = self.stream(input, config, **kwargs)
        done = object()
        try:
            while True:
                item = await asyncio.to_thread(next, iterator, done)
                if item is done:
                    return
                yield cast(Any, item)
        finally:  # the reader left (``break``, ``aclose()``, its task cancelled): stop the producer
            close = getattr(iterator, "close", None)
            if close is not None:
                await asyncio.to_thread(close)

    async def astream_events(
        self,
        input: Input,
        config: Mapping[str, Any] | None = None,
        *,
        version: str = "v2",
        include_names: Sequence[str] | None = None,
        include_types: Sequence[str] | None = None,
        include_tags: Sequence[str] | None = None,
        exclude_names: Sequence[str] | None = None,
        exclude_types: Sequence[str] | None = None,
        exclude_tags: Sequence[str] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """LangChain's ``astream_events``: every run's start, stream chunks and end as it happens, as the
        same event dicts (``version="v2"``), on every backend."""
        if version != "v2":
            raise NotImplementedError(f"astream_events: only version='v2' is supported, got {version!r}")
        from .event_stream import astream_events

        cfg = _call_config(config, {}, "astream_events")
        filters = {"include_names": include_names, "include_types": include_types, "include_tags": include_tags,
                   "exclude_names": exclude_names, "exclude_types": exclude_types, "exclude_tags": exclude_tags}
        async for event in astream_events(self, input, cfg, filters):
            yield event

    def explain(self, backend: Any = None) -> str:
        """Every step with its path, options and execution class, and where the backend will run it
        (``backend``: a name or backend object; by default the one a call would use)."""
        return resolve_backend({"backend": backend} if backend is not None else None).explain(self)

    # ---- composition -----------------------------------------------------------------------------
    def __or__(self, other: Any) -> Runnable[Input, Any]:
        from .sequence import RunnableSequence

        return RunnableSequence.of(self, coerce_to_runnable(other))

    def __ror__(self, other: Any) -> Runnable[Any, Output]:
        from .sequence import RunnableSequence

        return RunnableSequence.of(coerce_to_runnable(other), self)

    def pipe(self, *others: Any, name: str | None = None) -> Runnable[Input, Any]:
        from .sequence import RunnableSequence

        return RunnableSequence.of(self, *(coerce_to_runnable(o) for o in others), name=name)

    def map(self) -> RunnableEach[Input, Output]:
        from .each import RunnableEach

        return RunnableEach(bound=self)

    def pick(self, keys: str | list[str]) -> Runnable[Input, Any]:
        from .passthrough import RunnablePick

        return self | RunnablePick(keys)

    def assign(self, **kwargs: Any) -> Runnable[Input, dict[str, Any]]:
        from .passthrough import RunnableAssign

        return self | RunnableAssign.of(kwargs)

    def with_retry(
        self,
        *,
        retry_if_exception_type: tuple[type[BaseException], ...] = (Exception,),
        stop_after_attempt: int = 3,
        wait_exponential_jitter: bool = True,
        exponential_jitter_params: Mapping[str, float] | None = None,
    ) -> RunnableRetry[Input, Output]:
        from .wrappers import RunnableRetry

        return RunnableRetry.create(
            self,
            retry_if_exception_type=retry_if_exception_type,
            stop_after_attempt=stop_after_attempt,
            wait_exponential_jitter=wait_exponential_jitter,
            exponential_jitter_params=exponential_jitter_params,
        )

    def with_fallbacks(
        self,
        fallbacks: Sequence[Runnable[Input, Output]],
        *,
        exceptions_to_handle: tuple[type[BaseException], ...] = (Exception,),
        exception_key: str | None = None,
    ) -> RunnableWithFallbacks[Input, Output]:
        from .wrappers import RunnableWithFallbacks

        return RunnableWithFallbacks(
            runnable=self,
            fallbacks=tuple(coerce_to_runnable(f) for f in fallbacks),
            exceptions_to_handle=tuple(exceptions_to_handle),
            exception_key=exception_key,
        )

    def with_config(self, config: Mapping[str, Any] | None = None, **kwargs: Any) -> RunnableBinding[Input, Output]:
        from .wrappers import RunnableBinding

        cfg = validate_config({**(config or {}), **kwargs}, f"{self.label()}.with_config")
        if cfg.get("callbacks") is not None and not isinstance(cfg["callbacks"], RunSink):
            cfg["callbacks"] = scoped_callbacks(cfg["callbacks"])  # they stay here; workers send their runs back
        return RunnableBinding.wrap(self, config=cfg)

    def with_listeners(
        self,
        *,
        on_start: Callable[..., Any] | None = None,
        on_end: Callable[..., Any] | None = None,
        on_error: Callable[..., Any] | None = None,
    ) -> RunnableBinding[Input, Output]:
        from .wrappers import Listeners, RunnableBinding

        return RunnableBinding.wrap(self, listeners=Listeners(on_start, on_end, on_error))

    def with_options(self, **options: Any) -> RunnableBinding[Input, Output]:
        """Ray options for the tasks that run this step (``num_cpus``, ``resources``, ``max_retries``...)."""
        from ..options import validate_options
        from .wrappers import RunnableBinding

        return RunnableBinding.wrap(self, options=validate_options(options, self.label()))

    def with_rate_limit(
        self,
        requests_per_second: float | None = None,
        *,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        tokens: Callable[[Any], int] | None = None,
        burst: int = 1,
        key: str | None = None,
        max_wait: float = 300.0,
        rate_limit_errors: Callable[[BaseException], bool] | None = None,
    ) -> Runnable[Input, Output]:
        """This step held to a provider's limits for the whole run (one pacer, cluster-wide on Ray and on the
        data engine): any of requests per second or minute and tokens per minute, all at once. A call books its
        estimated tokens (``tokens(input)``, else an estimate from the text plus the model's ``max_tokens``),
        corrected by the usage the provider reports. HTTP 429s pause the run for the provider's
        ``retry-after`` and the item is called again (up to ``max_wait`` seconds); the pace adapts to them,
        and with no number declared it is learned from them alone. Steps given the same ``key`` share one pace.
        See ``rayrunnables.runnables.rate_limited``."""
        import uuid

        from ..model_calls import max_tokens_of
        from .rate_limited import RunnableRateLimited, check_limits

        where = self.label()
        pace, wait = check_limits(where, requests_per_second, requests_per_minute, tokens_per_minute, burst, max_wait)
        for what, value in (("tokens", tokens), ("rate_limit_errors", rate_limit_errors)):
            if value is not None and not callable(value):
                raise OptionsError(f"{where}.with_rate_limit: {what} must be a callable, got {value!r}")
        if key is not None and (not isinstance(key, str) or not key):
            raise OptionsError(f"{where}.with_rate_limit: key must be a non-empty string, got {key!r}")
        return RunnableRateLimited(
            self, pace, key or uuid.uuid4().hex[:12], tokens, max_tokens_of(self), wait, rate_limit_errors
        )

    def with_timeout(self, seconds: float) -> Runnable[Input, Output]:
        """Each call (each item of ``batch``/``.map()``/``imap``) that takes longer than ``seconds`` raises
        ``TimeoutError`` naming the step and item; the other items go on (``rayrunnables.runnables.timeout``)."""
        from .timeout import RunnableTimeout, check_timeout

        return RunnableTimeout(self, check_timeout(seconds, self.label()))

    def with_cache(
        self,
        store: Any = None,
        *,
        version: str | int | None = None,
        key: Callable[[Any], Any] | None = None,
        ttl: float | None = None,
        on_unhashable: str = "error",
    ) -> Runnable[Input, Output]:
        """This step computed once per input, across runs, processes and machines: its outputs kept in
        ``store`` (a folder, ``s3://bucket/prefix`` or any URI pyarrow opens, ``redis://host:port/db``, a
        ``rayrunnables.cache.CacheStore``; by default the run's ``config["cache"]``, else
        ``$RAYRUNNABLES_CACHE``, else ``~/.cache/rayrunnables/steps``), by a key of the step's code and values
        (``version=`` stands for the code) and its input (``key=lambda input: ...`` says what identifies it).
        ``ttl``: seconds an entry holds. ``on_unhashable="miss"``: an input the cache cannot hash is computed
        uncached instead of raising ``UnhashableInputError``. See ``rayrunnables.runnables.cached``."""
        from .cached import RunnableCached, check_cache_args

        return RunnableCached(self, *check_cache_args(self.label(), store, version, key, ttl, on_unhashable))

    def with_name(self, name: str) -> Runnable[Input, Output]:
        import dataclasses

        renamed: Runnable[Input, Output] = dataclasses.replace(cast(Any, self), name=name)
        return renamed


# ---- run events: each run method, when a recorder is on, reports start/end/error (``engine.events``) -------------
def _tracer(run: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A run method that hands itself to ``run`` (``engine.events``) when someone records, and otherwise
    is the method itself: one attribute test on the hot path."""

    def wrap(impl: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(impl)
        def traced(self: Runnable[Any, Any], value: Any, ctx: RunContext) -> Any:
            if ctx.events is None or ctx.run_owner is self:  # nobody records, or the node's own run goes on
                return impl(self, value, ctx)
            return run(self, impl, value, ctx)

        traced._traced = True  # type: ignore[attr-defined]
        return traced

    return wrap


_TRACERS: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]] = {
    "_invoke": _tracer(run_invoke), "_invoke_batch": _tracer(run_batch_items), "_transform": _tracer(run_transform),
}
Runnable._invoke_batch = _TRACERS["_invoke_batch"](Runnable._invoke_batch)  # type: ignore[method-assign]
# (the default ``_transform`` is not a streamed run: it invokes, and its run is ``_invoke``'s, as in LangChain,
# where a runnable that does not stream natively reports an invoked run inside a stream)


def _listens(node: Any) -> bool:
    """Whether ``node`` holds a ``with_listeners`` binding or one with callbacks of its own (cached: nodes
    are frozen)."""
    found = node.__dict__.get("_listens")
    if found is None:
        from ..engine.steps import walk

        found = any(
            getattr(n, "listeners", None) is not None
            or isinstance(_config_of(n).get("callbacks"), ScopedCallbacks)
            for n in walk(node)
        )
        object.__setattr__(node, "_listens", found)
    return bool(found)


def _config_of(node: Any) -> dict[str, Any]:
    config = getattr(node, "config", None)
    return config if isinstance(config, dict) else {}


def _recording(cfg: dict[str, Any], node: Any) -> dict[str, Any]:
    """``config["callbacks"]`` (handlers or a LangChain callback manager) as the recorder of this call:
    a ``RunSink`` that every backend's run context picks up. Chains with listeners always record."""
    callbacks = cfg.get("callbacks")
    if isinstance(callbacks, RunSink) or (callbacks is None and not _listens(node) and not ambient_handlers()):
        return cfg
    recorder, parent = recorder_for(cfg)
    cfg["callbacks"] = RunSink(recorder, parent)
    return cfg


def _tracked(pairs: Iterator[tuple[int, Any]], inputs: Iterable[Any]) -> Iterator[tuple[int, Any]]:
    from ..progress import track

    return track(pairs, total=len(inputs) if isinstance(inputs, Sized) else None, pairs=True)


def _values(pairs: Iterator[tuple[int, Any]]) -> Iterator[Any]:
    """Outputs without indices; closing this closes ``pairs`` at once (cancelling its work in flight)."""
    try:
        for _, value in pairs:
            yield value
    finally:
        close = getattr(pairs, "close", None)
        if close is not None:
            close()


def _call_config(config: Mapping[str, Any] | None, kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    if kwargs:
        raise TypeError(f"{where}() got unexpected keyword argument(s) {sorted(kwargs)}")
    return validate_config(config, where)


def _batch_config(
    config: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None, items: list[Any], kwargs: dict[str, Any],
    where: str,
) -> tuple[dict[str, Any], list[Any]]:
    """The batch's config, and its items: LangChain's ``batch(inputs, [config, ...])`` gives each input
    its own config. The first config is the batch's (its backend and ``max_concurrency`` apply to the
    whole batch, as in LangChain); an item whose config differs from it carries its own."""
    if config is None or isinstance(config, Mapping):
        return _call_config(config, kwargs, where), items
    if kwargs:
        raise TypeError(f"{where}() got unexpected keyword argument(s) {sorted(kwargs)}")
    if isinstance(config, (str, bytes)) or not isinstance(config, Sequence):
        raise ConfigError(
            f"{where}: config must be a dict or a list of dicts (one per input), got {type(config).__name__}"
        )
    if len(config) != len(items):
        raise ValueError(
            f"{where}() got {len(config)} configs for {len(items)} inputs: give one config, or one per input"
        )
    configs = [validate_config(c, f"{where}: config[{i}]") for i, c in enumerate(config)]
    if not configs:
        return {}, items
    first = configs[0]
    for i, c in enumerate(configs):
        if c.get("backend") != first.get("backend"):
            raise ConfigError(
                f"{where}: config[{i}] names backend {c.get('backend')!r} but config[0] names "
                f"{first.get('backend')!r}: one batch runs on one backend"
            )
    from ..engine.inprocess import PerItem

    own = [first if c == first else _item_config(c) for c in configs]
    return first, [item if c is first else PerItem(c, item) for item, c in zip(items, own, strict=True)]


def _item_config(config: dict[str, Any]) -> dict[str, Any]:
    """An item's own config, less the batch's backend; a callback manager of its own (LangChain hands each
    item a child of its caller's run) becomes the parent of the item's run."""
    own = {k: v for k, v in config.items() if k != "backend"}
    parent = getattr(own.get("callbacks"), "parent_run_id", None)
    if parent is not None:
        own[PARENT_RUN_KEY] = parent
    return own


def coerce_to_runnable(thing: Any) -> Runnable[Any, Any]:
    """A runnable as it is; a dict becomes a ``RunnableParallel``; a callable a ``RunnableLambda``."""
    if isinstance(thing, Runnable):
        return thing
    if isinstance(thing, Mapping):
        from .parallel import RunnableParallel

        return RunnableParallel(thing)
    if callable(thing):
        from .lambda_ import RunnableLambda

        return RunnableLambda(thing)
    from ..errors import InputTypeError

    raise InputTypeError(
        f"cannot turn a {type(thing).__name__} ({thing!r:.80}) into a step: expected a Runnable, a callable or a dict"
    )
