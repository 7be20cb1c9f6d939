"""KeyedRateLimiter: a limiter per key, made on first use, forgotten once idle."""

from __future__ import annotations

import threading
import tracemalloc

import pytest

import allotment
from allotment.testing import ManualClock
from support import start, wait_until


def keyed(rate: float = 10, burst: int = 2) -> tuple[allotment.KeyedRateLimiter, ManualClock]:
    clock = ManualClock()
    return allotment.KeyedRateLimiter(rate, per=1, burst=burst, clock=clock), clock


def test_each_key_has_its_own_bucket() -> None:
    users, clock = keyed()
    assert users.try_acquire("alice", 2)
    assert not users.try_acquire("alice")
    assert users.try_acquire("bob", 2)  # alice's use does not touch bob's bucket
    clock.advance(0.1)
    assert users.try_acquire("alice")
    assert not users.try_acquire("alice")
    assert users.retry_after("alice") == pytest.approx(0.1)
    assert users.retry_after("carol") == 0.0


def test_blocking_acquire_waits_for_its_key_only() -> None:
    users, clock = keyed(rate=1, burst=1)
    users.acquire("alice")
    waiter = start(users.acquire, "alice", 1, None)
    wait_until(lambda: clock.sleepers == 1, "alice's second call sleeps")
    users.acquire("bob", timeout=0)  # bob is not behind alice
    assert not waiter.finished.is_set()
    clock.advance(1.0)
    waiter.outcome()
    stats = users.statistics("alice")
    assert (stats.allowed, stats.waited, stats.waiters) == (2, 1, ())


def test_timeout_at_once_and_charges_per_key() -> None:
    users, clock = keyed(rate=1, burst=1)
    users.charge("alice", 5)
    with pytest.raises(allotment.AcquireTimeout):
        users.acquire("alice", timeout=2)
    assert users.retry_after("alice") == pytest.approx(5.0)
    assert users.try_acquire("bob")
    clock.advance(5)
    assert users.try_acquire("alice")


def test_idle_keys_are_forgotten_so_memory_stays_bounded() -> None:
    users, clock = keyed(rate=10, burst=1)  # a key is idle 0.1 s after one unit
    for index in range(100_000):
        assert users.try_acquire(("user", index))
        clock.advance(0.001)
        # Keys used within the last 0.1 s hold state; older ones are swept as we go.
        assert len(users) <= 2 * 100 + 2
    assert len(users) >= 90


def test_after_a_spike_of_one_off_keys_len_and_memory_follow_the_active_keys() -> None:
    users, clock = keyed(rate=10, burst=5)
    tracemalloc.start()
    try:
        for index in range(20_000):
            assert users.try_acquire(("spike", index))
        spike = tracemalloc.get_traced_memory()[0]
        assert len(users) > 19_000
        clock.advance(3600)  # an hour of idleness: every spike key's bucket is full again
        for index in range(100):
            assert users.try_acquire(("after", index))
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # Each call forgets up to 256 idle keys from the oldest end: all 20,000 are gone, and
    # only the 100 keys used since (each still in its burst) remain.
    assert len(users) == 100
    assert not any(("spike", index) in users for index in range(0, 20_000, 97))
    assert after < spike / 4, f"{after / 1e6:.1f} MB after the sweep, {spike / 1e6:.1f} MB before"


def test_a_key_in_debt_or_with_waiters_is_never_forgotten() -> None:
    users, clock = keyed(rate=10, burst=1)
    users.charge("debtor", 100)  # ten seconds of debt
    users.acquire("sleeper")
    worker = start(users.acquire, "sleeper", 1, None)
    wait_until(lambda: clock.sleepers == 1, "the second call for 'sleeper' sleeps")
    for index in range(1000):
        users.try_acquire(index)
        clock.advance(0.0001)  # 0.1 s in all: the waiter's time comes at the very end
    assert "debtor" in users
    assert users.retry_after("debtor") > 9
    worker.outcome()
    assert "sleeper" in users


def test_a_forgotten_key_comes_back_with_a_full_bucket() -> None:
    users, clock = keyed(rate=10, burst=2)
    assert users.try_acquire("alice", 2)
    clock.advance(1)
    for index in range(10):
        users.try_acquire(index)  # sweeps alice once her bucket is full again
    assert "alice" not in users
    assert users.try_acquire("alice", 2)


def test_racing_lookups_never_make_two_buckets_for_one_key() -> None:
    users, clock = keyed(rate=1000, burst=5)
    barrier = threading.Barrier(8)
    allowed: list[int] = []
    lock = threading.Lock()

    def hammer(index: int) -> None:
        barrier.wait()
        for round_ in range(300):
            if users.try_acquire("shared"):
                with lock:
                    allowed.append(round_)
            users.try_acquire((index, round_))  # churn: other keys come and go

    workers = [start(hammer, index) for index in range(8)]
    for worker in workers:
        worker.outcome()
    # The clock never moved: one bucket for "shared" allows its burst, never more.
    assert len(allowed) == 5
    del clock


@pytest.mark.parametrize("key", [[1], {"a": 1}, {1}])
def test_unhashable_keys_are_refused(key: object) -> None:
    users, _ = keyed()
    with pytest.raises(allotment.InvalidKey):
        users.try_acquire(key)
    with pytest.raises(TypeError):
        users.acquire(key)
    assert len(users) == 0


def test_bad_costs_and_settings_are_refused() -> None:
    users, _ = keyed(burst=2)
    with pytest.raises(allotment.ExceedsBurst):
        users.acquire("alice", 3)
    with pytest.raises(allotment.InvalidAmountType):
        users.try_acquire("alice", 1.0)  # type: ignore[arg-type]
    with pytest.raises(allotment.InvalidAmount):
        users.charge("alice", 0)
    assert len(users) == 0
    with pytest.raises(allotment.InvalidLimit):
        allotment.KeyedRateLimiter(0)
    with pytest.raises(allotment.InvalidLimitType):
        allotment.KeyedRateLimiter(1, burst=True)


@pytest.mark.parametrize(
    ("timeout", "error"), [(-1, ValueError), (float("nan"), ValueError), ("1", TypeError)]
)
def test_bad_timeouts_are_refused_and_spend_nothing(
    timeout: object, error: type[Exception]
) -> None:
    users = allotment.KeyedRateLimiter(10, clock=ManualClock())
    with pytest.raises(error, match="timeout"):
        users.acquire("alice", 1, timeout)  # type: ignore[arg-type]
    with pytest.raises(error, match="timeout"):
        _ = users.acquire_async("alice", 1, timeout)  # type: ignore[arg-type]
    assert users.statistics("alice").allowed == 0


def test_repr_and_settings() -> None:
    users = allotment.KeyedRateLimiter(10, per=2, name="per-user")
    assert (users.rate, users.per, users.burst, users.name) == (10.0, 2.0, 10, "per-user")
    users.try_acquire("x")
    assert repr(users) == (
        "<allotment.KeyedRateLimiter 'per-user': 10 per 2 s per key, burst 10, keys=1>"
    )
