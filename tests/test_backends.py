"""The contract every backend keeps: the same behaviour tests, run on memory and on Redis."""

from __future__ import annotations

import asyncio
import gc
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import allotment
from aio_support import queued, run
from allotment.redis import RedisBackend
from allotment.testing import ManualClock
from support import Worker, wait_for_waiters, wait_until

_names = itertools.count()

MakeManager = Callable[..., allotment.ResourceManager[Any]]


@pytest.fixture
def make(backend: RedisBackend | None) -> MakeManager:
    def make(capacity: Any, **options: Any) -> allotment.ResourceManager[Any]:
        options.setdefault("name", f"contract-{next(_names)}")
        return allotment.ResourceManager(capacity, backend=backend, **options)

    return make


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.join(30)


def start(workers: list[Worker], target: Callable[[], object], name: str) -> Worker:
    worker = Worker(target, name=name)
    workers.append(worker)
    worker.start()
    return worker


def test_weighted_acquire_and_release(make: MakeManager) -> None:
    pool = make(5)
    with pool.acquire(3) as lease:
        assert lease.amounts == 3
        assert pool.statistics().available == 2
        lease.release(1)
        assert lease.amounts == 2
        assert pool.statistics().available == 3
    assert lease.released
    assert pool.statistics().available == 5


def test_named_resources_all_or_nothing(make: MakeManager) -> None:
    node = make({"gpu": 2, "ram": 16})
    with node.acquire({"gpu": 1, "ram": 16}):
        assert node.try_acquire({"ram": 1}) is None
        other = node.try_acquire({"gpu": 1})
        assert other is not None
        other.release()
    assert node.statistics().available == {"gpu": 2, "ram": 16}


def test_fifo_a_large_head_is_not_overtaken(make: MakeManager, workers: list[Worker]) -> None:
    pool = make(4)
    first = pool.acquire(3)
    big = start(workers, lambda: pool.acquire(4).release(), "big")
    wait_for_waiters(pool, 1)
    small = start(workers, lambda: pool.acquire(1).release(), "small")
    wait_for_waiters(pool, 2)
    # One unit is free, but the small request queued behind the big one: it waits.
    assert pool.try_acquire(1) is None
    first.release()
    big.join(30)
    small.join(30)
    assert big.error is None
    assert small.error is None
    assert pool.statistics().available == 4


def test_grants_in_arrival_order(make: MakeManager, workers: list[Worker]) -> None:
    pool = make(1)
    granted: list[int] = []
    holder = pool.acquire(1)

    def waiter(index: int) -> None:
        with pool.acquire(1):
            granted.append(index)

    for index in range(5):
        start(workers, lambda index=index: waiter(index), f"waiter-{index}")  # type: ignore[misc]
        wait_for_waiters(pool, index + 1)
    holder.release()
    for worker in workers:
        worker.join(30)
    assert granted == [0, 1, 2, 3, 4]


def test_timeout_leaves_no_trace(make: MakeManager) -> None:
    pool = make(2)
    with pool.acquire(2):
        started = time.monotonic()
        with pytest.raises(allotment.AcquireTimeout):
            pool.acquire(1, timeout=0.2)
        assert time.monotonic() - started >= 0.2
        assert pool.statistics().waiters == ()
    assert pool.statistics().available == 2
    with pool.acquire(2):
        pass


def test_timeout_zero_never_waits(make: MakeManager) -> None:
    pool = make(1)
    with pool.acquire(1), pytest.raises(allotment.AcquireTimeout):
        pool.acquire(1, timeout=0)


def test_manual_clock_drives_the_deadline(make: MakeManager, workers: list[Worker]) -> None:
    clock = ManualClock()
    pool = make(1, clock=clock)
    holder = pool.acquire(1)
    waiting = start(workers, lambda: pool.acquire(1, timeout=5), "timed")
    wait_until(lambda: clock.sleepers == 1, "the waiter sleeps on the clock")
    clock.advance(4.9)
    assert waiting.is_alive()
    clock.advance(0.2)
    waiting.join(30)
    assert isinstance(waiting.error, allotment.AcquireTimeout)
    holder.release()
    assert pool.statistics().available == 1


def test_bad_input_raises_before_anything(make: MakeManager) -> None:
    pool = make({"gpu": 2})
    for bad in (0, -1, True, 1.5, "1"):
        with pytest.raises((allotment.InvalidAmount, allotment.InvalidAmountType)):
            pool.acquire({"gpu": bad})
    with pytest.raises(allotment.UnknownResource):
        pool.acquire({"cpu": 1})
    with pytest.raises(allotment.ExceedsCapacity):
        pool.acquire({"gpu": 3})
    with pool.acquire({"gpu": 1}) as lease, pytest.raises(allotment.ReleaseExceedsHeld):
        lease.release({"gpu": 2})
    assert pool.statistics().available == {"gpu": 2}


