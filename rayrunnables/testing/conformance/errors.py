"""Conformance, part 3: errors (first failure in time, paths, indexes, cancellation), isolation of inputs,
and ``max_concurrency``.

Concurrency is observed without timing the call: each step returns the ``(start, end)`` wall-clock
interval of its own run, and the tests compare intervals (overlap, maximum number overlapping).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import rayrunnables
from rayrunnables import RunnableLambda, RunnableParallel, RunnablePassthrough, UnpicklableStepError

from ..steps.cancel import fail_once_beating, heartbeat, stop, stops_beating, watchdog
from ..steps.intervals import max_overlap
from . import exported

NAP = 0.1

# ---- pure step functions --------------------------------------------------------------------------


def ident(x: Any) -> Any:
    return x


def nap(x: Any) -> tuple[Any, float, float]:
    start = time.time()
    time.sleep(NAP)
    return (x, start, time.time())


def long_nap(x: Any) -> tuple[Any, float, float]:
    start = time.time()
    time.sleep(2 * NAP)
    return (x, start, time.time())


def slow_fail(x: Any) -> Any:
    time.sleep(3)  # long enough that a loaded machine still starts the fast branch first
    raise KeyError("slow branch failed")


def fast_fail(x: Any) -> Any:
    raise ValueError("fast branch failed")


def sleep_then_fail(d: dict[str, Any]) -> Any:
    time.sleep(d["sleep"])
    raise d["exc"](f"item slept {d['sleep']}")


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three is bad")
    return x * 10


def fail_first_else_mark(d: dict[str, Any]) -> int:
    if d["i"] == 0:
        raise ValueError("item 0 failed")
    time.sleep(0.02)
    Path(d["dir"], str(d["i"])).touch()
    return int(d["i"])


def beat_until_released(d: dict[str, Any]) -> dict[str, Any]:
    """A first step that runs (appending a byte to ``beats`` every 0.05 s) until the test releases it:
    still running when its sibling fails, whatever the machine's load."""
    # whole or absent (a rename): the sibling fails as soon as the file exists, and the test reads the pid
    # in it right after; read while half written, it was '' and the test waited 20 s for a cancel that
    # cannot come in-process
    started = Path(d["started"])
    partial = started.with_name(f".{started.name}.{os.getpid()}")
    partial.write_text(str(os.getpid()))
    partial.replace(started)
    deadline = time.monotonic() + 60
    while not Path(d["release"]).exists() and time.monotonic() < deadline:
        with open(d["beats"], "a") as f:
            f.write(".")
        time.sleep(0.05)
    return d


def fail_once_started(d: dict[str, Any]) -> Any:
    """Fails once the slow branch's first step runs: the cancel always meets it running, on every backend."""
    deadline = time.monotonic() + 30
    while not Path(d["started"]).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    raise ValueError("fast branch failed")


