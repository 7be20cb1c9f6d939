"""A wait interrupted by any exception leaves the manager exactly as if it had never waited."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

import pytest

import allotment
from allotment._limiters import limiter_parts
from support import (
    GENEROUS,
    assert_idle,
    check_invariants,
    enqueue,
    inject,
    lease_of,
    start,
    wait_for_waiters,
    wait_until,
)


class Injected(Exception):
    """Raised into a waiting thread from outside."""


def test_exception_delivered_with_the_grant_hands_the_units_on() -> None:
    pool = allotment.ResourceManager(1)
    held = pool.acquire(1)
    victim = enqueue(pool, 1, name="victim", timeout=None)
    behind = enqueue(pool, 1, name="behind")
    # The exception waits until the victim runs bytecode again, which is after the release
    # below has handed it the unit: it is interrupted *after* being granted.
    inject(victim, Injected)
    held.release()
    with pytest.raises(Injected):
        victim.outcome()
    lease = lease_of(behind)
    assert [h.thread_name for h in pool.statistics().holders] == ["behind"]
    lease.release()
    assert_idle(pool)


def test_exception_while_waiting_leaves_the_queue() -> None:
    pool = allotment.ResourceManager(1)
    held = pool.acquire(1)
    # The exception arrives when the wait's time-out returns control to the interpreter.
    victim = enqueue(pool, 1, name="victim", timeout=1.0)
    inject(victim, Injected)
    with pytest.raises(Injected):
        victim.outcome()
    stats = pool.statistics()
    check_invariants(stats)
    assert stats.waiters == ()
    assert stats.in_use == 1
    held.release()
    assert_idle(pool)


def test_interrupted_head_lets_the_others_through() -> None:
    node = allotment.ResourceManager({"gpu": 2})
    held = node.acquire({"gpu": 1})
    head = enqueue(node, {"gpu": 2}, name="head", timeout=1.0)
    behind = enqueue(node, {"gpu": 1}, name="behind")
    inject(head, Injected)
    with pytest.raises(Injected):
        head.outcome()
    # The head blocked the free GPU; once it left, the next request got it.
    lease = lease_of(behind)
    lease.release()
    held.release()
    assert_idle(node)


def test_exception_in_a_refused_waiter_wins_and_changes_nothing() -> None:
    pool = allotment.ResourceManager(1)
    held = pool.acquire(1)
    victim = enqueue(pool, 1, name="victim", timeout=None)
    inject(victim, Injected)
    pool.close()
    with pytest.raises(Injected):
        victim.outcome()
    held.release()
    assert pool.statistics().in_use == 0


def test_semaphore_waiter_interrupted_after_grant_passes_the_permit_on() -> None:
    semaphore = allotment.Semaphore(0)
    victim = start(semaphore.acquire, name="victim")
    waiters = semaphore._pool.snapshot
    from support import wait_until

    wait_until(lambda: len(waiters().waiters) == 1, "the victim waits")
    behind = start(lambda: semaphore.acquire(timeout=GENEROUS), name="behind")
    wait_until(lambda: len(waiters().waiters) == 2, "both wait")
    inject(victim, Injected)
    semaphore.release()
    with pytest.raises(Injected):
        victim.outcome()
    assert behind.outcome() is True
    assert semaphore._value == 0


@pytest.mark.skipif(sys.platform == "win32", reason="needs pthread_kill")
def test_keyboard_interrupt_in_the_main_thread_leaves_no_trace() -> None:
    assert threading.current_thread() is threading.main_thread()
    pool = allotment.ResourceManager(1)
    held = pool.acquire(1)

    def interrupt_main() -> None:
        wait_for_waiters(pool, 1)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    # Python leaves SIGINT alone when it starts ignored, as it does in a shell's background
    # job (`cmd &`, nohup): the signal would then never arrive.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        interrupter = start(interrupt_main, name="interrupter")
        with pytest.raises(KeyboardInterrupt):
            pool.acquire(1)  # blocks with no timeout until the signal arrives
        interrupter.outcome()
    finally:
        signal.signal(signal.SIGINT, previous)
    stats = pool.statistics()
    assert stats.waiters == ()
    assert stats.in_use == 1
    held.release()
    assert_idle(pool)


def _blocked_in(thread: threading.Thread, function: str) -> bool:
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name == function and "_meter" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


@pytest.mark.skipif(sys.platform == "win32", reason="needs pthread_kill")
@pytest.mark.parametrize("call", ["try_acquire", "acquire", "acquire_all"])
def test_keyboard_interrupt_while_waiting_for_a_limiters_lock_reaches_the_caller(
    call: str,
) -> None:
    """The uncontended paths take the meter's lock by explicit calls: an exception raised
    while the thread waits for it (never taken) is the caller's, not a failed release's."""
    assert threading.current_thread() is threading.main_thread()
    limiter = allotment.RateLimiter(10, per=1, burst=3)
    lock = limiter_parts(limiter).meter._lock  # type: ignore[attr-defined]
    calls: dict[str, Callable[[], object]] = {
        "try_acquire": limiter.try_acquire,
        "acquire": limiter.acquire,
        "acquire_all": lambda: allotment.acquire_all([(limiter, 1)]),
    }
    taken, done = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with lock:
            taken.set()
            # The interrupted call must not wait for the lock again (a group's refund of a
            # rate it never spent): it returns while this thread still holds it.
            assert done.wait(GENEROUS), "the interrupted call waited for the lock again"

    def interrupt_main() -> None:
        main = threading.main_thread()
        function = "take_undoable" if call == "acquire_all" else "take_now"
        wait_until(lambda: _blocked_in(main, function), f"the main thread in {function}")
        signal.pthread_kill(main.ident or 0, signal.SIGINT)

    holder = start(hold_the_lock, name="holds the meter's lock")
    assert taken.wait(GENEROUS)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        interrupter = start(interrupt_main, name="interrupter")
        with pytest.raises(KeyboardInterrupt):
            calls[call]()  # blocks on the lock until the signal arrives
        interrupter.outcome()
    finally:
        signal.signal(signal.SIGINT, previous)
        done.set()
    holder.outcome()
    assert limiter.statistics().allowed == 0
    assert limiter.try_acquire()  # the lock is free, nothing was spent
    assert limiter.statistics().allowed == 1
