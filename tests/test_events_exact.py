"""Exact event counts under a mixed workload: 16 threads and 8 tasks taking ``acquire_all``
groups (two managers and a rate limiter) and declared claims (banker mode) at once."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest

import allotment
from allotment import Event, Recorder
from support import run_threads_beside_a_loop
from test_events import no_observer_is_left_behind  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(120)

THREADS, TASKS, JOBS = 16, 8, 12


def _run(parts: list[tuple[Any, Any]], tapes: allotment.ResourceManager[Any], jobs: int) -> None:
    def thread_work() -> None:
        for _ in range(jobs):
            with allotment.acquire_all(parts, timeout=60):
                pass
            with tapes.claim(2) as claim:
                kept = claim.acquire(1, timeout=60)
                with claim.acquire(1, timeout=60):
                    pass
                assert not kept.released  # the claim's close gives it back, reported

    async def task_work() -> None:
        for _ in range(jobs):
            async with allotment.acquire_all_async(parts, timeout=60):
                await asyncio.sleep(0)
            with tapes.claim(1) as claim:
                async with claim.acquire_async(1, timeout=60):
                    await asyncio.sleep(0)

    run_threads_beside_a_loop([thread_work] * THREADS, [task_work] * TASKS)


def _given_back(events: tuple[Event, ...]) -> tuple[dict[int, Any], dict[int, int]]:
    """Per request, the sum of what its releases gave back, and how many of them ended it."""
    returned: dict[int, Any] = {}
    finals: collections.Counter[int] = collections.Counter()
    for event in events:
        if event.kind != "released":
            continue
        amount = event.amount
        if isinstance(amount, dict):
            total = dict(returned.get(event.request, {}))
            for resource, units in amount.items():
                total[resource] = total.get(resource, 0) + units
            returned[event.request] = total
        else:
            returned[event.request] = returned.get(event.request, 0) + amount
        finals[event.request] += event.remaining in (0, {})
    return returned, dict(finals)


def test_exact_counts_of_groups_and_claims_under_16_threads_and_8_tasks() -> None:
    gpus = allotment.ResourceManager(3, name="gpus")
    disks = allotment.ResourceManager({"iops": 10}, name="disks")
    limiter = allotment.RateLimiter(1e9, burst=1_000_000, name="api")
    tapes = allotment.ResourceManager(4, name="tapes", banker=True)
    parts: list[tuple[Any, Any]] = [(gpus, 1), (disks, {"iops": 3}), (limiter, 1)]
    with Recorder(capacity=1_000_000) as recorder:
        _run(parts, tapes, JOBS)
    events = recorder.events
    assert recorder.dropped == 0
    groups = (THREADS + TASKS) * JOBS
    count = collections.Counter((event.kind, event.name) for event in events)
    # A group's parts each report requested, granted, released; its rate one allowance.
    for name in ("gpus", "disks"):
        assert count["requested", name] == count["granted", name] == groups
        assert count["released", name] == groups
    assert count["rate_allowed", "api"] == groups
    # Claims: two grants per thread's claim, one per task's; a queued one also reports
    # requested. Nothing timed out, was refused or cancelled.
    claim_grants = THREADS * JOBS * 2 + TASKS * JOBS
    assert count["granted", "tapes"] == claim_grants
    assert count["released", "tapes"] == claim_grants
    assert count["requested", "tapes"] <= claim_grants
    kinds = {kind for kind, _name in count}
    assert kinds <= {"requested", "granted", "released", "rate_allowed"}
    granted = {event.request: event for event in events if event.kind == "granted"}
    assert len(granted) == 2 * groups + claim_grants  # one number per request
    queued = {event.request for event in events if event.kind == "requested"}
    assert queued <= set(granted)
    returned, finals = _given_back(events)
    # Every grant is given back exactly, in one release that ends it.
    assert {request: event.amount for request, event in granted.items()} == returned
    assert set(finals) == set(granted)
    assert set(finals.values()) == {1}
    owners = {event.owner for event in events if event.kind == "granted"}
    assert len({owner.task for owner in owners if owner.task is not None}) == TASKS
    assert len({owner.thread for owner in owners if owner.task is None}) == THREADS
    for manager in (gpus, disks, tapes):
        assert manager.statistics().in_use in (0, {"iops": 0})
        assert manager.statistics().holders == ()


def test_counts_stay_exact_with_a_callable_observer_beside_the_recorder() -> None:
    """The other delivery path (frozen events to a callable, records to the recorder):
    both see every event once."""
    gpus = allotment.ResourceManager(2, name="gpus")
    limiter = allotment.RateLimiter(1e9, burst=1_000_000, name="api")
    tapes = allotment.ResourceManager(3, name="tapes", banker=True)
    seen: collections.deque[Event] = collections.deque()
    allotment.add_observer(seen.append)
    try:
        with Recorder(capacity=1_000_000) as recorder:
            _run([(gpus, 1), (limiter, 1)], tapes, 4)
    finally:
        allotment.remove_observer(seen.append)
    kept = collections.Counter((event.kind, event.name) for event in recorder.events)
    delivered = collections.Counter((event.kind, event.name) for event in seen)
    groups = (THREADS + TASKS) * 4
    assert kept == delivered
    assert kept["granted", "gpus"] == kept["released", "gpus"] == groups
    assert kept["rate_allowed", "api"] == groups
    assert kept["granted", "tapes"] == kept["released", "tapes"] == THREADS * 8 + TASKS * 4
