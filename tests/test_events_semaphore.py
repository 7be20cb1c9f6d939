"""The events of Semaphore and BoundedSemaphore: the manager's kinds, under the facade's name."""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import allotment
from allotment import Recorder
from allotment.testing import ManualClock
from support import GENEROUS, Worker
from test_events import check_trace


@pytest.fixture(autouse=True)
def no_observer_is_left_behind() -> Iterator[None]:
    yield
    from allotment import _events

    leftover = _events.observers
    for observer in leftover:
        allotment.remove_observer(observer)
    assert not leftover, f"a test left observers installed: {leftover}"


@contextlib.contextmanager
def delivered(kind: str, count: int = 1) -> Iterator[None]:
    """Wait, on leaving, until ``count`` events of ``kind`` have been delivered (after the
    observers installed before this one)."""
    seen = threading.Semaphore(0)

    def note(event: allotment.Event) -> None:
        if event.kind == kind:
            seen.release()

    allotment.add_observer(note)
    try:
        yield
        for _ in range(count):
            assert seen.acquire(timeout=GENEROUS), f"no {kind!r} event was delivered"
    finally:
        allotment.remove_observer(note)


def kinds(recorder: Recorder) -> list[str]:
    return [event.kind for event in recorder.events]


def test_names_default_and_are_validated() -> None:
    first, second = allotment.Semaphore(), allotment.BoundedSemaphore(2)
    assert first.name.startswith("Semaphore-")
    assert second.name.startswith("BoundedSemaphore-")
    assert first.name != allotment.Semaphore().name
    assert allotment.Semaphore(name="db").name == "db"
    with pytest.raises(TypeError, match="name must be a str"):
        allotment.Semaphore(name=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("bounded", [False, True])
def test_a_with_block_reports_its_grant_and_release(bounded: bool) -> None:
    kind = allotment.BoundedSemaphore if bounded else allotment.Semaphore
    semaphore = kind(2, name="permits")
    with Recorder() as recorder, semaphore:
        pass
    granted, released = recorder.events
    assert (granted.kind, released.kind) == ("granted", "released")
    assert granted.name == released.name == "permits"
    assert granted.amount == released.amount == 1
    assert granted.request == released.request != 0
    assert granted.wait == 0.0
    assert released.hold is not None
    assert released.hold >= 0
    assert released.remaining == 0
    assert granted.owner == released.owner
    assert granted.owner.thread == threading.current_thread().name
    assert granted.capacity == (2 if bounded else None)
    assert not granted.limiter
    assert semaphore._value == 2


def test_without_observers_nothing_is_remembered() -> None:
    semaphore = allotment.Semaphore(1)
    with semaphore:
        pass
    semaphore.acquire()
    semaphore.release()
    assert semaphore._grants.by_thread == {}


def test_a_queued_acquire_is_requested_then_handed_off_by_the_release() -> None:
    semaphore = allotment.BoundedSemaphore(1, name="one")
    with Recorder() as recorder:
        assert semaphore.acquire()
        with delivered("requested"):
            waiter = Worker(lambda: semaphore.acquire(timeout=GENEROUS))
            waiter.start()
        with delivered("granted"):
            semaphore.release()
        waiter.join()
        assert waiter.outcome() is True
        semaphore.release()  # by the main thread: the waiter's grant, from another thread
    events = recorder.events
    assert [event.kind for event in events] == [
        "granted",
        "requested",
        "released",
        "granted",
        "released",
    ]
    mine, asked, given, handed, taken_back = events
    assert asked.request == handed.request != mine.request
    assert given.request == mine.request
    assert handed.handed_by == mine.request  # the FIFO hand-off
    assert handed.wait is not None
    assert handed.wait > 0
    assert handed.owner.thread == waiter.name
    # The main thread had no grant left: it gave back the waiter's, on the waiter's track.
    assert taken_back.request == handed.request
    assert taken_back.owner == handed.owner


def test_tries_and_timeouts_are_refused_or_timed_out() -> None:
    clock = ManualClock()
    semaphore = allotment.Semaphore(0, name="none", clock=clock)
    with Recorder() as recorder:
        assert not semaphore.acquire(blocking=False)
        assert not semaphore.acquire(timeout=0)
        with delivered("requested"):
            waiter = Worker(lambda: semaphore.acquire(timeout=5))
            waiter.start()
        with delivered("timed_out"):
            clock.advance(5)
        waiter.join()
        assert waiter.outcome() is False
    refused, tried, asked, timed_out = recorder.events
    assert (refused.kind, refused.reason, refused.wait) == ("refused", "WouldWait", 0.0)
    assert (tried.kind, tried.reason) == ("timed_out", None)
    assert asked.kind == "requested"
    assert timed_out.kind == "timed_out"
    assert timed_out.request == asked.request
    assert timed_out.wait == 5
    assert semaphore._value == 0


def test_an_interrupted_wait_is_cancelled_and_keeps_no_permit() -> None:
    semaphore = allotment.Semaphore(0, name="s")

    def interrupt(event: allotment.Event) -> None:
        if event.kind == "requested":
            raise KeyboardInterrupt  # not an Exception: it reaches the acquire

    with Recorder() as recorder:
        allotment.add_observer(interrupt)
        try:
            with pytest.raises(KeyboardInterrupt):
                semaphore.acquire()
        finally:
            allotment.remove_observer(interrupt)
        semaphore.release()
    requested, cancelled, released = recorder.events
    assert (requested.kind, cancelled.kind) == ("requested", "cancelled")
    assert cancelled.reason == "KeyboardInterrupt"
    assert cancelled.request == requested.request
    assert (released.kind, released.request, released.hold) == ("released", 0, None)
    assert semaphore._value == 1  # the withdrawal kept nothing; the release added one


def test_an_interrupted_grant_gives_the_permit_back_and_is_never_paired() -> None:
    semaphore = allotment.Semaphore(1, name="s")

    def interrupt(event: allotment.Event) -> None:
        if event.kind == "granted":
            raise KeyboardInterrupt

    with Recorder() as recorder:
        allotment.add_observer(interrupt)
        try:
            with pytest.raises(KeyboardInterrupt):
                semaphore.acquire()
        finally:
            allotment.remove_observer(interrupt)
        assert semaphore._value == 1
        semaphore.release()
    granted, cancelled, released = recorder.events
    assert (granted.kind, cancelled.kind, released.kind) == ("granted", "cancelled", "released")
    assert released.request == 0  # not paired with the grant given back
    assert semaphore._value == 2


def test_a_release_of_several_pairs_each_grant_and_reports_the_rest() -> None:
    semaphore = allotment.Semaphore(2, name="s")
    with Recorder() as recorder:
        semaphore.acquire()
        semaphore.acquire()
        semaphore.release(3)
    events = recorder.events
    grants = [event for event in events if event.kind == "granted"]
    releases = [event for event in events if event.kind == "released"]
    # The latest grant first, as a with-block's would be.
    assert [event.request for event in releases] == [grants[1].request, grants[0].request, 0]
    assert [event.amount for event in releases] == [1, 1, 1]
    assert semaphore._value == 3


def test_a_consumer_gives_back_the_oldest_grant_of_another_thread() -> None:
    semaphore = allotment.Semaphore(3, name="s")
    with Recorder() as recorder:
        producer = Worker(lambda: [semaphore.acquire() for _ in range(3)])
        producer.start()
        producer.join()
        semaphore.release()
        semaphore.release()
    grants = [event for event in recorder.events if event.kind == "granted"]
    releases = [event for event in recorder.events if event.kind == "released"]
    assert [event.request for event in releases] == [grants[0].request, grants[1].request]
    assert {event.owner.thread for event in releases} == {producer.name}


def test_a_release_too_many_reports_nothing_and_keeps_the_pairing() -> None:
    semaphore = allotment.BoundedSemaphore(1, name="b")
    with Recorder() as recorder, semaphore:
        semaphore.release()  # gives back the block's own permit
        with pytest.raises(ValueError, match="released too many times"):
            semaphore.release()
        semaphore.acquire()
        # The block's exit gives back the permit taken inside it.
    events = recorder.events
    assert kinds(recorder) == ["granted", "released", "granted", "released"]
    assert events[1].request == events[0].request
    assert events[3].request == events[2].request
    assert semaphore._value == 1


def test_a_bounded_release_too_many_keeps_the_grants_it_took() -> None:
    semaphore = allotment.BoundedSemaphore(2, name="b")
    with Recorder() as recorder:
        semaphore.acquire()
        with pytest.raises(ValueError, match="released too many times"):
            semaphore.release(2)  # one permit more than is out: nothing changes
        semaphore.release()
    granted, released = recorder.events
    assert released.request == granted.request


def test_a_subclass_release_is_reported_through_its_own_release() -> None:
    calls: list[int] = []

    class Counting(allotment.Semaphore):
        def release(self, n: int = 1) -> None:
            calls.append(n)
            super().release(n)

    semaphore = Counting(1, name="c")
    with Recorder() as recorder, semaphore:
        pass
    assert calls == [1]
    granted, released = recorder.events
    assert released.request == granted.request


def _semaphore_workload(semaphore: allotment.Semaphore, threads: int, jobs: int) -> dict[str, int]:
    """Each thread runs with-blocks and timed acquires; returns what they did."""
    barrier = threading.Barrier(threads)
    done: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def work(seed: int) -> None:
        rng = random.Random(seed)
        mine: collections.Counter[str] = collections.Counter()
        barrier.wait()
        for _ in range(jobs):
            if rng.random() < 0.5:
                with semaphore:
                    mine["granted"] += 1
                    time.sleep(0)  # let the others queue
            elif semaphore.acquire(timeout=rng.choice([0, 0.0005, GENEROUS])):
                mine["granted"] += 1
                semaphore.release()
            else:
                mine["timed_out"] += 1
            mine["released"] = mine["granted"]
        with lock:
            done.update(mine)

    workers = [Worker(functools.partial(work, seed)) for seed in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [worker.error for worker in workers] == [None] * threads
    return dict(done)


@pytest.mark.parametrize("bounded", [False, True])
def test_exact_counts_under_16_threads(bounded: bool) -> None:
    kind = allotment.BoundedSemaphore if bounded else allotment.Semaphore
    semaphore = kind(3, name="shared")
    with Recorder(capacity=1_000_000) as recorder:
        done = _semaphore_workload(semaphore, 16, 40)
    events = recorder.events
    assert recorder.dropped == 0
    count = collections.Counter(event.kind for event in events)
    assert count["granted"] == done["granted"]
    assert count["released"] == done["released"]
    assert count["timed_out"] == done.get("timed_out", 0)
    assert set(count) <= {"requested", "granted", "released", "timed_out"}
    granted = {event.request: event for event in events if event.kind == "granted"}
    released = [event for event in events if event.kind == "released"]
    # Every release gave back its own thread's grant, each exactly once.
    assert sorted(event.request for event in released) == sorted(granted)
    for event in released:
        assert event.owner == granted[event.request].owner
    queued = {event.request for event in events if event.kind == "requested"}
    ended = collections.Counter(
        event.request
        for event in events
        if event.kind in {"granted", "timed_out"} and event.request in queued
    )
    assert set(ended) == queued
    assert set(ended.values()) <= {1}
    assert semaphore._value == 3
    assert all(not held for held in semaphore._grants.by_thread.values())


def test_the_trace_of_a_semaphore_run_is_well_formed(tmp_path: Path) -> None:
    bounded = allotment.BoundedSemaphore(2, name="bounded")
    loose = allotment.Semaphore(0, name="loose")
    with Recorder(capacity=1_000_000) as recorder:
        _semaphore_workload(bounded, 8, 20)
        loose.release(2)  # permits nobody took: the counter never goes below zero
        with loose:
            pass
    path = tmp_path / "run.json"
    recorder.export_trace(path)
    document = json.loads(path.read_text(encoding="utf-8"))
    counts = check_trace(document, {"bounded": 2, "loose": 2})
    events = recorder.events
    grants = sum(event.kind == "granted" for event in events)
    assert counts["holds"] == grants  # one hold slice per grant
    handed = sum(
        event.kind == "granted" and event.handed_by is not None and event.name == "bounded"
        for event in events
    )
    assert counts["hand_offs"] == handed
    slices = [e for e in document["traceEvents"] if e["ph"] == "X"]
    assert {e["name"] for e in slices} >= {"hold bounded", "hold loose"}
    assert all(e["args"]["outcome"] != "open" for e in slices if e["cat"] == "hold")


def test_semaphore_metrics(tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    import allotment.otel

    memory = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[memory])
    instrumentation = allotment.otel.instrument(provider)
    try:
        semaphore = allotment.BoundedSemaphore(1, name="sem")
        semaphore.acquire()
        assert not semaphore.acquire(timeout=0)
        with delivered("requested"):
            waiter = Worker(lambda: semaphore.acquire(timeout=GENEROUS))
            waiter.start()
        data = memory.get_metrics_data()
        assert data is not None
        metrics = {
            metric.name: metric
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }
        name = frozenset({("allotment.name", "sem")})

        def point(metric: str) -> Any:
            points = {
                frozenset((p.attributes or {}).items()): p for p in metrics[metric].data.data_points
            }
            return points[name]

        assert point("allotment.pool.in_use").value == 1
        assert point("allotment.pool.pending_requests").value == 1
        assert point("allotment.pool.timeouts").value == 1
        with delivered("granted"):
            semaphore.release()
        waiter.join()
        semaphore.release()
        data = memory.get_metrics_data()
        assert data is not None
        metrics = {
            metric.name: metric
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }
        assert point("allotment.pool.in_use").value == 0
        assert point("allotment.pool.pending_requests").value == 0
        assert point("allotment.pool.wait_time").count == 2
        assert point("allotment.pool.use_time").count == 2
    finally:
        instrumentation.close()
        provider.shutdown()


def test_a_permit_freed_between_the_try_and_the_queue_is_granted_and_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An observed acquire first tries for a permit, then enters the queue. A release
    between the two lets the enter grant at once, with no waiter made: reading that
    waiter raised AttributeError to the caller and lost the permit (seen on 3.13t)."""
    from allotment._core import MemoryPool

    semaphore = allotment.Semaphore(1, name="raced")
    take = MemoryPool.take
    missed = [False]

    def take_losing_the_race(self: MemoryPool, count: int, receipt: list[Any]) -> bool:
        if not missed[0]:  # the first try finds no permit, as if another thread held it
            missed[0] = True
            return False
        return take(self, count, receipt)

    monkeypatch.setattr(MemoryPool, "take", take_losing_the_race)
    with Recorder() as recorder:
        assert semaphore.acquire(timeout=GENEROUS)
        semaphore.release()
    assert missed[0]
    assert semaphore.acquire(blocking=False)  # the permit is back
    semaphore.release()
    assert [event.kind for event in recorder.events] == ["granted", "released"]
