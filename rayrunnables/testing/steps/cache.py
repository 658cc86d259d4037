"""Steps for the cache tests, importable by Ray and executor workers. Each call is counted by a line
appended to a file (``O_APPEND``: whole lines, from any process), so counts hold across processes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def bump(folder: str, name: str) -> None:
    fd = os.open(os.path.join(folder, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)


def calls(folder: str | Path, name: str) -> int:
    try:
        return len(Path(folder, name).read_text().splitlines())
    except FileNotFoundError:
        return 0


def callers(folder: str | Path, name: str) -> set[int]:
    """The processes that made the calls."""
    try:
        return {int(line) for line in Path(folder, name).read_text().splitlines()}
    except FileNotFoundError:
        return set()


def make_embed(folder: str) -> Any:
    def embed(doc: dict[str, Any]) -> dict[str, Any]:
        bump(folder, "embed")
        text = doc["text"]
        return {"doc": text, "vector": [float(len(text)), float(sum(map(ord, text)) % 97)]}

    return embed


def make_summarize(folder: str, style: str) -> Any:
    def summarize(embedded: dict[str, Any]) -> str:
        bump(folder, "summarize")
        return f"{style}: {embedded['doc'][:12]} ({embedded['vector'][0]:.0f})"

    return summarize


def make_summarize_edited(folder: str, style: str) -> Any:
    """``make_summarize`` after an edit of its code (same values closed over)."""

    def summarize(embedded: dict[str, Any]) -> str:
        bump(folder, "summarize")
        return f"{style.upper()}: {embedded['doc']}"

    return summarize


def make_embed_batch(folder: str) -> Any:
    """A vectorized embedder: one call (and one counted line per item it got) per chunk."""

    def embed_batch(texts: list[str]) -> list[list[float]]:
        bump(folder, "embed_batch_calls")
        for _ in texts:
            bump(folder, "embed_batch_items")
        return [[float(len(t)), float(t.count("a"))] for t in texts]

    return embed_batch


def make_flaky(folder: str) -> Any:
    """Fails on its first call for an input, answers on later ones: errors must not be cached."""

    def flaky(x: int) -> int:
        bump(folder, "flaky")
        marker = os.path.join(folder, f"seen-{x}")
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return x * 10
        os.close(fd)
        raise ValueError(f"first call for {x}")

    return flaky


class Embedder:
    """A stateful, vectorized step (``RunnableActor``): built once per process or actor."""

    def __init__(self, folder: str, scale: float) -> None:
        self.folder, self.scale = folder, scale

    def batch(self, texts: list[str]) -> list[float]:
        for _ in texts:
            bump(self.folder, "actor_items")
        return [len(t) * self.scale for t in texts]
