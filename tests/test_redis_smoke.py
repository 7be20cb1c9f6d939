from __future__ import annotations

import allotment
from allotment.redis import RedisBackend


def test_acquire_release(redis_backend: RedisBackend) -> None:
    pool = allotment.ResourceManager(2, name="smoke", backend=redis_backend)
    with pool.acquire(1) as lease:
        assert lease.fencing_token is not None
    assert pool.statistics().available == 2
