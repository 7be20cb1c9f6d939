"""acquire_all: several managers in rank order, all or nothing, under one deadline."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import allotment
from allotment import _registry as allotment_registry
from allotment._core import MemoryPool
from allotment._manager import parts_of
from support import (
    GENEROUS,
    assert_idle,
    enqueue,
    inject,
    start,
    wait_for_waiters,
    wait_until,
)

Managers = tuple[allotment.ResourceManager[Any], ...]


class Injected(Exception):
    """Raised into a waiting thread from outside."""


@pytest.fixture
def managers() -> Iterator[Managers]:
    a = allotment.ResourceManager(2, name="a", capture_sites=True)
    b = allotment.ResourceManager({"gpu": 2, "ram": 8}, name="b", capture_sites=True)
    c = allotment.ResourceManager(1, name="c")
    yield a, b, c
    for manager in (a, b, c):
        assert_idle(manager)


@pytest.fixture
def taken_order(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the managers whose allocators are asked for units, in order."""
    order: list[str] = []
    original = MemoryPool.enter

    def recording_enter(self: MemoryPool, *args: Any) -> bool:
        order.append(_name_of(self))
        return original(self, *args)

    monkeypatch.setattr(MemoryPool, "enter", recording_enter)
    return order


def _name_of(pool: MemoryPool) -> str:
    for manager in allotment_registry.live_managers():
        if parts_of(manager).pool is pool:
            return manager.name
    return "?"


def test_leases_match_requests_and_are_taken_in_rank_order(
    managers: Managers, taken_order: list[str]
) -> None:
    a, b, c = managers
    with allotment.acquire_all([(c, 1), (b, {"gpu": 1}), (a, 2)]) as leases:
        assert len(leases) == 3
        assert [lease.manager for lease in leases] == [c, b, a]
        assert [lease.amounts for lease in leases] == [1, {"gpu": 1}, 2]
        assert leases[0] is leases[-3]
        assert leases[1:] == (leases[1], leases[2])
        assert list(reversed(leases)) == [leases[2], leases[1], leases[0]]
    assert taken_order == ["a", "b", "c"]
    assert leases.released


