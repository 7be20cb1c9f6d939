"""RateLimiter and WindowLimiter: every behaviour on a ManualClock, and every bad input."""

from __future__ import annotations

import decimal
import fractions
import math
import threading
from typing import Any

import pytest

import allotment
from allotment._core import Meter, SlidingWindow
from allotment._limiters import limiter_parts
from allotment.testing import ManualClock
from support import Worker, inject, start, wait_until

Limiter = allotment.RateLimiter | allotment.WindowLimiter


class Injected(Exception):
    """Raised into a sleeping acquirer from outside."""


def queued(limiter: Limiter, count: int, clock: ManualClock | None = None) -> None:
    """Wait until ``count`` callers are queued (and, with a clock, asleep on it)."""
    wait_until(
        lambda: (
            len(limiter.statistics().waiters) == count
            and (clock is None or clock.sleepers >= count)
        ),
        f"{count} caller(s) wait on {limiter.name}",
    )


def acquirer(
    limiter: Limiter, cost: int, clock: ManualClock, log: list[tuple[str, float]], name: str
) -> Worker:
    def run() -> None:
        limiter.acquire(cost)
        log.append((name, clock.now()))

    return start(run, name=name)


def drained(
    rate: float, per: float = 1.0, burst: int = 1
) -> tuple[allotment.RateLimiter, ManualClock]:
    clock = ManualClock()
    limiter = allotment.RateLimiter(rate, per=per, burst=burst, clock=clock)
    while limiter.try_acquire():
        pass
    return limiter, clock


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "per", "burst", "expected"),
    [(100, 60, None, 100), (10, 1, None, 10), (0.5, 1, None, 1), (2.7, 1, None, 2), (10, 1, 3, 3)],
)
def test_burst_defaults_to_the_whole_rate(
    rate: float, per: float, burst: int | None, expected: int
) -> None:
    limiter = allotment.RateLimiter(rate, per=per, burst=burst)
    assert limiter.burst == expected
    assert limiter.rate == rate
    assert limiter.per == per


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"rate": 0}, allotment.InvalidLimit),
        ({"rate": -1}, allotment.InvalidLimit),
        ({"rate": math.nan}, allotment.InvalidLimit),
        ({"rate": math.inf}, allotment.InvalidLimit),
        ({"rate": decimal.Decimal("NaN")}, allotment.InvalidLimit),
        ({"rate": True}, allotment.InvalidLimitType),
        ({"rate": "10"}, allotment.InvalidLimitType),
        ({"rate": None}, allotment.InvalidLimitType),
        ({"per": 0}, allotment.InvalidLimit),
        ({"per": -1.0}, allotment.InvalidLimit),
        ({"per": math.inf}, allotment.InvalidLimit),
        ({"per": False}, allotment.InvalidLimitType),
        ({"burst": 0}, allotment.InvalidLimit),
        ({"burst": -2}, allotment.InvalidLimit),
        ({"burst": 1.5}, allotment.InvalidLimitType),
        ({"burst": True}, allotment.InvalidLimitType),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any], error: type[Exception]) -> None:
    arguments: dict[str, Any] = {"rate": 10, "per": 1, "burst": None} | settings
    with pytest.raises(error):
        allotment.RateLimiter(arguments.pop("rate"), **arguments)
    assert issubclass(error, (ValueError, TypeError))
    assert issubclass(error, allotment.AllotmentError)


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"limit": 0}, allotment.InvalidLimit),
        ({"limit": 2.0}, allotment.InvalidLimitType),
        ({"limit": True}, allotment.InvalidLimitType),
        ({"per": 0}, allotment.InvalidLimit),
        ({"per": math.nan}, allotment.InvalidLimit),
        ({"per": "1"}, allotment.InvalidLimitType),
    ],
)
def test_bad_window_settings_are_refused(settings: dict[str, Any], error: type[Exception]) -> None:
    arguments: dict[str, Any] = {"limit": 10, "per": 1} | settings
    with pytest.raises(error):
        allotment.WindowLimiter(arguments.pop("limit"), **arguments)


def test_settings_take_exact_numbers() -> None:
    clock = ManualClock()
    limiter = allotment.RateLimiter(
        fractions.Fraction(1, 3), per=decimal.Decimal("0.5"), burst=1, clock=clock
    )
    assert limiter.try_acquire()
    # One unit per 1.5 s exactly.
    clock.advance(1.499999999)
    assert not limiter.try_acquire()
    clock.advance(0.000000001)
    assert limiter.try_acquire()


