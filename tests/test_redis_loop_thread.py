"""No blocking round trip on an event loop's thread (issue 18): every call a task makes on a
Redis manager or limiter either awaits its loop's own client, or (a synchronous call whose
caller needs no answer: a release, a charge, a pause) runs as a task on it. The detector
fails any synchronous round trip made on a thread that runs a loop."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import pytest
import redis

import allotment
from aio_support import run, until
from allotment._limiters import limiter_parts
from allotment.http import HTTPRequest, Policy
from allotment.redis import RedisBackend
from support import wait_until


def _available(redis_backend: RedisBackend, name: str) -> int:
    return int(redis_backend.client.hget(f"allotment:{{{name}}}:cfg", "avail") or -1)


def test_a_lease_released_synchronously_in_a_task(
    redis_backend: RedisBackend, blocking_calls: list[object]
) -> None:
    """``lease.release()`` (full and partial) and a with-block's exit, in a task: released
    at once here, the units back on the server once the loop ran the round trip."""
    pool = allotment.ResourceManager(3, name="sync-release", backend=redis_backend)

    async def main() -> None:
        lease = await pool.acquire_async(3)
        lease.release(1)  # partial
        await until(lambda: lease.amounts == 2, "its reply applied")
        assert _available(redis_backend, "sync-release") == 1
        with pytest.raises(allotment.ReleaseExceedsHeld):
            lease.release(5)  # bad input still raises at once
        lease.release()
        assert lease.released
        await until(lambda: _available(redis_backend, "sync-release") == 3, "all back")
        with await pool.acquire_async(2):
            pass
        await until(lambda: _available(redis_backend, "sync-release") == 3, "back again")

    run(main)
    assert pool.statistics().available == 3


def test_acquire_all_async_forecasts_splits_and_rolls_back_on_the_loop(
    redis_backend: RedisBackend, blocking_calls: list[object]
) -> None:
    pool = allotment.ResourceManager(4, name="group-loop", backend=redis_backend)
    api = allotment.RateLimiter(1, per=60, name="group-loop", backend=redis_backend)

    async def main() -> None:
        # Two parts of one manager (one enter, then a split), and a limiter (a forecast).
        group = await allotment.acquire_all_async([(pool, 1), (pool, 2), (api, 1)])
        assert [lease.amounts for lease in group] == [1, 2]
        await group.release_async()
        # The limiter has nothing left for a minute: refused at its forecast, and the
        # manager's lease taken first is given back (synchronously, on the loop).
        with pytest.raises(allotment.AcquireTimeout):
            await allotment.acquire_all_async([(pool, 1), (api, 1)], timeout=0.05)
        await until(lambda: _available(redis_backend, "group-loop") == 4, "given back")

    run(main)
    assert pool.statistics().available == 4


def test_a_keyed_limiters_first_decision_on_the_loop(
    redis_backend: RedisBackend, blocking_calls: list[object]
) -> None:
    keyed = allotment.KeyedRateLimiter(100, per=1, name="keyed-loop", backend=redis_backend)

    async def main() -> None:
        await keyed.acquire_async("a")
        await keyed.acquire_async("b", cost=2)

    run(main)
    assert keyed.statistics("b").allowed_units == 2


def test_charges_and_pauses_from_a_task_run_on_the_loop(
    redis_backend: RedisBackend, blocking_calls: list[object], redis_client: redis.Redis
) -> None:
    """What an async HTTP client's ``Policy.observe`` does on a reply (a pause, a charge) and
    its release of the grant: none of them blocks the loop."""
    api = allotment.RateLimiter(100, per=1, name="http-loop", backend=redis_backend)
    keyed = allotment.KeyedRateLimiter(100, per=1, name="http-keyed", backend=redis_backend)
    pool = allotment.ResourceManager(2, name="http-loop", backend=redis_backend)
    policy = Policy(pool, api, keyed, key=lambda request: request.host, charge=lambda _: 5)
    request = HTTPRequest("GET", "https://api.example/v1", "api.example", None)

    async def main() -> None:
        grant = await policy.enter_async(request, lambda _: request)
        policy.observe(grant, 429, [("Retry-After", "1")], None)
        grant.release()
        api.charge(3)
        meter = limiter_parts(api).meter
        await until(lambda: meter.charged == 8, "both charges counted")  # type: ignore[attr-defined]
        await until(lambda: _available(redis_backend, "http-loop") == 2, "released")

    run(main)
    assert keyed.statistics("api.example").charged == 5
    # The pause reached the server: nothing is allowed for about a second.
    assert not api.try_acquire()
    assert redis_client.exists("allotment:{http-loop}:gcra")


def test_a_blocking_call_from_a_task_is_said_and_to_thread_is_the_way(
    redis_backend: RedisBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """``try_acquire``, ``statistics()`` and ``resize`` need their answer: from a task they
    block the loop (for up to ``timeout``), which is logged once per kind of call; run in a
    thread (``asyncio.to_thread``) they do not, and the lease is the task's to release."""
    pool = allotment.ResourceManager(2, name="to-thread", backend=redis_backend)

    async def main() -> None:
        with caplog.at_level(logging.WARNING, logger="allotment.redis"):
            assert pool.statistics().available == 2
            pool.statistics()
        blocking = [r for r in caplog.records if "blocking Redis round trip" in r.getMessage()]
        assert len(blocking) == 1
        assert "on 'to-thread'" in blocking[0].getMessage()
        assert "asyncio.to_thread" in blocking[0].getMessage()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="allotment.redis"):
            lease = await asyncio.to_thread(pool.try_acquire, 1)
            assert lease is not None
            await asyncio.to_thread(pool.resize, 3)
            assert (await asyncio.to_thread(pool.statistics)).capacity == 3
            lease.release()
            await until(lambda: _available(redis_backend, "to-thread") == 3, "released")
        assert caplog.records == []

    run(main)


