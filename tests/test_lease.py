"""Leases: exact, once-only returns; partial releases; cross-thread release; leak detection."""

from __future__ import annotations

import gc
import re
import sys
import warnings

import pytest

import allotment
from support import assert_idle, enqueue, lease_of, pool_of, start


def test_with_block_releases_on_exception() -> None:
    pool = allotment.ResourceManager(2)
    with pytest.raises(RuntimeError, match="boom"), pool.acquire(2):
        raise RuntimeError("boom")
    assert_idle(pool)


def test_release_is_idempotent() -> None:
    pool = allotment.ResourceManager(3)
    lease = pool.acquire(3)
    lease.release()
    lease.release()
    assert lease.released
    assert lease.amounts == 0
    assert_idle(pool)
    # A second release must not give back units another lease now holds.
    other = pool.acquire(3)
    lease.release()
    assert pool.statistics().in_use == 3
    other.release()


def test_partial_release_gives_back_early() -> None:
    node = allotment.ResourceManager({"gpu": 4, "ram_gb": 64})
    with node.acquire({"gpu": 1, "ram_gb": 16}) as lease:
        lease.release({"ram_gb": 8})
        assert lease.amounts == {"gpu": 1, "ram_gb": 8}
        assert node.statistics().in_use == {"gpu": 1, "ram_gb": 8}
        lease.release({"ram_gb": 8})
        assert lease.amounts == {"gpu": 1}
        assert not lease.released
    assert lease.released
    assert lease.amounts == {}
    assert_idle(node)


def test_partial_release_of_everything_finishes_the_lease() -> None:
    pool = allotment.ResourceManager(3)
    lease = pool.acquire(3)
    lease.release(1)
    assert lease.amounts == 2
    lease.release(2)
    assert lease.released
    lease.release()
    assert_idle(pool)


def test_partial_release_hands_units_to_waiters() -> None:
    pool = allotment.ResourceManager(3)
    lease = pool.acquire(3)
    worker = enqueue(pool, 2, name="waiter")
    lease.release(2)
    granted = lease_of(worker)
    granted.release()
    lease.release()
    assert_idle(pool)


@pytest.mark.parametrize(
    ("capacity", "acquired", "released", "message"),
    [
        (3, 2, 3, "cannot release 3: the lease holds 2"),
        ({"a": 2, "b": 2}, {"a": 1}, {"a": 2}, r"cannot release \{'a': 2\}"),
        ({"a": 2, "b": 2}, {"a": 1}, {"b": 1}, r"the lease holds \{'a': 1\}"),
    ],
)
def test_releasing_more_than_held_raises_and_changes_nothing(
    capacity: object, acquired: object, released: object, message: str
) -> None:
    manager = allotment.ResourceManager(capacity)  # type: ignore[call-overload]
    lease = manager.acquire(acquired)
    before = manager.statistics()
    with pytest.raises(allotment.ReleaseExceedsHeld, match=message):
        lease.release(released)
    after = manager.statistics()
    assert (after.in_use, after.available) == (before.in_use, before.available)
    assert lease.amounts == acquired
    lease.release()
    assert_idle(manager)


def test_partial_release_after_full_release_raises() -> None:
    pool = allotment.ResourceManager(2)
    lease = pool.acquire(2)
    lease.release()
    with pytest.raises(allotment.ReleaseExceedsHeld, match="the lease holds 0"):
        lease.release(1)


@pytest.mark.parametrize("bad", [0, -1, True, 1.0, "1", None.__class__])
def test_bad_partial_release_raises_and_changes_nothing(bad: object) -> None:
    pool = allotment.ResourceManager(2)
    lease = pool.acquire(2)
    with pytest.raises((allotment.InvalidAmount, allotment.InvalidAmountType)):
        lease.release(bad)  # type: ignore[arg-type]
    assert lease.amounts == 2
    lease.release()


def test_lease_can_be_released_from_another_thread() -> None:
    pool = allotment.ResourceManager(1)
    lease = pool.acquire(1)
    start(lease.release, name="releaser").outcome()
    assert lease.released
    assert_idle(pool)


def test_concurrent_releases_of_one_lease_return_it_once() -> None:
    pool = allotment.ResourceManager(4)
    for _ in range(50):
        lease = pool.acquire(4)
        workers = [start(lease.release) for _ in range(4)]
        for worker in workers:
            worker.outcome()
        assert_idle(pool)


def test_entering_a_released_lease_raises() -> None:
    pool = allotment.ResourceManager(1)
    lease = pool.acquire(1)
    lease.release()
    with pytest.raises(allotment.LeaseReleased), lease:
        pass


