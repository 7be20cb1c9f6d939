"""The Redis backend's errors speak the user's terms: a conflicting declaration says what
each side declared ("capacity 3", "50 per 1 s"), and an unreachable server names the call."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable

import pytest

import allotment
from allotment.redis import RedisBackend
from redis_support import RedisServer


def test_a_manager_conflict_names_both_capacities(redis_backend: RedisBackend) -> None:
    allotment.ResourceManager(3, name="cap", backend=redis_backend)
    with pytest.raises(allotment.BackendConflict) as raised:
        allotment.ResourceManager(2, name="cap", backend=redis_backend)
    message = str(raised.value)
    assert "declared with capacity 3; this process declared capacity 2" in message
    assert "'-'" not in message


def test_a_named_manager_conflict_names_the_resources(redis_backend: RedisBackend) -> None:
    pool = allotment.ResourceManager({"gpu": 2, "ram_gb": 64}, name="node", backend=redis_backend)
    pool.resize({"gpu": 4, "ram_gb": 64})
    with pytest.raises(allotment.BackendConflict) as raised:
        allotment.ResourceManager({"gpu": 3}, name="node", backend=redis_backend)
    message = str(raised.value)
    assert "resources {'gpu': 2, 'ram_gb': 64} (resized to resources {'gpu': 4, 'ram_gb': 64})" in (
        message
    )
    assert "this process declared resources {'gpu': 3}" in message


@pytest.mark.parametrize(
    ("first", "second", "stored", "declared"),
    [
        ((50, 1, None), (20, 1, None), "50 per 1 s, burst 50", "20 per 1 s, burst 20"),
        ((500, 60, 50), (100, 60, 50), "500 per 60 s, burst 50", "100 per 60 s, burst 50"),
    ],
)
def test_a_rate_limiter_conflict_says_the_rates(
    redis_backend: RedisBackend,
    first: tuple[int, int, int | None],
    second: tuple[int, int, int | None],
    stored: str,
    declared: str,
) -> None:
    rate, per, burst = first
    api = allotment.RateLimiter(rate, per=per, burst=burst, name="api", backend=redis_backend)
    assert api.try_acquire()  # state (and so the settings) exists in Redis
    rate, per, burst = second
    with pytest.raises(allotment.BackendConflict) as raised:
        allotment.RateLimiter(rate, per=per, burst=burst, name="api", backend=redis_backend)
    message = str(raised.value)
    assert f"exists in Redis as {stored}; this process declared {declared}" in message
    assert not re.search(r"'\d+,\d+'", message)


def test_a_window_conflict_says_the_limits(redis_backend: RedisBackend) -> None:
    quota = allotment.WindowLimiter(50, per=1, name="quota", backend=redis_backend)
    assert quota.try_acquire()
    with pytest.raises(allotment.BackendConflict) as raised:
        allotment.WindowLimiter(10, per=2, name="quota", backend=redis_backend)
    assert "exists in Redis as 50 per 1 s; this process declared 10 per 2 s" in str(raised.value)


def test_an_unreachable_server_names_the_users_call(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Each call's ``BackendUnavailable`` starts with that call, in the user's terms, never
    with the round trip's script operation (``snapshot``, ``peek``) or its arguments."""
    from allotment.http import Policy

    backend = RedisBackend(server.client(), timeout=0.5)
    try:
        pool = allotment.ResourceManager(3, name="cap", backend=backend, rank=1)
        other = allotment.ResourceManager(3, name="other", backend=backend, rank=2)
        api = allotment.RateLimiter(50, per=1, name="api", backend=backend)
        users = allotment.KeyedRateLimiter(10, per=1, name="per-user", backend=backend)
        local = allotment.ResourceManager(1)
        lease = pool.acquire(2)
        server.kill()
        calls: list[tuple[str, Callable[[], object]]] = [
            ("acquire on 'cap'", lambda: pool.acquire(1)),
            ("acquire on 'cap'", lambda: asyncio.run(pool.acquire_async(1))),
            ("release on 'cap'", lambda: lease.release(1)),
            ("acquire on 'api'", api.try_acquire),
            ("resize on 'cap'", lambda: pool.resize(4)),
            ("statistics on 'cap'", pool.statistics),
            ("statistics on 'api'", api.statistics),
            ("acquire_all on 'cap'", lambda: allotment.acquire_all([(pool, 1), (other, 1)])),
            ("acquire_all on 'api'", lambda: allotment.acquire_all([(local, 1), (api, 1)])),
            ("retry_after on 'per-user'", lambda: users.retry_after("alice")),
            (
                "making the manager on 'new'",
                lambda: allotment.ResourceManager(1, name="new", backend=backend),
            ),
            (
                "making the limiter on 'new'",
                lambda: allotment.RateLimiter(1, per=1, name="new", backend=backend),
            ),
        ]
        for call, run in calls:
            with pytest.raises(allotment.BackendUnavailable) as raised:
                run()
            assert str(raised.value).startswith(f"{call}: "), (call, str(raised.value))
        with caplog.at_level(logging.WARNING, logger="allotment.http"):
            Policy(api).pause(5)  # logged, never raised: the policy's own pause holds
        assert any(
            "pause on 'api': the Redis server did not answer" in str(record.exc_info[1])
            for record in caplog.records
            if record.exc_info
        ), caplog.records
        lease.release()  # a full release never raises: the keeper would retry it
    finally:
        backend.close()
    with pytest.raises(allotment.BackendUnavailable, match=r"^acquire on 'cap': .*closed"):
        pool.acquire(1)