BAD_COSTS: list[tuple[object, type[Exception]]] = [
    (0, allotment.InvalidAmount),
    (-1, allotment.InvalidAmount),
    (1.0, allotment.InvalidAmountType),
    (True, allotment.InvalidAmountType),
    ("1", allotment.InvalidAmountType),
    (None, allotment.InvalidAmountType),
    (6, allotment.ExceedsBurst),
]


@pytest.mark.parametrize(("cost", "error"), BAD_COSTS)
@pytest.mark.parametrize("operation", ["acquire", "try_acquire", "reserve"])
def test_bad_costs_change_nothing(cost: object, error: type[Exception], operation: str) -> None:
    clock = ManualClock()
    limiter = allotment.RateLimiter(5, per=1, clock=clock)
    before = limiter.statistics()
    with pytest.raises(error):
        getattr(limiter, operation)(cost)
    assert limiter.statistics() == before


def test_a_cost_above_the_burst_is_a_value_error_at_once() -> None:
    limiter = allotment.RateLimiter(100, per=1, burst=10)
    with pytest.raises(ValueError, match="never be allowed"):
        limiter.acquire(11)
    window = allotment.WindowLimiter(3, per=1)
    with pytest.raises(allotment.ExceedsBurst):
        window.acquire(4)


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(-1, ValueError), (math.nan, ValueError), ("1", TypeError), (True, TypeError)],
)
def test_bad_timeouts_change_nothing(timeout: object, error: type[Exception]) -> None:
    limiter, _ = drained(10)
    before = limiter.statistics()
    with pytest.raises(error):
        limiter.acquire(1, timeout=timeout)  # type: ignore[arg-type]
    assert limiter.statistics() == before


@pytest.mark.parametrize("charge", [0, -3, 1.5, True, "2"])
def test_bad_charges_change_nothing(charge: object) -> None:
    limiter, _ = drained(10)
    before = limiter.statistics()
    with pytest.raises((ValueError, TypeError)):
        limiter.charge(charge)  # type: ignore[arg-type]
    assert limiter.statistics() == before


# -- the bucket ----------------------------------------------------------------------------------


def test_starts_full_then_spaces_units_exactly() -> None:
    clock = ManualClock()
    limiter = allotment.RateLimiter(10, per=1, burst=3, clock=clock)
    assert [limiter.try_acquire() for _ in range(4)] == [True, True, True, False]
    clock.advance(0.099999999)
    assert not limiter.try_acquire()
    clock.advance(0.000000001)
    assert limiter.try_acquire()
    assert not limiter.try_acquire()


def test_an_awkward_rate_is_exact_on_the_nanosecond() -> None:
    # One unit per third of a second: 333,333,333.3 ns. Allowed at 333,333,334 ns, not before.
    limiter, clock = drained(3)
    clock.advance(0.333333333)
    assert not limiter.try_acquire()
    clock.advance(0.000000001)
    assert limiter.try_acquire()


def test_idle_time_refills_only_up_to_the_burst() -> None:
    limiter, clock = drained(10, burst=4)
    clock.advance(3600)
    assert sum(limiter.try_acquire() for _ in range(10)) == 4


def test_with_block_takes_one_unit() -> None:
    limiter, clock = drained(10, burst=2)
    clock.advance(0.2)
    with limiter:
        assert limiter.statistics().allowed_units == 3
    with limiter:
        pass
    assert not limiter.try_acquire()


def test_charge_goes_into_debt_and_later_callers_wait_longer() -> None:
    limiter, clock = drained(10, burst=5)
    clock.advance(0.5)  # five units back
    limiter.charge(25)  # far beyond the burst: never fails for being large
    assert limiter.statistics().available == 0
    clock.advance(2.0)  # 20 units paid back of the 25 owed (the 5 free ones went first)
    assert not limiter.try_acquire()
    clock.advance(0.1)
    assert limiter.try_acquire()
    assert limiter.statistics().charged == 25


# -- waiting --------------------------------------------------------------------------------------


def test_a_waiter_is_allowed_when_its_time_comes_not_before() -> None:
    limiter, clock = drained(10)
    log: list[tuple[str, float]] = []
    worker = acquirer(limiter, 1, clock, log, "waiter")
    queued(limiter, 1, clock)
    clock.advance(0.099999)
    assert not worker.finished.wait(0.05)
    assert log == []
    clock.advance(0.000001)
    worker.outcome()
    assert log == [("waiter", clock.now())]