def test_releases_in_reverse_order_even_when_the_body_raises(
    managers: Managers, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = managers
    released: list[str] = []
    original = MemoryPool.release

    def recording_release(self: MemoryPool, ticket: Any, part: Any) -> None:
        if ticket.state is allotment._core.GRANTED:
            released.append(_name_of(self))
        original(self, ticket, part)

    monkeypatch.setattr(MemoryPool, "release", recording_release)
    with pytest.raises(KeyError), allotment.acquire_all([(b, {"ram": 1}), (c, 1), (a, 1)]):
        raise KeyError("body failed")
    assert released == ["c", "b", "a"]


def test_requests_to_one_manager_merge_into_one_atomic_request(
    managers: Managers,
) -> None:
    a, b, _ = managers
    group = allotment.acquire_all([(b, {"gpu": 1}), (a, 1), (b, {"gpu": 1, "ram": 3})])
    assert [lease.amounts for lease in group] == [{"gpu": 1}, 1, {"gpu": 1, "ram": 3}]
    assert b.statistics().in_use == {"gpu": 2, "ram": 3}
    assert len(b.statistics().holders) == 2
    # Each lease is its own: releasing one leaves the others.
    group[2].release({"ram": 1})
    group[0].release()
    assert b.statistics().in_use == {"gpu": 1, "ram": 2}
    group.release()
    group.release()  # idempotent
    with pytest.raises(allotment.LeaseReleased), group:
        pass


def test_merged_requests_beyond_capacity_fail_before_anything_is_taken(
    managers: Managers,
) -> None:
    a, _, c = managers
    with pytest.raises(allotment.ExceedsCapacity, match="add up to 2"):
        allotment.acquire_all([(a, 1), (c, 1), (c, 1)])


@pytest.mark.parametrize(
    ("bad_request", "error"),
    [
        (lambda a, b: ("a", 1), TypeError),
        (lambda a, b: (object(), 1), TypeError),
        (lambda a, b: "not a pair", TypeError),
        (lambda a, b: (a, 1, 2), TypeError),
        (lambda a, b: (a, 0), allotment.InvalidAmount),
        (lambda a, b: (a, True), allotment.InvalidAmountType),
        (lambda a, b: (b, {"cpu": 1}), allotment.UnknownResource),
        (lambda a, b: (b, 1), allotment.InvalidAmountType),
        (lambda a, b: (a, 3), allotment.ExceedsCapacity),
    ],
    ids=[
        "name-not-manager",
        "object-not-manager",
        "not-a-pair",
        "triple",
        "zero",
        "bool",
        "unknown-resource",
        "int-for-named",
        "over-capacity",
    ],
)
def test_bad_requests_raise_before_anything_is_taken(
    managers: Managers, bad_request: Callable[..., Any], error: type[Exception]
) -> None:
    a, b, c = managers
    # Valid requests around the bad one, ranked before and after it: none may be taken.
    requests = [(c, 1), bad_request(a, b), (b, {"gpu": 1})]
    with pytest.raises(error):
        allotment.acquire_all(requests)
    with pytest.raises(error):
        allotment.try_acquire_all(requests)


def test_an_empty_request_list_gives_an_empty_group() -> None:
    with allotment.acquire_all([]) as leases:
        assert len(leases) == 0
    assert allotment.try_acquire_all([]) is not None


def test_a_timeout_releases_what_was_taken_and_names_the_manager(
    managers: Managers,
) -> None:
    a, b, c = managers
    blocker = c.acquire(1)
    with pytest.raises(allotment.AcquireTimeout, match=r"waiting for 1 from 'c'") as caught:
        allotment.acquire_all([(c, 1), (a, 2), (b, {"gpu": 2})], timeout=0.05)
    assert caught.value.manager is c
    assert "released what it had taken from 'a', 'b'" in str(caught.value)
    assert a.statistics().in_use == 0
    assert b.statistics().in_use == {"gpu": 0, "ram": 0}
    blocker.release()


def test_a_zero_timeout_never_waits_and_raises(managers: Managers) -> None:
    a, _, c = managers
    blocker = c.acquire(1)
    with pytest.raises(allotment.AcquireTimeout) as caught:
        allotment.acquire_all([(a, 1), (c, 1)], timeout=0)
    assert caught.value.manager is c
    assert a.statistics().in_use == 0
    blocker.release()


def test_try_acquire_all_never_waits_and_holds_nothing_on_failure(
    managers: Managers,
) -> None:
    a, b, c = managers
    blocker = c.acquire(1)
    assert allotment.try_acquire_all([(a, 1), (b, {"ram": 8}), (c, 1)]) is None
    assert a.statistics().in_use == 0
    blocker.release()
    group = allotment.try_acquire_all([(a, 1), (b, {"ram": 8}), (c, 1)])
    assert group is not None
    group.release()


def test_try_acquire_all_does_not_overtake_a_queue(
    managers: Managers,
) -> None:
    a, _, _ = managers
    held = a.acquire(2)
    waiter = enqueue(a, 2, name="waiter")
    held.release(1)
    assert allotment.try_acquire_all([(a, 1)]) is None
    held.release()
    waiter.outcome().release()  # type: ignore[attr-defined]


def test_one_deadline_is_shared_across_managers(
    managers: Managers,
) -> None:
    a, _, c = managers
    first = a.acquire(2)
    never = c.acquire(1)
    # a frees up after 1.5 s of a 2 s budget; c never does. With a fresh 2 s for c, the call
    # would last at least 3.5 s.
    timer = threading.Timer(1.5, first.release)
    timer.start()
    began = time.monotonic()
    with pytest.raises(allotment.AcquireTimeout) as caught:
        allotment.acquire_all([(a, 1), (c, 1)], timeout=2.0)
    elapsed = time.monotonic() - began
    timer.join()
    assert caught.value.manager is c
    assert 2.0 <= elapsed < 3.0
    never.release()


def test_a_closed_manager_fails_the_whole_request(
    managers: Managers,
) -> None:
    a, b, c = managers
    blocker = c.acquire(1)
    worker = start(allotment.acquire_all, [(a, 1), (b, {"gpu": 1}), (c, 1)], name="worker")
    wait_for_waiters(c, 1)
    assert a.statistics().in_use == 1
    c.close()
    with pytest.raises(allotment.ManagerClosed):
        worker.outcome()
    assert a.statistics().in_use == 0
    blocker.release()


def test_an_exception_while_waiting_releases_everything(
    managers: Managers,
) -> None:
    a, b, c = managers
    blocker = c.acquire(1)
    worker = start(allotment.acquire_all, [(a, 2), (b, {"ram": 8}), (c, 1)], 1.0, name="worker")
    # The exception lands when the wait returns control to the interpreter: at its timeout.
    wait_for_waiters(c, 1)
    inject(worker, Injected)
    with pytest.raises(Injected):
        worker.outcome()
    assert a.statistics().in_use == 0
    assert c.statistics().waiters == ()
    blocker.release()


def test_an_exception_delivered_with_the_last_grant_releases_everything(
    managers: Managers,
) -> None:
    a, _, c = managers
    blocker = c.acquire(1)
    worker = start(allotment.acquire_all, [(a, 2), (c, 1)], None, name="worker")
    wait_for_waiters(c, 1)
    # Delivered when the worker next runs bytecode: after the release below granted it c.
    inject(worker, Injected)
    blocker.release()
    with pytest.raises(Injected):
        worker.outcome()
    wait_until(lambda: c.statistics().in_use == 0, "c is returned")
    assert a.statistics().in_use == 0


def test_rank_overrides_creation_order(taken_order: list[str]) -> None:
    late_but_first = allotment.ResourceManager(1, name="first", rank=-1)
    plain = allotment.ResourceManager(1, name="plain")
    last = allotment.ResourceManager(1, name="last", rank=5)
    assert (late_but_first.rank, plain.rank, last.rank) == (-1, 0, 5)
    allotment.acquire_all([(last, 1), (plain, 1), (late_but_first, 1)]).release()
    assert taken_order == ["first", "plain", "last"]
    with pytest.raises(TypeError, match="rank must be an int"):
        allotment.ResourceManager(1, rank=1.5)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="rank must be an int"):
        allotment.ResourceManager(1, rank=True)


