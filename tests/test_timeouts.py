"""Timeouts, straggler backups and failure budgets on every backend (issue 15).

Hung items sleep 120 s and the tests assert only generous bounds (a batch returns within 60 s), never
a time only a quiet machine reaches.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from timeout_steps import fail_every_fifth, hang_first_time, maybe_hang, maybe_hang_marked, straggle_once

from rayrunnables import (
    FailureBudgetExceeded,
    OptionsError,
    RunnableLambda,
    item_index_of,
    step_path_of,
)
from rayrunnables.testing.steps.cancel import beats, heartbeat, stop, stops_beating, stubborn_heartbeat, watchdog

pytestmark = pytest.mark.timeout(240)


@pytest.mark.slow
def test_200_items_5_hang_give_195_values_and_5_timeouts(cfg: dict[str, Any], tmp_path: Path) -> None:
    step = RunnableLambda(maybe_hang_marked, name="maybe_hang").with_timeout(2)
    out = step.batch([(str(tmp_path), x) for x in range(200)], cfg, return_exceptions=True)
    assert not list(tmp_path.glob("*.ended"))  # the call came back without waiting for any hang to end
    errors = [o for o in out if isinstance(o, Exception)]
    assert [i for i, o in enumerate(out) if isinstance(o, Exception)] == [7, 47, 87, 127, 167]
    assert all(type(e) is TimeoutError for e in errors)
    assert [item_index_of(e) for e in errors] == [7, 47, 87, 127, 167]
    assert step_path_of(errors[0]) == "timeout(lambda 'maybe_hang')"
    assert [o for o in out if not isinstance(o, Exception)] == [x * 2 for x in range(200) if x % 40 != 7]


def test_imap_yields_a_timeout_in_order(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(maybe_hang).with_timeout(2)
    out = list(step.imap(range(10), cfg, return_exceptions=True))
    assert isinstance(out[7], TimeoutError) and out[:7] == [0, 2, 4, 6, 8, 10, 12] and out[8:] == [16, 18]


def test_timeout_without_return_exceptions_raises_timeout_error(cfg: dict[str, Any]) -> None:
    with pytest.raises(TimeoutError) as info:
        RunnableLambda(maybe_hang).with_timeout(1).invoke(7, cfg)
    assert "no result within 1 s" in str(info.value)


def test_retry_of_a_timeout(cfg: dict[str, Any], tmp_path: Path) -> None:
    step = RunnableLambda(hang_first_time).with_timeout(1).with_retry(
        retry_if_exception_type=(TimeoutError,), wait_exponential_jitter=False
    )
    assert step.invoke(str(tmp_path / "m"), cfg) == "second"
    out = step.batch([str(tmp_path / "a"), str(tmp_path / "b")], cfg)
    assert out == ["second", "second"]


def test_timeout_not_retried_when_not_listed(cfg: dict[str, Any], tmp_path: Path) -> None:
    step = RunnableLambda(hang_first_time).with_timeout(1).with_retry(
        retry_if_exception_type=(ValueError,), wait_exponential_jitter=False
    )
    with pytest.raises(TimeoutError):
        step.invoke(str(tmp_path / "m"), cfg)


def test_a_timeout_falls_back(cfg: dict[str, Any], tmp_path: Path) -> None:
    step = RunnableLambda(hang_first_time).with_timeout(1).with_fallbacks([RunnableLambda(lambda _: "fallback")])
    assert step.invoke(str(tmp_path / "m"), cfg) == "fallback"


def test_a_straggler_gets_a_backup_and_no_longer_holds_the_batch(cfg: dict[str, Any], tmp_path: Path) -> None:
    step = RunnableLambda(straggle_once).with_options(speculative_after=1.0)
    out = list(step.imap([(str(tmp_path), x) for x in range(30)], cfg))
    assert out == list(range(30))
    assert not (tmp_path / "5.first-ended").exists()  # item 5's answer came from its backup


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, "5", True, None])
def test_a_timeout_that_is_not_a_positive_number_is_refused_when_built(bad: Any) -> None:
    with pytest.raises(ValueError, match="with_timeout: seconds must be a positive number"):
        RunnableLambda(maybe_hang).with_timeout(bad)
    assert issubclass(OptionsError, ValueError)


@pytest.mark.parametrize("bad", [{"speculative": 1}, {"speculative_after": 0}, {"speculative_after": "1"}])
def test_bad_backup_options_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(OptionsError):
        RunnableLambda(maybe_hang).with_options(**bad)


def test_failure_budget_stops_the_batch(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(fail_every_fifth)
    with pytest.raises(FailureBudgetExceeded) as info:
        step.batch(list(range(100)), cfg, return_exceptions=True, max_failures=3)
    assert info.value.failed == 4 and isinstance(info.value.__cause__, ValueError)
    seen: list[Any] = []
    with pytest.raises(FailureBudgetExceeded):
        for value in step.imap(range(100), cfg, return_exceptions=True, max_failures=2):
            seen.append(value)
    # failures count in the order results are yielded: the stream stops at item 10, its third failure,
    # on every backend, however the chunks happened to finish
    assert [v if not isinstance(v, ValueError) else "failed" for v in seen] == [
        "failed", 1, 2, 3, 4, "failed", 6, 7, 8, 9]
    assert step.batch(list(range(10)), cfg, return_exceptions=True, max_failures=2)[1:5] == [1, 2, 3, 4]


def test_bad_failure_budget() -> None:
    with pytest.raises(ValueError, match="max_failures"):
        RunnableLambda(fail_every_fifth).batch([1], return_exceptions=True, max_failures=-1)


@pytest.mark.slow
@pytest.mark.ray_only
def test_on_ray_the_hung_work_really_stops(backend: str, tmp_path: Path) -> None:
    """The item beats until cancelled (or stopped when the test ends): a batch that waited for it would
    return only when the watchdog stops it, and one that left it running would see it beat on."""
    path = str(tmp_path / "beat")
    try:
        with watchdog(path) as waited_out:
            out = RunnableLambda(heartbeat).with_timeout(1).batch([path], {"backend": "ray"}, return_exceptions=True)
        assert not waited_out(), "the batch waited for its hung item"
        assert type(out[0]) is TimeoutError
        assert beats(path) > 0  # it was running when its deadline came
        assert stops_beating(path), "the hung item still runs after its timeout"
    finally:
        stop(path)


@pytest.mark.slow
@pytest.mark.ray_only
def test_on_ray_work_that_ignores_the_interrupt_is_force_cancelled(backend: str, tmp_path: Path) -> None:
    """Reported at deadline + backstop; cancelled, then forced after a grace: its worker is killed (the
    wait of ``stops_beating`` covers the grace)."""
    path = str(tmp_path / "beat")
    step = RunnableLambda(stubborn_heartbeat).with_timeout(1)
    try:
        with watchdog(path) as waited_out:
            out = step.batch([path], {"backend": "ray"}, return_exceptions=True)
        assert not waited_out(), "the batch waited for its hung item"
        assert type(out[0]) is TimeoutError
        assert beats(path) > 0  # it was running when its deadline came
        assert stops_beating(path), "the item that ignores the interrupt still runs: its worker was not killed"
    finally:
        stop(path)