def test_try_acquire_never_overtakes(make: MakeManager, workers: list[Worker]) -> None:
    pool = make(3)
    holder = pool.acquire(2)
    start(workers, lambda: pool.acquire(3).release(), "big")
    wait_for_waiters(pool, 1)
    assert pool.try_acquire(1) is None
    holder.release()
    workers[0].join(30)
    lease = pool.try_acquire(1)
    assert lease is not None
    lease.release()


def test_release_is_exactly_once(make: MakeManager) -> None:
    pool = make(2)
    lease = pool.acquire(2)
    lease.release()
    lease.release()
    assert pool.statistics().available == 2
    with pytest.raises(allotment.LeaseReleased), lease:
        pass


def test_exception_in_body_returns_units(make: MakeManager) -> None:
    pool = make(2)
    with pytest.raises(KeyError), pool.acquire(2):
        raise KeyError("body")
    assert pool.statistics().available == 2


def test_resize_grants_and_refuses(make: MakeManager, workers: list[Worker]) -> None:
    pool = make(2)
    holder = pool.acquire(2)
    waiter = start(workers, lambda: pool.acquire(2).release(), "two")
    wait_for_waiters(pool, 1)
    pool.resize(4)
    waiter.join(30)
    assert waiter.error is None
    doomed = start(workers, lambda: pool.acquire(4), "four")
    wait_for_waiters(pool, 1)
    pool.resize(3)
    doomed.join(30)
    assert isinstance(doomed.error, allotment.ExceedsCapacity)
    holder.release()
    assert pool.statistics().capacity == 3
    assert pool.statistics().available == 3


def test_close_refuses_waiters(make: MakeManager, workers: list[Worker]) -> None:
    pool = make(1)
    holder = pool.acquire(1)
    waiter = start(workers, lambda: pool.acquire(1), "waiter")
    wait_for_waiters(pool, 1)
    pool.close()
    waiter.join(30)
    assert isinstance(waiter.error, allotment.ManagerClosed)
    with pytest.raises(allotment.ManagerClosed):
        pool.acquire(1)
    holder.release()


def test_acquire_all_takes_everything_or_nothing(make: MakeManager, workers: list[Worker]) -> None:
    first = make(1)
    second = make(2)
    local = allotment.ResourceManager(1)  # an in-memory part beside the backend's
    with allotment.acquire_all([(first, 1), (second, 1), (second, 1), (local, 1)]) as group:
        assert first.statistics().available == 0
        assert second.statistics().available == 0
        assert len(group) == 4
    assert second.statistics().available == 2
    holder = second.acquire(2)
    with pytest.raises(allotment.AcquireTimeout):
        allotment.acquire_all([(first, 1), (second, 1)], timeout=0.1)
    assert first.statistics().available == 1
    holder.release()


def test_a_leaked_lease_comes_back_with_a_warning(make: MakeManager) -> None:
    pool = make(1)

    def leak() -> None:
        pool.acquire(1)

    def leak_and_collect() -> None:
        leak()
        gc.collect()
        wait_until(lambda: pool.statistics().available == 1, "the leaked unit comes back")

    with pytest.warns(allotment.LeakedLeaseWarning, match="garbage-collected"):
        leak_and_collect()


def test_tasks_and_threads_share_one_queue(make: MakeManager, workers: list[Worker]) -> None:
    pool = make(1)
    order: list[str] = []
    holder = pool.acquire(1)

    async def main() -> None:
        async def task_side() -> None:
            async with pool.acquire_async(1):
                order.append("task")

        task = asyncio.create_task(task_side())
        await queued(pool, 1)
        start(workers, thread_side, "thread")
        await asyncio.to_thread(wait_for_waiters, pool, 2)
        holder.release()
        await task

    def thread_side() -> None:
        with pool.acquire(1):
            order.append("thread")

    run(main)
    workers[0].join(30)
    assert order == ["task", "thread"]  # the task asked first
    assert pool.statistics().available == 1


def test_cancelled_task_leaves_no_trace(make: MakeManager) -> None:
    pool = make(1)
    holder = pool.acquire(1)

    async def main() -> None:
        task = asyncio.create_task(pool.acquire_async(1))
        await queued(pool, 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main)
    assert pool.statistics().waiters == ()
    holder.release()
    with pool.acquire(1):
        pass


def test_fencing_tokens_increase(make: MakeManager, backend: RedisBackend | None) -> None:
    pool = make(2)
    tokens = []
    for _ in range(5):
        with pool.acquire(1) as lease:
            tokens.append(lease.fencing_token)
    if backend is None:
        assert tokens == [None] * 5
    else:
        assert all(isinstance(token, int) for token in tokens)
        assert tokens == sorted(set(tokens))  # type: ignore[type-var]


