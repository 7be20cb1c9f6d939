"""One clock: timeouts measured on an injectable clock, and a grant that beats a deadline."""

from __future__ import annotations

import threading

import pytest

import allotment
from allotment.testing import ManualClock
from support import GENEROUS, assert_idle, start, wait_until


def _sleeping(clock: ManualClock, count: int) -> None:
    wait_until(lambda: clock.sleepers == count, f"{count} thread(s) sleep on the clock")


def test_a_waiter_times_out_when_the_clock_passes_its_deadline_not_before() -> None:
    clock = ManualClock()
    pool = allotment.ResourceManager(1, clock=clock)
    held = pool.acquire(1)
    waiter = start(pool.acquire, 1, 5, name="waiter")
    _sleeping(clock, 1)
    clock.advance(4.999)
    _sleeping(clock, 1)  # woken by nothing: still asleep, still queued
    assert len(pool.statistics().waiters) == 1
    assert waiter.is_alive()
    clock.advance(0.001)
    with pytest.raises(allotment.AcquireTimeout):
        waiter.outcome()
    assert pool.statistics().waiters == ()
    held.release()
    assert_idle(pool)


def test_a_grant_that_arrived_before_the_deadline_is_checked_wins() -> None:
    clock = ManualClock()
    pool = allotment.ResourceManager(1, clock=clock)
    held = pool.acquire(1)
    waiter = start(pool.acquire, 1, 5, name="waiter")
    _sleeping(clock, 1)
    held.release()  # granted by hand-off...
    clock.advance(10)  # ...and the deadline passes before the waiter looks
    lease = waiter.outcome()
    assert isinstance(lease, allotment.Lease)
    lease.release()
    assert_idle(pool)


def test_a_semaphore_measures_its_timeouts_on_its_clock() -> None:
    clock = ManualClock()
    semaphore = allotment.Semaphore(0, clock=clock)
    waiter = start(semaphore.acquire, True, 2.0, name="waiter")
    _sleeping(clock, 1)
    clock.advance(1.5)
    _sleeping(clock, 1)
    clock.advance(0.5)
    assert waiter.outcome() is False
    assert semaphore._value == 0


def test_the_manual_clock_never_goes_back() -> None:
    clock = ManualClock(10.0)
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="forward"):
            clock.advance(bad)
    with pytest.raises(TypeError):
        clock.advance(True)
    assert clock.now() == 10.0
    assert "now=10.0" in repr(clock)


def test_short_timeouts_do_not_livelock() -> None:
    """32 threads loop acquire(timeout=1e-6) on an empty pool; when 4 units come back, storm
    threads take them all (a grant that reached a waiter is kept, not handed on forever)."""
    pool = allotment.ResourceManager(4)
    blocker = pool.acquire(4)
    stop = threading.Event()
    taken: list[allotment.Lease[int]] = []
    lock = threading.Lock()

    def storm() -> None:
        while not stop.is_set():
            try:
                lease = pool.acquire(1, timeout=1e-6)
            except allotment.AcquireTimeout:
                continue
            with lock:
                taken.append(lease)
            stop.wait(GENEROUS)

    threads = [start(storm, name=f"storm-{n}") for n in range(32)]
    blocker.release()
    wait_until(lambda: len(taken) == 4, "the storm takes all four units")
    stop.set()
    for thread in threads:
        thread.outcome()
    for lease in taken:
        lease.release()
    assert_idle(pool)