def test_what_a_task_released_as_its_loop_ended_still_reaches_the_server(
    redis_backend: RedisBackend, blocking_calls: list[object]
) -> None:
    """A loop shutting down cancels every task, even one not started: the round trips a
    task handed to its loop last (a release, a charge) then go out on a thread instead."""
    pool = allotment.ResourceManager(2, name="last-words", backend=redis_backend)
    api = allotment.RateLimiter(100, per=1, name="last-words", backend=redis_backend)
    kept: list[allotment.Lease[int]] = []

    async def main() -> None:
        lease = await pool.acquire_async(2)
        kept.append(lease)
        lease.release()
        api.charge(4)  # main returns at once: both tasks are cancelled before they start

    run(main)
    assert kept[0].released
    wait_until(lambda: pool.statistics().available == 2, "the release reached the server")
    wait_until(lambda: api.statistics().charged == 4, "the charge reached the server")


def test_partial_releases_racing_in_two_tasks(
    redis_backend: RedisBackend, redis_client: redis.Redis
) -> None:
    """Two tasks of one loop release parts of one lease at once: they take turns (without
    blocking the loop), and each gives back exactly its own units."""
    pool = allotment.ResourceManager(6, name="task-parts", backend=redis_backend)

    async def main() -> None:
        lease = await pool.acquire_async(6)

        async def release_two() -> None:
            for _ in range(2):
                await lease.release_async(1)

        await asyncio.gather(release_two(), release_two())
        assert lease.amounts == 2
        assert _available(redis_backend, "task-parts") == 4
        await lease.release_async()

    run(main)
    assert pool.statistics().available == 6


@pytest.mark.skipif(not hasattr(sys, "_current_frames"), reason="needs sys._current_frames")
def test_an_exception_as_a_redis_meters_section_enters_leaves_it_free(
    redis_backend: RedisBackend,
) -> None:
    """3.14's with-entry window (see test_with_entry.py) on a Redis limiter's lock: an
    exception right after ``with`` takes it must not leave it held (every later call on the
    limiter would hang)."""
    from test_with_entry import _deliver_on_entry

    api = allotment.RateLimiter(10, per=1, name="meter-entry", backend=redis_backend)
    meter: Any = limiter_parts(api).meter
    assert not _deliver_on_entry(meter._lock)
    assert api.try_acquire()


@pytest.mark.timeout(30)
def test_a_redis_meter_entered_again_on_its_thread_says_so(redis_backend: RedisBackend) -> None:
    """A finalizer or signal handler that uses the limiter while its thread is inside the
    meter's section gets ``ReentrantCall``, never a deadlock."""
    api = allotment.RateLimiter(10, per=1, name="meter-again", backend=redis_backend)
    meter: Any = limiter_parts(api).meter
    with meter._lock, pytest.raises(allotment.ReentrantCall):
        api.try_acquire()
