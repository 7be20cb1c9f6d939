"""acquire_all with rate limiters: managers first, limiters last, all or nothing."""

from __future__ import annotations

import pytest

import allotment
from allotment.testing import ManualClock
from support import assert_idle, start, wait_until


def setup(
    burst: int = 1,
) -> tuple[allotment.ResourceManager[int], allotment.RateLimiter, ManualClock]:
    clock = ManualClock()
    pool = allotment.ResourceManager(2, clock=clock)
    api = allotment.RateLimiter(10, per=1, burst=burst, clock=clock)
    return pool, api, clock


def test_a_group_holds_the_leases_and_spends_the_rate() -> None:
    pool, api, _ = setup()
    with allotment.acquire_all([(api, 1), (pool, 2)], timeout=5) as group:
        assert len(group) == 1  # the leases: one per request naming a manager
        assert group[0].amounts == 2
        assert group.rates == (allotment.RateGrant(api, 1),)
        assert pool.statistics().in_use == 2
    assert_idle(pool)
    # Leaving the block gives the leases back, not the rate: the work ran.
    assert not api.try_acquire()
    assert api.statistics().allowed == 1


def test_a_timeout_on_a_manager_spends_no_rate() -> None:
    pool, api, _ = setup()
    held = pool.acquire(2)
    with pytest.raises(allotment.AcquireTimeout):
        allotment.acquire_all([(pool, 1), (api, 1)], timeout=0)
    assert api.statistics().allowed == 0
    assert api.try_acquire()
    held.release()


def test_a_limiter_that_cannot_allow_in_time_fails_at_once_and_releases_the_leases() -> None:
    pool, api, _ = setup()
    api.charge(10)  # a second of debt
    before = api.statistics()
    # Nothing advances the clock: waiting for the deadline would hang the test.
    with pytest.raises(allotment.AcquireTimeout, match="nothing is held or spent"):
        allotment.acquire_all([(pool, 1), (api, 1)], timeout=0.5)
    assert_idle(pool)
    after = api.statistics()
    assert after.allowed == before.allowed
    assert after.refused == before.refused + 1


def test_a_group_waits_for_the_rate_then_takes_it() -> None:
    pool, api, clock = setup()
    api.acquire()
    worker = start(allotment.acquire_all, [(pool, 1), (api, 1)], 5.0)
    wait_until(lambda: clock.sleepers == 1, "the group sleeps on the limiter")
    assert pool.statistics().in_use == 1  # the manager was taken first
    clock.advance(0.1)
    group = worker.outcome()
    assert isinstance(group, allotment.LeaseGroup)
    group.release()
    assert_idle(pool)


def test_several_limiters_and_duplicate_requests_are_merged() -> None:
    pool, api, clock = setup(burst=3)
    other = allotment.RateLimiter(1, per=1, burst=2, clock=clock)
    group = allotment.acquire_all([(api, 1), (pool, 1), (other, 1), (api, 2)])
    assert group.rates == (allotment.RateGrant(api, 3), allotment.RateGrant(other, 1))
    group.release()
    with pytest.raises(allotment.ExceedsBurst):
        allotment.acquire_all([(api, 2), (api, 2)])
    with pytest.raises(TypeError, match="not a ResourceManager or a rate limiter"):
        allotment.acquire_all([(object(), 1)])  # type: ignore[list-item]


def test_try_acquire_all_with_limiters_never_waits() -> None:
    pool, api, clock = setup()
    first = allotment.try_acquire_all([(pool, 1), (api, 1)])
    assert first is not None
    assert allotment.try_acquire_all([(pool, 1), (api, 1)]) is None  # no rate left
    assert pool.statistics().in_use == 1  # the failed group's lease was given back
    clock.advance(0.1)
    group = allotment.try_acquire_all([(pool, 1), (api, 1)])
    assert group is not None
    assert pool.statistics().in_use == 2
    group.release()
    first.release()


def test_refund_gives_the_rate_back_exactly() -> None:
    pool, api, _ = setup(burst=2)
    group = allotment.acquire_all([(pool, 1), (api, 2)])
    assert group.refund()
    assert not group.refund()  # nothing left to refund
    group.release()
    assert api.try_acquire(2)


def test_a_window_limiter_takes_part_too() -> None:
    clock = ManualClock()
    pool = allotment.ResourceManager(1, clock=clock)
    quota = allotment.WindowLimiter(2, per=1, clock=clock)
    for _ in range(2):
        allotment.acquire_all([(pool, 1), (quota, 1)], timeout=0).release()
    with pytest.raises(allotment.AcquireTimeout):
        allotment.acquire_all([(pool, 1), (quota, 1)], timeout=0.5)
    clock.advance(1)
    allotment.acquire_all([(pool, 1), (quota, 1)], timeout=0).release()


def test_the_deadline_of_a_group_with_mixed_clocks_is_measured_on_each_clock() -> None:
    pool = allotment.ResourceManager(1)  # the system clock
    clock = ManualClock()
    api = allotment.RateLimiter(1, per=1, burst=1, clock=clock)
    api.acquire()
    # The limiter would allow a unit only after one second of its clock: more than the
    # second left of the deadline? No: exactly as much. Half a second is too little.
    with pytest.raises(allotment.AcquireTimeout):
        allotment.acquire_all([(pool, 1), (api, 1)], timeout=0.5)
    assert_idle(pool)
