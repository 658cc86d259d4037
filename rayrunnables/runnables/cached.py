"""``step.with_cache(store=None, *, version=None, key=None, ttl=None)``: a step computed once per input.

The key of a call is a hash of the step's fingerprint (``rayrunnables.cache.fingerprint``: its code and
the values it closes over, its LangChain parameters...; ``version=`` stands for the code) and of its input
(``rayrunnables.cache.canonical``; ``key=`` says what identifies an input), plus the call's
``configurable``. A hit returns the entry's value and reports the step's run with ``{"cached": True}`` in
its metadata; a miss calls the step and writes its output (errors are never cached). A vectorized step
looks every item up and is called once with the misses. The store is the step's own, else the run's
(``config["cache"]``, ``rayrunnables run --cache``), else ``$RAYRUNNABLES_CACHE``, else
``~/.cache/rayrunnables/steps``; each process opens a store once.

The fingerprint is taken once per run in each process (a ``batch`` of 1,000 items takes it once), so a
value the step closes over that changes between two runs is seen by the second.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from ..cache.base import CacheStore, logger, warn_once
from ..cache.canonical import Unhashable, input_digest
from ..cache.codec import FORMAT, MISS, Uncacheable, make_entry, read_entry
from ..cache.fingerprint import fingerprint
from ..cache.stores import default_location, open_store
from ..context import RunContext
from ..engine.process_state import STATE
from ..errors import OptionsError, UnhashableInputError, attach_step
from .actor import check_batch_output
from .base import Input, Output, Runnable
from .chunks import NOTHING, AddableDict, add_chunk, gather
from .runs import report_run

__all__ = ["RunnableCached", "check_cache_args", "configurable_digest", "store_of"]

UNHASHABLE = ("error", "miss")
# ``configurable`` keys that are a framework's bookkeeping, not settings of the step (LangGraph's checkpoints)
_BOOKKEEPING = frozenset({"checkpoint_id", "checkpoint_ns", "checkpoint_map"})


def configurable_digest(configurable: Any) -> bytes:
    """The part of the call's ``configurable`` a step may read: its keys with a canonical form, less private
    (``__...``) and bookkeeping keys (so a cached step inside a LangGraph node is not a miss every time)."""
    if not isinstance(configurable, dict) or not configurable:
        return b""
    settings = []
    for name, value in configurable.items():
        if not isinstance(name, str) or name.startswith("__") or name in _BOOKKEEPING:
            continue
        try:
            settings.append((name, input_digest(value)))
        except Unhashable:
            logger.debug("configurable[%r] has no canonical form: not part of the cache key", name)
    return input_digest(sorted(settings)) if settings else b""


def check_cache_args(where: str, store: Any, version: Any, key: Any, ttl: Any,
                     on_unhashable: Any) -> tuple[Any, str | None, Any, float | None, str]:
    """The arguments of ``with_cache``, checked now: a store that cannot be opened (a missing extra, an
    unknown URI) fails here, naming the step."""
    where = f"{where}.with_cache"
    if store is not None:
        try:
            opened = open_store(store)
        except (TypeError, ValueError, ImportError) as exc:
            raise type(exc)(f"{where}: {exc}") from None
        store = opened if isinstance(store, CacheStore) else str(store)
    if version is not None and (not isinstance(version, (str, int)) or isinstance(version, bool) or version == ""):
        raise OptionsError(f"{where}: version must be a non-empty string or an int, got {version!r}")
    if key is not None and not callable(key):
        raise OptionsError(f"{where}: key must be a callable (input -> what identifies it), got {key!r}")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl)
                            or ttl <= 0):
        raise OptionsError(f"{where}: ttl must be a positive number of seconds, got {ttl!r}")
    if on_unhashable not in UNHASHABLE:
        raise OptionsError(f"{where}: on_unhashable must be one of {UNHASHABLE}, got {on_unhashable!r}")
    return store, None if version is None else str(version), key, None if ttl is None else float(ttl), on_unhashable


def store_of(spec: Any) -> CacheStore:
    """The store of ``spec`` in this process: opened once (its connections reused by every call, though a
    step arrives unpickled anew with each chunk); a store of your own that names no ``uri`` is used as given."""
    if spec is None:
        spec = default_location()
    if isinstance(spec, CacheStore):
        store = spec
        if not store.uri:
            return store
        return STATE.services.once(f"cache-store {type(store).__qualname__} {store.uri}", lambda: store)  # type: ignore[no-any-return]
    return STATE.services.once(f"cache-store {spec}", lambda: open_store(spec))  # type: ignore[no-any-return]


@dataclass(frozen=True, eq=False)
class RunnableCached(Runnable[Input, Output]):
    """``bound`` whose outputs are kept in a store, by a key of its fingerprint and its input."""

    bound: Runnable[Input, Output]
    store: Any = None  # None (the run's), a path or URI, or a CacheStore
    version: str | None = None
    key: Callable[[Any], Any] | None = None
    ttl: float | None = None
    on_unhashable: str = "error"
    name: str | None = None

    def label(self) -> str:
        return self.named(f"cached({self.bound.label()})")

    def children(self) -> list[tuple[str, Runnable[Any, Any]]]:
        return [("", self.bound)]

    def reports_run(self) -> bool:
        """A miss is the step's own run; a hit reports that run itself (``report_run``)."""
        return False

    def cache_identity(self) -> Runnable[Input, Output]:
        """Inside another cached step, what this one computes is what counts, not where it keeps it."""
        return self.bound

    @property
    def vectorized(self) -> bool:
        return self.bound.vectorized

    @property
    def item_timeout(self) -> float | None:
        return self.bound.item_timeout

    @property
    def speculation(self) -> Any:
        return self.bound.speculation

    @property
    def waits(self) -> bool:
        """A cached step that waits (declared ``io_bound``, async, rate-limited) still waits on a miss."""
        options = self.bound.options
        if "io_bound" in options:
            return bool(options["io_bound"])
        return self.bound.waits

    def describe(self) -> str:
        """What ``explain()`` says: where the entries go, and what the key is made of."""
        where = (open_store(self.store).describe() if self.store is not None
                 else f"the run's store (config['cache'], --cache), else {default_location()}")
        code = f"version {self.version!r}" if self.version else "code"
        made_of = f"{code} + {'key(input)' if self.key else 'input'}"
        ttl = f", ttl {self.ttl:g} s" if self.ttl else ""
        return f"cached in {where}; key: {made_of}{ttl}"

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_fingerprint", None)  # taken again where it runs
        return state

    # ---- keys ---------------------------------------------------------------------------------------------
    def _where(self, ctx: RunContext) -> str:
        return ctx.child(self.bound.label()).path_str

    def fingerprint(self, ctx: RunContext) -> str:
        """The step's fingerprint, taken once per run in this process (``ctx.run_scopes`` is the run's own)."""
        memo = self.__dict__.get("_fingerprint")
        if memo is not None and memo[0] is ctx.run_scopes:
            return memo[1]  # type: ignore[no-any-return]
        found = fingerprint(self.bound, code=self.version is None)
        if self.version is not None:
            found = hashlib.sha256(f"version {self.version}\0{found}".encode()).hexdigest()
        object.__setattr__(self, "_fingerprint", (ctx.run_scopes, found))
        return found

    def cache_key(self, input: Any, ctx: RunContext) -> str | None:
        """The entry's key for ``input`` (None: an input that cannot be hashed, with ``on_unhashable="miss"``)."""
        step = self.fingerprint(ctx)
        if self.key is None:
            identity = input
        else:
            try:
                identity = self.key(input)
            except Exception as exc:
                attach_step(exc, self._where(ctx))
                raise
        try:
            digest = input_digest(identity)
        except Unhashable as exc:
            where = self._where(ctx)
            if self.on_unhashable == "miss":
                warn_once(where, "unhashable", f"{where}: not cached: {exc}")
                return None
            raise attach_step(UnhashableInputError(
                f"{where}: the cache cannot hash its input: {exc}; give with_cache(key=lambda input: ...) to say "
                "what identifies an input, or on_unhashable='miss' to compute such inputs uncached"), where) from None
        extra = configurable_digest(ctx.config.get("configurable"))
        return hashlib.sha256(b"".join((FORMAT.encode(), b"\0", step.encode(), digest, extra))).hexdigest()

    # ---- reading and writing ------------------------------------------------------------------------------
    def _found(self, store: CacheStore, key: str, data: bytes | None, where: str) -> Any:
        if data is None:
            return MISS
        value, why = read_entry(data, key)
        if value is MISS:
            if why == "expired":
                logger.debug("%s: entry %s expired: a miss", where, key[:16])
            else:
                warn_once(f"{store.uri} {where}", why[:24],
                          f"cache {store.describe()}: {where}: entry {key}: {why}: a miss")
        return value

    def _entry(self, key: str, output: Any, where: str) -> bytes | None:
        try:
            return make_entry(key, output, self.bound.label(), self.ttl)
        except Uncacheable as exc:
            warn_once(where, "uncacheable", f"{where}: output not cached: the cache holds JSON-like values, numpy "
                      f"arrays, LangChain messages and pydantic models, not {exc}")
            return None

    def _hit(self, ctx: RunContext, input: Any, value: Any, key: str) -> Any:
        if ctx.events is not None:
            report_run(ctx, self.bound, input, value, {"cached": True, "cache_key": key})
        return value

    # ---- the three ways a step runs -----------------------------------------------------------------------
    def _invoke(self, input: Input, ctx: RunContext) -> Output:
        ctx.check_cancelled()
        key = self.cache_key(input, ctx)
        if key is None:
            return self.bound._invoke(input, ctx)
        store = store_of(self.store if self.store is not None else ctx.config.get("cache"))
        where = self._where(ctx)
        value = self._found(store, key, store.get(key), where)
        if value is not MISS:
            return self._hit(ctx, input, value, key)  # type: ignore[no-any-return]
        output = self.bound._invoke(input, ctx)
        entry = self._entry(key, output, where)
        if entry is not None:
            store.put(key, entry, self.ttl)
        return output

    def _invoke_batch(self, inputs: list[Any], ctx: RunContext) -> list[Any]:
        """Each item looked up; the vectorized step called once, with the misses only."""
        if not self.bound.vectorized:
            return [self._invoke(value, ctx) for value in inputs]
        ctx.check_cancelled()
        keys = [self.cache_key(value, ctx) for value in inputs]
        store = store_of(self.store if self.store is not None else ctx.config.get("cache"))
        where = self._where(ctx)
        known = [i for i, key in enumerate(keys) if key is not None]
        found = dict(zip(known, store.get_many([cast(str, keys[i]) for i in known]), strict=True))
        outputs: list[Any] = [None] * len(inputs)
        misses: list[int] = []
        for i, key in enumerate(keys):
            value = MISS if key is None else self._found(store, key, found[i], where)
            if value is MISS:
                misses.append(i)
            else:
                outputs[i] = self._hit(ctx, inputs[i], value, key)  # type: ignore[arg-type]
        if not misses:
            return outputs
        computed = check_batch_output(self.bound, ctx, self.bound._invoke_batch([inputs[i] for i in misses], ctx),
                                      len(misses))
        entries: list[tuple[str, bytes]] = []
        for i, output in zip(misses, computed, strict=True):
            outputs[i] = output
            key = keys[i]
            entry = None if key is None else self._entry(key, output, where)
            if key is not None and entry is not None:
                entries.append((key, entry))
        if entries:
            store.put_many(entries, self.ttl)
        return outputs

    def _transform(self, chunks: Iterator[Any], ctx: RunContext) -> Iterator[Output]:
        """A hit streams as one chunk; a miss streams the step's chunks, and their sum is kept (a LangChain
        message chunk as the message ``invoke`` returns) once the stream ends whole."""
        input = gather(chunks)
        key = self.cache_key(input, ctx)
        if key is None:
            yield from self.bound._transform(iter([input]), ctx)
            return
        store = store_of(self.store if self.store is not None else ctx.config.get("cache"))
        where = self._where(ctx)
        value = self._found(store, key, store.get(key), where)
        if value is not MISS:
            yield self._hit(ctx, input, value, key)
            return
        output: Any = NOTHING
        for chunk in self.bound._transform(iter([input]), ctx):
            output = add_chunk(output, chunk)
            yield chunk
        if output is NOTHING:
            return
        entry = self._entry(key, _as_message(output), where)
        if entry is not None:
            store.put(key, entry, self.ttl)


def _as_message(output: Any) -> Any:
    """A stream's sum as ``invoke`` gives it: a LangChain message chunk as the message, a dict's chunks as a dict."""
    if type(output) is AddableDict:
        return dict(output)
    if "langchain_core" not in sys.modules:
        return output
    from langchain_core.messages import BaseMessageChunk, message_chunk_to_message

    return message_chunk_to_message(output) if isinstance(output, BaseMessageChunk) else output