def test_waiters_are_served_in_arrival_order_and_a_large_cost_is_not_overtaken() -> None:
    limiter, clock = drained(5, burst=5)  # one unit per 0.2 s
    log: list[tuple[str, float]] = []
    big = acquirer(limiter, 5, clock, log, "big")
    queued(limiter, 1, clock)
    small = acquirer(limiter, 1, clock, log, "small")
    queued(limiter, 2, clock)
    clock.advance(0.2)  # one unit would fit the small request, but the big one is first
    assert not limiter.try_acquire()  # and try_acquire never barges either
    assert not small.finished.wait(0.05)
    clock.advance(0.8)
    big.outcome()
    clock.advance(0.2)
    small.outcome()
    assert [name for name, _ in log] == ["big", "small"]
    assert [when for _, when in log] == pytest.approx([1.0, 1.2])


def test_timeout_raises_at_once_when_the_wait_would_be_longer() -> None:
    limiter, clock = drained(2)  # one unit per 0.5 s
    before = limiter.statistics()
    # Nothing advances this clock: if acquire slept until the deadline, the test would hang.
    with pytest.raises(allotment.AcquireTimeout, match=r"only in 0\.5 s"):
        limiter.acquire(1, timeout=0.4)
    after = limiter.statistics()
    assert (after.allowed, after.waiters, after.refused) == (before.allowed, (), before.refused + 1)
    clock.advance(0.5)
    assert limiter.try_acquire()  # the failed call took no place


def test_timeout_long_enough_waits() -> None:
    limiter, clock = drained(2)
    worker = start(limiter.acquire, 1, 0.5)
    queued(limiter, 1, clock)
    clock.advance(0.5)
    worker.outcome()


def test_timeout_zero_is_a_try() -> None:
    limiter, clock = drained(2)
    with pytest.raises(allotment.AcquireTimeout, match="not allowed now"):
        limiter.acquire(1, timeout=0)
    clock.advance(0.5)
    limiter.acquire(1, timeout=0)


def test_a_charge_while_others_wait_is_spent_at_the_tail() -> None:
    limiter, clock = drained(10)
    log: list[tuple[str, float]] = []
    first = acquirer(limiter, 1, clock, log, "first")
    queued(limiter, 1, clock)
    limiter.charge(10)  # a second's worth of debt, behind "first": its time stays
    assert [w.allowed_in for w in limiter.statistics().waiters] == [pytest.approx(0.1)]
    clock.advance(0.1)
    first.outcome()
    # Later callers pay the debt: the next unit comes a second after the charge's slot.
    assert limiter.reserve().time == pytest.approx(1.2)
    assert [name for name, _ in log] == ["first"]
    assert log[0][1] == pytest.approx(0.1)


def test_an_exception_in_a_sleeping_waiter_spends_nothing_and_moves_the_next_up() -> None:
    limiter, clock = drained(1)  # one unit per second
    log: list[tuple[str, float]] = []
    victim = acquirer(limiter, 1, clock, log, "victim")
    queued(limiter, 1, clock)
    behind = acquirer(limiter, 1, clock, log, "behind")
    queued(limiter, 2, clock)
    assert [w.allowed_in for w in limiter.statistics().waiters] == [1.0, 2.0]
    inject(victim, Injected)  # delivered as the victim wakes
    clock.advance(1.0)
    with pytest.raises(Injected):
        victim.outcome()
    behind.outcome()
    assert log == [("behind", 1.0)]  # it took the victim's place, at the victim's time
    stats = limiter.statistics()
    assert stats.allowed == 2  # the drain and "behind": the victim spent nothing
    assert stats.waiters == ()


def test_a_cancelled_reservation_wakes_the_waiters_behind_to_an_earlier_time() -> None:
    limiter, clock = drained(1)
    log: list[tuple[str, float]] = []
    reservation = limiter.reserve()
    behind = acquirer(limiter, 1, clock, log, "behind")
    wait_until(
        lambda: len(limiter.statistics().waiters) == 2 and clock.sleepers == 1,
        "the waiter sleeps behind the reservation",
    )
    assert [w.allowed_in for w in limiter.statistics().waiters] == [1.0, 2.0]
    assert reservation.cancel()
    assert [w.allowed_in for w in limiter.statistics().waiters] == [1.0]
    wait_until(lambda: clock.sleepers == 1, "the waiter sleeps again, until 1.0")
    clock.advance(1.0)
    behind.outcome()
    assert log == [("behind", 1.0)]