def appears(path: Path, within: float) -> bool:
    """Whether ``path`` comes to exist within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.05)
    return path.exists()


def settled(folder: Path, quiet: float = 1.0, within: float = 30.0) -> list[Path]:
    """The files in ``folder`` once none has appeared for ``quiet`` seconds (or ``within`` passed): what
    work left running after a call writes lands in that time."""
    deadline = time.monotonic() + within
    seen, since = sorted(folder.iterdir()), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet:
        time.sleep(0.05)
        now = sorted(folder.iterdir())
        if now != seen:
            seen, since = now, time.monotonic()
    return seen


def beat_or_fail(item: tuple[str, str]) -> str:
    """Item ``("beat", path)`` beats until cancelled or stopped; ``("fail", path)`` fails once it beats."""
    kind, path = item
    return heartbeat(path) if kind == "beat" else fail_once_beating(path)


def touch_marker(d: dict[str, Any]) -> str:
    Path(d["marker"]).touch()
    return "marked"


def append_and_len(d: dict[str, Any]) -> int:
    d["items"].append("mutated")
    return len(d["items"])


def read_later(d: dict[str, Any]) -> list[Any]:
    time.sleep(NAP)
    return list(d["items"])


def append_and_return(d: dict[str, Any]) -> dict[str, Any]:
    d["items"].append("mutated")
    return d


def intervals_of(outputs: Any) -> list[tuple[float, float]]:
    return [(start, end) for _, start, end in outputs]


# ---- errors ---------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_parallel_raises_the_first_failure_in_time(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(ident) | {"slow": RunnableLambda(slow_fail), "fast": RunnableLambda(fast_fail)}
    with pytest.raises(ValueError, match="fast branch failed") as info:
        step.invoke(1, config=cfg)
    assert not isinstance(info.value, KeyError)
    path = rayrunnables.step_path_of(info.value) or ""
    assert "parallel['fast']" in path
    assert "fast_fail" in path


def test_error_keeps_its_type_and_names_the_step(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(ident) | RunnableLambda(ident) | RunnableLambda(fail_on_three)
    try:
        step.invoke(3, config=cfg)
    except ValueError as exc:  # the user's type, catchable as such
        path = rayrunnables.step_path_of(exc) or ""
        assert "step 3" in path and "fail_on_three" in path
    else:
        pytest.fail("no error raised")


def test_batch_return_exceptions_keeps_other_outputs(cfg: dict[str, Any]) -> None:
    out = RunnableLambda(fail_on_three).batch(list(range(6)), config=cfg, return_exceptions=True)
    assert [o for i, o in enumerate(out) if i != 3] == [0, 10, 20, 40, 50]
    assert isinstance(out[3], ValueError)
    assert "fail_on_three" in (rayrunnables.step_path_of(out[3]) or "")


def test_batch_raises_with_the_failing_item_index(cfg: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="three is bad") as info:
        (RunnableLambda(ident) | fail_on_three).batch(list(range(6)), config=cfg)
    assert rayrunnables.item_index_of(info.value) == 3
    assert "fail_on_three" in (rayrunnables.step_path_of(info.value) or "")


@pytest.mark.timeout(60)
def test_batch_raises_the_first_failure_in_time(cfg: dict[str, Any]) -> None:
    items = [{"sleep": 3.0, "exc": KeyError}, {"sleep": 0.0, "exc": ValueError}]  # 3 s: robust on a loaded machine
    with pytest.raises(ValueError) as info:
        RunnableLambda(sleep_then_fail).batch(items, config=cfg)
    assert rayrunnables.item_index_of(info.value) == 1


def test_map_raises_the_failing_item(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(ident) | {"each": RunnableLambda(fail_on_three).map()}
    with pytest.raises(ValueError, match="three is bad") as info:
        step.invoke([1, 2, 3, 4], config=cfg)
    path = rayrunnables.step_path_of(info.value) or ""
    assert "parallel['each']" in path and "fail_on_three" in path


# ---- a .map() inside a chain fails as a batch does ----------------------------------------------------
# (LangChain's ``RunnableEach``: no ``return_exceptions``, so no failure budget either: its first failure
# in time stops it, what is not started never starts, and the error names the map's step and the item)
def test_map_raises_with_the_failing_item_index(cfg: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="three is bad") as info:
        (RunnableLambda(ident) | RunnableLambda(fail_on_three).map()).invoke(list(range(6)), config=cfg)
    assert rayrunnables.item_index_of(info.value) == 3
    assert rayrunnables.step_path_of(info.value) == "step 2 > map > lambda 'fail_on_three'"


@pytest.mark.timeout(90)
def test_the_first_failure_stops_a_map_while_another_item_runs(cfg: dict[str, Any], tmp_path: Path) -> None:
    """Item 1 fails while item 0 runs on and on (a heartbeat that only a cancel or ``stop`` ends): the map
    raises at once; one that waited for item 0 returns only when the watchdog stops it, and fails here."""
    path = str(tmp_path / "beat")
    step = RunnableLambda(ident) | RunnableLambda(beat_or_fail).map()
    try:
        with watchdog(path, seconds=30.0) as waited_out:
            with pytest.raises(ValueError, match="the fail branch failed") as info:
                step.invoke([("beat", path), ("fail", path)], config=cfg)
        assert not waited_out(), "the map waited for its running item: its first failure did not stop it"
        assert rayrunnables.item_index_of(info.value) == 1
        assert rayrunnables.step_path_of(info.value) == "step 2 > map > lambda 'beat_or_fail'"
    finally:
        stop(path)


@pytest.mark.timeout(90)
def test_map_failure_cancels_items_not_started(cfg: dict[str, Any], tmp_path: Path) -> None:
    """As ``test_batch_failure_cancels_items_not_started``, for a ``.map()`` inside a chain."""
    marks = tmp_path / "marks"
    marks.mkdir()
    items = [{"i": i, "dir": str(marks)} for i in range(20)]
    step = RunnableLambda(ident) | RunnableLambda(fail_first_else_mark).map()
    with pytest.raises(ValueError, match="item 0 failed") as info:
        step.invoke(items, config={**cfg, "max_concurrency": 1})
    assert rayrunnables.item_index_of(info.value) == 0
    assert [p.name for p in settled(marks)] == []  # a map that ran on after the failure writes 19


@pytest.mark.timeout(90)
def test_batch_failure_cancels_items_not_started(cfg: dict[str, Any], tmp_path: Path) -> None:
    """One item at a time (the cap): item 0 fails before any other starts, and none starts after.
    Every backend's workers see ``tmp_path``; whatever is left running gets a second to write."""
    marks = tmp_path / "marks"
    marks.mkdir()
    items = [{"i": i, "dir": str(marks)} for i in range(20)]
    with pytest.raises(ValueError, match="item 0 failed") as info:
        RunnableLambda(fail_first_else_mark).batch(items, config={**cfg, "max_concurrency": 1})
    assert rayrunnables.item_index_of(info.value) == 0
    assert [p.name for p in settled(marks)] == []  # a backend that ran on after the failure writes 19


