"""The exception sweep of ``test_envelope.py``, on managers kept in Redis: an exception at
any point where CPython can deliver one, inside any public operation, leaves the manager
sound (nothing held or queued in Redis on the caller's behalf, no lost wake-up, the local
tables consistent), even when it lands between a round trip and the handling of its reply."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

import allotment
import test_envelope
from allotment.redis import RedisBackend
from support import GENEROUS, assert_idle, wait_until
from test_envelope import CASES, Case, run_sweep

_ON_REDIS = [case for case in CASES if not case.id.startswith(("claim", "semaphore", "bounded"))]


@pytest.fixture
def on_redis(redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # No renewal during a sweep (the keeper's renewals take the backend's lock, and a run
    # that meets it taken takes another path); waiters' polls still run every second.
    backend = RedisBackend(redis_client, lease_ttl=3000)
    make = test_envelope._manager

    def manager(capacity: Any, name: str, **options: Any) -> allotment.ResourceManager[Any]:
        return make(capacity, name, backend=backend, **options)

    def settled_then_idle(manager: allotment.ResourceManager[Any]) -> None:
        # A lease dropped in transit is reclaimed by the keeper, within one of its slices.
        wait_until(lambda: not backend._reclaims, "the keeper reclaimed the dropped lease")
        assert_idle(manager)

    def consistent_once_settled(stats: allotment.ManagerStatistics[Any]) -> None:
        # Right after an interrupted release, this process may still list as held a lease the
        # server has released (until the release is repeated: by the with-block's exit, the
        # caller, or the lease's finalizer): only the server's own figures must agree. The
        # idle check, after everything is given back, compares everything.
        # (In use may exceed a capacity just shrunk below it.)
        in_use = stats.in_use
        assert all(
            count >= 0 for count in (in_use.values() if isinstance(in_use, dict) else [in_use])
        )

    monkeypatch.setattr(test_envelope, "check_invariants", consistent_once_settled)
    monkeypatch.setattr(test_envelope, "_manager", manager)
    monkeypatch.setattr(test_envelope, "assert_idle", settled_then_idle)
    yield
    backend.close()


@pytest.mark.timeout(8 * GENEROUS)
@pytest.mark.parametrize("case", _ON_REDIS, ids=[case.id for case in _ON_REDIS])
@pytest.mark.usefixtures("on_redis")
def test_an_exception_at_any_check_point_leaves_a_redis_manager_sound(case: Case) -> None:
    assert run_sweep(case, reentrant=False).points


@pytest.mark.timeout(8 * GENEROUS)
@pytest.mark.parametrize("case", _ON_REDIS, ids=[case.id for case in _ON_REDIS])
@pytest.mark.usefixtures("on_redis")
def test_a_reentrant_call_at_any_check_point_leaves_a_redis_manager_sound(case: Case) -> None:
    """A finalizer or signal handler calling back at any check point: ``repr`` works,
    ``statistics()`` and ``try_acquire`` work or raise ``ReentrantCall``, and a full release
    of another lease is done before the interrupted operation returns."""
    assert run_sweep(case, reentrant=True).points
