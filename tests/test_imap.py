"""Streaming over large inputs: ``imap`` / ``imap_as_completed`` on every backend.

Exactly-once, in-order output for 100,000 generated items; lazy consumption of the input with a bounded
window (also when one slow item holds up the in-order output); per-item errors that name their step
and index. Step functions live at module level: this module is shipped to Ray workers by value.
"""

from __future__ import annotations

import io
import time
import traceback
from collections.abc import Iterator

import pytest

from rayrunnables import RunnableLambda, item_index_of, step_path_of
from rayrunnables.progress import Progress

pytestmark = pytest.mark.timeout(180)

N = 100_000


def double(x: int) -> int:
    return 2 * x


def check_seven(x: int) -> int:
    if x % 7 == 0:
        raise ValueError(f"multiple of seven: {x}")
    return x


def slow_head(x: int) -> int:
    if x == 0:
        time.sleep(0.5)
    return x


class Counting:
    """A generator of ``range(n)`` that records how far it has been advanced."""

    def __init__(self, n: int) -> None:
        self.n, self.taken = n, 0

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            self.taken += 1
            yield i


def test_imap_100k_exactly_once_in_order(backend: str) -> None:
    out = list(RunnableLambda(double).imap((i for i in range(N)), {"backend": backend}))
    assert out == [2 * i for i in range(N)]


def test_imap_as_completed_100k_complete(backend: str) -> None:
    pairs = list(RunnableLambda(double).imap_as_completed((i for i in range(N)), {"backend": backend}))
    assert len(pairs) == N
    assert sorted(index for index, _ in pairs) == list(range(N))
    assert all(value == 2 * index for index, value in pairs)


def test_imap_consumes_the_generator_lazily(backend: str) -> None:
    source = Counting(N)
    window, chunk = 2, 5
    it = RunnableLambda(double).imap(iter(source), {"backend": backend}, chunk_size=chunk, max_in_flight=window)
    assert next(it) == 0
    # ordered: at most `window` chunks running and `2 * window` chunks held (running or waiting for an earlier one)
    assert source.taken <= 2 * window * chunk
    assert next(it) == 2
    it.close()  # stopping early cancels the rest; the generator is never drained
    assert source.taken <= 2 * window * chunk + chunk


@pytest.mark.parametrize("ordered", [True, False], ids=["imap", "imap_as_completed"])
def test_a_slow_item_does_not_let_the_input_pile_up(backend: str, ordered: bool) -> None:
    source = Counting(N)
    window, chunk = 2, 10
    step = RunnableLambda(slow_head)
    call = step.imap if ordered else step.imap_as_completed
    it = call(iter(source), {"backend": backend}, chunk_size=chunk, max_in_flight=window)
    next(it)
    assert source.taken <= 2 * window * chunk + chunk  # the reorder buffer is bounded too
    it.close()


def test_return_exceptions_gives_per_item_errors_with_step_and_index(backend: str) -> None:
    chain = RunnableLambda(double) | RunnableLambda(check_seven, name="check")
    n = 500
    out = list(chain.imap(iter(range(n)), {"backend": backend}, return_exceptions=True))
    assert len(out) == n
    for i, value in enumerate(out):
        if (2 * i) % 7 == 0:
            assert isinstance(value, ValueError), (i, value)
            assert "'check'" in (step_path_of(value) or "")
            assert item_index_of(value) == i
            text = "".join(traceback.format_exception(type(value), value, value.__traceback__))
            assert "check_seven" in text  # the traceback of the failing function (remote: via __cause__)
        else:
            assert value == 2 * i


def test_imap_as_completed_return_exceptions(backend: str) -> None:
    chain = RunnableLambda(check_seven, name="check")
    pairs = dict(chain.imap_as_completed(iter(range(300)), {"backend": backend}, return_exceptions=True))
    assert sorted(pairs) == list(range(300))
    failed = {i for i, v in pairs.items() if isinstance(v, ValueError)}
    assert failed == {i for i in range(300) if i % 7 == 0}
    assert all(item_index_of(pairs[i]) == i for i in failed)


def test_imap_raises_the_first_failure_without_return_exceptions(backend: str) -> None:
    with pytest.raises(ValueError, match="multiple of seven") as info:
        list(RunnableLambda(check_seven).imap(iter(range(1, 100)), {"backend": backend}))
    index = item_index_of(info.value)
    assert index is not None
    assert str(info.value) == f"multiple of seven: {index + 1}"  # the failure of the item it names (input i + 1)
    assert "check_seven" in (step_path_of(info.value) or "")
    if backend == "local":  # one item after another, in this thread: the first failure in time is item 7's
        assert index == 6


def test_imap_progress_reports_done_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    out = list(RunnableLambda(check_seven).imap(range(50), return_exceptions=True, progress=True))
    assert len(out) == 50
    err = capsys.readouterr().err
    assert "50/50 done" in err and "8 errors" in err


def test_progress_line_and_eta() -> None:
    stream = io.StringIO()
    with Progress(total=10, stream=stream, interval=0.0, use_tqdm=False) as progress:
        progress.update(4)
        progress.update(1, errors=1)
    text = stream.getvalue()
    assert "5/10 done" in text and "1 errors" in text and "ETA" in text
    quiet = io.StringIO()
    with Progress(stream=quiet, enabled=False) as progress:
        progress.update(3)
    assert quiet.getvalue() == "" and progress.done == 3


def test_progress_uses_tqdm_when_asked() -> None:
    pytest.importorskip("tqdm")
    stream = io.StringIO()
    with Progress(total=3, stream=stream, use_tqdm=True) as progress:
        progress.update(2, errors=1)
        progress.update(1)
    assert "3/3" in stream.getvalue() and "errors=1" in stream.getvalue()
