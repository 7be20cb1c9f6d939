"""acquire_all's one-pass path spends its limiter's rate with an exact undo: an exception at
any check point of the call, or of the group's refund, leaves the rate exactly as it was
(or, once a group is out of the library's hands, exactly one grant spent), never spent twice
and never given back twice.

The sweep of ``test_envelope.py`` (every point where CPython can deliver an exception), on a
``ManualClock`` that never moves, so the rule's state shows every unit spent. This is stricter
than ``test_rate_envelope.py``, which allows an interrupted call to leave its cost spent: a
group interrupted before it is returned has not run its work, so its rate must come back.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

import allotment
from allotment._core import Gcra, Meter
from allotment._limiters import limiter_parts
from allotment.testing import ManualClock
from support import frozen_gc
from test_envelope import (
    Injected,
    Outcome,
    _result_in_transit,
    forget_frames,
    on_another_thread,
    sweep,
)

COST = 2


@dataclass(eq=False)
class GroupEnv:
    clock: ManualClock
    limiter: allotment.RateLimiter
    managers: list[allotment.ResourceManager[int]]
    start: tuple[int, int] = (0, 0)
    """The rule's ``tat`` and the allowed units before the operation."""
    keep: list[Any] = field(default_factory=list)

    @property
    def meter(self) -> Meter:
        meter = limiter_parts(self.limiter).meter
        assert isinstance(meter, Meter)
        return meter

    def state(self) -> tuple[int, int]:
        rule = self.meter.rule
        assert isinstance(rule, Gcra)
        return rule.tat, self.meter.allowed_units

    def spent_once(self) -> tuple[int, int]:
        rule = self.meter.rule
        assert isinstance(rule, Gcra)
        return self.start[0] + COST * rule.interval, self.start[1] + COST


def _setup(managers: int, *, grouped: bool = False, queued: bool = False) -> Callable[[], GroupEnv]:
    def setup() -> GroupEnv:
        clock = ManualClock()
        limiter = allotment.RateLimiter(10, per=1, burst=4, clock=clock)
        pools = [allotment.ResourceManager(2, clock=clock) for _ in range(managers)]
        env = GroupEnv(clock, limiter, pools)
        if queued:  # a reservation queued: the one-pass path must ask with a ticket
            assert limiter.try_acquire(4)
            env.keep.append(limiter.reserve(1))
        if grouped:
            env.keep.append(_take(env))
        env.start = env.state()
        return env

    return setup


def _take(env: GroupEnv) -> object:
    requests: list[allotment.Request] = [(pool, 1) for pool in env.managers]
    requests.insert(1, (env.limiter, COST))
    return allotment.acquire_all(requests, timeout=0)


def _check_take(env: GroupEnv, outcome: Outcome) -> None:
    forget_frames(outcome.error)
    group = outcome.result
    outcome.result = None
    if outcome.error is not None:
        if not isinstance(outcome.error, (Injected, allotment.AcquireTimeout)):
            raise AssertionError(f"at {outcome.describe()}: {outcome.error!r}") from outcome.error
        state = on_another_thread(env.state, "the limiter's state")
        # Interrupted before the group was returned: nothing spent. Lost on its way back (its
        # leases come back through their finalizers): the group's one grant spent, no more.
        allowed = {env.start, env.spent_once()} if _result_in_transit(outcome.run) else {env.start}
        assert state in allowed, (outcome.describe(), state, env.start)
    else:
        assert isinstance(group, allotment.LeaseGroup), group
        assert env.state() == env.spent_once(), outcome.describe()
        assert group.refund()  # exactly, once
        assert env.state() == env.start
        assert not group.refund()  # and never twice
        assert env.state() == env.start
        group.release()
    del group
    gc.collect()  # a group lost in transit returns its leases
    for pool in env.managers:
        stats = on_another_thread(pool.statistics, "a pool's statistics")
        assert isinstance(stats, allotment.ManagerStatistics)
        assert stats.in_use == 0, outcome.describe()


def _refund(env: GroupEnv) -> object:
    return env.keep[0].refund()


def _check_refund(env: GroupEnv, outcome: Outcome) -> None:
    forget_frames(outcome.error)
    group = env.keep[0]
    assert isinstance(group, allotment.LeaseGroup)
    spent = env.spent_once()  # from the state with the group's grant: as if it never was
    given_back = (2 * env.start[0] - spent[0], 2 * env.start[1] - spent[1])
    if outcome.error is not None:
        assert isinstance(outcome.error, Injected), outcome.error
        # Cut short anywhere: the rate is given back already, or by the refund done again.
        state = on_another_thread(env.state, "the limiter's state")
        assert state in {env.start, given_back}, (outcome.describe(), state)
        group.refund()
    else:
        assert outcome.result is True, outcome.describe()
    assert env.state() == given_back, outcome.describe()
    assert not group.refund()  # never twice
    assert env.state() == given_back
    group.release()
    env.keep.clear()


CASES: dict[str, tuple[Callable[[], GroupEnv], Callable[[GroupEnv], object], Any]] = {
    "a manager and a limiter": (_setup(1), _take, _check_take),
    "two managers and a limiter": (_setup(2), _take, _check_take),
    "behind a reservation (a ticket)": (_setup(1, queued=True), _take, _check_take),
    "refund": (_setup(2, grouped=True), _refund, _check_refund),
}


@pytest.mark.parametrize("name", list(CASES))
def test_an_exception_anywhere_spends_the_groups_rate_exactly_once(name: str) -> None:
    setup, operation, check = CASES[name]
    with frozen_gc():
        swept = sweep(setup, operation, check)
    assert swept.points
