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
