"""ResourceManager: granting, waiting, fairness, timeouts, resize, close, statistics."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import pytest

import allotment
from allotment._waiters import ThreadWaiter
from support import (
    GENEROUS,
    assert_idle,
    check_invariants,
    enqueue,
    lease_of,
    start,
    wait_for_waiters,
)


def test_acquire_returns_a_lease_of_what_was_asked() -> None:
    pool = allotment.ResourceManager(5)
    lease = pool.acquire(2)
    assert lease.amounts == 2
    assert not lease.released
    assert lease.manager is pool
    assert pool.statistics().available == 3
    lease.release()
    assert_idle(pool)


def test_named_resources_are_granted_together() -> None:
    node = allotment.ResourceManager({"gpu": 4, "ram_gb": 64})
    with node.acquire({"gpu": 1, "ram_gb": 16}, timeout=5) as lease:
        assert lease.amounts == {"gpu": 1, "ram_gb": 16}
        stats = node.statistics()
        assert stats.capacity == {"gpu": 4, "ram_gb": 64}
        assert stats.in_use == {"gpu": 1, "ram_gb": 16}
        assert stats.available == {"gpu": 3, "ram_gb": 48}
    assert_idle(node)


def test_a_request_may_name_only_some_resources() -> None:
    node = allotment.ResourceManager({"gpu": 1, "ram_gb": 8})
    with node.acquire({"ram_gb": 8}) as lease:
        assert lease.amounts == {"ram_gb": 8}
        gpu = node.try_acquire({"gpu": 1})
        assert gpu is not None
        assert gpu.amounts == {"gpu": 1}
        gpu.release()
    assert_idle(node)


def test_try_acquire_returns_none_when_it_would_wait() -> None:
    pool = allotment.ResourceManager(3)
    held = pool.acquire(2)
    assert pool.try_acquire(2) is None
    lease = pool.try_acquire(1)
    assert lease is not None
    assert lease.amounts == 1
    lease.release()
    held.release()
    assert_idle(pool)


def test_timeout_zero_never_waits() -> None:
    pool = allotment.ResourceManager(1)
    with pool.acquire(1), pytest.raises(allotment.AcquireTimeout):
        pool.acquire(1, timeout=0)
    assert_idle(pool)


def test_timeout_raises_acquire_timeout_and_leaves_no_trace() -> None:
    pool = allotment.ResourceManager(2)
    held = pool.acquire(2)
    started = time.monotonic()
    with pytest.raises(allotment.AcquireTimeout, match=r"did not grant 1 within 0\.05 s") as info:
        pool.acquire(1, timeout=0.05)
    assert time.monotonic() - started >= 0.05
    assert isinstance(info.value, TimeoutError)
    stats = pool.statistics()
    assert stats.waiters == ()
    assert stats.in_use == 2
    held.release()
    assert_idle(pool)


def test_release_hands_units_to_the_waiter() -> None:
    pool = allotment.ResourceManager(1)
    held = pool.acquire(1)
    worker = enqueue(pool, 1, name="waiter")
    held.release()
    lease = lease_of(worker)
    # Handed off under the lock: the waiter holds the unit the moment the release returns.
    assert pool.statistics().holders[0].thread_name == "waiter"
    lease.release()
    assert_idle(pool)


def test_waiters_are_served_in_arrival_order() -> None:
    pool = allotment.ResourceManager(1)
    held = pool.acquire(1)
    order: list[int] = []
    order_lock = threading.Lock()
    proceed = threading.Event()

    def waiter(number: int) -> None:
        with pool.acquire(1, timeout=GENEROUS):
            with order_lock:
                order.append(number)
            proceed.wait(GENEROUS)

    workers = []
    for number in range(8):
        workers.append(start(waiter, number, name=f"waiter-{number}"))
        wait_for_waiters(pool, number + 1)  # each queues before the next starts
    proceed.set()
    held.release()
    for worker in workers:
        worker.outcome()
    assert order == list(range(8))
    assert_idle(pool)


def test_a_large_request_at_the_head_is_not_overtaken() -> None:
    pool = allotment.ResourceManager(4)
    held = pool.acquire(3)
    big = enqueue(pool, 4, name="big")
    # One unit is free, but the head of the queue wants four: nobody may slip past it.
    assert pool.try_acquire(1) is None
    small = enqueue(pool, 1, name="small")
    assert [w.thread_name for w in pool.statistics().waiters] == ["big", "small"]
    check_invariants(pool.statistics())
    held.release()
    big_lease = lease_of(big)
    assert [w.thread_name for w in pool.statistics().waiters] == ["small"]
    big_lease.release()
    small_lease = lease_of(small)
    small_lease.release()
    assert_idle(pool)


def test_one_release_can_grant_several_waiters() -> None:
    pool = allotment.ResourceManager(4)
    held = pool.acquire(4)
    workers = []
    for number in range(4):
        workers.append(start(lambda: pool.acquire(1, timeout=GENEROUS), name=f"w{number}"))
        wait_for_waiters(pool, number + 1)
    held.release()
    leases = [worker.outcome() for worker in workers]
    assert pool.statistics().in_use == 4
    for lease in leases:
        assert isinstance(lease, allotment.Lease)
        lease.release()
    assert_idle(pool)


def test_a_release_wakes_only_the_waiters_it_grants(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = allotment.ResourceManager(3)
    held = pool.acquire(3)
    workers = []
    for number in range(10):
        workers.append(start(pool.acquire, 1, GENEROUS, name=f"w{number}"))
        wait_for_waiters(pool, number + 1)
    woken: list[ThreadWaiter] = []
    original = ThreadWaiter.wake

    def counting_wake(waiter: ThreadWaiter) -> None:
        woken.append(waiter)
        original(waiter)

    monkeypatch.setattr(ThreadWaiter, "wake", counting_wake)

    def holders() -> list[str]:
        return sorted(holder.thread_name for holder in pool.statistics().holders)

    held.release(2)
    assert len(woken) == 2  # no herd: the other eight sleep on
    assert holders() == ["MainThread", "w0", "w1"]
    held.release()
    assert len(woken) == 3
    assert "w2" in holders()
    monkeypatch.undo()
    pool.close()  # refuses the seven still waiting
    granted = 0
    for worker in workers:
        try:
            lease = worker.outcome()
        except allotment.ManagerClosed:
            continue
        assert isinstance(lease, allotment.Lease)
        lease.release()
        granted += 1
    assert granted == 3


def test_a_waiter_holds_nothing_while_it_waits() -> None:
    node = allotment.ResourceManager({"gpu": 2, "ram_gb": 10})
    held = node.acquire({"gpu": 2})
    worker = enqueue(node, {"gpu": 1, "ram_gb": 5}, name="w")
    # RAM is free, but the waiter has not taken any of it while it waits for a GPU.
    assert node.statistics().in_use == {"gpu": 2, "ram_gb": 0}
    ram = node.try_acquire({"ram_gb": 10})
    assert ram is None  # would overtake the queued request
    held.release()
    lease = lease_of(worker)
    assert lease.amounts == {"gpu": 1, "ram_gb": 5}
    lease.release()
    assert_idle(node)


def test_timed_out_head_lets_the_next_waiter_through() -> None:
    pool = allotment.ResourceManager(2)
    held = pool.acquire(1)
    big = enqueue(pool, 2, name="big", timeout=1.0)
    small = enqueue(pool, 1, name="small")
    with pytest.raises(allotment.AcquireTimeout):
        big.outcome()
    # When the head gave up, the unit it was blocking went to the next in line.
    lease = lease_of(small)
    lease.release()
    held.release()
    assert_idle(pool)


def test_close_refuses_waiters_and_later_requests() -> None:
    pool = allotment.ResourceManager(1)
    held = pool.acquire(1)
    worker = enqueue(pool, 1, name="waiter", timeout=None)
    pool.close()
    with pytest.raises(allotment.ManagerClosed):
        worker.outcome()
    with pytest.raises(allotment.ManagerClosed):
        pool.acquire(1)
    with pytest.raises(allotment.ManagerClosed):
        pool.try_acquire(1)
    with pytest.raises(allotment.ManagerClosed):
        pool.resize(3)
    assert pool.closed
    # Leases granted before the close stay valid.
    assert pool.statistics().in_use == 1
    held.release()
    pool.close()  # idempotent
    stats = pool.statistics()
    assert stats.closed
    assert stats.in_use == 0
    assert "closed" in str(stats)
    assert "closed" in repr(pool)


def test_manager_as_context_manager_closes() -> None:
    with allotment.ResourceManager(2) as pool:
        pool.acquire(1).release()
    assert pool.closed


def test_growing_grants_waiters() -> None:
    pool = allotment.ResourceManager(1)
    held = pool.acquire(1)
    worker = start(lambda: pool.acquire(2, timeout=GENEROUS), name="waiter")
    with pytest.raises(allotment.ExceedsCapacity):
        worker.outcome()  # 2 > capacity 1: refused at once
    worker = enqueue(pool, 1, name="waiter")
    pool.resize(2)
    lease = lease_of(worker)
    assert pool.statistics().capacity == 2
    lease.release()
    held.release()
    assert_idle(pool)


def test_shrinking_under_load_takes_effect_as_leases_return() -> None:
    pool = allotment.ResourceManager(4)
    first = pool.acquire(2)
    second = pool.acquire(2)
    pool.resize(1)
    stats = pool.statistics()
    assert (stats.capacity, stats.in_use, stats.available) == (1, 4, 0)
    check_invariants(stats)
    worker = enqueue(pool, 1, name="waiter")
    first.release()
    # The returned units pay the debt first: the waiter still waits.
    assert len(pool.statistics().waiters) == 1
    assert pool.statistics().in_use == 2
    second.release()
    lease = lease_of(worker)
    assert pool.statistics().in_use == 1
    lease.release()
    assert_idle(pool)


def test_shrink_refuses_queued_requests_that_can_no_longer_fit() -> None:
    pool = allotment.ResourceManager(4)
    held = pool.acquire(4)
    big = enqueue(pool, 3, name="big")
    small = enqueue(pool, 1, name="small")
    pool.resize(2)
    with pytest.raises(allotment.ExceedsCapacity, match="can never be granted"):
        big.outcome()
    assert [w.thread_name for w in pool.statistics().waiters] == ["small"]
    held.release()
    lease = lease_of(small)
    lease.release()
    assert_idle(pool)


def test_resizing_one_named_resource_keeps_the_others() -> None:
    node = allotment.ResourceManager({"gpu": 4, "ram_gb": 64})
    node.resize({"gpu": 2})
    assert node.statistics().capacity == {"gpu": 2, "ram_gb": 64}
    node.resize({"ram_gb": 0})
    assert node.statistics().capacity == {"gpu": 2, "ram_gb": 0}
    with pytest.raises(allotment.ExceedsCapacity):
        node.acquire({"ram_gb": 1})
    node.acquire({"gpu": 2}).release()


def test_debt_on_one_resource_does_not_block_another() -> None:
    node = allotment.ResourceManager({"gpu": 2, "ram_gb": 8})
    held = node.acquire({"gpu": 2})
    node.resize({"gpu": 1})
    lease = node.try_acquire({"ram_gb": 8})
    assert lease is not None
    lease.release()
    held.release()
    assert_idle(node)


def test_statistics_answer_why_am_i_blocked() -> None:
    node = allotment.ResourceManager({"gpu": 2, "ram_gb": 8}, name="node", capture_sites=True)
    held = node.acquire({"gpu": 2})  # the line statistics must name
    worker = enqueue(node, {"gpu": 1}, name="blocked-thread")
    stats = node.statistics()
    check_invariants(stats)
    assert stats.name == "node"
    (holder,) = stats.holders
    assert holder.amounts == {"gpu": 2}
    assert holder.thread_name == threading.current_thread().name
    assert holder.thread_id == threading.get_ident()
    assert holder.age >= 0
    assert holder.site is not None
    assert holder.site.endswith("in test_statistics_answer_why_am_i_blocked")
    assert "test_manager.py:" in holder.site
    (waiter,) = stats.waiters
    assert waiter.requested == {"gpu": 1}
    assert waiter.thread_name == "blocked-thread"
    assert waiter.waited >= 0
    report = str(stats)
    assert "node: capacity {'gpu': 2, 'ram_gb': 8}" in report
    assert "blocked-thread" in report
    assert "1 waiter(s)" in report
    with pytest.raises(AttributeError):
        stats.name = "other"  # type: ignore[misc]
    held.release()
    lease = lease_of(worker)
    lease.release()


def test_statistics_line_numbers_are_exact() -> None:
    pool = allotment.ResourceManager(3, capture_sites=True)
    line = _line() + 1
    lease = pool.acquire(1)
    site = pool.statistics().holders[0].site
    assert site is not None
    assert f"test_manager.py:{line} " in site
    lease.release()


def _line() -> int:
    import sys

    return sys._getframe(1).f_lineno


def test_sites_can_be_turned_off() -> None:
    pool = allotment.ResourceManager(1, capture_sites=False)
    with pool.acquire(1):
        assert pool.statistics().holders[0].site is None


def test_names_and_repr() -> None:
    pool = allotment.ResourceManager(3, name="db")
    assert pool.name == "db"
    with pool.acquire(1) as lease:
        assert repr(pool) == "<allotment.ResourceManager 'db': capacity=3 in_use=1 waiting=0>"
        assert repr(lease) == "<allotment.Lease holding 1 from 'db'>"
    assert repr(lease) == "<allotment.Lease released from 'db'>"
    other = allotment.ResourceManager(1)
    assert other.name.startswith("ResourceManager-")


def test_zero_capacity_is_allowed_and_grows() -> None:
    pool = allotment.ResourceManager(0)
    with pytest.raises(allotment.ExceedsCapacity):
        pool.acquire(1)
    pool.resize(1)
    pool.acquire(1).release()


def test_amount_forms_are_typed_per_manager() -> None:
    pool: allotment.ResourceManager[int] = allotment.ResourceManager(2)
    node: allotment.ResourceManager[Mapping[str, int]] = allotment.ResourceManager({"a": 1})
    with pool.acquire(1, timeout=1) as lease:
        assert lease.amounts + 1 == 2
    with node.acquire({"a": 1}) as named:
        assert named.amounts["a"] == 1


def test_infinite_timeout_means_wait_forever() -> None:
    pool = allotment.ResourceManager(1)
    held = pool.acquire(1)
    worker = enqueue(pool, 1, name="waiter", timeout=float("inf"))
    held.release()
    lease = lease_of(worker)
    lease.release()


def test_timeout_overrunning_lock_limit_still_works() -> None:
    # threading.Lock rejects timeouts above TIMEOUT_MAX; a longer one must still wait.
    pool = allotment.ResourceManager(1)
    held = pool.acquire(1)
    worker = enqueue(pool, 1, name="waiter", timeout=threading.TIMEOUT_MAX * 10)
    held.release()
    lease = lease_of(worker)
    lease.release()
