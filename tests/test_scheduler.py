"""The shared scheduler's chunk sizing, with a scripted runner: deterministic, no threads, no Ray.

The runner reports a fixed compute time per item, so the sizes the scheduler picks follow from the
rules alone (slow start, target seconds per chunk, guided shrinking for a known number of items).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest

import rayrunnables as rr
from rayrunnables.context import RunContext
from rayrunnables.engine.inprocess import ChunkResult
from rayrunnables.engine.scheduler import KNOWN_LENGTH_TARGET_FACTOR, iter_batch


class ScriptedRunner:
    """Runs each chunk at submission; pretends every item took ``per_item`` seconds."""

    def __init__(self, per_item: float, target: float = 0.05, window: int = 4) -> None:
        self.per_item = per_item
        self.target_chunk_seconds = target
        self.default_window = window
        self.sizes: list[int] = []
        self.done: dict[int, ChunkResult] = {}

    def runs_inline(self, node: Any) -> bool:
        return False

    def submit(self, node: Any, items: list[tuple[int, Any]], ctx: RunContext, return_exceptions: bool) -> Any:
        self.sizes.append(len(items))
        outcomes = [(i, True, node.invoke(x), None) for i, x in items]
        handle = len(self.sizes)
        self.done[handle] = ChunkResult(outcomes, self.per_item * len(items))
        return handle

    def wait(self, handles: list[Any]) -> list[Any]:
        return handles[:1]

    def result(self, handle: Any) -> ChunkResult:
        return self.done.pop(handle)

    def cancel(self, handles: list[Any]) -> None:
        pass


STEP = rr.RunnableLambda(lambda x: x * 10)


def run(runner: ScriptedRunner, inputs: Any) -> list[Any]:
    pairs = iter_batch(runner, STEP, inputs, RunContext(), return_exceptions=False, ordered=True)
    return [value for _, value in pairs]


def generator(n: int) -> Iterator[int]:
    yield from range(n)


def test_known_length_chunks_grow_then_shrink_towards_the_end() -> None:
    runner = ScriptedRunner(per_item=0.01, target=0.02)  # the target alone: 2 items per chunk
    assert run(runner, list(range(400))) == [x * 10 for x in range(400)]
    sizes = runner.sizes
    assert sum(sizes) == 400
    assert sizes[0] == 1  # slow start: the cost per item is unknown
    assert max(sizes) == int(0.02 * KNOWN_LENGTH_TARGET_FACTOR / 0.01)  # 8 items: larger chunks
    # guided: no chunk is more than a fair share of what is left (nor less than the target's 2 items),
    # so the chunks shrink again and the tail is short
    for k, size in enumerate(sizes):
        remaining_before = 400 - sum(sizes[:k])
        assert size <= max(2, math.ceil(remaining_before / runner.default_window))
    assert sizes[-1] <= 2 and sizes[-2] <= 2


def test_a_wide_window_does_not_shrink_chunks_below_the_target() -> None:
    runner = ScriptedRunner(per_item=0.001, target=0.05, window=64)  # threads: a wide window
    assert run(runner, list(range(2_000))) == [x * 10 for x in range(2_000)]
    # a fair share (2,000 / 64 = 32 items) is below the target's 50 items: no growth, and no shrinking
    assert max(runner.sizes) == 50
    grown = runner.sizes[runner.sizes.index(50):-1]  # after the slow start, before the remainder
    assert set(grown) == {50}, runner.sizes


def test_unknown_length_chunks_fill_the_target_only() -> None:
    runner = ScriptedRunner(per_item=0.01)
    assert run(runner, generator(400)) == [x * 10 for x in range(400)]
    assert max(runner.sizes) == 5  # 0.05 s of 10 ms items: no guided cap, so no larger target either
    assert sum(runner.sizes) == 400


def test_fixed_chunk_size_wins_over_both_rules() -> None:
    runner = ScriptedRunner(per_item=0.01)
    pairs = iter_batch(runner, STEP, list(range(100)), RunContext(), return_exceptions=False, ordered=True,
                       chunk_size=7)
    assert [v for _, v in pairs] == [x * 10 for x in range(100)]
    assert runner.sizes == [7] * 14 + [2]


@pytest.mark.parametrize("n", [0, 1, 3])
def test_tiny_inputs(n: int) -> None:
    runner = ScriptedRunner(per_item=0.01)
    assert run(runner, list(range(n))) == [x * 10 for x in range(n)]
    assert sum(runner.sizes) == n