def test_leaked_lease_warns_with_its_site_and_returns_its_units() -> None:
    pool = allotment.ResourceManager(2, name="leaky", capture_sites=True)
    line = sys._getframe().f_lineno + 1
    lease = pool.acquire(2)
    with pytest.warns(allotment.LeakedLeaseWarning) as record:  # noqa: PT031 - the del is what warns
        del lease
        gc.collect()
    (warning,) = record.list
    message = str(warning.message)
    assert "a lease of 2 from 'leaky' was garbage-collected while still held" in message
    assert re.search(rf"acquired at .*test_lease\.py:{line} in test_leaked_lease", message)
    assert "MainThread" in message
    assert_idle(pool)


def test_leaked_lease_in_a_reference_cycle_is_reclaimed() -> None:
    pool = allotment.ResourceManager(1)

    class Holder:
        pass

    holder = Holder()
    holder.lease = pool.acquire(1)  # type: ignore[attr-defined]
    holder.me = holder  # type: ignore[attr-defined]
    with pytest.warns(allotment.LeakedLeaseWarning):  # noqa: PT031 - the del is what warns
        del holder
        gc.collect()
    assert_idle(pool)


def _leak_inside_a_critical_section(
    pool: allotment.ResourceManager[int], leases: list[allotment.Lease[int]]
) -> None:
    """Drop the only references to held leases while this thread holds the manager's lock, as
    the cyclic garbage collector may do at any allocation. Their finalizers must not block on
    the lock (that would deadlock): the units, and the leak warning, wait in the orphans
    deque for the end of the section."""
    with pool_of(pool)._lock:
        leases.clear()
        assert pool_of(pool)._orphans


def test_lease_leaked_inside_a_critical_section_is_returned_after_it() -> None:
    pool = allotment.ResourceManager(2)
    _leak_inside_a_critical_section(pool, [pool.acquire(2)])
    with pytest.warns(allotment.LeakedLeaseWarning, match="garbage-collected while still held"):
        pool.statistics()  # any critical section returns the orphans once it releases the lock
    assert not pool_of(pool)._orphans
    assert_idle(pool)


def test_orphans_are_returned_even_when_the_next_operation_raises() -> None:
    pool = allotment.ResourceManager(3)
    other = pool.acquire(1)
    _leak_inside_a_critical_section(pool, [pool.acquire(2)])
    with (
        pytest.raises(allotment.ReleaseExceedsHeld),
        pytest.warns(allotment.LeakedLeaseWarning, match="garbage-collected while still held"),
    ):
        other.release(2)  # raises inside a critical section, which still returns the orphans
    assert not pool_of(pool)._orphans
    other.release()
    assert_idle(pool)


def test_leaked_lease_hands_units_to_a_waiter() -> None:
    pool = allotment.ResourceManager(1)
    lease = pool.acquire(1)
    worker = enqueue(pool, 1, name="waiter")
    with pytest.warns(allotment.LeakedLeaseWarning):  # noqa: PT031 - the del is what warns
        del lease
        gc.collect()
    granted = lease_of(worker)
    granted.release()
    assert_idle(pool)


def test_released_leases_are_collected_silently() -> None:
    pool = allotment.ResourceManager(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lease = pool.acquire(1)
        lease.release()
        del lease
        gc.collect()
        # A lease whose request timed out or failed was never granted: no warning either.
        with pool.acquire(1), pytest.raises(allotment.AcquireTimeout):
            pool.acquire(1, timeout=0)
        gc.collect()
    assert_idle(pool)


def test_released_leases_die_without_a_trace_in_the_pool() -> None:
    """A lease drops the ticket that watches it (its own weak reference) as it is released,
    so its death leaves nothing on the pool's deferred work; it still reads as released."""
    node = allotment.ResourceManager({"gpu": 2})
    orphans = pool_of(node)._orphans
    with node.acquire({"gpu": 1}) as lease:
        pass
    assert (lease.released, lease.amounts) == (True, {})
    del lease
    lease = node.acquire({"gpu": 2})
    lease.release()
    assert (lease.released, lease.amounts) == (True, {})
    with pytest.raises(allotment.LeaseReleased), lease:
        pass  # pragma: no cover
    del lease
    with node.acquire({"gpu": 2}), pytest.raises(allotment.AcquireTimeout):
        node.acquire({"gpu": 1}, timeout=0)
    assert not orphans
    assert_idle(node)