@pytest.mark.timeout(90)
def test_parallel_failure_cancels_later_steps_of_siblings(cfg: dict[str, Any], tmp_path: Path) -> None:
    """'fast' fails while the first step of 'slow' runs, and that step goes on until released: its second
    step must never run, on any backend. On Ray the running task is cancelled (its beats stop); in-process
    the thread cannot be stopped, and the sequence must not go on to its next step once released."""
    names = ("started", "release", "beats", "marker")
    paths = {name: tmp_path / name for name in names}
    slow = RunnableLambda(beat_until_released) | RunnableLambda(touch_marker)
    step = RunnablePassthrough() | {"slow": slow, "fast": RunnableLambda(fail_once_started)}
    try:
        with pytest.raises(ValueError, match="fast branch failed"):
            step.invoke({name: str(path) for name, path in paths.items()}, config=cfg)
        assert paths["started"].exists(), "the slow branch never started"
        if paths["started"].read_text() != str(os.getpid()):  # in another process: a cancel can stop it
            stops_beating(str(paths["beats"]), within=20.0, quiet=1.0)  # time for the cancel to land
    finally:
        paths["release"].touch()
    # released uncancelled, the first step returns at once and the later step runs
    assert not appears(paths["marker"], within=3.0), "the later step of the failed call's sibling ran"


# ---- isolation of inputs --------------------------------------------------------------------------


def test_parallel_branches_do_not_see_each_others_mutations(cfg: dict[str, Any]) -> None:
    caller = {"items": ["original"]}
    step = {"a": RunnableLambda(append_and_len), "b": RunnableLambda(read_later), "c": RunnablePassthrough()}
    out = RunnableParallel(step).invoke(caller, config=cfg)
    assert out["a"] == 2
    assert out["b"] == ["original"]
    assert out["c"] == {"items": ["original"]}
    assert caller == {"items": ["original"]}


def test_map_items_sharing_one_dict_are_isolated(cfg: dict[str, Any]) -> None:
    shared: dict[str, Any] = {"items": []}
    assert RunnableLambda(append_and_len).map().invoke([shared, shared, shared], config=cfg) == [1, 1, 1]
    assert shared == {"items": []}


def test_batch_items_sharing_one_dict_are_isolated(cfg: dict[str, Any]) -> None:
    shared: dict[str, Any] = {"items": []}
    assert RunnableLambda(append_and_len).batch([shared, shared, shared], config=cfg) == [1, 1, 1]
    assert shared == {"items": []}


def test_invoke_never_mutates_the_callers_input(cfg: dict[str, Any]) -> None:
    caller: dict[str, Any] = {"items": ["x"]}
    step = RunnableLambda(append_and_return) | RunnableLambda(append_and_return)
    assert step.invoke(caller, config=cfg) == {"items": ["x", "mutated", "mutated"]}
    assert list(step.stream(caller, config=cfg)) == [{"items": ["x", "mutated", "mutated"]}]
    assert caller == {"items": ["x"]}


# ---- max_concurrency ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("io_bound", "cap"), [(False, 1), (True, 2)], ids=["cpu", "io_bound"])
def test_max_concurrency_caps_batch(cfg: dict[str, Any], io_bound: bool, cap: int) -> None:
    """Computing steps get a cap of 1: the test machine's 2 cores (Ray's 2 CPUs, the pool's 2 workers)
    would hold an ignored cap of 2 by themselves; threads of waiting steps are not bounded by cores."""
    step = RunnableLambda(nap).with_options(io_bound=io_bound)
    out = step.batch(list(range(8)), config={**cfg, "max_concurrency": cap})
    assert [x for x, _, _ in out] == list(range(8))
    assert max_overlap(intervals_of(out)) <= cap


