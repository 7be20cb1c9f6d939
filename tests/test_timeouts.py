"""Timeouts: a grant that reached a waiter wins over its expired deadline; deadlines measured
on the manager's clock (exactly, with a ManualClock); O(1) timeout messages."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

import allotment
from allotment.testing import ManualClock
from support import (
    GENEROUS,
    Worker,
    assert_idle,
    check_invariants,
    lease_of,
    start,
    switch_interval,
    wait_for_waiters,
    wait_until,
)

STORM = 32
UNITS = 4

# -- the short-timeout storm --------------------------------------------------------------------


def _storm(
    attempt: Callable[[], Callable[[], None] | None], release_units: Callable[[], None]
) -> tuple[list[str], Callable[[], None]]:
    """Run STORM threads that loop ``attempt()`` (a tiny timeout on an empty pool) until one
    takes a unit (``attempt`` then returns how to give it back, else ``None``); the taker holds
    it until the returned ``finish`` is called. Once every thread has timed out at least once,
    call ``release_units()``; return who took a unit once UNITS threads have, and ``finish``.
    """
    stop = threading.Event()
    let_go = threading.Event()
    misses = [0] * STORM
    taken: list[str] = []

    def storm(index: int) -> None:
        while not stop.is_set():
            give_back = attempt()
            if give_back is None:
                misses[index] += 1
                continue
            taken.append(threading.current_thread().name)
            let_go.wait(GENEROUS)
            give_back()
            return

    workers: list[Worker] = [start(storm, index, name=f"storm-{index}") for index in range(STORM)]

    def finish() -> None:
        stop.set()
        let_go.set()
        for worker in workers:
            worker.outcome()

    try:
        wait_until(lambda: all(misses), "every storm thread has timed out once")
        release_units()
        # Each unit reached a waiter (or an arrival) whose deadline was all but gone: a grant
        # that lost to its deadline would go back and forth for ever, and never be taken.
        wait_until(lambda: len(taken) >= UNITS, f"storm threads took all {UNITS} units")
    except BaseException:
        finish()
        raise
    return taken, finish


@pytest.mark.timeout(60)
def test_short_timeout_storm_takes_every_released_unit() -> None:
    pool = allotment.ResourceManager(UNITS, name="storm")
    held = pool.acquire(UNITS)

    def attempt() -> Callable[[], None] | None:
        try:
            return pool.acquire(1, timeout=1e-6).release
        except allotment.AcquireTimeout:
            return None

    taken, finish = _storm(attempt, held.release)
    try:
        stats = pool.statistics()
        check_invariants(stats)
        assert len(taken) == UNITS
        assert len(set(taken)) == UNITS
        assert sorted(holder.thread_name for holder in stats.holders) == sorted(taken)
        assert stats.available == 0
    finally:
        finish()
    assert_idle(pool)


@pytest.mark.timeout(60)
def test_short_timeout_storm_on_a_semaphore_takes_every_released_permit() -> None:
    semaphore = allotment.Semaphore(0)

    def attempt() -> Callable[[], None] | None:
        return semaphore.release if semaphore.acquire(timeout=1e-6) else None

    taken, finish = _storm(attempt, lambda: semaphore.release(UNITS))
    try:
        assert len(taken) == UNITS
        assert len(set(taken)) == UNITS
        assert semaphore._value == 0
    finally:
        finish()
    assert semaphore._value == UNITS


# -- ManualClock: deadlines measured on the manager's clock, exactly -----------------------------


def _asleep(clock: ManualClock, count: int = 1) -> None:
    wait_until(lambda: clock.sleepers == count, f"{count} thread(s) sleep on the clock")


@pytest.mark.timeout(30)
def test_waiter_times_out_exactly_when_the_clock_reaches_its_deadline() -> None:
    clock = ManualClock()
    pool = allotment.ResourceManager(1, name="manual", clock=clock)
    held = pool.acquire(1)
    waiter = start(pool.acquire, 1, 5, name="waiter")
    _asleep(clock)
    wait_for_waiters(pool, 1)
    clock.advance(4.999)
    _asleep(clock)  # asleep again, had the advance woken it to look
    assert not waiter.finished.is_set()
    assert [w.thread_name for w in pool.statistics().waiters] == ["waiter"]
    clock.advance(0.001)
    with pytest.raises(allotment.AcquireTimeout):
        waiter.outcome()
    stats = pool.statistics()
    check_invariants(stats)
    assert stats.waiters == ()
    assert stats.in_use == 1
    held.release()
    assert_idle(pool)


@pytest.mark.timeout(30)
def test_real_time_does_not_count_on_a_manual_clock() -> None:
    clock = ManualClock()
    pool = allotment.ResourceManager(1, name="manual-real", clock=clock)
    held = pool.acquire(1)
    waiter = start(pool.acquire, 1, 0.01, name="waiter")
    _asleep(clock)
    waiter.join(0.2)  # twenty times its timeout, in real time
    assert waiter.is_alive()
    assert len(pool.statistics().waiters) == 1
    clock.advance(0.01)
    with pytest.raises(allotment.AcquireTimeout):
        waiter.outcome()
    held.release()
    assert_idle(pool)


@pytest.mark.timeout(30)
def test_grant_arriving_as_the_deadline_passes_wins() -> None:
    clock = ManualClock()
    pool = allotment.ResourceManager(1, name="manual-race", clock=clock)
    held = pool.acquire(1)
    waiter = start(pool.acquire, 1, 5, name="waiter")
    _asleep(clock)
    wait_for_waiters(pool, 1)
    # A long switch interval keeps this thread running, so the waiter wakes only after both:
    # it finds its deadline passed and its grant arrived.
    with switch_interval(1.0):
        held.release()
        clock.advance(10)
    lease = lease_of(waiter)
    assert lease.amounts == 1
    stats = pool.statistics()
    check_invariants(stats)
    assert [h.thread_name for h in stats.holders] == ["waiter"]
    assert stats.waiters == ()
    lease.release()
    assert_idle(pool)


@pytest.mark.timeout(30)
def test_semaphore_times_out_only_when_the_clock_reaches_its_deadline() -> None:
    clock = ManualClock()
    semaphore = allotment.Semaphore(0, clock=clock)
    waiter = start(lambda: semaphore.acquire(timeout=2), name="waiter")
    _asleep(clock)
    clock.advance(1.999)
    _asleep(clock)
    assert not waiter.finished.is_set()
    clock.advance(0.001)
    assert waiter.outcome() is False
    assert semaphore._value == 0
    semaphore.release()
    assert semaphore._value == 1  # nobody is left waiting to take it


@pytest.mark.parametrize("seconds", [-1, -1e-9, float("nan")])
def test_manual_clock_refuses_to_go_back_or_to_nan(seconds: float) -> None:
    clock = ManualClock(3.0)
    with pytest.raises(ValueError):  # noqa: PT011 - the type is the contract
        clock.advance(seconds)
    assert clock.now() == 3.0


def test_manual_clock_moves_only_when_advanced() -> None:
    clock = ManualClock()
    assert clock.now() == 0.0
    clock.advance(2.5)
    clock.advance(0)
    assert clock.now() == 2.5
    assert clock.sleepers == 0


# -- the timeout message ---------------------------------------------------------------------------


def _timeout_message(holders: int, *, wait: bool) -> str:
    """The AcquireTimeout message of a manager with ``holders`` leases, each taken by a thread
    named ``holder-thread`` at a recorded site; raised at once, or after a wait."""
    clock = ManualClock()
    pool = allotment.ResourceManager(holders, name="crowded", capture_sites=True, clock=clock)
    leases = start(
        lambda: [pool.acquire(1) for _ in range(holders)], name="holder-thread"
    ).outcome()
    assert isinstance(leases, list)
    try:
        if wait:
            waiter = start(pool.acquire, 1, 1.0, name="waiter")
            _asleep(clock)
            clock.advance(1.0)
            with pytest.raises(allotment.AcquireTimeout) as caught:
                waiter.outcome()
        else:
            with pytest.raises(allotment.AcquireTimeout) as caught:
                pool.acquire(1, timeout=0)
    finally:
        for lease in leases:
            lease.release()
    assert_idle(pool)
    return str(caught.value)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("wait", [False, True], ids=["at once", "after waiting"])
def test_timeout_message_has_no_per_holder_detail(wait: bool) -> None:
    few = _timeout_message(1, wait=wait)
    many = _timeout_message(1000, wait=wait)
    assert "crowded" in many
    for detail in ("holder-thread", "test_timeouts.py", "<lambda>"):
        assert detail not in many, f"per-holder detail {detail!r} in {many!r}"
    # Only the counts may grow: a few digits, not a line per holder.
    assert len(many) - len(few) <= 16, (few, many)
    assert len(many) < 1000
