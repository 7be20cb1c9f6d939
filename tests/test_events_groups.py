"""Events of ``acquire_all`` (sync, async, try_), and the guards built on it: each part is
reported under its own manager's name."""

from __future__ import annotations

import asyncio
import collections
import json
import threading
from pathlib import Path

import pytest

import allotment
from allotment import Recorder
from support import Worker, wait_for_waiters
from test_events import check_trace, no_observer_is_left_behind  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(60)


def test_acquire_all_reports_every_part_exactly() -> None:
    gpus = allotment.ResourceManager(2, name="gpus")
    disks = allotment.ResourceManager({"iops": 10}, name="disks")
    threads, jobs = 8, 20
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait()
        for _ in range(jobs):
            with allotment.acquire_all([(gpus, 1), (disks, {"iops": 3}), (gpus, 1)]):
                pass

    with Recorder(capacity=100_000) as recorder:
        workers = [threading.Thread(target=work) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    events = recorder.events
    assert recorder.dropped == 0
    groups = threads * jobs
    count = collections.Counter((event.kind, event.name) for event in events)
    # Two parts to "gpus" (merged, then split) and one to "disks", per group.
    assert count == {
        ("requested", "gpus"): 2 * groups,
        ("granted", "gpus"): 2 * groups,
        ("released", "gpus"): 2 * groups,
        ("requested", "disks"): groups,
        ("granted", "disks"): groups,
        ("released", "disks"): groups,
    }
    granted = {event.request: event for event in events if event.kind == "granted"}
    released = {event.request: event for event in events if event.kind == "released"}
    assert granted.keys() == released.keys()
    for request, event in granted.items():
        assert released[request].amount == event.amount
        assert event.wait is not None
        assert event.wait >= 0
    assert all(event.amount == {"iops": 3} for event in granted.values() if event.name == "disks")
    assert all(event.amount == 1 for event in granted.values() if event.name == "gpus")


def test_a_timed_out_acquire_all_reports_timed_out_and_no_hold(tmp_path: Path) -> None:
    first = allotment.ResourceManager(1, name="first", rank=0)
    second = allotment.ResourceManager(1, name="second", rank=1)
    blocker = second.acquire(1)
    with Recorder() as recorder, pytest.raises(allotment.AcquireTimeout):
        allotment.acquire_all([(first, 1), (second, 1)], timeout=0.05)
    blocker.release()
    kinds = [(event.kind, event.name) for event in recorder.events]
    assert kinds == [("requested", "second"), ("timed_out", "second")]
    assert first.statistics().in_use == 0
    path = tmp_path / "run.json"
    recorder.export_trace(path)
    counts = check_trace(json.loads(path.read_text("utf-8")), {"first": 1, "second": 1})
    assert counts["holds"] == 0


def test_acquire_all_async_try_acquire_all_and_guards_are_reported(tmp_path: Path) -> None:
    pool = allotment.ResourceManager(3, name="pool")
    other = allotment.ResourceManager(2, name="other")

    @allotment.guard((pool, 1), (other, 1))
    def guarded() -> None:
        pass

    async def tasks() -> None:
        async def one() -> None:
            async with allotment.acquire_all_async([(pool, 1), (other, 1)]):
                await asyncio.sleep(0)

        await asyncio.gather(*(one() for _ in range(4)))

    with Recorder() as recorder:
        asyncio.run(tasks())
        guarded()
        group = allotment.try_acquire_all([(pool, 2)])
        assert group is not None
        group[0].release()  # a part's own release is reported too
        group.release()
    events = recorder.events
    count = collections.Counter((event.kind, event.name) for event in events)
    assert count[("granted", "pool")] == count[("released", "pool")] == 6
    assert count[("granted", "other")] == count[("released", "other")] == 5
    assert sum(event.owner.task is not None for event in events if event.kind == "granted") == 8
    path = tmp_path / "run.json"
    recorder.export_trace(path)
    counts = check_trace(json.loads(path.read_text("utf-8")), {"pool": 3, "other": 2})
    assert counts["holds"] == 11


def _ends(recorder: Recorder) -> list[tuple[str, str, object, str | None]]:
    return [(event.kind, event.name, event.amount, event.reason) for event in recorder.events]


def test_an_acquire_all_refused_by_a_closed_manager_reports_refused() -> None:
    first = allotment.ResourceManager(1, name="first", rank=0)
    second = allotment.ResourceManager(2, name="second", rank=1)
    second.close()
    with Recorder() as recorder, pytest.raises(allotment.ManagerClosed):
        allotment.acquire_all([(first, 1), (second, 1), (second, 1)])
    # The parts to the closed manager, each; the one already taken was never usable.
    assert _ends(recorder) == [
        ("requested", "second", 1, None),
        ("refused", "second", 1, "ManagerClosed"),
        ("requested", "second", 1, None),
        ("refused", "second", 1, "ManagerClosed"),
    ]
    assert first.statistics().in_use == 0


def test_an_acquire_all_whose_manager_closes_while_it_waits_reports_refused() -> None:
    first = allotment.ResourceManager(1, name="first", rank=0)
    second = allotment.ResourceManager(1, name="second", rank=1)
    blocker = second.acquire(1)
    with Recorder() as recorder:
        waiter = Worker(lambda: allotment.acquire_all([(first, 1), (second, 1)], timeout=60))
        waiter.start()
        wait_for_waiters(second, 1)
        second.close()
        with pytest.raises(allotment.ManagerClosed):
            waiter.outcome()
    blocker.release()
    assert _ends(recorder) == [
        ("requested", "second", 1, None),
        ("refused", "second", 1, "ManagerClosed"),
    ]
    assert first.statistics().in_use == 0


def test_a_cancelled_acquire_all_async_reports_cancelled() -> None:
    first = allotment.ResourceManager(2, name="first", rank=0)
    second = allotment.ResourceManager(1, name="second", rank=1)
    blocker = second.acquire(1)

    async def cancelled() -> None:
        task = asyncio.ensure_future(allotment.acquire_all_async([(first, 2), (second, 1)]))
        while not second.statistics().waiters:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with Recorder() as recorder:
        asyncio.run(cancelled())
    blocker.release()
    assert _ends(recorder) == [
        ("requested", "second", 1, None),
        ("cancelled", "second", 1, "CancelledError"),
    ]
    assert first.statistics().in_use == 0


def test_an_acquire_all_that_fails_on_its_rate_reports_no_manager_part() -> None:
    pool = allotment.ResourceManager(1, name="pool")
    limiter = allotment.RateLimiter(1, per=3600, burst=1, name="hourly")
    assert limiter.try_acquire()
    with Recorder() as recorder, pytest.raises(allotment.AcquireTimeout):
        allotment.acquire_all([(pool, 1), (limiter, 1)], timeout=0)
    assert [event.name for event in recorder.events if not event.limiter] == []
    assert pool.statistics().in_use == 0
