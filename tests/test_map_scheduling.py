"""One scheduler: a ``.map()`` inside a chain on Ray is scheduled as ``batch`` is (issue 21, item 2).

Every test runs the map three ways: over a list the caller gives (``step.map().invoke(items)``), over
a list an earlier task computed (``RunnableLambda(make_list) | step.map()``), both in a map task, and
that chain with every map-task slot taken, so the same scheduler runs in the driver's thread (what a
server with many requests in flight does). Timeouts, their hard stop,
straggler backups, the first failure stopping the map, and adaptive chunk sizes are the same as in
``tests/test_timeouts.py`` for ``batch``. Tests assert behaviour, never times.

Step functions live at module level (this module is shipped to Ray's workers by value).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from timeout_steps import fail_every_fifth, maybe_hang, maybe_hang_marked, straggle_once

from rayrunnables import RunnableLambda, get_backend, item_index_of, step_path_of
from rayrunnables.testing.steps.cancel import (
    beats,
    fail_once_beating,
    heartbeat,
    stop,
    stops_beating,
    stubborn_heartbeat,
)

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("ray_session")]

RAY = {"backend": "ray"}
FORMS = ["given", "computed", "driver"]


def make_list(items: list[Any]) -> list[Any]:
    return list(items)


def minus_one(_: Any) -> int:
    return -1


def beat_or_fail(item: tuple[str, str]) -> str:
    kind, path = item
    return heartbeat(path) if kind == "beat" else fail_once_beating(path)


def note_task(item: tuple[str, int]) -> int:
    """Leaves ``<task id>`` in the folder holding the first index its task ran: one file per chunk task."""
    import ray

    folder, x = item
    task = ray.get_runtime_context().get_task_id()
    if not os.path.exists(os.path.join(folder, task)):
        with open(os.path.join(folder, task), "w") as f:
            f.write(str(x))
    return 2 * x


def mapped(step: Any, items: list[Any], form: str) -> Any:
    """``step.map()`` over ``items``: given by the caller (the whole call: its scheduler runs in the driver), computed
    by an earlier task (a map task), or computed with every map-task slot taken (in the driver again)."""
    if form == "given":
        return step.map().invoke(items, RAY)
    if form == "driver":
        slots = get_backend("ray").map_slots  # type: ignore[attr-defined]
        slots.limit, limit = 0, slots.limit
        try:
            return (RunnableLambda(make_list) | step.map()).invoke(items, RAY)
        finally:
            slots.limit = limit
    return (RunnableLambda(make_list) | step.map()).invoke(items, RAY)


def where(form: str, label: str) -> str:
    return f"map > {label}" if form == "given" else f"step 2 > map > {label}"


# ---- timeouts -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_a_hung_item_is_a_timeout_naming_the_step_and_item(form: str, tmp_path: Path) -> None:
    step = RunnableLambda(maybe_hang_marked, name="maybe_hang").with_timeout(2)
    with pytest.raises(TimeoutError) as info:
        mapped(step, [(str(tmp_path), x) for x in range(20)], form)
    assert item_index_of(info.value) == 7
    assert step_path_of(info.value) == where(form, "timeout(lambda 'maybe_hang')")
    assert not list(tmp_path.glob("*.ended"))  # the call came back without waiting for the hang to end


@pytest.mark.parametrize("form", FORMS)
def test_the_other_items_finish_around_a_hung_one(form: str) -> None:
    step = RunnableLambda(maybe_hang).with_timeout(2).with_fallbacks([RunnableLambda(minus_one)])
    out = mapped(step, list(range(50)), form)
    assert out == [-1 if x % 40 == 7 else 2 * x for x in range(50)]


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
def test_the_hung_work_of_a_map_really_stops(form: str, tmp_path: Path) -> None:
    path = str(tmp_path / "beat")
    try:
        with pytest.raises(TimeoutError) as info:
            mapped(RunnableLambda(heartbeat).with_timeout(1), [path], form)
        assert item_index_of(info.value) == 0
        assert stops_beating(path), "the hung item still runs after its timeout"
    finally:
        stop(path)


@pytest.mark.slow
# A map task (here: its list computed by an earlier task, the in-chain case) and the driver run the same Ray chunk
# runner, whose forced cancel test_timeouts.py checks from the driver; a list given or computed changes nothing
# in it. Each run waits out deadline + backstop + grace (~16 s), so this one runs the map task's form only.
@pytest.mark.parametrize("form", ["computed"])
def test_map_work_that_ignores_the_interrupt_is_force_cancelled(form: str, tmp_path: Path) -> None:
    from rayrunnables.backends.ray.deadlines import GRACE

    path = str(tmp_path / "beat")
    try:
        with pytest.raises(TimeoutError) as info:  # at deadline + backstop; cancelled, then forced after a grace
            mapped(RunnableLambda(stubborn_heartbeat).with_timeout(1), [path], form)
        assert step_path_of(info.value) == where(form, "timeout(lambda 'stubborn_heartbeat')")
        assert stops_beating(path, within=GRACE + 30), "its worker was not killed"
    finally:
        stop(path)


# ---- backups -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_a_straggler_in_a_map_gets_a_backup(form: str, tmp_path: Path) -> None:
    step = RunnableLambda(straggle_once).with_options(speculative_after=1.0)
    assert mapped(step, [(str(tmp_path), x) for x in range(30)], form) == list(range(30))
    assert not (tmp_path / "5.first-ended").exists()  # item 5's answer came from its backup


# ---- failures: a .map() has no return_exceptions, its first failure stops it --------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_the_first_failure_stops_the_map(form: str) -> None:
    with pytest.raises(ValueError, match="fails") as info:
        mapped(RunnableLambda(fail_every_fifth), list(range(100)), form)
    index = item_index_of(info.value)
    assert index is not None and index % 5 == 0
    assert step_path_of(info.value) == where(form, "lambda 'fail_every_fifth'")


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
def test_the_first_failure_cancels_the_items_in_flight(form: str, tmp_path: Path) -> None:
    path = str(tmp_path / "beat")
    try:
        with pytest.raises(ValueError, match="the fail branch failed") as info:
            mapped(RunnableLambda(beat_or_fail), [("beat", path), ("fail", path)], form)
        assert item_index_of(info.value) == 1
        assert stops_beating(path), "the running item was not cancelled"
    finally:
        stop(path)


# ---- chunk sizes adapt to the items' cost ------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_chunks_of_a_cheap_step_start_small_and_grow(form: str, tmp_path: Path) -> None:
    n = 5000
    out = mapped(RunnableLambda(note_task), [(str(tmp_path), x) for x in range(n)], form)
    assert out == [2 * x for x in range(n)]
    firsts = sorted(int(p.read_text()) for p in tmp_path.iterdir())
    sizes = [b - a for a, b in zip(firsts, [*firsts[1:], n], strict=True)]
    assert firsts[0] == 0 and sum(sizes) == n
    assert len(sizes) < 200, f"{len(sizes)} chunk tasks for {n} cheap items"  # not one task per item
    assert sizes[0] == 1  # slow start: the cost per item is not known yet (not a fixed split)
    assert max(sizes) >= 64, sizes  # then chunks grow to amortise the per-task cost


# ---- a map run in the driver's thread (every map-task slot taken) stops with its request -------------------
@pytest.mark.slow
def test_a_map_in_the_driver_stops_when_its_ainvoke_is_cancelled(tmp_path: Path) -> None:
    """A server cancels a request whose client left (``ainvoke`` cancelled): a map whose scheduler runs in
    a driver thread has no task for ``ray.cancel`` to interrupt, so it stops on the invocation's token."""
    path = str(tmp_path / "beat")
    slots = get_backend("ray").map_slots  # type: ignore[attr-defined]
    chain = RunnableLambda(make_list) | RunnableLambda(heartbeat).map()

    async def leave_while_it_beats() -> None:
        run = asyncio.ensure_future(chain.ainvoke([path, path], RAY))
        deadline = time.monotonic() + 60
        while beats(path) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert beats(path) > 0
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    slots.limit, limit = 0, slots.limit
    try:
        asyncio.run(leave_while_it_beats())
        assert stops_beating(path), "the map's items went on after its request was cancelled"
    finally:
        slots.limit = limit
        stop(path)