def test_dining_philosophers_never_deadlock() -> None:
    """Five forks, five philosophers, each writing its two forks in its own order (the last
    one the other way round): through acquire_all every meal is served."""
    forks = [allotment.ResourceManager(1, name=f"fork-{i}") for i in range(5)]
    in_hand = [0] * 5
    meals = [0] * 5
    rounds = 1000
    start_line = threading.Barrier(5)

    def philosopher(seat: int) -> None:
        left, right = forks[seat], forks[(seat + 1) % 5]
        written = [(left, 1), (right, 1)] if seat % 2 else [(right, 1), (left, 1)]
        start_line.wait(GENEROUS)
        for _ in range(rounds):
            with allotment.acquire_all(written):
                for fork in (seat, (seat + 1) % 5):
                    in_hand[fork] += 1
                    assert in_hand[fork] == 1, f"fork {fork} is in two hands"
                meals[seat] += 1
                for fork in (seat, (seat + 1) % 5):
                    in_hand[fork] -= 1

    from support import switch_interval

    with switch_interval(1e-5):
        workers = [start(philosopher, seat, name=f"philosopher-{seat}") for seat in range(5)]
        for worker in workers:
            worker.outcome()
    assert meals == [rounds] * 5
    for fork in forks:
        assert_idle(fork)


def test_statistics_name_the_acquire_all_call(managers: Managers) -> None:
    a, b, _ = managers
    quiet = allotment.ResourceManager(1, name="quiet", capture_sites=False)
    line = sys._getframe().f_lineno + 1
    group = allotment.acquire_all([(a, 1), (b, {"gpu": 1}), (quiet, 1), (b, {"ram": 1})])
    sites = {holder.site for manager in (a, b) for holder in manager.statistics().holders}
    assert sites == {f"{__file__}:{line} in test_statistics_name_the_acquire_all_call"}
    assert quiet.statistics().holders[0].site is None
    assert [holder.thread_name for holder in b.statistics().holders] == ["MainThread"] * 2
    group.release()