def test_threads_hammering_never_overlap(make: MakeManager, workers: list[Worker]) -> None:
    pool = make(3)
    inside = [0]
    worst = [0]
    guard = threading.Lock()

    def hammer() -> None:
        for _ in range(30):
            with pool.acquire(2):
                with guard:
                    inside[0] += 2
                    worst[0] = max(worst[0], inside[0])
                with guard:
                    inside[0] -= 2

    for index in range(4):
        start(workers, hammer, f"hammer-{index}")
    for worker in workers:
        worker.join(60)
        assert worker.error is None
    assert worst[0] <= 3
    assert pool.statistics().available == 3


# -- Redis only ----------------------------------------------------------------------------------


def test_a_lease_taken_without_waiting_is_renewed(redis_client: Any) -> None:
    backend = RedisBackend(redis_client, lease_ttl=3)
    try:
        pool = allotment.ResourceManager(1, name="renewed", backend=backend)
        lease = pool.try_acquire(1)
        assert lease is not None
        time.sleep(4.5)  # longer than the TTL: only renewals keep it
        assert not lease.lost
        lease.release()
    finally:
        backend.close()


def test_a_closed_backend_refuses(redis_client: Any) -> None:
    backend = RedisBackend(redis_client)
    pool = allotment.ResourceManager(1, name="closed-backend", backend=backend)
    backend.close()
    with pytest.raises(allotment.BackendUnavailable, match="closed"):
        pool.acquire(1)


def test_keys_are_shared_between_processes(redis_client: Any) -> None:
    first, second = RedisBackend(redis_client), RedisBackend(redis_client)  # as two processes
    try:
        one = allotment.KeyedRateLimiter(1, per=60, name="users", backend=first)
        other = allotment.KeyedRateLimiter(1, per=60, name="users", backend=second)
        assert one.try_acquire("alice")
        assert not other.try_acquire("alice")
        assert other.retry_after("alice") > 50
        assert other.statistics("alice").available == 0
        assert other.try_acquire("bob")
    finally:
        first.close()
        second.close()


def test_a_conflicting_declaration_is_refused(redis_backend: RedisBackend) -> None:
    allotment.ResourceManager({"gpu": 2}, name="declared", backend=redis_backend)
    with pytest.raises(allotment.BackendConflict, match="declared"):
        allotment.ResourceManager({"gpu": 3}, name="declared", backend=redis_backend)
    api = allotment.RateLimiter(10, per=1, name="declared-rate", backend=redis_backend)
    api.acquire()
    with pytest.raises(allotment.BackendConflict):
        allotment.RateLimiter(20, per=1, name="declared-rate", backend=redis_backend)


def test_what_a_backend_cannot_do_is_refused_at_construction(redis_backend: RedisBackend) -> None:
    with pytest.raises(allotment.UnsupportedByBackend):
        allotment.ResourceManager(2, name="banker", backend=redis_backend, banker=True)
    with pytest.raises(allotment.UnsupportedByBackend):
        allotment.RateLimiter(1, name="clocked", backend=redis_backend, clock=ManualClock())
    with pytest.raises(TypeError, match="name"):
        allotment.ResourceManager(2, backend=redis_backend)
    for semaphore in (allotment.Semaphore, allotment.BoundedSemaphore):
        with pytest.raises(allotment.UnsupportedByBackend):
            semaphore(2, backend=redis_backend)
    with pytest.raises(allotment.UnsupportedByBackend):
        allotment.RateLimiter(1, on_unavailable="allow")
    keyed = allotment.KeyedRateLimiter(1, name="keyed", backend=redis_backend)
    with pytest.raises(allotment.InvalidKey):
        keyed.try_acquire(("a", 1))


def test_an_asyncio_client_names_the_server_too(redis_server: Any, redis_client: Any) -> None:
    import redis.asyncio

    async def main() -> None:
        client = redis.asyncio.Redis(unix_socket_path=redis_server.path)
        backend = RedisBackend(client)  # its own connections, to the same server
        try:
            pool = allotment.ResourceManager(1, name="from-async", backend=backend)
            async with pool.acquire_async(1) as lease:
                assert lease.fencing_token is not None
            api = allotment.RateLimiter(10, name="from-async", backend=backend)
            await api.acquire_async()
        finally:
            backend.close()
            await client.aclose()

    run(main)


def test_statistics_count_other_processes(redis_client: Any) -> None:
    first, second = RedisBackend(redis_client), RedisBackend(redis_client)  # as two processes
    try:
        here = allotment.ResourceManager(2, name="counted", backend=first)
        there = allotment.ResourceManager(2, name="counted", backend=second)
        theirs = there.acquire(2)
        stats = here.statistics()
        assert (stats.holders, stats.other_holders, stats.in_use) == ((), 1, 2)
        assert "(and 1 in other processes)" in str(stats)
        theirs.release()
        assert here.statistics().other_holders == 0
    finally:
        first.close()
        second.close()
