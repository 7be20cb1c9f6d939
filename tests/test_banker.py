"""Banker mode: declared claims are granted only into safe states, so they never deadlock."""

from __future__ import annotations

import random
import sys
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

import allotment
from allotment._core import Units
from allotment._core._policies import finishable
from support import GENEROUS, assert_idle, start, switch_interval, wait_for_waiters


def _quantity(amount: Any, names: list[str]) -> Any:
    return amount if isinstance(amount, int) else Units(tuple(amount.get(n, 0) for n in names))


def assert_safe(manager: allotment.ResourceManager[Any]) -> None:
    """The state is safe: every open claim can still reach its maximum in some order.

    Read from one statistics snapshot: leases outside claims need nothing more, so what they
    hold counts as available to the claims."""
    stats = manager.statistics()
    names = sorted(stats.capacity) if isinstance(stats.capacity, dict) else []

    def q(amount: Any) -> Any:
        return _quantity(amount, names)

    claimed = q(0 if not names else {})
    accounts = []
    for claim in stats.claims:
        held, maximum = q(claim.held), q(claim.maximum)
        assert held <= maximum
        claimed = claimed + held
        accounts.append((maximum - held, held))
    # capacity - in_use is what is free (negative after a shrink); plain leases add theirs.
    work = q(stats.capacity) - q(stats.in_use) + (q(stats.in_use) - claimed)
    assert finishable(work, accounts), "the manager is in an unsafe state"


def test_the_textbook_unsafe_grant_waits_until_it_is_safe() -> None:
    # Silberschatz et al.: 12 tape drives; P0, P1, P2 may need 10, 4 and 9 and hold 5, 2, 2.
    tapes = allotment.ResourceManager(12, name="tapes", banker=True)
    p0, p1, p2 = tapes.claim(10), tapes.claim(4), tapes.claim(9)
    held = [p0.acquire(5), p1.acquire(2), p2.acquire(2)]
    assert_safe(tapes)
    # Safe order P1, P0, P2 exists. One more drive to P2 leaves 2 available: P1 could finish
    # (4 back), but then neither P0 (needs 5) nor P2 (needs 6) could: unsafe, so it waits.
    assert p2.try_acquire(1) is None
    waiting = start(p2.acquire, 1, GENEROUS, name="p2")
    wait_for_waiters(tapes, 1)
    # P1's request is safe (it can then finish), and it overtakes the queued one.
    extra = p1.acquire(2, timeout=0)
    assert p1.held == 4
    extra.release()
    p1.close()  # P1 finishes: 5 available, P2's drive would still leave P0 and P2 stuck
    assert waiting.is_alive()
    p0.acquire(5, timeout=0)  # P0 reaches its maximum; it can finish
    p0.close()
    lease = waiting.outcome()
    assert isinstance(lease, allotment.Lease)
    assert p2.held == 3
    p2.close()
    assert all(lease.released for lease in held)
    assert_idle(tapes)


def test_without_banker_mode_incremental_acquirers_deadlock() -> None:
    """Two threads each take 1 of 2, then want 1 more: the classic hold-and-wait deadlock,
    which only a timeout breaks. The next test runs the same program with claims."""
    pool = allotment.ResourceManager(2, name="pool")
    both_hold_one = threading.Barrier(2)

    def incremental() -> str:
        with pool.acquire(1):
            both_hold_one.wait(GENEROUS)
            with pool.acquire(1, timeout=1):
                return "done"

    outcomes: list[object] = []
    for worker in [start(incremental, name=f"worker-{i}") for i in range(2)]:
        try:
            outcomes.append(worker.outcome())
        except allotment.AcquireTimeout as error:
            outcomes.append(type(error))
    # The first to time out lets the other finish, unless both time out together.
    assert outcomes[0] is allotment.AcquireTimeout or outcomes[1] is allotment.AcquireTimeout
    assert_idle(pool)


def test_in_banker_mode_the_second_claimant_waits_instead_of_deadlocking() -> None:
    pool = allotment.ResourceManager(2, name="pool", banker=True)
    first = pool.claim(2)
    first.acquire(1)
    second = pool.claim(2)
    # Granting this would leave each claim one short with nothing available: unsafe.
    assert second.try_acquire(1) is None
    waiter = start(second.acquire, 1, GENEROUS, name="second")
    wait_for_waiters(pool, 1)
    first.acquire(1, timeout=0)  # the holder still gets what it needs
    first.close()
    assert isinstance(waiter.outcome(), allotment.Lease)
    second.acquire(1, timeout=0)
    second.close()
    assert_idle(pool)


def test_a_claim_holding_units_overtakes_a_request_it_would_otherwise_wait_behind() -> None:
    pool = allotment.ResourceManager(10, name="pool", banker=True)
    holder = pool.claim(8)
    holder.acquire(4)
    newcomer = start(pool.acquire, 8, GENEROUS, name="newcomer")  # needs the holder's units
    wait_for_waiters(pool, 1)
    # Strict FIFO would queue this behind the newcomer, which waits for these very units.
    holder.acquire(4, timeout=0)
    holder.close()
    lease = newcomer.outcome()
    assert isinstance(lease, allotment.Lease)
    lease.release()
    assert_idle(pool)


