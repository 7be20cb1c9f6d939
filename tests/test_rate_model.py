"""Rate limiters against sequential models, on a ManualClock, driven by Hypothesis.

The models are written in exact fractions of a second, not in the limiter's integer ticks:
they agree only if the ticks are exact. Beside the models, every run checks the guarantee
itself over every interval between two grants, not samples: a GCRA never allows more than
``burst + t * rate / per`` units in an interval of length ``t``, a window limiter never more
than ``limit`` in any window of ``per`` seconds.
"""

from __future__ import annotations

import fractions
import math
from collections import deque
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

import allotment
from allotment._limiters import limiter_parts
from allotment.testing import ManualClock

Fraction = fractions.Fraction
NS = 10**9


def grid(seconds: float) -> Fraction:
    """A clock reading as the limiter reads it: the nearest nanosecond."""
    return Fraction(round(seconds * NS), NS)


# Rates and periods that make awkward intervals (thirds, sevenths, decimals).
RATES = st.sampled_from([1, 2, 3, 7, 10, Fraction(5, 2), 0.3])
PERS = st.sampled_from([1, 2, 0.5, 0.1, 3])
STEPS = st.integers(min_value=0, max_value=2 * NS).map(lambda n: n / NS)


def advance_onto(clock: ManualClock, target: Fraction) -> None:
    """Advance ``clock`` so that it reads ``target`` rounded up to the nanosecond grid (or
    stay, if it is already there): the boundaries where an off-by-one would show."""
    goal = -(-target.numerator * NS // target.denominator)  # whole nanoseconds, rounded up
    now = clock.now()
    if round(now * NS) >= goal:
        return
    reading = goal / NS
    for _ in range(64):  # a few float steps at most
        if round((now + (reading - now)) * NS) >= goal:
            break
        reading = math.nextafter(reading, math.inf)
    clock.advance(reading - now)
    assert round(clock.now() * NS) >= goal


def on_the_grid(time: Fraction) -> Fraction:
    """A waiter is allowed only at a clock reading: the next whole nanosecond."""
    return Fraction(-(-time.numerator * NS // time.denominator), NS)


def exact(value: float | Fraction) -> Fraction:
    return value if isinstance(value, Fraction) else Fraction(repr(value))


@attrs.define
class Slot:
    """A reservation or a charge in the model's line."""

    cost: int
    time: Fraction
    charge: bool = False
    reservation: allotment.Reservation | None = None


def check_gcra_bound(grants: list[tuple[Fraction, int]], burst: int, interval: Fraction) -> None:
    grants = sorted(grants)
    for first in range(len(grants)):
        units = 0
        for last in range(first, len(grants)):
            units += grants[last][1]
            length = grants[last][0] - grants[first][0]
            assert units <= burst + length / interval, (grants[first], grants[last], units)


def check_window_bound(grants: list[tuple[Fraction, int]], limit: int, per: Fraction) -> None:
    grants = sorted(grants)
    for last in range(len(grants)):
        end = grants[last][0]
        inside = sum(units for when, units in grants[: last + 1] if when > end - per)
        assert inside <= limit, (end, inside)


class GcraModel(RuleBasedStateMachine):
    """RateLimiter against a GCRA kept in fractions."""

    reservations = Bundle("reservations")

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.grants: list[tuple[Fraction, int]] = []

    @initialize(rate=RATES, per=PERS, burst=st.integers(1, 4))
    def build(self, rate: Any, per: float, burst: int) -> None:
        self.limiter = allotment.RateLimiter(rate, per=per, burst=burst, clock=self.clock)
        self.interval = exact(per) / exact(rate)
        self.burst = burst
        self.tat = grid(self.clock.now())
        self.line: deque[Slot] = deque()

    # -- the model -------------------------------------------------------------------------

    @property
    def now(self) -> Fraction:
        return grid(self.clock.now())

    def record(self, at: Fraction, cost: int) -> None:
        self.tat = max(self.tat, at) + cost * self.interval

    def process(self) -> None:
        while self.line and self.line[0].time <= self.now:
            slot = self.line.popleft()
            self.record(slot.time, slot.cost)
            if not slot.charge:
                self.grants.append((slot.time, slot.cost))

    def admits_now(self, cost: int) -> bool:
        return (
            not self.line
            and self.now >= self.tat + cost * self.interval - self.burst * self.interval
        )

    def time_for(self, cost: int) -> Fraction:
        tat, time = self.tat, self.now
        for slot in self.line:
            time = max(time, slot.time)
            tat = max(tat, time) + slot.cost * self.interval
        return on_the_grid(max(time, tat + cost * self.interval - self.burst * self.interval))

    # -- rules -----------------------------------------------------------------------------

    @rule(step=STEPS)
    def advance(self, step: float) -> None:
        self.clock.advance(step)

    @rule(cost=st.integers(1, 4), early=st.sampled_from([0, 1, 2]))
    def advance_to_the_boundary(self, cost: int, early: int) -> None:
        """To the nanosecond at which ``cost`` is allowed, or ``early`` ns before it."""
        if cost <= self.burst:
            self.process()
            advance_onto(self.clock, self.time_for(cost) - Fraction(early, NS))

    @rule(cost=st.integers(1, 4))
    def try_acquire(self, cost: int) -> None:
        if cost > self.burst:
            return
        self.process()
        expected = self.admits_now(cost)
        assert self.limiter.try_acquire(cost) == expected
        if expected:
            self.record(self.now, cost)
            self.grants.append((self.now, cost))

    @rule(cost=st.integers(1, 4), timeout=st.sampled_from([0, 0.05, 1.0]))
    def acquire_or_time_out_at_once(self, cost: int, timeout: float) -> None:
        """A blocking acquire that the model says must be allowed now or refused at once:
        the test thread never waits (nothing would advance the clock)."""
        if cost > self.burst:
            return
        self.process()
        # The limiter's own forecast first: if it disagreed with the model, the acquire below
        # could sleep on a clock nobody advances.
        meter = limiter_parts(self.limiter).meter
        expected = self.now if self.admits_now(cost) else self.time_for(cost)
        assert Fraction(meter.forecast(cost), meter.scale * NS) == expected
        if self.admits_now(cost):
            self.limiter.acquire(cost, timeout=0)  # allowed now: never waits (or fails)
            self.record(self.now, cost)
            self.grants.append((self.now, cost))
        elif timeout == 0 or self.time_for(cost) > grid(self.clock.now() + timeout):
            try:
                self.limiter.acquire(cost, timeout=timeout)
            except allotment.AcquireTimeout:
                pass
            else:
                raise AssertionError("acquire should have timed out at once")

    @rule(target=reservations, cost=st.integers(1, 4))
    def reserve(self, cost: int) -> Slot:
        if cost > self.burst:
            return Slot(cost, Fraction(0))
        self.process()
        reservation = self.limiter.reserve(cost)
        if self.admits_now(cost):
            self.record(self.now, cost)
            self.grants.append((self.now, cost))
            slot = Slot(cost, self.now, reservation=reservation)
            assert reservation.delay == 0
        else:
            slot = Slot(cost, self.time_for(cost), reservation=reservation)
            self.line.append(slot)
            assert reservation.time == float(slot.time)
        return slot

    @rule(slot=consumes(reservations))
    def cancel(self, slot: Slot) -> None:
        if slot.reservation is None:
            return
        self.process()
        queued = any(entry is slot for entry in self.line)
        assert slot.reservation.cancel() == queued
        if queued:
            self.line.remove(slot)

    @rule(cost=st.integers(1, 30))
    def charge(self, cost: int) -> None:
        self.process()
        self.limiter.charge(cost)
        if self.line:
            self.line.append(Slot(cost, self.line[-1].time, charge=True))
        else:
            self.record(self.now, cost)

    @invariant()
    def agrees_and_keeps_the_bound(self) -> None:
        if not hasattr(self, "limiter"):
            return
        self.process()
        stats = self.limiter.statistics()
        waiting = [slot for slot in self.line if not slot.charge]
        assert [w.cost for w in stats.waiters] == [slot.cost for slot in waiting]
        assert stats.allowed_units == sum(units for _, units in self.grants)
        check_gcra_bound(self.grants, self.burst, self.interval)


class WindowModel(RuleBasedStateMachine):
    """WindowLimiter against a log kept in fractions."""

    reservations = Bundle("reservations")

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.grants: list[tuple[Fraction, int]] = []

    @initialize(limit=st.integers(1, 6), per=PERS)
    def build(self, limit: int, per: float) -> None:
        self.limiter = allotment.WindowLimiter(limit, per=per, clock=self.clock)
        self.limit = limit
        self.per = exact(per)
        self.log: list[tuple[Fraction, int]] = []
        self.line: deque[Slot] = deque()

    @property
    def now(self) -> Fraction:
        return grid(self.clock.now())

    def inside(self, at: Fraction, log: list[tuple[Fraction, int]]) -> int:
        return sum(units for when, units in log if when > at - self.per)

    def process(self) -> None:
        while self.line and self.line[0].time <= self.now:
            slot = self.line.popleft()
            self.log.append((slot.time, slot.cost))
            if not slot.charge:
                self.grants.append((slot.time, slot.cost))

    def time_for(self, cost: int) -> Fraction:
        log = list(self.log)
        time = self.now
        for slot in self.line:
            time = max(time, slot.time)
            log.append((time, slot.cost))
        # The earliest time at or after ``time`` when the cost fits: a grant leaves the
        # window exactly ``per`` after it was made.
        candidates = sorted({time} | {when + self.per for when, _ in log if when + self.per > time})
        for candidate in candidates:
            if self.inside(candidate, log) + cost <= self.limit:
                return on_the_grid(candidate)
        raise AssertionError("unreachable: every grant leaves the window eventually")

    @rule(step=STEPS)
    def advance(self, step: float) -> None:
        self.clock.advance(step)

    @rule(cost=st.integers(1, 6), early=st.sampled_from([0, 1, 2]))
    def advance_to_the_boundary(self, cost: int, early: int) -> None:
        if cost <= self.limit:
            self.process()
            advance_onto(self.clock, self.time_for(cost) - Fraction(early, NS))

    @rule(cost=st.integers(1, 6))
    def try_acquire(self, cost: int) -> None:
        if cost > self.limit:
            return
        self.process()
        expected = not self.line and self.inside(self.now, self.log) + cost <= self.limit
        assert self.limiter.try_acquire(cost) == expected
        if expected:
            self.log.append((self.now, cost))
            self.grants.append((self.now, cost))

    @rule(target=reservations, cost=st.integers(1, 6))
    def reserve(self, cost: int) -> Slot:
        if cost > self.limit:
            return Slot(cost, Fraction(0))
        self.process()
        reservation = self.limiter.reserve(cost)
        if not self.line and self.inside(self.now, self.log) + cost <= self.limit:
            self.log.append((self.now, cost))
            self.grants.append((self.now, cost))
            return Slot(cost, self.now, reservation=reservation)
        slot = Slot(cost, self.time_for(cost), reservation=reservation)
        assert reservation.time == float(slot.time)
        self.line.append(slot)
        return slot

    @rule(slot=consumes(reservations))
    def cancel(self, slot: Slot) -> None:
        if slot.reservation is None:
            return
        self.process()
        queued = any(entry is slot for entry in self.line)
        assert slot.reservation.cancel() == queued
        if queued:
            self.line.remove(slot)

    @invariant()
    def agrees_and_keeps_the_bound(self) -> None:
        if not hasattr(self, "limiter"):
            return
        self.process()
        stats = self.limiter.statistics()
        assert [w.cost for w in stats.waiters] == [slot.cost for slot in self.line]
        assert stats.allowed_units == sum(units for _, units in self.grants)
        check_window_bound(self.grants, self.limit, self.per)


TestGcraModel = GcraModel.TestCase
TestGcraModel.settings = settings(max_examples=150, stateful_step_count=40)
TestWindowModel = WindowModel.TestCase
TestWindowModel.settings = settings(max_examples=150, stateful_step_count=40)


@settings(max_examples=200)
@given(
    rate=RATES,
    per=PERS,
    burst=st.integers(1, 5),
    schedule=st.lists(st.tuples(STEPS, st.integers(1, 5)), min_size=1, max_size=60),
)
def test_gcra_never_allows_more_than_the_bound_in_any_interval(
    rate: Any, per: float, burst: int, schedule: list[tuple[float, int]]
) -> None:
    clock = ManualClock()
    limiter = allotment.RateLimiter(rate, per=per, burst=burst, clock=clock)
    grants = []
    for step, cost in schedule:
        clock.advance(step)
        # Greedy: take as much as the limiter allows at this instant.
        while cost <= burst and limiter.try_acquire(cost):
            grants.append((grid(clock.now()), cost))
    check_gcra_bound(grants, burst, exact(per) / exact(rate))


@settings(max_examples=200)
@given(
    limit=st.integers(1, 8),
    per=PERS,
    schedule=st.lists(st.tuples(STEPS, st.integers(1, 8)), min_size=1, max_size=60),
)
def test_window_never_allows_more_than_the_limit_in_any_window(
    limit: int, per: float, schedule: list[tuple[float, int]]
) -> None:
    clock = ManualClock()
    limiter = allotment.WindowLimiter(limit, per=per, clock=clock)
    grants = []
    for step, cost in schedule:
        clock.advance(step)
        while cost <= limit and limiter.try_acquire(cost):
            grants.append((grid(clock.now()), cost))
    check_window_bound(grants, limit, exact(per))
