"""Bounded fairness (``fairness="bounded"``): arrivals may overtake a queue whose head has
waited less than the bound; past it, strict hand-off; a large request is never starved.

Time is a :class:`~allotment.testing.ManualClock`'s wherever a test depends on how long
someone waited: the head's age is then exactly what the test made it.
"""

from __future__ import annotations

import functools
import math
import threading
from typing import Any

import pytest

import allotment
from allotment._core import GRANTED, PENDING, BoundedPolicy, MemoryPool, ScalarForm, Ticket
from allotment.testing import ManualClock
from support import GENEROUS, Worker, assert_idle, pool_of, wait_until

BOUND = 0.001


# -- validation -------------------------------------------------------------------------------


FACES: list[Any] = [allotment.ResourceManager, allotment.Semaphore, allotment.BoundedSemaphore]


@pytest.mark.parametrize("face", FACES, ids=lambda face: face.__name__)
@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"fairness": "fair"}, ValueError, "fairness must be 'strict' or 'bounded'"),
        ({"fairness": "STRICT"}, ValueError, "fairness must be 'strict' or 'bounded'"),
        ({"fairness": None}, TypeError, "fairness must be 'strict' or 'bounded'"),
        ({"fairness": True}, TypeError, "fairness must be 'strict' or 'bounded'"),
        ({"fairness_bound": 0.5}, ValueError, "applies only to fairness='bounded'"),
        ({"fairness": "strict", "fairness_bound": 0.5}, ValueError, "only to"),
        ({"fairness": "bounded", "fairness_bound": 0}, ValueError, "positive, finite"),
        ({"fairness": "bounded", "fairness_bound": -1.0}, ValueError, "positive, finite"),
        ({"fairness": "bounded", "fairness_bound": math.nan}, ValueError, "positive, finite"),
        ({"fairness": "bounded", "fairness_bound": math.inf}, ValueError, "positive, finite"),
        ({"fairness": "bounded", "fairness_bound": True}, TypeError, "number of seconds"),
        ({"fairness": "bounded", "fairness_bound": "1ms"}, TypeError, "number of seconds"),
    ],
)
def test_bad_fairness_arguments_raise_a_clear_error(
    face: Any, arguments: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        face(2, **arguments)


def test_bounded_fairness_is_refused_with_banker_mode_or_a_backend() -> None:
    with pytest.raises(ValueError, match="banker mode grants in its own order"):
        allotment.ResourceManager(2, banker=True, fairness="bounded")
    backend: Any = object()  # refused before it is used
    with pytest.raises(allotment.UnsupportedByBackend, match="in-memory manager"):
        allotment.ResourceManager(2, name="n", backend=backend, fairness="bounded")


# -- the pool's rules, step by step (white box: a waiter that records its wake-ups) ----------


class Recording:
    """A waiter that never sleeps: it records wake-ups and re-arms."""

    def __init__(self) -> None:
        self.wakes = 0
        self.woken = False

    def wake(self) -> None:
        self.wakes += 1
        self.woken = True

    def rearm(self) -> None:
        self.woken = False


def _bounded_pool(capacity: int, clock: ManualClock) -> MemoryPool:
    return MemoryPool(ScalarForm(), capacity, capacity, BoundedPolicy(BOUND), clock.now, holders={})


def _ticket(units: int, clock: ManualClock) -> Ticket:
    return Ticket(units, threading.current_thread(), None, clock.now())


def _queue(pool: MemoryPool, ticket: Ticket) -> Recording:
    waiter = Recording()
    assert not pool.enter(ticket, lambda: waiter)
    return waiter


def test_a_young_head_is_woken_without_a_grant_and_an_arrival_may_take_the_units() -> None:
    clock = ManualClock()
    pool = _bounded_pool(1, clock)
    holder = _ticket(1, clock)
    assert pool.enter(holder, None)
    waiting = _ticket(1, clock)
    waiter = _queue(pool, waiting)
    pool.release(holder, None)
    # Nominated: woken, the unit left free, the ticket still queued.
    assert (waiter.wakes, waiting.state, pool.available) == (1, PENDING, 1)
    newcomer = _ticket(1, clock)
    assert pool.enter(newcomer, None)  # overtakes the young head
    assert pool.claim(waiting, None) is None  # the unit is gone: sleep again
    assert not waiter.woken
    pool.release(newcomer, None)
    assert waiter.wakes == 2
    assert pool.claim(waiting, None) is True
    assert (waiting.state, pool.available, pool.waiting) == (GRANTED, 0, 0)


def test_a_woken_head_is_not_woken_again_until_it_has_claimed() -> None:
    clock = ManualClock()
    pool = _bounded_pool(2, clock)
    holders = [_ticket(1, clock), _ticket(1, clock)]
    for holder in holders:
        assert pool.enter(holder, None)
    waiter = _queue(pool, _ticket(2, clock))
    pool.release(holders[0], None)
    assert waiter.wakes == 0  # a large head is woken only once it fits
    pool.release(holders[1], None)
    assert waiter.wakes == 1


def test_a_head_past_the_bound_is_handed_the_units_and_nobody_overtakes_it() -> None:
    clock = ManualClock()
    pool = _bounded_pool(1, clock)
    holder = _ticket(1, clock)
    assert pool.enter(holder, None)
    waiting = _ticket(1, clock)
    waiter = _queue(pool, waiting)
    clock.advance(BOUND)
    assert not pool.enter(_ticket(1, clock), None)  # nothing free, and the head is old
    pool.release(holder, None)
    assert (waiting.state, pool.available, waiter.wakes) == (GRANTED, 0, 1)
    assert pool.claim(waiting, None) is True


def test_a_nominated_ticket_whose_deadline_passed_leaves_the_queue() -> None:
    clock = ManualClock()
    pool = _bounded_pool(1, clock)
    holder = _ticket(1, clock)
    assert pool.enter(holder, None)
    waiting = _ticket(1, clock)
    _queue(pool, waiting)
    pool.release(holder, None)
    assert pool.enter(_ticket(1, clock), None)
    assert pool.claim(waiting, clock.now()) is False
    assert pool.waiting == 0


# -- through the faces, with threads ------------------------------------------------------------


def test_a_waiter_past_the_bound_gets_strict_hand_off() -> None:
    clock = ManualClock()
    manager = allotment.ResourceManager(1, fairness="bounded", fairness_bound=BOUND, clock=clock)
    lease = manager.acquire(1)
    waiter = Worker(functools.partial(manager.acquire, 1), name="waits")
    waiter.start()
    wait_until(lambda: pool_of(manager).waiting == 1, "the waiter is queued")
    clock.advance(2 * BOUND)
    lease.release()
    # Handed over under the lock of the release: a try right after it finds nothing free.
    assert manager.try_acquire(1) is None
    granted = waiter.outcome()
    assert isinstance(granted, allotment.Lease)
    granted.release()
    assert_idle(manager)


def test_a_young_waiter_may_be_overtaken_by_try_acquire() -> None:
    clock = ManualClock()
    manager = allotment.ResourceManager(2, fairness="bounded", clock=clock)
    kept = manager.acquire(1)
    big = Worker(functools.partial(manager.acquire, 2), name="asks for everything")
    big.start()
    wait_until(lambda: pool_of(manager).waiting == 1, "the large request is queued")
    small = manager.try_acquire(1)  # the head is young: the free unit may be taken
    assert small is not None
    small.release()
    clock.advance(2 * BOUND)
    assert manager.try_acquire(1) is None  # old now: nothing overtakes it
    kept.release()
    granted = big.outcome()
    assert isinstance(granted, allotment.Lease)
    assert granted.amounts == 2
    granted.release()
    assert_idle(manager)


def test_strict_fairness_never_lets_try_acquire_overtake() -> None:
    manager = allotment.ResourceManager(2, fairness="strict")
    kept = manager.acquire(1)
    big = Worker(functools.partial(manager.acquire, 2), name="asks for everything")
    big.start()
    wait_until(lambda: pool_of(manager).waiting == 1, "the large request is queued")
    assert manager.try_acquire(1) is None
    kept.release()
    granted = big.outcome()
    assert isinstance(granted, allotment.Lease)
    granted.release()


@pytest.mark.timeout(4 * GENEROUS)
@pytest.mark.parametrize("face", ["manager", "semaphore"])
def test_a_large_request_is_not_starved_by_threads_that_barge(face: str) -> None:
    """Four threads take and give back one unit as fast as they can, each running straight
    back (the pattern bounded mode favours); a request for the whole capacity is still
    granted, with the real clock, well within the time limit."""
    manager = allotment.ResourceManager(2, fairness="bounded", fairness_bound=BOUND)
    semaphore = allotment.Semaphore(2, fairness="bounded", fairness_bound=BOUND)
    done = threading.Event()
    started = threading.Barrier(5)

    def churn() -> int:
        started.wait()
        rounds = 0
        while not done.is_set():
            if face == "manager":
                with manager.acquire(1):
                    rounds += 1
            else:
                with semaphore:
                    rounds += 1
        return rounds

    workers = [Worker(churn, name=f"churn-{index}") for index in range(4)]
    for worker in workers:
        worker.start()
    try:
        started.wait()
        if face == "manager":
            lease = manager.acquire(2, timeout=GENEROUS)
            assert lease.amounts == 2
            lease.release()
        else:
            assert semaphore.acquire(timeout=GENEROUS)
            assert semaphore.acquire(timeout=GENEROUS)
            semaphore.release(2)
    finally:
        done.set()
        rounds = [worker.outcome() for worker in workers]
    assert all(isinstance(count, int) for count in rounds)
    if face == "manager":
        assert_idle(manager)
    else:
        assert semaphore._value == 2


@pytest.mark.timeout(4 * GENEROUS)
@pytest.mark.parametrize("fairness", ["strict", "bounded"])
def test_every_thread_is_served_and_every_unit_comes_back(fairness: allotment.Fairness) -> None:
    """Eight threads on a capacity of two, with timeouts, tries and several sizes."""
    manager = allotment.ResourceManager(3, fairness=fairness)
    started = threading.Barrier(8)

    def work(index: int) -> int:
        started.wait()
        served = 0
        for round_ in range(300):
            amount = 1 + (index + round_) % 3
            if round_ % 7 == 0:
                lease = manager.try_acquire(amount)
                if lease is None:
                    continue
            else:
                try:
                    lease = manager.acquire(amount, timeout=0.0005 if round_ % 5 == 0 else None)
                except allotment.AcquireTimeout:
                    continue
            with lease:
                served += 1
        return served

    workers = [Worker(functools.partial(work, index), name=f"w{index}") for index in range(8)]
    for worker in workers:
        worker.start()
    outcomes = [worker.outcome() for worker in workers]
    assert all(isinstance(served, int) and served > 0 for served in outcomes), outcomes
    assert_idle(manager)


@pytest.mark.timeout(GENEROUS)
def test_a_task_waits_in_the_same_queue_in_bounded_mode() -> None:
    import asyncio

    manager = allotment.ResourceManager(1, fairness="bounded")
    lease = manager.acquire(1)

    async def main() -> int:
        waiting = asyncio.ensure_future(manager.acquire_async(1))
        while pool_of(manager).waiting == 0:
            await asyncio.sleep(0.001)
        await asyncio.get_running_loop().run_in_executor(None, lease.release)
        granted = await waiting
        amount = granted.amounts
        granted.release()
        return amount

    assert asyncio.run(main()) == 1
    assert_idle(manager)


@pytest.mark.timeout(GENEROUS)
def test_a_task_handed_its_grant_returns_without_claiming(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the bound the release hands the unit off under its lock: the woken task finds
    its ticket granted and returns without taking the pool's lock again (as a thread does)."""
    import asyncio

    claims: list[Ticket] = []
    claim = MemoryPool.claim

    def counting_claim(pool: MemoryPool, ticket: Ticket, deadline: float | None) -> bool | None:
        claims.append(ticket)
        return claim(pool, ticket, deadline)

    monkeypatch.setattr(MemoryPool, "claim", counting_claim)
    clock = ManualClock()
    manager = allotment.ResourceManager(1, fairness="bounded", fairness_bound=BOUND, clock=clock)
    lease = manager.acquire(1)

    async def main() -> int:
        waiting = asyncio.ensure_future(manager.acquire_async(1))
        while pool_of(manager).waiting == 0:
            await asyncio.sleep(0)
        clock.advance(2 * BOUND)
        lease.release()  # on the loop's thread: the grant is handed off, then the task woken
        granted = await waiting
        amount = granted.amounts
        granted.release()
        return amount

    assert asyncio.run(main()) == 1
    assert claims == []
    assert_idle(manager)
