"""Steps that behave like a model client at its provider's limits (module-level, so every backend can send them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class TooManyRequests(Exception):
    """Shaped like a provider's 429: a status code and a response with headers (keyword-only, as openai's)."""

    def __init__(self, message: str, *, status_code: int = 429, retry_after: float = 0.05) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.response = _Response(status_code, {"retry-after": str(retry_after)})


class _Response:
    def __init__(self, status_code: int, headers: dict[str, str]) -> None:
        self.status_code, self.headers = status_code, headers


def busy_once(folder: str, item: int) -> int:
    """Answers 429 on the first call for each item (in any process), then the item times ten."""
    mark = Path(folder) / f"{item}.called"
    if not mark.exists():
        mark.write_text("1")
        raise TooManyRequests(f"busy for item {item}")
    return item * 10


def always_busy(item: int) -> int:
    if item == 3:
        raise TooManyRequests("busy, always", retry_after=0.2)
    return item * 10


def not_an_int(value: Any) -> Any:
    return "many"


_seen: set[int] = set()


def busy_once_unusual(item: int) -> int:
    """A provider whose "too many" is a RuntimeError about its quota (no 429 anywhere), once per item in
    this process, then the item times ten."""
    if item not in _seen:
        _seen.add(item)
        raise RuntimeError(f"quota exceeded for item {item}, try later")
    return item * 10


def is_unusual_busy(exc: BaseException) -> bool:
    return "quota exceeded" in str(exc)
