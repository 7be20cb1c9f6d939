"""Leaked leases on Redis caught in reference cycles, freed only by the cyclic collector.

``RedisPool`` keeps its records in a ``WeakKeyDictionary`` keyed by ticket. The collector
clears weak references into the garbage before it runs finalizers, so a record keyed by a
ticket that is itself garbage would be gone by the time the lease's ``__del__`` asks for
it, and the lease's units would stay held on the server until ``lease_ttl``. The backend's
table of held tickets (renewed by the keeper) keeps each granted ticket alive, so the
record survives the lease: the units come back, once, with the leak warning, whether the
collector runs outside the bookkeeping, inside it (deferred to the section's end, no
deadlock), on an event loop's thread (the keeper releases), or frees a whole group."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import allotment
from allotment.redis import RedisBackend
from support import frozen_gc, wait_until


def _available(client: redis.Redis, name: str) -> int:
    return int(client.hget(f"allotment:{{{name}}}:cfg", "avail") or -1)


@pytest.fixture
def no_collection() -> Iterator[None]:
    """Only the test's own ``gc.collect()`` frees the cycles."""
    with frozen_gc():
        yield


def _in_a_cycle(lease: object) -> None:
    cycle: list[object] = [lease]
    cycle.append(cycle)  # garbage only the collector frees


def _leak(acquire: Callable[[], object]) -> None:
    """The lease, in a cycle, unreachable once this returns."""
    _in_a_cycle(acquire())


@pytest.mark.usefixtures("no_collection")
def test_a_leaked_lease_in_a_cycle_comes_back_when_collected(
    redis_backend: RedisBackend, redis_client: redis.Redis
) -> None:
    pool = allotment.ResourceManager(2, name="cycle", backend=redis_backend)
    _leak(lambda: pool.acquire(2))
    assert _available(redis_client, "cycle") == 0
    assert len(redis_backend._held) == 1  # held strongly: the record outlives the lease
    with pytest.warns(allotment.LeakedLeaseWarning, match="garbage-collected"):
        gc.collect()
    assert _available(redis_client, "cycle") == 2  # back at once, on this thread
    assert not redis_backend._held
    assert not redis_backend._reclaims
    with pool.acquire(2, timeout=30):
        pass


@pytest.mark.usefixtures("no_collection")
def test_a_cycle_collected_inside_the_bookkeeping_is_released_before_the_call_returns(
    redis_backend: RedisBackend, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collector runs while this thread holds the backend's lock (as it may at any
    allocation): the finalizer must not take the lock again (a deadlock) nor lose the
    release. It is deferred, and done before the interrupted ``acquire`` returns."""
    pool = allotment.ResourceManager(2, name="cycle-inside", backend=redis_backend)
    _leak(lambda: pool.acquire(1))
    original = RedisBackend.hold
    collected: list[bool] = []

    def hold_then_collect(self: RedisBackend, *args: Any) -> None:
        original(self, *args)  # under the backend's lock (RedisPool.granted)
        if not collected:
            collected.append(True)
            assert self.in_section()
            gc.collect()  # the leaked lease's finalizer runs here, inside the section
            assert len(self._reclaims) == 1  # deferred, not done (nor deadlocked)

    monkeypatch.setattr(RedisBackend, "hold", hold_then_collect)
    with pytest.warns(allotment.LeakedLeaseWarning):
        lease = pool.acquire(1)
    monkeypatch.undo()
    assert collected
    assert not redis_backend._reclaims
    assert _available(redis_client, "cycle-inside") == 1  # the leaked unit is back
    lease.release()
    assert _available(redis_client, "cycle-inside") == 2


@pytest.mark.usefixtures("no_collection")
def test_a_cycle_collected_on_a_loops_thread_is_released_by_the_keeper(
    redis_backend: RedisBackend, redis_client: redis.Redis
) -> None:
    """On a thread that runs an event loop, a finalizer makes no blocking round trip (nor a
    task): the keeper releases the lease, and gives the warning."""
    pool = allotment.ResourceManager(1, name="cycle-loop", backend=redis_backend)

    async def main() -> None:
        _in_a_cycle(await pool.acquire_async(1))
        gc.collect()

    def leak_on_the_loop() -> None:
        asyncio.run(main())
        wait_until(lambda: not redis_backend._reclaims, "the keeper released the lease")

    with pytest.warns(allotment.LeakedLeaseWarning):
        leak_on_the_loop()
    assert _available(redis_client, "cycle-loop") == 1
    assert not redis_backend._held


@pytest.mark.usefixtures("no_collection")
def test_a_group_in_a_cycle_gives_every_lease_back(
    redis_backend: RedisBackend, redis_client: redis.Redis
) -> None:
    """A ``LeaseGroup`` of one-script ``acquire_all`` (two managers and a limiter on one
    backend) dropped in a cycle: each lease comes back, with its own warning."""
    first = allotment.ResourceManager(2, name="cycle-a", backend=redis_backend, rank=1)
    second = allotment.ResourceManager(2, name="cycle-b", backend=redis_backend, rank=2)
    api = allotment.RateLimiter(1000, per=1, name="cycle-api", backend=redis_backend)
    _leak(lambda: allotment.acquire_all([(first, 1), (second, 2), (api, 1)]))
    assert (_available(redis_client, "cycle-a"), _available(redis_client, "cycle-b")) == (1, 0)
    with pytest.warns(allotment.LeakedLeaseWarning) as warned:
        gc.collect()
    assert len(warned) == 2
    assert (_available(redis_client, "cycle-a"), _available(redis_client, "cycle-b")) == (2, 2)
    assert not redis_backend._held