def test_requests_without_claims_still_queue_in_order() -> None:
    pool = allotment.ResourceManager(3, name="pool", banker=True)
    held = pool.acquire(3)
    large = start(pool.acquire, 3, GENEROUS, name="large")
    wait_for_waiters(pool, 1)
    small = start(pool.acquire, 1, GENEROUS, name="small")
    wait_for_waiters(pool, 2)
    held.release()
    first = large.outcome()
    assert isinstance(first, allotment.Lease)
    assert small.is_alive()
    first.release()
    second = small.outcome()
    assert isinstance(second, allotment.Lease)
    second.release()


def test_statistics_list_the_open_claims() -> None:
    pool = allotment.ResourceManager(
        {"gpu": 4, "ram": 32}, name="node", banker=True, capture_sites=True
    )
    line = sys._getframe().f_lineno + 1
    with pool.claim({"gpu": 2, "ram": 8}) as claim:
        claim.acquire({"gpu": 1})
        (info,) = pool.statistics().claims
        assert info.maximum == {"gpu": 2, "ram": 8}
        assert info.held == {"gpu": 1}
        assert info.thread_name == threading.current_thread().name
        assert info.site == f"{__file__}:{line} in test_statistics_list_the_open_claims"
        assert "holds {'gpu': 1} of at most {'gpu': 2, 'ram': 8}" in str(pool.statistics())
    assert pool.statistics().claims == ()
    assert allotment.ResourceManager(1).statistics().claims == ()


def test_claims_are_validated() -> None:
    pool = allotment.ResourceManager({"gpu": 4, "ram": 32}, name="node", banker=True)
    with pytest.raises(allotment.ExceedsCapacity):
        pool.claim({"gpu": 5})
    with pytest.raises(allotment.UnknownResource):
        pool.claim({"cpu": 1})
    with pytest.raises(allotment.InvalidAmount):
        pool.claim({"gpu": 0})
    with pytest.raises(allotment.BankerModeRequired):
        allotment.ResourceManager(1).claim(1)
    with pool.claim({"gpu": 2, "ram": 8}) as claim:
        assert claim.maximum == {"gpu": 2, "ram": 8}
        lease = claim.acquire({"gpu": 1})
        with pytest.raises(allotment.ExceedsClaim, match="beyond its declared maximum"):
            claim.acquire({"gpu": 2})
        with pytest.raises(allotment.ExceedsClaim):
            claim.try_acquire({"gpu": 1, "ram": 9})
        assert claim.held == {"gpu": 1}
        lease.release()
        claim.acquire({"gpu": 2, "ram": 8}).release()
        # Resizing below an open claim would make it unreachable.
        with pytest.raises(allotment.ExceedsCapacity, match="open claim declares"):
            pool.resize({"gpu": 1})
        assert pool.statistics().capacity == {"gpu": 4, "ram": 32}
    assert "closed" in repr(claim)
    with pytest.raises(allotment.ClaimClosed):
        claim.acquire({"gpu": 1})
    assert_idle(pool)


def test_a_shrink_that_would_leave_an_unsafe_state_is_refused() -> None:
    pool = allotment.ResourceManager(12, name="pool", banker=True)
    a, b = pool.claim(6), pool.claim(6)
    a.acquire(5)
    b.acquire(5)
    # At 10, both hold 5 and each needs one more with nothing left: a deadlock in waiting.
    with pytest.raises(allotment.ExceedsCapacity, match="could no longer all finish"):
        pool.resize(10)
    pool.resize(11)  # one can finish, then the other
    assert_safe(pool)
    a.close()
    b.close()
    pool.resize(6)
    assert_idle(pool)


def test_closing_a_claim_releases_its_leases_and_refuses_its_waiters() -> None:
    pool = allotment.ResourceManager(4, name="pool", banker=True)
    blocker = pool.acquire(4)
    claim = pool.claim(3)
    waiter = start(claim.acquire, 2, GENEROUS, name="waiter")
    wait_for_waiters(pool, 1)
    claim.close()
    with pytest.raises(allotment.ClaimClosed):
        waiter.outcome()
    blocker.release()
    other = pool.claim(3)
    first = other.acquire(1)
    other.close()
    assert first.released
    assert_idle(pool)
    pool.close()
    with pytest.raises(allotment.ManagerClosed):
        pool.claim(1)


def test_a_claim_collected_while_open_returns_its_units_and_warns() -> None:
    pool = allotment.ResourceManager(4, name="pool", banker=True)
    claim = pool.claim(3)
    claim.acquire(2)
    with pytest.warns(ResourceWarning, match="claim on 'pool' was garbage-collected"):
        del claim  # the last reference: collected at once
    assert_idle(pool)
    assert pool.statistics().claims == ()


