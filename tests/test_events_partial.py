"""An exception anywhere in an observed partial release costs at most that release's own
report: every later release of the lease is still reported, in full.

The check-point sweep of ``test_envelope.py`` raises :class:`Injected` at each point where
CPython can deliver an asynchronous exception in ``lease.release(1)``, a Recorder installed;
then the rest of the lease is released on this thread and its reports are read.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import allotment
from allotment._observed import _least_before
from support import GENEROUS, assert_idle, frozen_gc
from test_envelope import Injected, Outcome, forget_frames, sweep
from test_events import no_observer_is_left_behind  # noqa: F401 - the fixture

CAPACITY = 3


@dataclass(eq=False)
class Held:
    manager: allotment.ResourceManager[int]
    lease: allotment.Lease[int] | None
    recorder: allotment.Recorder
    request: int


def _held() -> Held:
    recorder = allotment.Recorder(capacity=1000)
    allotment.add_observer(recorder)
    manager = allotment.ResourceManager(CAPACITY, name="partly-released")
    lease = manager.acquire(CAPACITY)
    (granted,) = (event for event in recorder.events if event.kind == "granted")
    return Held(manager, lease, recorder, granted.request)


def _release_one(env: Held) -> None:
    assert env.lease is not None
    env.lease.release(1)


def _check(env: Held, outcome: Outcome) -> None:
    what = outcome.describe()
    error = outcome.error
    outcome.error = outcome.result = None
    forget_frames(error)
    try:
        assert error is None or isinstance(error, Injected), f"at {what}: {error!r}"
        del error
        lease = env.lease
        env.lease = None
        assert lease is not None
        left = lease._ticket.units  # white box: what the interrupted release left held
        assert left in (CAPACITY, CAPACITY - 1), what
        lease.release()
        del lease
        assert_idle(env.manager)
        released = [
            event
            for event in env.recorder.events
            if event.kind == "released" and event.request == env.request
        ]
        reported = sum(event.amount for event in released)
        # Exactly once: never more than was given back; at most the interrupted release's
        # own unit unreported, and the last release reported, ending the lease.
        assert CAPACITY - 1 <= reported <= CAPACITY, (what, released)
        assert released, what
        assert released[-1].remaining == 0, (what, released)
    finally:
        allotment.remove_observer(env.recorder)


@pytest.mark.timeout(4 * GENEROUS)
def test_an_interrupted_partial_release_leaves_the_later_releases_reported() -> None:
    with frozen_gc():
        swept = sweep(_held, _release_one, _check)
    assert any("_observed.py" in point for point in swept.points)


def test_each_partial_release_scans_only_the_decisions_after_the_last() -> None:
    """n partial releases cost O(n): each leaves the lease's scan start (``_seen``, white
    box) at its own decision, and a stale start (an older one, as a slower thread may
    store) still gives exact reports."""
    units = 300
    with allotment.Recorder(capacity=2 * units + 10) as recorder:
        manager = allotment.ResourceManager(units, name="one-at-a-time")
        lease = manager.acquire(units)
        log = lease._unreported  # type: ignore[attr-defined]
        for count in range(1, units):
            lease.release(1)
            assert lease._seen[0] is log, count  # type: ignore[attr-defined]
            assert lease._seen[1] == len(log) - 1, count  # type: ignore[attr-defined]
            if count % 50 == 0:
                lease._seen = (log, 1, log[0][0])  # type: ignore[attr-defined]
        lease.release()
    (granted,) = (event for event in recorder.events if event.kind == "granted")
    released = [
        event
        for event in recorder.events
        if event.kind == "released" and event.request == granted.request
    ]
    assert [event.amount for event in released] == [1] * units
    assert [event.remaining for event in released] == list(range(units - 1, -1, -1))
    assert_idle(manager)


def test_a_decision_ignores_a_scan_start_stored_by_a_later_decision() -> None:
    """Two threads' decisions: the later one (appended after) scans and stores first; the
    earlier one must not start from that store, which counts its own decision."""
    with allotment.Recorder(capacity=100):
        manager = allotment.ResourceManager(5, name="two-deciders")
        lease = manager.acquire(5)
        log = lease._unreported  # type: ignore[attr-defined]
        earlier, later = (3, 0), (2, 0)  # what each saw held after its own release
        log.append(earlier)
        log.append(later)
        assert _least_before(lease, log, later) == 3  # type: ignore[arg-type]
        assert _least_before(lease, log, earlier) == 5  # type: ignore[arg-type]
        lease.release()
    assert_idle(manager)
