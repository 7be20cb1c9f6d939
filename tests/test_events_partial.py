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
