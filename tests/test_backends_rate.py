"""The rate limiters' contract on both backends: memory and Redis (real time, generous
bounds: a Redis limiter runs on the server's clock, which a test cannot hold)."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

import allotment
from aio_support import run
from allotment.redis import RedisBackend

_names = itertools.count()


def _name() -> str:
    return f"rate-{next(_names)}"


def test_a_burst_then_the_rate(backend: RedisBackend | None) -> None:
    api = allotment.RateLimiter(20, per=1, burst=5, name=_name(), backend=backend)
    assert all(api.try_acquire() for _ in range(5))
    assert not api.try_acquire()
    started = time.monotonic()
    for _ in range(4):
        api.acquire()
    elapsed = time.monotonic() - started
    assert elapsed >= 4 / 20 - 0.01  # never faster than the rate
    assert elapsed < 4 / 20 + 2.0


def test_a_timeout_that_cannot_be_met_fails_at_once(backend: RedisBackend | None) -> None:
    api = allotment.RateLimiter(1, per=10, burst=1, name=_name(), backend=backend)
    api.acquire()
    started = time.monotonic()
    with pytest.raises(allotment.AcquireTimeout):
        api.acquire(timeout=1)
    assert time.monotonic() - started < 0.5
    assert not api.try_acquire()  # and it spent nothing: still 10 s to wait, not 20
    assert api.reserve().delay < 10.5


def test_reservations_and_cancel(backend: RedisBackend | None) -> None:
    api = allotment.RateLimiter(2, per=1, burst=1, name=_name(), backend=backend)
    first = api.reserve()
    assert first.delay == 0
    second = api.reserve()
    assert 0.3 < second.delay <= 0.5
    third = api.reserve()
    assert 0.8 < third.delay <= 1.0
    assert third.cancel()  # the last one: refunded exactly
    fourth = api.reserve()
    assert 0.8 < fourth.delay <= 1.0
    fourth.wait()
    assert fourth.delay == 0


def test_charge_puts_the_limiter_in_debt(backend: RedisBackend | None) -> None:
    api = allotment.RateLimiter(10, per=1, burst=1, name=_name(), backend=backend)
    api.charge(5)
    assert not api.try_acquire()
    assert 0.4 < api.reserve().delay <= 0.6


def test_window_limiter(backend: RedisBackend | None) -> None:
    window = allotment.WindowLimiter(3, per=0.5, name=_name(), backend=backend)
    assert all(window.try_acquire() for _ in range(3))
    assert not window.try_acquire()
    started = time.monotonic()
    window.acquire(2)
    assert 0.45 < time.monotonic() - started < 2.5


def test_keyed_limiter(backend: RedisBackend | None) -> None:
    users = allotment.KeyedRateLimiter(2, per=60, name=_name(), backend=backend)
    assert users.try_acquire("a")
    assert users.try_acquire("a")
    assert not users.try_acquire("a")
    assert users.try_acquire("b", 2)
    assert users.retry_after("a") > 25


def test_bad_input_raises_before_any_round_trip(backend: RedisBackend | None) -> None:
    api = allotment.RateLimiter(10, per=1, burst=3, name=_name(), backend=backend)
    for bad in (0, -1, True, 1.5):
        with pytest.raises((allotment.InvalidAmount, allotment.InvalidAmountType)):
            api.acquire(bad)  # type: ignore[arg-type]
    with pytest.raises(allotment.ExceedsBurst):
        api.acquire(4)
    with pytest.raises(ValueError, match="timeout"):
        api.acquire(1, timeout=-1)


def test_tasks_wait_and_cancellation_refunds(backend: RedisBackend | None) -> None:
    api = allotment.RateLimiter(5, per=1, burst=1, name=_name(), backend=backend)

    async def main() -> None:
        await api.acquire_async()
        waiting = asyncio.create_task(api.acquire_async())
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        # The cancelled wait was refunded: the next unit comes after one interval, not two.
        started = time.monotonic()
        await api.acquire_async()
        assert time.monotonic() - started < 0.2 + 0.15

    run(main)


def test_acquire_all_combines_a_pool_and_a_rate(backend: RedisBackend | None) -> None:
    pool = allotment.ResourceManager(1, name=_name(), backend=backend)
    api = allotment.RateLimiter(10, per=1, burst=1, name=_name(), backend=backend)
    with allotment.acquire_all([(pool, 1), (api, 1)]):
        assert pool.try_acquire(1) is None
        assert not api.try_acquire()
    with pool.acquire(1):
        pass


def test_guard(backend: RedisBackend | None) -> None:
    api = allotment.RateLimiter(100, per=1, burst=2, name=_name(), backend=backend)
    calls: list[int] = []

    @api.guard()
    def work(value: int) -> int:
        calls.append(value)
        return value

    assert [work(1), work(2)] == [1, 2]
    assert not api.try_acquire()


def test_statistics(backend: RedisBackend | None) -> None:
    api = allotment.RateLimiter(10, per=1, burst=4, name=_name(), backend=backend)
    api.acquire(3)
    stats = api.statistics()
    assert stats.available == 1
    assert stats.allowed_units == 3


def test_a_cost_reserved_but_interrupted_is_refunded(backend: RedisBackend | None) -> None:
    api = allotment.RateLimiter(2, per=1, burst=1, name=_name(), backend=backend)
    api.acquire()

    async def main() -> Any:
        task = asyncio.create_task(api.acquire_async())
        await asyncio.sleep(0.1)
        task.cancel()
        return await asyncio.gather(task, return_exceptions=True)

    (outcome,) = run(main)
    assert isinstance(outcome, asyncio.CancelledError)
    assert 0.2 < api.reserve().delay <= 0.5  # the cancelled unit left no trace


def _script_calls(client: Any) -> int:
    stats = client.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
        for command in ("evalsha", "eval", "script|load")
    )


def test_bad_input_makes_no_round_trip(redis_backend: RedisBackend, redis_client: Any) -> None:
    pool = allotment.ResourceManager({"gpu": 2}, name=_name(), backend=redis_backend)
    api = allotment.RateLimiter(10, per=1, burst=3, name=_name(), backend=redis_backend)
    keyed = allotment.KeyedRateLimiter(10, per=1, name=_name(), backend=redis_backend)
    before = _script_calls(redis_client)
    bad: Any
    for bad in (0, -1, True, 1.5, "1"):
        with pytest.raises((allotment.InvalidAmount, allotment.InvalidAmountType)):
            pool.acquire({"gpu": bad})
        with pytest.raises((allotment.InvalidAmount, allotment.InvalidAmountType)):
            api.acquire(bad)
        with pytest.raises((allotment.InvalidAmount, allotment.InvalidAmountType)):
            keyed.acquire("user", bad)
    with pytest.raises(allotment.UnknownResource):
        pool.acquire({"cpu": 1})
    with pytest.raises(allotment.ExceedsBurst):
        api.try_acquire(4)
    with pytest.raises(allotment.InvalidKey):
        keyed.try_acquire(["a"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        pool.acquire({"gpu": 1}, timeout=-1)
    assert _script_calls(redis_client) == before


def test_everything_async_on_a_shared_backend(redis_backend: RedisBackend) -> None:
    shared_pool = allotment.ResourceManager(1, name=_name(), backend=redis_backend, rank=1)
    local_pool = allotment.ResourceManager(1, rank=2)
    api = allotment.RateLimiter(20, per=1, burst=1, name=_name(), backend=redis_backend)

    @api.guard()
    async def call(value: int) -> int:
        await asyncio.sleep(0)
        return value

    async def main() -> None:
        async with allotment.acquire_all_async([(shared_pool, 1), (local_pool, 1), (api, 1)]):
            assert shared_pool.try_acquire(1) is None
        reservation = api.reserve()
        await reservation.wait_async()
        assert reservation.delay == 0
        assert await call(7) == 7

    run(main)
    assert shared_pool.statistics().available == 1
