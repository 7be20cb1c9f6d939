"""Round trips per call on the Redis backend (counted, not timed), and that a saved round
trip costs no guarantee: a capacity that shrank elsewhere is still refused, all or nothing."""

from __future__ import annotations

from typing import Any

import pytest

import allotment
from allotment.redis import RedisBackend
from redis_support import counting_round_trips


def test_round_trips_per_call(redis_backend: RedisBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = allotment.ResourceManager(3, name="trips", backend=redis_backend)
    other = allotment.ResourceManager(3, name="trips-other", backend=redis_backend, rank=5)
    api = allotment.RateLimiter(1000, per=1, name="trips", backend=redis_backend)
    ran = counting_round_trips(monkeypatch)
    with pool.acquire(1):
        pass
    assert ran == ["enter", "release"]
    ran.clear()
    with allotment.acquire_all([(pool, 1), (api, 1)]):
        pass
    assert ran == ["take-all", "release"]  # one script decides every part; one lease
    ran.clear()
    with allotment.acquire_all([(pool, 1), (other, 1)]):
        pass
    assert ran == ["take-all", "release-all"]
    ran.clear()
    with allotment.acquire_all([(pool, 1), (other, 1), (api, 1)]) as group:
        assert [lease.fencing_token is not None for lease in group] == [True, True]
    assert ran == ["take-all", "release-all"]


def test_a_capacity_shrunk_elsewhere_is_refused_all_or_nothing(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    here, there = RedisBackend(redis_client), RedisBackend(redis_client)  # as two processes
    try:
        first = allotment.ResourceManager(2, name="first", backend=here, rank=1)
        shrunk = allotment.ResourceManager(4, name="shrunk", backend=here, rank=2)
        allotment.ResourceManager(4, name="shrunk", backend=there).resize(2)
        with pytest.raises(allotment.ExceedsCapacity):
            allotment.acquire_all([(first, 1), (shrunk, 3)])
        assert first.statistics().available == 2  # what was taken was given back
        assert shrunk.statistics().available == 2
        # A capacity grown elsewhere is read again, not refused from the figures last read.
        allotment.ResourceManager(4, name="shrunk", backend=there).resize(4)
        with allotment.acquire_all([(first, 1), (shrunk, 3)]) as group:
            assert [lease.amounts for lease in group] == [1, 3]
    finally:
        here.close()
        there.close()


def test_parts_on_different_backends_take_the_general_path_all_or_nothing(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Managers on two backends (as two processes), one in memory and a limiter: no group
    script; each part alone, in rank order; a part that times out gives back the others."""
    here, there = RedisBackend(redis_client), RedisBackend(redis_client)
    try:
        first = allotment.ResourceManager(2, name="mixed-a", backend=here, rank=1)
        second = allotment.ResourceManager(2, name="mixed-b", backend=there, rank=2)
        local = allotment.ResourceManager(2, rank=3)
        api = allotment.RateLimiter(1000, per=1, name="mixed-api", backend=here)
        ran = counting_round_trips(monkeypatch)
        with allotment.acquire_all([(first, 1), (second, 1), (local, 1), (api, 1)]) as group:
            assert [lease.amounts for lease in group] == [1, 1, 1]
        assert "take-all" not in ran
        assert ran.count("enter") == 2  # each Redis manager alone
        holder = second.acquire(2)
        with pytest.raises(allotment.AcquireTimeout):
            allotment.acquire_all([(first, 1), (second, 1), (local, 1)], timeout=0.2)
        assert first.statistics().available == 2
        assert local.statistics().available == 2
        holder.release()
        assert second.statistics().available == 2
    finally:
        here.close()
        there.close()
