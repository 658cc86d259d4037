"""Tokens a run's model calls used, counted from LangChain's ``on_llm_end`` as its own handler counts them.

``UsageCounter`` is a callback handler (duck-typed: nothing here imports langchain-core) that sums the
input, output and total tokens of every model call, per model name. It reads what LangChain's
``UsageMetadataCallbackHandler`` reads: the first generation's message ``usage_metadata`` and the model
name in its ``response_metadata``, so both count the same tokens. Two differences: a call whose answer
names no model is counted under ``"unknown"`` (LangChain's drops it), and a completion model's
``llm_output["token_usage"]`` is read when there is no chat message.

Given in ``config["callbacks"]``, it hears every model call of a run on every backend (run events are
recorded where steps run and replayed in the caller's process). ``ItemUsageCounter`` also follows the run
tree, so each item's calls can be told apart: give each item its own parent run
(``engine.events.PARENT_RUN_KEY``), ``expect`` that key, and ``take`` its usage once the item is done.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from .engine.steps import walk

__all__ = ["FIELDS", "UsageCounter", "ItemUsageCounter", "call_usage", "reports_model_calls", "format_usage",
           "add_usage", "zero_usage"]

FIELDS = ("input_tokens", "output_tokens", "total_tokens")
UNKNOWN_MODEL = "unknown"


def zero_usage() -> dict[str, int]:
    return dict.fromkeys(FIELDS, 0)


def add_usage(into: dict[str, int], usage: Mapping[str, int]) -> dict[str, int]:
    for key in FIELDS:
        into[key] = into.get(key, 0) + int(usage.get(key, 0))
    return into


def _as_int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _usage(found: Any) -> dict[str, int] | None:
    """LangChain's ``usage_metadata`` (``input_tokens``...) or a provider's ``usage`` (``prompt_tokens``...)."""
    if not isinstance(found, Mapping) or not found:
        return None
    if "input_tokens" in found or "output_tokens" in found:
        used, made = _as_int(found.get("input_tokens")), _as_int(found.get("output_tokens"))
    elif "prompt_tokens" in found or "completion_tokens" in found:
        used, made = _as_int(found.get("prompt_tokens")), _as_int(found.get("completion_tokens"))
    else:
        return None
    total = _as_int(found.get("total_tokens")) if found.get("total_tokens") is not None else used + made
    return {"input_tokens": used, "output_tokens": made, "total_tokens": total}


def call_usage(response: Any) -> tuple[str, dict[str, int]] | None:
    """``(model name, usage)`` of one model call's result (an ``LLMResult``), or None when it reports none."""
    try:
        generation = response.generations[0][0]
    except (AttributeError, IndexError, KeyError, TypeError):
        generation = None
    message = getattr(generation, "message", None)
    if message is not None:
        usage = _usage(getattr(message, "usage_metadata", None))
        metadata = getattr(message, "response_metadata", None)
        name = metadata.get("model_name") if isinstance(metadata, Mapping) else None
    else:  # a completion model (no chat message): the provider's usage in ``llm_output``
        llm_output = getattr(response, "llm_output", None)
        if not isinstance(llm_output, Mapping):
            return None
        usage = _usage(llm_output.get("token_usage") or llm_output.get("usage"))
        name = llm_output.get("model_name")
    if usage is None:
        return None
    return (name if isinstance(name, str) and name else UNKNOWN_MODEL), usage


def reports_model_calls(chain: Any) -> bool:
    """Whether ``chain`` holds a step that reports LangChain runs (``from_langchain``'s opaque steps,
    ``lazy_langchain_step``): the steps whose model calls a counter can hear."""
    return any(getattr(getattr(node, "func", None), "reports_runs", False) for node in walk(chain))


def format_usage(by_model: Mapping[str, Mapping[str, int]]) -> str | None:
    """``tokens: 1,234 in, 56 out, 1,290 total (model-a: ...; model-b: ...)``; None when nothing was counted."""
    if not by_model:
        return None
    total = zero_usage()
    for usage in by_model.values():
        add_usage(total, usage)

    def line(usage: Mapping[str, int]) -> str:
        return (f"{usage['input_tokens']:,} in, {usage['output_tokens']:,} out, "
                f"{usage['total_tokens']:,} total")

    models = "; ".join(f"{name}: {line(usage)}" for name, usage in sorted(by_model.items()))
    return f"tokens: {line(total)} ({models})"