def test_plain_requests_and_timeouts_in_banker_mode() -> None:
    pool = allotment.ResourceManager(2, name="pool", banker=True)
    with pool.claim(2) as claim:
        claim.acquire(1)
        with pytest.raises(allotment.AcquireTimeout):
            pool.acquire(2, timeout=0.01)
        with pool.acquire(1, timeout=0):
            pass
    assert_idle(pool)


# -- stress ---------------------------------------------------------------------------------


@settings(max_examples=8)
@given(st.integers(0, 2**32 - 1), st.integers(3, 12))
def test_incremental_claimants_under_load_never_deadlock(seed: int, threads: int) -> None:
    """Each thread declares a claim and acquires it a piece at a time, holding every piece
    until it has them all: exactly the pattern that deadlocks without banker mode."""
    capacity = {"gpu": 4, "ram": 10}
    pool = allotment.ResourceManager(capacity, name="node", banker=True)
    stop = threading.Event()
    violations: list[BaseException] = []

    def watch() -> None:
        while not stop.is_set():
            try:
                assert_safe(pool)
            except BaseException as error:  # reported by the test
                violations.append(error)
                return

    def claimant(index: int) -> int:
        rng = random.Random(seed * 1000 + index)
        done = 0
        for _ in range(15):
            maximum = {name: rng.randint(1, total) for name, total in capacity.items()}
            with pool.claim(maximum) as claim:
                remaining = dict(maximum)
                while any(remaining.values()):
                    piece = {name: rng.randint(1, left) for name, left in remaining.items() if left}
                    claim.acquire(piece)
                    for name, count in piece.items():
                        remaining[name] -= count
                assert claim.held == maximum
            done += 1
        return done

    watcher = start(watch, name="watcher")
    with switch_interval(1e-5):
        workers = [start(claimant, index, name=f"claimant-{index}") for index in range(threads)]
        results = [worker.outcome(timeout=GENEROUS * 2) for worker in workers]
    stop.set()
    watcher.outcome()
    assert not violations, violations[0]
    assert results == [15] * threads
    assert_idle(pool)


# -- a model: single-threaded, so every decision is exact ------------------------------------


class BankerModel(RuleBasedStateMachine):
    """try_acquire through claims is granted exactly when the reference banker says so."""

    claims = Bundle("claims")
    leases = Bundle("leases")

    def __init__(self) -> None:
        super().__init__()
        self.capacity = 10
        self.pool = allotment.ResourceManager(self.capacity, banker=True)
        self.maxima: dict[int, int] = {}
        self.holdings: dict[int, list[tuple[Any, int]]] = {}
        self.every_claim: list[Any] = []

    def held(self, key: int) -> int:
        return sum(amount for lease, amount in self.holdings[key] if not lease.released)

    def safe_after(self, key: int, amount: int) -> bool:
        available = self.capacity - sum(self.held(k) for k in self.maxima) - amount
        needs = []
        for k, maximum in self.maxima.items():
            held = self.held(k) + (amount if k == key else 0)
            needs.append((maximum - held, held))
        while needs:
            ready = [(n, h) for n, h in needs if n <= available]
            if not ready:
                return False
            for n, h in ready:
                available += h
                needs.remove((n, h))
        return True

    @rule(target=claims, maximum=st.integers(1, 10))
    def declare(self, maximum: int) -> Any:
        claim = self.pool.claim(maximum)
        self.maxima[id(claim)] = maximum
        self.holdings[id(claim)] = []
        self.every_claim.append(claim)
        return claim

    @rule(claim=claims, amount=st.integers(1, 10), target=leases)
    def take(self, claim: Any, amount: int) -> Any:
        key = id(claim)
        if key not in self.maxima:
            with pytest.raises(allotment.ClaimClosed):
                claim.try_acquire(amount)
            return None
        if self.held(key) + amount > self.maxima[key]:
            with pytest.raises(allotment.ExceedsClaim):
                claim.try_acquire(amount)
            return None
        fits = amount <= self.capacity - sum(self.held(k) for k in self.maxima)
        expected = fits and self.safe_after(key, amount)
        lease = claim.try_acquire(amount)
        assert (lease is not None) == expected
        if lease is not None:
            self.holdings[key].append((lease, amount))
        return lease

    @rule(lease=consumes(leases))
    def release(self, lease: Any) -> None:
        if lease is not None:
            lease.release()

    @precondition(lambda self: bool(self.maxima))
    @rule(claim=consumes(claims))
    def close(self, claim: Any) -> None:
        claim.close()
        self.maxima.pop(id(claim), None)

    @invariant()
    def matches(self) -> None:
        in_use = sum(self.held(k) for k in self.maxima)
        assert self.pool.statistics().in_use == in_use
        assert_safe(self.pool)

    def teardown(self) -> None:
        for claim in self.every_claim:
            claim.close()
        assert_idle(self.pool)


TestBankerModel = BankerModel.TestCase
