"""Concurrent ``/invoke`` requests to a chain with a vectorized step become one ``batch`` call.

Why: a vectorized step (``RunnableLambda(f, batched=True)``, a ``RunnableActor`` with a ``batch``
method) does one call for many items, an embedding model one forward pass for many texts. Requests
arriving one by one would each pay a whole call. So a replica holds each request for at most
``max_wait_s`` (or until ``max_size`` are waiting), then runs them as one ``abatch`` with each request's
own config, and the backend hands the vectorized step the items together. A request whose client left
while its batch runs is not cancelled (its neighbours' work is the same call); it is dropped at the end.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from ..engine.steps import walk

__all__ = ["RequestBatcher", "has_vectorized_step"]


def has_vectorized_step(chain: Any) -> bool:
    """Whether any step of ``chain`` takes a whole list of items in one call."""
    return any(getattr(step, "vectorized", False) for step in walk(chain))


@dataclass
class _Waiting:
    value: Any
    config: dict[str, Any]
    future: asyncio.Future[Any]


class RequestBatcher:
    """Collects ``invoke`` calls for up to ``max_wait_s`` or ``max_size`` of them, then runs one ``abatch``."""

    def __init__(self, chain: Any, max_size: int = 64, max_wait_s: float = 0.01) -> None:
        if max_size < 1 or max_wait_s < 0:
            raise ValueError(f"max_size must be >= 1 and max_wait_s >= 0, got {max_size} and {max_wait_s}")
        self.chain = chain
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.waiting: list[_Waiting] = []
        self.timer: asyncio.TimerHandle | None = None
        self.sizes: list[int] = []  # how many requests each batch call carried (for tests and metrics)
        self.tasks: set[asyncio.Task[None]] = set()

    async def invoke(self, value: Any, config: dict[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.waiting.append(_Waiting(value, config, future))
        if len(self.waiting) >= self.max_size:
            self._flush()
        elif self.timer is None:
            self.timer = loop.call_later(self.max_wait_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        group, self.waiting = [w for w in self.waiting if not w.future.done()], []
        if group:
            task = asyncio.ensure_future(self._run(group))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _run(self, group: list[_Waiting]) -> None:
        self.sizes.append(len(group))
        try:
            outputs = await self.chain.abatch([w.value for w in group], [w.config for w in group],
                                              return_exceptions=True)
        except BaseException as exc:  # the batch as a whole failed (a set-up error): every request fails
            for w in group:
                if not w.future.done():
                    w.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for w, out in zip(group, outputs, strict=True):
            if w.future.done():
                continue
            if isinstance(out, Exception):
                w.future.set_exception(out)
            else:
                w.future.set_result(out)
