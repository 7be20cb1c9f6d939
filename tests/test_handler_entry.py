"""An exception leaving a section's body never leaves the section's lock held.

On CPython 3.10 the jump to an exception handler is a check point of the eval breaker (unless
the handler starts with ``SETUP_FINALLY``): a signal that became pending while the body ran
is handled there, before the handler's first statement. A signal handler that raises then
skips the release, whether the section is a ``with`` block, a ``try``/``finally`` or a
``try``/``except`` that releases. 3.11 and newer check nowhere between a raise and its
handler. Every core section releases as the first statement of a ``finally`` whose body
starts with a ``try`` (see ``_section_lock``); these tests hold that on every interpreter.

The signal is made pending by a C call that then raises in the same call
(``itertools.starmap`` over ``os.kill``: the first signals this process, the second fails),
so nothing checks for signals between the two: the raise leaves the body with SIGUSR1
pending, and the handler of SIGUSR1 raises :class:`Delivered`.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

import allotment
from allotment._core import GRANTED, PENDING, FifoPolicy, MemoryPool, Meter, ScalarForm, Ticket
from allotment._limiters import limiter_parts
from allotment.testing import ManualClock
from signal_support import NEEDS_SIGUSR1, interrupted, signal_and_raise

pytestmark = [NEEDS_SIGUSR1, pytest.mark.usefixtures("sigusr1_raises")]


class Trap:
    """A quantity whose arithmetic and comparisons raise from C with a signal pending."""

    __le__ = __lt__ = __ge__ = __gt__ = signal_and_raise
    __add__ = __radd__ = __sub__ = __rsub__ = __eq__ = signal_and_raise
    __hash__ = None  # type: ignore[assignment]


def _assert_free(lock: Any) -> None:
    assert not lock._is_owned(), "the section's lock was left held"
    taken: list[bool] = []

    def take_and_give_back() -> None:
        taken.append(lock.acquire(timeout=10))
        if taken[0]:
            lock.release()

    other = threading.Thread(target=take_and_give_back)
    other.start()
    other.join()
    assert taken == [True], "another thread cannot take the section's lock"


def _pool(clock: ManualClock, capacity: int = 10) -> MemoryPool:
    return MemoryPool(ScalarForm(), capacity, capacity, FifoPolicy(), clock.now, holders={})


def _memory_pool(manager: allotment.ResourceManager[int]) -> MemoryPool:
    pool = manager._pool
    assert isinstance(pool, MemoryPool)
    return pool


def _granted(pool: MemoryPool, units: int, clock: ManualClock) -> Ticket:
    ticket = Ticket(units, threading.current_thread(), None, clock.now())
    assert pool.enter(ticket, None)
    return ticket


# -- the pool ----------------------------------------------------------------------------------


def test_enter_releases_when_the_comparison_raises() -> None:
    clock = ManualClock()
    pool = _pool(clock)
    ticket = Ticket(Trap(), threading.current_thread(), None, clock.now())  # type: ignore[arg-type]
    interrupted(lambda: pool.enter(ticket, None))  # units <= available raises
    _assert_free(pool._lock)
    assert (ticket.state, pool.available, pool.holding, pool.waiting) == (PENDING, 10, 0, 0)


def test_enter_releases_when_making_the_waiter_raises() -> None:
    clock = ManualClock()
    pool = _pool(clock)
    held = _granted(pool, 10, clock)
    ticket = Ticket(1, threading.current_thread(), None, clock.now())
    interrupted(lambda: pool.enter(ticket, signal_and_raise))  # it queues: waiter() raises
    _assert_free(pool._lock)
    assert (ticket.state, pool.available, pool.waiting) == (PENDING, 0, 0)
    assert list(pool.holders or ()) == [held]


def test_release_releases_when_the_comparison_raises() -> None:
    clock = ManualClock()
    pool = _pool(clock)
    ticket = _granted(pool, 4, clock)
    interrupted(lambda: pool.release(ticket, Trap()))  # type: ignore[arg-type]
    _assert_free(pool._lock)
    assert (ticket.units, ticket.state, pool.available) == (4, GRANTED, 6)
    assert list(pool.holders or ()) == [ticket]


def test_full_release_releases_when_the_sum_raises() -> None:
    clock = ManualClock()
    pool = _pool(clock)
    ticket = Ticket(Trap(), threading.current_thread(), None, clock.now(), GRANTED)  # type: ignore[arg-type]
    assert pool.holders is not None
    pool.holders[ticket] = None  # available + its units raises
    interrupted(lambda: pool.release(ticket, None))
    _assert_free(pool._lock)
    assert (ticket.state, pool.available) == (GRANTED, 10)
    assert list(pool.holders) == [ticket]


def test_leaving_a_with_block_releases_when_the_sum_raises() -> None:
    manager = allotment.ResourceManager(10, clock=ManualClock())
    pool = _memory_pool(manager)
    lease = manager.acquire(4)
    ticket = lease._ticket
    ticket.units = Trap()  # type: ignore[assignment]  # available + its units raises
    interrupted(lambda: lease.__exit__(None, None, None))
    _assert_free(pool._lock)
    assert (ticket.state, pool.available, lease._ticket) == (GRANTED, 6, ticket)
    ticket.units = 4
    lease.release()
    assert (pool.available, pool.holding) == (10, 0)


def test_run_releases_when_the_operation_raises_with_a_signal_pending() -> None:
    pool = _pool(ManualClock())
    interrupted(lambda: pool.run(signal_and_raise))
    _assert_free(pool._lock)
    assert pool.available == 10


def test_resize_releases_when_new_capacity_raises() -> None:
    pool = _pool(ManualClock())
    interrupted(lambda: pool.resize(signal_and_raise))
    _assert_free(pool._lock)
    assert (pool.capacity, pool.available) == (10, 10)


def test_split_releases_when_the_arithmetic_raises() -> None:
    clock = ManualClock()
    pool = _pool(clock)
    ticket = _granted(pool, 4, clock)
    part = Ticket(Trap(), threading.current_thread(), None, clock.now())  # type: ignore[arg-type]
    interrupted(lambda: pool.split(ticket, [part]))
    _assert_free(pool._lock)
    assert (ticket.units, ticket.state, pool.available) == (4, GRANTED, 6)
    assert list(pool.holders or ()) == [ticket]


def test_snapshot_releases_when_the_clock_raises() -> None:
    pool = MemoryPool(ScalarForm(), 10, 10, FifoPolicy(), signal_and_raise, holders={})
    interrupted(pool.snapshot)
    _assert_free(pool._lock)


def test_try_snapshot_releases_when_the_clock_raises() -> None:
    pool = MemoryPool(ScalarForm(), 10, 10, FifoPolicy(), signal_and_raise, holders={})
    interrupted(lambda: pool.try_snapshot(10.0))
    _assert_free(pool._lock)


def test_take_releases_when_the_comparison_raises() -> None:
    pool = _pool(ManualClock())
    receipt: list[object] = []
    interrupted(lambda: pool.take(Trap(), receipt))  # type: ignore[arg-type]
    _assert_free(pool._lock)
    assert (pool.available, receipt) == (10, [])


def test_give_releases_when_the_sum_raises() -> None:
    pool = _pool(ManualClock())
    receipt: list[bool | None] = [None]
    interrupted(lambda: pool.give(Trap(), None, receipt))  # type: ignore[arg-type]
    _assert_free(pool._lock)
    assert (pool.available, receipt) == (10, [None])


def test_restore_releases_when_a_refusal_check_raises() -> None:
    clock = ManualClock()
    pool = _pool(clock)
    queued = Ticket(Trap(), threading.current_thread(), None, clock.now())  # type: ignore[arg-type]
    pool.queue[queued] = None  # its check against the capacity raises
    interrupted(lambda: pool._restore([]))
    _assert_free(pool._lock)
    assert list(pool.queue) == [queued]


def test_draining_deferred_releases_releases_when_one_raises() -> None:
    pool = _pool(ManualClock())
    pool._orphans.append((signal_and_raise, None))
    interrupted(pool._drain_orphans)
    _assert_free(pool._lock)
    assert len(pool._orphans) == 1  # popped only once done


# -- the meter ---------------------------------------------------------------------------------


def _meter() -> Meter:
    limiter = allotment.RateLimiter(10, per=1, clock=ManualClock())
    meter = limiter_parts(limiter).meter
    assert isinstance(meter, Meter)
    return meter


def test_take_now_releases_when_the_clock_raises() -> None:
    meter = _meter()
    meter._now_ns = signal_and_raise
    interrupted(lambda: meter.take_now(1, True))
    _assert_free(meter._lock)
    assert (meter.allowed, meter.refused) == (0, 0)


def test_take_undoable_releases_when_the_clock_raises() -> None:
    meter = _meter()
    meter._now_ns = signal_and_raise
    spent = [0, 0, 0]
    interrupted(lambda: meter.take_undoable(spent, 1, True))
    _assert_free(meter._lock)
    assert (meter.allowed, spent) == (0, [0, 0, 0])


def test_a_meter_section_releases_when_its_operation_raises() -> None:
    meter = _meter()
    interrupted(lambda: meter._section(signal_and_raise))
    _assert_free(meter._lock)


def test_give_back_releases_when_the_comparison_raises() -> None:
    meter = _meter()
    spent = [1, 0, Trap()]  # gcra.tat == after: int == Trap falls back to Trap.__eq__
    interrupted(lambda: meter.give_back(spent))  # type: ignore[arg-type]
    _assert_free(meter._lock)
    assert meter.allowed == 0


def test_meter_snapshot_releases_when_the_clock_raises() -> None:
    meter = _meter()
    meter._now = signal_and_raise
    interrupted(meter.snapshot)
    _assert_free(meter._lock)
