"""The pacer on a clock of our own: requests and tokens held at once, estimates corrected, 429s learned from."""

from __future__ import annotations

import pytest

from rayrunnables.pacing import DECREASE, SAFETY, SLOW_START, Pace, Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_calls(pacer: Pacer, clock: Clock, n: int, estimate: int = 0) -> list[float]:
    """n callers that each call as soon as the pacer lets them: the times their calls went out."""
    starts = []
    for _ in range(n):
        booking = pacer.reserve(estimate)
        starts.append(clock.now + booking.delay)
        clock.now += booking.delay
    return starts


def test_requests_per_second_hold_after_the_burst() -> None:
    clock = Clock()
    pacer = Pacer(Pace(requests_per_second=10, burst=3), clock)
    starts = run_calls(pacer, clock, 23)
    assert starts[2] == starts[0]  # the burst goes at once
    assert starts[-1] - starts[0] == pytest.approx(20 / (10 * SAFETY))


def test_tokens_per_second_hold_and_requests_too() -> None:
    clock = Clock()
    pacer = Pacer(Pace(requests_per_second=100, tokens_per_second=1000), clock)
    starts = run_calls(pacer, clock, 11, estimate=500)
    # 1 s of tokens may go at once (two calls), then 500 tokens every 0.5 s
    assert starts[-1] - starts[0] == pytest.approx((11 * 500 - 1000 * SAFETY) / (1000 * SAFETY), rel=0.05)


def test_settle_corrects_the_budget_and_scales_later_estimates() -> None:
    clock = Clock()
    pacer = Pacer(Pace(tokens_per_second=1000), clock)
    first = pacer.reserve(400)
    pacer.settle(400, first, 800)  # the provider counted twice what we estimated
    assert pacer.tokens_used == 800
    second = pacer.reserve(400)
    assert second.tokens > 400  # later estimates scaled by the running ratio
    for _ in range(30):
        booking = pacer.reserve(400)
        pacer.settle(400, booking, 800)
    assert pacer.reserve(400).tokens == pytest.approx(800, rel=0.02)


def test_a_429_pauses_everyone_and_empties_the_budget() -> None:
    clock = Clock()
    pacer = Pacer(Pace(requests_per_second=10, burst=5), clock)
    booking = pacer.reserve(0)
    pause = pacer.throttle(booking, 2.0, (None, None), None)
    assert pause == pytest.approx(2.0)
    after = run_calls(pacer, clock, 3)
    assert after[0] - 1000.0 >= 2.0  # nobody before the pause ends
    assert after[2] - after[0] > 0  # and no burst right after it


def test_a_named_lower_limit_is_adopted_without_lowering_the_pace() -> None:
    clock = Clock()
    pacer = Pacer(Pace(requests_per_second=13), clock)  # declared 30% above the provider's 10/s
    booking = pacer.reserve(0)
    pacer.throttle(booking, 0.1, (10.0, None), "requests")
    assert pacer.stats()["requests_per_second"] == pytest.approx(10 * SAFETY)


def test_unexplained_429s_lower_the_pace_once_per_round_then_it_climbs_back() -> None:
    clock = Clock()
    pacer = Pacer(Pace(requests_per_second=10), clock)
    pacer.throttle(pacer.reserve(0), 0.0, (None, None), "requests")
    assert pacer.stats()["requests_per_second"] == pytest.approx(10 * SAFETY)  # one alone: the estimates' error
    clock.now += 1
    bookings = [pacer.reserve(0) for _ in range(5)]
    for booking in bookings:  # five answers of one round, soon after: the key is shared, one decrease
        pacer.throttle(booking, 0.0, (None, None), "requests")
    assert pacer.stats()["requests_per_second"] == pytest.approx(10 * SAFETY * DECREASE)
    clock.now += 100
    pacer.reserve(0)
    assert pacer.stats()["requests_per_second"] == pytest.approx(10 * SAFETY)  # climbed back, not past


def test_bookings_made_before_a_429_book_again_when_they_wake() -> None:
    clock = Clock()
    pacer = Pacer(Pace(requests_per_second=10), clock)
    sleeping = [pacer.reserve(0) for _ in range(20)]  # 2 s of calls booked ahead
    pacer.throttle(sleeping[0], 0.5, (None, None), "requests")
    woke = pacer.claim(sleeping[5], 0)
    assert woke.delay == pytest.approx(0.5 + 1 / (10 * SAFETY))  # after the pause, first in the new round
    clock.now += woke.delay
    assert pacer.claim(woke, 0).delay == 0  # nothing happened since: it goes


def test_a_faster_pace_lets_a_waiting_call_go_sooner() -> None:
    clock = Clock()
    pacer = Pacer(Pace(requests_per_second=10), clock)
    pacer.throttle(pacer.reserve(0), 0.0, (1.0, None), "requests")  # the provider says 1 request per second
    waiting = [pacer.reserve(0) for _ in range(5)]
    assert waiting[-1].delay == pytest.approx(5 / SAFETY)
    pacer.settle(0, waiting[0], None, (4.0, None))  # a later answer names 4 per second (the limit was raised)
    assert pacer.claim(waiting[-1], 0).delay < 2 / SAFETY


def test_nothing_declared_starts_slow_doubles_as_calls_succeed_then_learns_from_the_first_429() -> None:
    clock = Clock()
    pacer = Pacer(Pace(), clock)
    assert pacer.stats()["requests_per_second"] == pytest.approx(SLOW_START * SAFETY)
    starts = []
    for _ in range(60):
        booking = pacer.reserve(0)
        while booking.delay > 0:
            clock.now += booking.delay
            booking = pacer.claim(booking, 0)
        starts.append(clock.now)
        pacer.settle(0, booking, None)  # each call succeeds at once: the successes clock the doubling
    rate_then = pacer.stats()["requests_per_second"]
    assert rate_then is not None and rate_then > 4 * SLOW_START
    pacer.throttle(pacer.reserve(0), 0.5, (None, None), None)
    learned = pacer.stats()["requests_per_second"]
    assert learned is not None and learned < rate_then
    assert starts == sorted(starts)


def test_slow_start_does_not_outrun_what_succeeds() -> None:
    clock = Clock()
    pacer = Pacer(Pace(), clock)
    for _ in range(40):  # calls go out but none has come back yet
        booking = pacer.reserve(0)
        clock.now += booking.delay
    assert pacer.stats()["requests_per_second"] == pytest.approx(SLOW_START * SAFETY)


def test_a_tokens_429_with_nothing_declared_learns_a_token_budget() -> None:
    clock = Clock()
    pacer = Pacer(Pace(requests_per_second=50), clock)
    run_calls(pacer, clock, 40, estimate=300)
    assert pacer.stats()["tokens_per_second"] is None
    pacer.throttle(pacer.reserve(300), 0.2, (None, None), "tokens")
    tokens = pacer.stats()["tokens_per_second"]
    assert tokens is not None and 0 < tokens < 50 * 300
    assert pacer.stats()["requests_per_second"] == pytest.approx(50 * SAFETY)  # requests untouched


def test_a_429_that_does_not_say_which_limit_is_not_taken_for_a_token_limit() -> None:
    clock = Clock()
    pacer = Pacer(Pace(requests_per_second=200, burst=5), clock)
    run_calls(pacer, clock, 3, estimate=3)  # a few small calls: a token rate measured from them means nothing
    pacer.throttle(pacer.reserve(3), 0.05, (None, None), None)
    assert pacer.stats()["tokens_per_second"] is None
    clock.now += 0.05
    assert pacer.reserve(3).delay < 0.05  # the next calls go at the requests' pace