class UsageCounter:
    """Sums the usage of every model call it hears, per model name; thread-safe, one lock per call."""

    raise_error = False
    run_inline = True  # LangChain's manager, should one call it directly: no thread hop needed

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_model: dict[str, dict[str, int]] = {}
        self.total_tokens = 0
        self.calls = 0

    def on_llm_end(self, response: Any, *, run_id: uuid.UUID | None = None,
                   parent_run_id: uuid.UUID | None = None, **kwargs: Any) -> None:
        found = call_usage(response)
        if found is None:
            return
        name, usage = found
        with self._lock:
            self._count(name, usage, run_id)

    def _count(self, name: str, usage: dict[str, int], run_id: uuid.UUID | None) -> None:
        add_usage(self.by_model.setdefault(name, zero_usage()), usage)
        self.total_tokens += usage["total_tokens"]
        self.calls += 1

    def merge(self, by_model: Mapping[str, Mapping[str, int]]) -> None:
        """Counts made elsewhere (a Ray Data worker's batch), added to these."""
        with self._lock:
            for name, usage in by_model.items():
                add_usage(self.by_model.setdefault(name, zero_usage()), usage)
                self.total_tokens += int(usage.get("total_tokens", 0))

    def totals(self) -> dict[str, int]:
        with self._lock:
            total = zero_usage()
            for usage in self.by_model.values():
                add_usage(total, usage)
            return total

    def summary(self) -> str | None:
        with self._lock:
            return format_usage(self.by_model)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.by_model})"


class ItemUsageCounter(UsageCounter):
    """Also each item's usage: a run belongs to the item of its parent, and a root run (its parent not a
    run this counter saw start) to the item whose key is that parent. Only the runs in flight are held."""

    def __init__(self) -> None:
        super().__init__()
        self._item_of: dict[uuid.UUID, Any] = {}  # run in flight -> its item's key
        self._items: dict[Any, dict[str, int]] = {}  # expected item key -> its usage so far

    def expect(self, key: Any) -> None:
        """``key`` names an item (the parent of its runs): count its usage until ``take``."""
        with self._lock:
            self._items[key] = zero_usage()

    def take(self, key: Any) -> dict[str, int]:
        """The usage of item ``key`` (zeros if it made no model call), forgotten here."""
        with self._lock:
            return self._items.pop(key, None) or zero_usage()

    def _started(self, run_id: Any, parent_run_id: Any) -> None:
        if run_id is None:
            return
        with self._lock:
            self._item_of[run_id] = self._item_of.get(parent_run_id, parent_run_id)

    def _ended(self, run_id: Any) -> None:
        with self._lock:
            self._item_of.pop(run_id, None)

    def _count(self, name: str, usage: dict[str, int], run_id: uuid.UUID | None) -> None:
        super()._count(name, usage, run_id)
        item = self._item_of.pop(run_id, None) if run_id is not None else None
        if item is not None and item in self._items:  # an item already taken (a late call): totals only
            add_usage(self._items[item], usage)

    def on_llm_end(self, response: Any, *, run_id: uuid.UUID | None = None,
                   parent_run_id: uuid.UUID | None = None, **kwargs: Any) -> None:
        super().on_llm_end(response, run_id=run_id, parent_run_id=parent_run_id, **kwargs)
        self._ended(run_id)


def _starts(self: ItemUsageCounter, *args: Any, run_id: Any = None, parent_run_id: Any = None, **kwargs: Any) -> None:
    self._started(run_id, parent_run_id)


def _ends(self: ItemUsageCounter, *args: Any, run_id: Any = None, **kwargs: Any) -> None:
    self._ended(run_id)


def _install(names: Iterable[str], method: Any) -> None:
    for name in names:
        setattr(ItemUsageCounter, name, method)


_install(("on_chain_start", "on_chat_model_start", "on_llm_start", "on_tool_start", "on_retriever_start"), _starts)
_install(("on_chain_end", "on_chain_error", "on_llm_error", "on_tool_end", "on_tool_error", "on_retriever_end",
          "on_retriever_error"), _ends)