@pytest.mark.timeout(60)
def test_max_concurrency_caps_imap(cfg: dict[str, Any]) -> None:
    out = list(RunnableLambda(nap).imap((i for i in range(6)), config={**cfg, "max_concurrency": 2}))
    assert [x for x, _, _ in out] == list(range(6))
    assert max_overlap(intervals_of(out)) <= 2


@pytest.mark.timeout(60)
def test_max_concurrency_with_config_caps_map(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(ident) | RunnableLambda(nap).map().with_config(max_concurrency=2)
    out = step.invoke(list(range(6)), config=cfg)
    assert [x for x, _, _ in out] == list(range(6))
    assert max_overlap(intervals_of(out)) <= 2


@pytest.mark.timeout(60)
def test_nested_map_in_parallel_branches_shares_one_cap(cfg: dict[str, Any]) -> None:
    step = RunnableParallel(a=RunnableLambda(nap).map(), b=RunnableLambda(nap).map())
    out = step.invoke([0, 1, 2, 3], config={**cfg, "max_concurrency": 2})
    assert [x for x, _, _ in out["a"]] == [0, 1, 2, 3]
    assert [x for x, _, _ in out["b"]] == [0, 1, 2, 3]
    assert max_overlap(intervals_of(out["a"]) + intervals_of(out["b"])) <= 2


@pytest.mark.timeout(60)
def test_without_a_cap_parallel_branches_overlap(cfg: dict[str, Any]) -> None:
    # io_bound: five sleeping branches need no CPU each (the Ray test cluster has only 2 CPUs)
    branch = RunnableLambda(long_nap).with_options(io_bound=True)
    out = RunnableParallel({f"b{i}": branch for i in range(5)}).invoke("x", config=cfg)
    intervals = intervals_of(out.values())
    assert len(intervals) == 5
    assert max(start for start, _ in intervals) < min(end for _, end in intervals)  # all pairwise overlap


def test_max_overlap_helper() -> None:
    assert max_overlap([(0, 1), (1, 2), (2, 3)]) == 1
    assert max_overlap([(0, 3), (1, 2), (1.5, 4)]) == 3
    assert max_overlap([]) == 0


# ---- Ray only -------------------------------------------------------------------------------------


@pytest.mark.ray_only
def test_unpicklable_step_is_reported_before_anything_runs(cfg: dict[str, Any], tmp_path: Path) -> None:
    lock = threading.Lock()
    marker = tmp_path / "first-step-ran"
    holds_lock = RunnableLambda(lambda d: (lock, d)[1], name="holds_lock")
    step = RunnableLambda(touch_marker) | holds_lock
    with pytest.raises(UnpicklableStepError, match="holds_lock") as info:
        step.invoke({"marker": str(marker)}, config=cfg)
    assert isinstance(info.value, TypeError)
    assert not marker.exists()


@pytest.mark.ray_only
def test_remote_traceback_is_kept_as_cause_in_batch(cfg: dict[str, Any]) -> None:
    with pytest.raises(ValueError) as info:
        (RunnableLambda(ident) | fail_on_three).batch([3], config=cfg)
    assert info.value.__cause__ is not None
    assert "fail_on_three" in str(info.value.__cause__)


@pytest.mark.ray_only
def test_remote_traceback_is_kept_as_cause_in_invoke(cfg: dict[str, Any]) -> None:
    with pytest.raises(ValueError) as info:
        (RunnableLambda(ident) | fail_on_three).invoke(3, config=cfg)
    assert info.value.__cause__ is not None
    assert "fail_on_three" in str(info.value.__cause__)


def lock_for_odd(x: int) -> Any:
    return threading.Lock() if x % 2 else x


@pytest.mark.ray_only
def test_an_output_that_cannot_leave_the_worker_names_step_and_item(cfg: dict[str, Any]) -> None:
    from rayrunnables import UnpicklableOutputError

    step = RunnableLambda(ident) | RunnableLambda(lock_for_odd, name="makes_lock")
    out = step.batch([0, 1, 2, 4], config=cfg, return_exceptions=True)
    assert out[0] == 0 and out[2] == 2 and out[3] == 4  # the chunk's other items are kept
    assert isinstance(out[1], UnpicklableOutputError) and isinstance(out[1], TypeError)
    assert rayrunnables.item_index_of(out[1]) == 1
    assert "makes_lock" in (rayrunnables.step_path_of(out[1]) or "")
    assert "_thread.lock" in str(out[1])
    with pytest.raises(UnpicklableOutputError, match="makes_lock"):
        step.invoke(1, config=cfg)
    with pytest.raises(UnpicklableOutputError, match=r"makes_lock.*item 1"):
        step.map().invoke([0, 1, 2], config=cfg)


__all__ = exported(globals())