def test_waiters_noticed_late_are_allowed_one_interval_apart_from_then() -> None:
    limiter, clock = drained(10, burst=1)
    log: list[tuple[str, float]] = []
    workers = []
    for index in range(5):
        workers.append(acquirer(limiter, 1, clock, log, f"w{index}"))
        queued(limiter, index + 1, clock)
    clock.advance(10.0)  # long past every planned time: the head is allowed now...
    wait_until(lambda: len(log) == 1, "the head is allowed")
    # ... and the rest keep the spacing from there: the bound holds for when calls return.
    for step in range(4):
        wait_until(lambda: clock.sleepers + len(log) == 5, "the rest are asleep again")
        assert len(log) == step + 1
        clock.advance(0.1)
        wait_until(lambda step=step: len(log) >= step + 2, "the next is allowed")  # type: ignore[misc]
    for worker in workers:
        worker.outcome()
    assert [name for name, _ in log] == [f"w{index}" for index in range(5)]
    assert [when for _, when in log] == pytest.approx([10.0, 10.1, 10.2, 10.3, 10.4])


# -- reservations -------------------------------------------------------------------------


def test_reserve_takes_the_next_slot_without_waiting() -> None:
    limiter, clock = drained(10, burst=2)
    first = limiter.reserve(1)
    second = limiter.reserve(2)
    assert first.delay == pytest.approx(0.1)
    assert second.delay == pytest.approx(0.3)
    assert not limiter.try_acquire()  # reservations are in line too
    clock.advance(0.3)
    assert first.delay == 0.0
    assert not first.cancel()  # its time came: it was used
    assert not second.cancel()


def test_cancel_before_its_time_refunds_exactly_once() -> None:
    limiter, clock = drained(10, burst=2)
    first = limiter.reserve(2)
    second = limiter.reserve(1)
    assert (first.delay, second.delay) == pytest.approx((0.2, 0.3))
    assert first.cancel()
    assert not first.cancel()  # once
    # A reservation keeps the time it was promised: its holder will act then.
    assert [w.allowed_in for w in limiter.statistics().waiters] == pytest.approx([0.3])
    clock.advance(0.3)
    # The refund is exact: with the first reservation spent, nothing would be free now.
    assert limiter.try_acquire()
    assert not limiter.try_acquire()


def test_a_reservation_available_now_is_granted_at_once() -> None:
    clock = ManualClock()
    limiter = allotment.RateLimiter(10, per=1, burst=2, clock=clock)
    reservation = limiter.reserve(2)
    assert reservation.delay == 0.0
    assert "in 0 s" in repr(reservation)
    reservation.wait()  # returns at once
    assert not reservation.cancel()


def test_reservation_wait_sleeps_on_the_limiters_clock() -> None:
    limiter, clock = drained(10)
    reservation = limiter.reserve()
    worker = start(reservation.wait)
    wait_until(lambda: clock.sleepers == 1, "the reservation sleeps")
    clock.advance(0.1)
    worker.outcome()


# -- window ---------------------------------------------------------------------------------------


def test_window_allows_the_limit_in_any_window_and_no_more() -> None:
    clock = ManualClock()
    window = allotment.WindowLimiter(3, per=1, clock=clock)
    assert window.try_acquire(2)
    clock.advance(0.5)
    assert window.try_acquire(1)
    assert not window.try_acquire(1)
    clock.advance(0.499999999)
    assert not window.try_acquire(1)  # the window [0.0, 1.0) still holds three
    clock.advance(0.000000001)
    assert window.try_acquire(2)  # the two from 0.0 have left
    assert not window.try_acquire(1)
    clock.advance(0.5)
    assert window.try_acquire(1)


def test_window_waiters_are_planned_across_the_log() -> None:
    clock = ManualClock()
    window = allotment.WindowLimiter(4, per=10, clock=clock)
    window.acquire(3)
    clock.advance(2)
    window.acquire(1)
    first = window.reserve(2)  # needs the 3 from 0.0 to leave: at 10.0
    second = window.reserve(3)  # needs the 1 from 2.0 and the 2 from 10.0... at 20.0
    assert (first.time, second.time) == (10.0, 20.0)


