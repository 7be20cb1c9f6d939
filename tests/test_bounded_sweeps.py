"""Bounded fairness under the check-point sweep of ``test_envelope.py``: the steps it adds (a
nominated waiter's claim, an arrival that overtakes a young queue) lose no unit and no
wake-up, wherever an exception lands.

The release side (a release that nominates, or hands off past the bound) is swept with the
other releases in ``test_fault_points.py``.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any

import pytest

import allotment
from allotment._core import FINISHED, GRANTED, MemoryPool, Ticket
from allotment._waiters import await_grant, new_thread_waiter
from allotment.testing import ManualClock
from support import GENEROUS, assert_idle, frozen_gc, pool_of
from test_envelope import Injected, Outcome, forget_frames, on_another_thread, sweep


@dataclass(eq=False)
class Nominated:
    """A bounded manager whose young queued ticket has just been woken to claim the unit."""

    manager: allotment.ResourceManager[int]
    clock: ManualClock
    ticket: Ticket
    pool: MemoryPool


def _nominated() -> Nominated:
    clock = ManualClock()
    manager = allotment.ResourceManager(1, name="nominated", fairness="bounded", clock=clock)
    lease = manager.acquire(1)
    pool = pool_of(manager)
    ticket = Ticket(1, threading.current_thread(), None, clock.now())
    assert not pool.enter(ticket, new_thread_waiter)
    lease.release()  # nominates the ticket: the unit stays free, its waiter is woken
    assert ticket.state is not GRANTED
    assert pool.available == 1
    return Nominated(manager, clock, ticket, pool)


def _claim_as_take_does(env: Nominated) -> bool:
    """The waiter's side of ``ResourceManager.acquire``: await the grant (here: claim it),
    and hand the ticket back on any exception."""
    pool = env.pool
    try:
        return await_grant(pool, env.ticket, env.clock, None)
    except BaseException:
        pool.release(env.ticket, None)
        raise


def _check_claim(env: Nominated, outcome: Outcome) -> None:
    what = outcome.describe()
    error, result = outcome.error, outcome.result
    outcome.error = outcome.result = None
    forget_frames(error)
    pool = pool_of(env.manager)
    assert error is None or isinstance(error, Injected), f"at {what}: {error!r}"
    if error is None:
        assert result is True, f"at {what}: {result!r}"
        assert env.ticket.state is GRANTED
        on_another_thread(lambda: pool.release(env.ticket, None), f"releasing after {what}")
    else:
        assert env.ticket.state is FINISHED, f"at {what}: the ticket is {env.ticket.state}"
    del error
    on_another_thread(lambda: assert_idle(env.manager), f"statistics after {what}")


@pytest.mark.timeout(4 * GENEROUS)
def test_an_interrupted_claim_keeps_or_gives_back_the_unit_and_nothing_else() -> None:
    with frozen_gc():
        swept = sweep(_nominated, _claim_as_take_does, _check_claim)
    assert any("_pool.py" in point for point in swept.points)
    assert any("_waiters.py" in point for point in swept.points)


class _Recording:
    """A waiter that never sleeps (its requester is this test): it records wake-ups."""

    def __init__(self) -> None:
        self.woken = False

    def wake(self) -> None:
        self.woken = True

    def rearm(self) -> None:
        self.woken = False


@dataclass(eq=False)
class Overtaken:
    """A bounded semaphore with a free permit and a young ticket queued for it, nominated
    but not yet claiming (its requester is the test, which claims once the arrival is
    done): an arrival may take the permit first, deterministically."""

    semaphore: allotment.Semaphore
    pool: MemoryPool
    ticket: Ticket
    waiter: _Recording


def _young_queue() -> Overtaken:
    clock = ManualClock()
    semaphore = allotment.Semaphore(1, fairness="bounded", clock=clock)
    assert semaphore.acquire(blocking=False)
    pool = semaphore._pool
    assert isinstance(pool, MemoryPool)
    ticket = Ticket(1, threading.current_thread(), None, clock.now())
    waiter = _Recording()
    assert not pool.enter(ticket, lambda: waiter)
    semaphore.release()  # nominates the ticket
    assert waiter.woken
    return Overtaken(semaphore, pool, ticket, waiter)


def _check_overtaken(env: Overtaken, outcome: Outcome) -> None:
    what = outcome.describe()
    error, result = outcome.error, outcome.result
    outcome.error = outcome.result = None
    forget_frames(error)
    semaphore, pool = env.semaphore, env.pool
    assert error is None or isinstance(error, Injected), f"at {what}: {error!r}"
    del error
    if result is True:
        env.waiter.woken = False
        semaphore.release()  # the arrival took it: give it back, which nominates again
        assert env.waiter.woken, f"at {what}: the queued ticket was not woken again"
    # The queued ticket, woken, claims the permit: it must be there for it.
    assert pool.claim(env.ticket, None) is True, f"at {what}: the permit is gone"
    semaphore.release()
    assert semaphore._value == 1, f"at {what}: the value is {semaphore._value}"
    assert pool.waiting == 0


@pytest.mark.timeout(4 * GENEROUS)
def test_an_interrupted_arrival_that_overtakes_loses_no_permit() -> None:
    def arrive(env: Overtaken) -> Any:
        return env.semaphore.acquire(blocking=False)

    with frozen_gc():
        swept = sweep(_young_queue, arrive, _check_overtaken)
    assert any("may_barge" in point for point in swept.points)


def test_the_claim_sweep_sees_the_claim() -> None:
    """The setup really leaves a nominated ticket that a claim grants (else the sweep above
    would test nothing new)."""
    env = _nominated()
    assert functools.partial(_claim_as_take_does, env)() is True
    assert env.ticket.state is GRANTED
    pool_of(env.manager).release(env.ticket, None)
    assert_idle(env.manager)
