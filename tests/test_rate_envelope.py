"""An exception at any point where CPython can deliver one, inside any rate-limiter operation
that does not wait, leaves the limiter sound: the sweep of ``test_envelope.py``, on limiters.

Each run acts at the k-th check point of the operation (see ``test_envelope.py`` for where
those are), on a fresh limiter on a ``ManualClock`` that never moves. After every run, seen
from another thread: the meter's lock is free; the rule's state accounts for every grant and
charge the meter counted, and for at most the interrupted call's own cost more (an exception
right after the rule's arithmetic leaves that cost spent but uncounted: the limiter is then
stricter, never looser); no thread's ticket is left queued (only reservations, which are
fixed times, may stay); and a fresh call works. Waiting operations are swept by the
injected-exception tests of ``test_rate_threads.py`` and ``test_rate_limiter.py``.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

import allotment
from allotment._core import Gcra, Meter, SlidingWindow
from allotment._limiters import limiter_parts
from allotment.testing import ManualClock
from support import frozen_gc
from test_envelope import Injected, Outcome, forget_frames, on_another_thread, sweep


@dataclass(eq=False)
class RateEnv:
    clock: ManualClock
    limiter: allotment.RateLimiter | allotment.WindowLimiter
    pool: allotment.ResourceManager[int] | None = None
    keyed: allotment.KeyedRateLimiter | None = None
    keep: list[object] = field(default_factory=list)


def _gcra(
    burst: int = 3, *, reserved: bool = False, drained: bool = False
) -> Callable[[], RateEnv]:
    def setup() -> RateEnv:
        clock = ManualClock()
        limiter = allotment.RateLimiter(10, per=1, burst=burst, clock=clock)
        env = RateEnv(clock, limiter)
        if drained:
            while limiter.try_acquire():
                pass
        if reserved:
            env.keep.append(limiter.reserve(1))  # a reservation queued, due later
        return env

    return setup


def _window() -> RateEnv:
    clock = ManualClock()
    return RateEnv(clock, allotment.WindowLimiter(3, per=1, clock=clock))


def _with_pool() -> RateEnv:
    env = _gcra()()
    env.pool = allotment.ResourceManager(2, clock=env.clock)
    return env


def _with_drained() -> RateEnv:
    env = _gcra(drained=True)()
    env.pool = allotment.ResourceManager(2, clock=env.clock)
    return env


def _keyed() -> RateEnv:
    env = _gcra()()
    env.keyed = allotment.KeyedRateLimiter(10, per=1, burst=2, clock=env.clock)
    for key in range(3):
        env.keyed.try_acquire(key)
    return env


def _acquire_all(env: RateEnv) -> object:
    assert env.pool is not None
    return allotment.acquire_all([(env.pool, 1), (env.limiter, 1)], timeout=0)


CASES: dict[str, tuple[Callable[[], RateEnv], Callable[[RateEnv], object]]] = {
    "try_acquire": (_gcra(), lambda env: env.limiter.try_acquire(2)),
    "try_acquire refused": (_gcra(drained=True), lambda env: env.limiter.try_acquire()),
    "try_acquire behind a reservation": (
        _gcra(drained=True, reserved=True),
        lambda env: env.limiter.try_acquire(),
    ),
    "acquire allowed at once": (_gcra(), lambda env: env.limiter.acquire(2)),
    "acquire with a timeout, refused at once": (
        _gcra(drained=True),
        lambda env: env.limiter.acquire(1, timeout=0.01),
    ),
    "with block": (_gcra(), lambda env: env.limiter.__enter__()),
    "reserve": (_gcra(drained=True), lambda env: env.limiter.reserve(2)),
    "cancel a reservation": (
        _gcra(drained=True, reserved=True),
        lambda env: env.keep[0].cancel(),  # type: ignore[attr-defined]
    ),
    "charge": (_gcra(), lambda env: env.limiter.charge(5)),
    "charge behind a reservation": (
        _gcra(drained=True, reserved=True),
        lambda env: env.limiter.charge(5),
    ),
    "statistics": (_gcra(drained=True, reserved=True), lambda env: env.limiter.statistics()),
    "window try_acquire": (_window, lambda env: env.limiter.try_acquire(2)),
    "window reserve": (_window, lambda env: (env.limiter.try_acquire(3), env.limiter.reserve(1))),
    "acquire_all with a limiter": (_with_pool, _acquire_all),
    "acquire_all with a drained limiter": (_with_drained, _acquire_all),
    "try_acquire_all with a limiter": (
        _with_pool,
        lambda env: allotment.try_acquire_all([(env.pool, 1), (env.limiter, 2)]),  # type: ignore[list-item]
    ),
    "keyed try_acquire": (_keyed, lambda env: env.keyed.try_acquire("new")),  # type: ignore[union-attr]
}


def _accounted(env: RateEnv, slack: int) -> None:
    """The rule's state is what the counted grants and charges make it, or at most ``slack``
    more (the clock never moved, so every unit spent still shows)."""
    meter = limiter_parts(env.limiter).meter
    assert isinstance(meter, Meter)
    stats = env.limiter.statistics()
    rule = meter.rule
    counted = stats.allowed_units + stats.charged - _charged_in_line(meter)
    if isinstance(rule, Gcra):
        spent = (rule.tat - meter.last) // rule.interval
    else:
        assert isinstance(rule, SlidingWindow)
        assert rule.total == sum(units for _, units in rule.log)
        spent = rule.total
    assert counted <= spent <= counted + slack, (spent, counted, slack, stats)
    assert all(waiter.reservation for waiter in stats.waiters), stats.waiters


def _charged_in_line(meter: Any) -> int:
    return sum(ticket.cost for ticket in meter.queue if ticket.charge)


def _check(env: RateEnv, outcome: Outcome) -> None:
    forget_frames(outcome.error)
    if outcome.error is not None and not isinstance(
        outcome.error, (Injected, allotment.AcquireTimeout)
    ):
        raise AssertionError(f"at {outcome.describe()}: {outcome.error!r}") from outcome.error
    if isinstance(outcome.result, allotment.LeaseGroup):
        outcome.result.release()
    outcome.result = None
    on_another_thread(lambda: _accounted(env, SLACK), f"the accounts after {outcome.describe()}")
    if env.pool is not None:
        gc.collect()  # a group lost in transit returns its lease (and warns, as it should)
        stats = on_another_thread(env.pool.statistics, "the pool's statistics")
        assert isinstance(stats, allotment.ManagerStatistics)
        assert stats.in_use == 0
        assert stats.waiters == ()
    # Still usable: time moves on, and a call is allowed.
    env.clock.advance(100)
    assert on_another_thread(env.limiter.try_acquire, "a fresh try_acquire")
    if env.keyed is not None:
        keyed = env.keyed
        assert on_another_thread(lambda: keyed.try_acquire("fresh"), "a fresh keyed try_acquire")


SLACK = 5
"""The largest cost any case's operation spends: what an interrupted call may leave spent."""


@pytest.mark.parametrize("name", list(CASES))
def test_an_exception_anywhere_leaves_the_limiter_sound(name: str) -> None:
    setup, operation = CASES[name]
    with frozen_gc():
        swept = sweep(setup, operation, _check)
    assert swept.points
