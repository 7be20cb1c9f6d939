"""A signal handler (or finalizer) that releases or acquires while its thread is in the
middle of an observed release deadlocks nothing and loses no report.

The check-point sweep of ``test_envelope.py`` runs an observed release traced, and at the
k-th check point, instead of raising, does what a handler might: releases another observed
lease, the released lease itself, takes and gives back a permit of an observed semaphore.
Every unit granted is then reported released exactly once.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

import allotment
from support import GENEROUS, assert_idle, frozen_gc
from test_envelope import Outcome, Run, forget_frames, sweep


@dataclass(eq=False)
class Held:
    manager: allotment.ResourceManager[int]
    lease: allotment.Lease[int]
    spare: allotment.Lease[int]
    semaphore: allotment.Semaphore
    failures: list[str] = field(default_factory=list)


@pytest.fixture
def recorder() -> Iterator[allotment.Recorder]:
    with allotment.Recorder(capacity=100_000) as recorder:
        yield recorder


def _held() -> Held:
    manager = allotment.ResourceManager(4, name="subject")
    lease = manager.acquire(3)
    spare = manager.acquire(1)
    return Held(manager, lease, spare, allotment.Semaphore(1, name="handler's"))


def _handler(also_the_lease: bool, *, only_in: str = "") -> Callable[[Held, Run], None]:
    def handle(env: Held, run: Run) -> None:
        """What a signal handler might do at this point of the release (only at points in
        files named ``only_in``, if given)."""
        if only_in not in (run.fired or ""):
            return
        calls: list[tuple[str, Callable[[], object]]] = [
            ("spare.release()", env.spare.release),
            ("a permit taken and given back", _permit(env.semaphore)),
        ]
        if also_the_lease:
            calls.append(("lease.release()", env.lease.release))
        for what, call in calls:
            try:
                call()
            except BaseException as error:
                env.failures.append(f"{what} at {run.fired}: {error!r}")

    return handle


def _permit(semaphore: allotment.Semaphore) -> Callable[[], None]:
    def take_and_give() -> None:
        with semaphore:
            pass

    return take_and_give


def _exit(env: Held) -> None:
    env.lease.__exit__(None, None, None)


def _partial_then_rest(env: Held) -> None:
    env.lease.release(1)
    env.lease.release()


def _check(
    recorder: allotment.Recorder, *, also_the_lease: bool
) -> Callable[[Held, Outcome], None]:
    def check(env: Held, outcome: Outcome) -> None:
        what = outcome.describe()
        error = outcome.error
        outcome.error = outcome.result = None
        forget_frames(error)
        # A partial release after the handler released the whole lease: refused, rightly.
        refused = also_the_lease and isinstance(error, allotment.ReleaseExceedsHeld)
        assert error is None or refused, f"at {what}: {error!r}"
        del error
        assert not env.failures, env.failures
        env.spare.release()
        assert env.lease.released, f"at {what}"
        assert_idle(env.manager)
        granted: collections.Counter[int] = collections.Counter()
        released: collections.Counter[int] = collections.Counter()
        for event in recorder.events:
            if event.kind == "granted":
                granted[event.request] += event.amount
            elif event.kind == "released":
                released[event.request] += event.amount
        assert released == granted, f"at {what}: granted {granted}, released {released}"
        recorder.clear()

    return check


@pytest.mark.timeout(4 * GENEROUS)
@pytest.mark.parametrize("also_the_lease", [False, True], ids=["others", "the-lease-too"])
@pytest.mark.parametrize("operation", [_exit, _partial_then_rest], ids=["exit", "partial"])
def test_a_handler_that_releases_during_an_observed_release_deadlocks_nothing(
    recorder: allotment.Recorder, operation: Callable[[Held], None], also_the_lease: bool
) -> None:
    with frozen_gc():
        swept = sweep(
            _held,
            operation,
            _check(recorder, also_the_lease=also_the_lease),
            action=_handler(also_the_lease),
        )
    assert any("_observed.py" in point for point in swept.points)


@pytest.mark.timeout(4 * GENEROUS)
@pytest.mark.parametrize("operation", [_exit, _partial_then_rest], ids=["exit", "partial"])
def test_a_handler_that_releases_in_the_observed_code_of_a_release_returns(
    recorder: allotment.Recorder, operation: Callable[[Held], None]
) -> None:
    # Only at the observed code's own points, outside every pool's section: where a lock
    # of the observed lease's bookkeeping would be held (one global lock deadlocked there).
    with frozen_gc():
        sweep(
            _held,
            operation,
            _check(recorder, also_the_lease=False),
            action=_handler(False, only_in="_observed.py"),
        )
