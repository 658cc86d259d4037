"""A progress display for long runs: items done, rate, errors, ETA, and tokens per second once model
calls report usage.

A tqdm bar when tqdm is installed (``pip install rayrunnables[progress]``) and the stream is a
terminal; otherwise one plain line every few seconds (and a last one at the end), which reads well in
logs and needs nothing installed: the ``rayrunnables`` command never needs tqdm.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar, cast

__all__ = ["Progress", "track"]

T = TypeVar("T")


def _tqdm_class() -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts items and errors; ``update`` is cheap enough to call once per item."""

    def __init__(
        self,
        total: int | None = None,
        desc: str = "items",
        stream: IO[str] | None = None,
        interval: float = 5.0,
        use_tqdm: bool | None = None,
        enabled: bool = True,
    ) -> None:
        self.total, self.desc, self.interval, self.enabled = total, desc, interval, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.done = self.errors = 0
        self.tokens = 0  # model tokens used so far (``set_tokens``): shown as a rate once there are any
        self.start = self._last = time.monotonic()
        tqdm = _tqdm_class()
        if use_tqdm is None:
            use_tqdm = tqdm is not None and _isatty(self.stream)
        self._bar = (
            tqdm(total=total, desc=desc, unit="item", file=self.stream, dynamic_ncols=True, smoothing=0.1)
            if enabled and use_tqdm and tqdm is not None
            else None
        )
        self._closed = not enabled  # disabled: counts only, prints nothing

    def update(self, n: int = 1, errors: int = 0) -> None:
        self.done += n
        if errors:
            self.errors += errors
            self._postfix()
        if self._bar is not None:
            self._bar.update(n)
            return
        if self._closed:
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._print_line(now)

    def set_tokens(self, tokens: int) -> None:
        """The model tokens the run has used so far (a running total)."""
        if tokens != self.tokens:
            self.tokens = tokens
            self._postfix()

    def _postfix(self) -> None:
        if self._bar is None:
            return
        parts = [f"errors={self.errors:,}"] if self.errors else []
        if self.tokens:
            parts.append(f"tokens/s={self.tokens / max(time.monotonic() - self.start, 1e-9):,.0f}")
        self._bar.set_postfix_str(", ".join(parts), refresh=False)

    def write(self, text: str) -> None:
        """A message above the bar (or a plain line), without garbling it."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def summary(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.start, 1e-9)
        rate = self.done / elapsed
        parts = [f"{self.desc}: {self.done:,}" + (f"/{self.total:,}" if self.total is not None else "") + " done",
                 f"{rate:,.0f}/s", f"{self.errors:,} errors", f"elapsed {_clock(elapsed)}"]
        if self.tokens:
            parts.insert(3, f"{self.tokens / elapsed:,.0f} tokens/s")
        if self.total is not None and rate > 0 and self.done < self.total:
            parts.append(f"ETA {_clock((self.total - self.done) / rate)}")
        return ", ".join(parts)

    def _print_line(self, now: float) -> None:
        print(self.summary(now), file=self.stream, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        else:
            self._print_line(time.monotonic())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(iterable: Iterable[T], total: int | None = None, desc: str = "items", pairs: bool = False) -> Iterator[T]:
    """Yield from ``iterable`` while counting; an ``Exception`` value (or ``(index, exc)`` pair) is an error."""
    iterator = iter(iterable)
    try:
        with Progress(total=total, desc=desc) as progress:
            for value in iterator:
                out: Any = cast(Any, value)[1] if pairs else value
                progress.update(1, errors=1 if isinstance(out, Exception) else 0)
                yield value
    finally:  # a consumer that stops early stops the run beneath (its in-flight work is cancelled)
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
