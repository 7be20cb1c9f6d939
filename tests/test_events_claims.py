"""Events of declared claims (banker mode): reported as the manager's own acquisitions."""

from __future__ import annotations

import asyncio

import pytest

import allotment
from allotment import Recorder
from support import Worker, wait_for_waiters
from test_events import no_observer_is_left_behind  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(60)


def _kinds(recorder: Recorder) -> list[tuple[str, str, object, object]]:
    return [(e.kind, e.owner.thread, e.amount, e.remaining) for e in recorder.events]


def test_a_claim_reports_grants_refusals_timeouts_and_releases() -> None:
    pool = allotment.ResourceManager(2, name="tapes", banker=True)
    with Recorder() as recorder, pool.claim(2) as claim:
        other = pool.claim(1)
        other.acquire(1)
        first = claim.acquire(1)
        assert claim.try_acquire(1) is None
        with pytest.raises(allotment.AcquireTimeout):
            claim.acquire(1, timeout=0)
        first.release()
        other.close()  # gives back the lease it holds: reported, timed as the close began
    assert _kinds(recorder) == [
        ("granted", "MainThread", 1, None),
        ("granted", "MainThread", 1, None),
        ("refused", "MainThread", 1, None),
        ("timed_out", "MainThread", 1, None),
        ("released", "MainThread", 1, 0),
        ("released", "MainThread", 1, 0),
    ]
    granted = [e for e in recorder.events if e.kind == "granted"]
    released = [e for e in recorder.events if e.kind == "released"]
    assert [e.request for e in released] == [granted[1].request, granted[0].request]
    assert recorder.events[2].reason == "WouldWait"
    assert pool.statistics().in_use == 0


def test_a_claim_that_waits_reports_requested_then_granted_with_its_wait() -> None:
    pool = allotment.ResourceManager(2, name="tapes", banker=True)
    with Recorder() as recorder, pool.claim(2) as holder:
        held = holder.acquire(2)

        def wait() -> None:
            with pool.claim(1) as claim:
                claim.acquire(1, timeout=30).release()

        waiter = Worker(wait, name="waiter")
        waiter.start()
        wait_for_waiters(pool, 1)
        held.release()
        waiter.outcome()
    waiter_events = [e for e in recorder.events if e.owner.thread == "waiter"]
    assert [e.kind for e in waiter_events] == ["requested", "granted", "released"]
    granted = waiter_events[1]
    assert granted.wait is not None
    assert granted.wait > 0
    assert len({e.request for e in waiter_events}) == 1


def test_a_claim_acquired_by_a_task_is_reported_and_a_cancellation_too() -> None:
    pool = allotment.ResourceManager(2, name="tapes", banker=True)

    async def use() -> None:
        with pool.claim(2) as claim:
            async with claim.acquire_async(2):
                pass
            blocker = pool.claim(1)
            with pool.claim(2) as other:
                held = other.acquire(1)
                task = asyncio.ensure_future(claim.acquire_async(2))
                while not pool.statistics().waiters:
                    await asyncio.sleep(0.001)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                held.release()
            blocker.close()

    with Recorder() as recorder:
        asyncio.run(use())
    kinds = [(e.kind, e.amount, e.reason) for e in recorder.events]
    assert kinds[:2] == [("granted", 2, None), ("released", 2, None)]
    assert ("requested", 2, None) in kinds
    assert ("cancelled", 2, "CancelledError") in kinds
    assert pool.statistics().in_use == 0