def test_window_log_is_compact_for_large_counts() -> None:
    clock = ManualClock()
    window = allotment.WindowLimiter(1_000_000, per=60, clock=clock)
    for _ in range(1000):
        window.acquire(1000)
    rule = limiter_parts(window).meter.rule
    assert isinstance(rule, SlidingWindow)
    assert len(rule.log) == 1  # one entry per distinct time, not per unit
    clock.advance(60)
    assert window.try_acquire(1)
    assert len(rule.log) == 1


# -- statistics and repr -------------------------------------------------------------------------


def test_statistics_is_a_frozen_snapshot() -> None:
    limiter, clock = drained(10, burst=2)
    clock.advance(0.05)
    log: list[tuple[str, float]] = []
    worker = acquirer(limiter, 2, clock, log, "waiting-thread")
    queued(limiter, 1, clock)
    assert not limiter.try_acquire()
    stats = limiter.statistics()
    assert (stats.kind, stats.rate, stats.per, stats.burst) == ("gcra", 10.0, 1.0, 2)
    assert stats.available == 0
    (waiter,) = stats.waiters
    assert (waiter.cost, waiter.thread_name, waiter.reservation) == (2, "waiting-thread", False)
    assert waiter.allowed_in == pytest.approx(0.15)
    assert stats.next_allowed == pytest.approx(0.3)
    assert (stats.allowed, stats.refused, stats.waited) == (2, 2, 1)
    assert "waiting-thread" in str(stats)
    with pytest.raises(AttributeError):
        stats.available = 3  # type: ignore[misc]
    clock.advance(0.15)
    worker.outcome()
    assert limiter.statistics().allowed_units == 4


def test_repr_reads_plain_fields() -> None:
    limiter = allotment.RateLimiter(10, per=1, name="api")
    assert repr(limiter) == "<allotment.RateLimiter 'api': 10 per 1 s, burst 10, waiting=0>"
    window = allotment.WindowLimiter(5, per=2, name="quota")
    assert repr(window) == "<allotment.WindowLimiter 'quota': 5 per 2 s, waiting=0>"


def test_a_signal_handler_inside_the_section_gets_reentrant_call_not_a_hang() -> None:
    limiter, _ = drained(10)
    meter = limiter_parts(limiter).meter
    assert isinstance(meter, Meter)
    outcome: list[object] = []

    def reenter() -> int:
        if outcome:
            return 0  # statistics below reads the clock too
        outcome.append("entered")
        try:
            limiter.try_acquire()
        except allotment.ReentrantCall as error:
            outcome.append(error)
        outcome.append(limiter.statistics().available)  # reads without the lock
        outcome.append(repr(limiter))
        return 0

    meter._now_ns = reenter  # the clock is read inside the section: re-enter from there
    limiter.try_acquire()
    assert isinstance(outcome[1], allotment.ReentrantCall)
    assert outcome[2] == 0


# -- threads ---------------------------------------------------------------------------------------


def test_many_threads_never_exceed_the_bound_on_a_manual_clock() -> None:
    limiter, clock = drained(20, burst=4)
    start_time = clock.now()
    log: list[tuple[str, float]] = []
    lock = threading.Lock()
    threads = 8
    each = 5

    def run(index: int) -> None:
        for _ in range(each):
            limiter.acquire(1 + index % 2)
            with lock:
                log.append((str(1 + index % 2), clock.now()))

    workers = [start(run, index, name=f"t{index}") for index in range(threads)]

    def done() -> bool:
        return all(worker.finished.is_set() for worker in workers)

    while not done():
        # Advance once every thread still running is asleep on the clock.
        wait_until(
            lambda: (
                done() or clock.sleepers == sum(not worker.finished.is_set() for worker in workers)
            ),
            "every running thread sleeps",
        )
        clock.advance(0.01)
    for worker in workers:
        worker.outcome()
    grants = sorted((when, int(cost)) for cost, when in log)
    total = sum(cost for _, cost in grants)
    assert total == threads * each * 3 // 2
    # Every interval between two grants (inclusive) holds at most burst + length * rate.
    for first in range(len(grants)):
        units = 0
        for last in range(first, len(grants)):
            units += grants[last][1]
            length = fractions.Fraction(
                round(grants[last][0] * 1e9) - round(grants[first][0] * 1e9), 10**9
            )
            assert units <= 4 + length * 20
    assert grants[0][0] >= start_time
