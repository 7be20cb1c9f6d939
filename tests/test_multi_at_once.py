"""acquire_all's one-pass path: in-memory managers that grant now (and at most one limiter)
are taken without a plan; anything else, or a manager that cannot grant now, falls back to
the general path with nothing held, no place in a queue taken, and nothing counted twice."""

from __future__ import annotations

from typing import Any

import pytest

import allotment
from allotment import _multi
from allotment.testing import ManualClock
from support import (
    GENEROUS,
    assert_idle,
    enqueue,
    lease_of,
    start,
    wait_for_waiters,
    wait_until,
)


@pytest.fixture
def no_plan(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Count the general path's plans (the one-pass path makes none)."""
    planned: list[object] = []
    general = _multi._plan

    def counted(requests: Any) -> Any:
        planned.append(requests)
        return general(requests)

    monkeypatch.setattr(_multi, "_plan", counted)
    return planned


def test_distinct_managers_and_a_limiter_take_no_plan(no_plan: list[object]) -> None:
    host = allotment.ResourceManager(2, name="host", rank=2)
    total = allotment.ResourceManager(3, name="total", rank=1)
    api = allotment.RateLimiter(100, burst=10, name="api")
    with allotment.acquire_all([(host, 1), (api, 2), (total, 2)]) as group:
        assert [lease.manager for lease in group] == [host, total]  # request order
        assert [lease.amounts for lease in group] == [1, 2]
        assert [(grant.limiter, grant.cost) for grant in group.rates] == [(api, 2)]
        # Taken in rank order: total (rank 1) first, so it is released last.
        assert _multi.taken_of(group) == (group[1], group[0])
        assert host.statistics().in_use == 1
        assert total.statistics().in_use == 2
    assert no_plan == []
    assert_idle(host)
    assert_idle(total)
    assert api.statistics().allowed_units == 2
    tried = allotment.try_acquire_all([(host, 2), (total, 3)])
    assert tried is not None
    tried.release()
    assert no_plan == []


def test_what_the_one_pass_cannot_take_goes_to_the_general_path(no_plan: list[object]) -> None:
    a = allotment.ResourceManager(2, name="a")
    named = allotment.ResourceManager({"gpu": 1}, name="named")
    first = allotment.RateLimiter(100, burst=10, name="first")
    second = allotment.RateLimiter(100, burst=10, name="second")
    for requests in (
        [(a, 1), (a, 1)],  # one manager twice: merged, then split
        [(named, {"gpu": 1})],
        [(a, 1), (first, 1), (second, 1)],  # two limiters: forecast, latest first
        (request for request in [(a, 1)]),  # an iterator
    ):
        with allotment.acquire_all(requests):  # type: ignore[arg-type]
            pass
    assert len(no_plan) == 4
    assert_idle(a)
    with pytest.raises(ValueError, match="amount of request 0"):
        allotment.acquire_all([(a, 0)])
    with pytest.raises(allotment.ExceedsCapacity, match="add up to"):
        allotment.acquire_all([(a, 3)])
    assert_idle(a)


def test_a_full_manager_falls_back_and_keeps_fifo(no_plan: list[object]) -> None:
    """A request that finds a manager full was only asked without queueing: it gives back
    what it took and queues through the general path behind whoever queued before it."""
    first = allotment.ResourceManager(2, name="first", rank=1)
    second = allotment.ResourceManager(1, name="second", rank=2)
    holder = second.acquire(1)
    earlier = enqueue(second, 1, name="queued first")
    later = start(allotment.acquire_all, [(second, 1), (first, 1)], GENEROUS, name="later")
    wait_for_waiters(second, 2)
    assert len(no_plan) == 1  # it fell back
    # The one-pass try gave `first` back before the general path took it again.
    assert first.statistics().in_use == 1
    holder.release()
    lease_of(earlier).release()  # granted before `later`, which queued after it
    group = later.outcome()
    assert isinstance(group, allotment.LeaseGroup)
    group.release()
    assert_idle(first)
    assert_idle(second)


def test_a_queue_on_a_free_manager_is_not_jumped(no_plan: list[object]) -> None:
    """Units free but someone queued (for more than is free): the one pass does not take
    them past the queue."""
    pool = allotment.ResourceManager(3, name="pool")
    holder = pool.acquire(2)
    big = enqueue(pool, 3, name="wants three")
    assert allotment.try_acquire_all([(pool, 1)]) is None
    assert len(no_plan) == 1
    holder.release()
    lease_of(big).release()
    assert_idle(pool)


def test_a_refusing_limiter_holds_and_counts_as_the_general_path() -> None:
    clock = ManualClock()
    pool = allotment.ResourceManager(2, name="pool", clock=clock)
    api = allotment.RateLimiter(10, per=1, burst=1, name="api", clock=clock)
    assert api.try_acquire()
    assert allotment.try_acquire_all([(pool, 1), (api, 1)]) is None
    with pytest.raises(allotment.AcquireTimeout, match=r"'api' cannot allow 1 unit\(s\)"):
        allotment.acquire_all([(pool, 1), (api, 1)], timeout=0)
    with pytest.raises(allotment.AcquireTimeout, match="nothing is held or spent"):
        allotment.acquire_all([(pool, 1), (api, 1)], timeout=0.01)  # due in 0.1 s
    assert_idle(pool)
    stats = api.statistics()
    assert (stats.allowed, stats.refused) == (1, 3)


def test_a_limiter_is_waited_for_holding_the_managers() -> None:
    clock = ManualClock()
    pool = allotment.ResourceManager(2, name="pool", clock=clock)
    api = allotment.RateLimiter(10, per=1, burst=1, name="api", clock=clock)
    assert api.try_acquire()
    waiting = start(allotment.acquire_all, [(pool, 1), (api, 1)], None, name="waits for rate")
    # Managers first, then the limiter (as the general path): the unit is held meanwhile.
    wait_until(lambda: bool(api.statistics().waiters), "the rate is queued")
    assert pool.statistics().in_use == 1
    clock.advance(0.1)
    group = waiting.outcome()
    assert isinstance(group, allotment.LeaseGroup)
    assert group.refund()  # its ticket is kept: a guard can refund exactly
    group.release()
    assert_idle(pool)
    assert api.statistics().allowed_units == 1


def test_a_closed_manager_gives_back_what_was_taken() -> None:
    first = allotment.ResourceManager(1, name="first", rank=1)
    second = allotment.ResourceManager(1, name="second", rank=2)
    second.close()
    with pytest.raises(allotment.ManagerClosed):
        allotment.acquire_all([(second, 1), (first, 1)])
    assert_idle(first)
