"""No unit is lost to an exception: releases, a semaphore's ``with`` block, a leaked lease's
finalizer, each with a thread queued behind it that waits with no timeout.

These use the check-point sweep of ``test_envelope.py``: each run raises :class:`Injected` at
the k-th point where CPython can deliver an asynchronous exception (Ctrl-C, an exception
injected with ``PyThreadState_SetAsyncExc``). A waiter with no timeout never wakes by itself,
so a unit left free while it sleeps, or lost for ever, shows here at once, where the general
sweep (whose helpers time out) would only see it as a later release serves them.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import allotment
from allotment._core import GRANTED, MemoryPool, Ticket
from allotment.testing import ManualClock
from support import GENEROUS, Worker, assert_idle, check_invariants, frozen_gc, pool_of, wait_until
from test_envelope import Injected, Outcome, forget_frames, on_another_thread, sweep


@dataclass(eq=False)
class Queued:
    """A manager whose units a lease (the subject) holds, and a thread queued behind it with
    no timeout."""

    manager: allotment.ResourceManager[int]
    lease: allotment.Lease[int] | None
    helper: Worker
    ticket: Ticket
    nominating: bool = False


FAIRNESS: dict[str, Callable[[], dict[str, Any]]] = {
    "strict": dict,
    # The helper stays young (the clock stands still): a release nominates it.
    "bounded-nominates": lambda: {"fairness": "bounded", "clock": ManualClock()},
    # The helper is old at once: a release hands off, as in strict mode.
    "bounded-hands-off": lambda: {"fairness": "bounded", "fairness_bound": 1e-9},
}


OBSERVED = pytest.mark.parametrize("observed", [False, True], ids=["plain", "observed"])
"""Each sweep also runs with a Recorder installed: the observed paths have their own lines."""


@contextlib.contextmanager
def observing(observed: bool) -> Iterator[None]:
    """A Recorder installed for the block (setups and operations alike), if ``observed``."""
    if not observed:
        yield
        return
    recorder = allotment.Recorder(capacity=1000)
    allotment.add_observer(recorder)
    try:
        yield
    finally:
        allotment.remove_observer(recorder)


def _queued_behind_a_lease(
    fairness: str = "strict", *, taken_by_a_finished_thread: bool = False
) -> Queued:
    manager = allotment.ResourceManager(2, name="queued-behind", **FAIRNESS[fairness]())
    if taken_by_a_finished_thread:
        lease = _taken_by_a_finished_thread(manager)
    else:
        lease = manager.acquire(2)
    helper = Worker(functools.partial(manager.acquire, 1), name="waits with no timeout")
    helper.start()
    wait_until(lambda: pool_of(manager).waiting == 1, "the helper is queued")
    return Queued(manager, lease, helper, lease._ticket, fairness != "strict")


def _served(env: Queued, what: str) -> None:
    """The helper is granted, with no other release (but the lease's own, if the exception
    landed before it did anything), and everything comes back."""
    try:
        # Hand-off is eager: a waiter that fits is never left queued.
        on_another_thread(
            lambda: check_invariants(env.manager.statistics(), nominating=env.nominating),
            f"statistics after {what}",
        )
        lease = env.lease
        env.lease = None
        if lease is not None and not lease.released:
            on_another_thread(lease.release, f"releasing again after {what}")
        del lease
        granted = env.helper.outcome()
        assert isinstance(granted, allotment.Lease)
        granted.release()
        del granted
        assert_idle(env.manager)
    except BaseException:
        env.manager.close()  # refuses the helper, which would wait for ever
        env.helper.join(GENEROUS)
        raise


def _check(env: Queued, outcome: Outcome) -> None:
    what = outcome.describe()
    error = outcome.error
    outcome.error = outcome.result = None
    forget_frames(error)
    if error is not None and not isinstance(error, Injected):
        env.manager.close()
        env.helper.join(GENEROUS)
        raise AssertionError(f"the operation raised at {what}: {error!r}") from error
    del error
    _served(env, what)


def _release(env: Queued) -> None:
    assert env.lease is not None
    env.lease.release()


def _leave_a_with_block(env: Queued) -> None:
    assert env.lease is not None
    env.lease.__exit__(None, None, None)


@pytest.mark.timeout(4 * GENEROUS)
@pytest.mark.parametrize("fairness", list(FAIRNESS))
@pytest.mark.parametrize(
    "operation", [_release, _leave_a_with_block], ids=["release", "leaving-a-with-block"]
)
@OBSERVED
def test_an_interrupted_release_hands_its_units_to_a_waiter_with_no_timeout(
    operation: Callable[[Queued], None], fairness: str, observed: bool
) -> None:
    with frozen_gc(), observing(observed):
        swept = sweep(functools.partial(_queued_behind_a_lease, fairness), operation, _check)
    assert any("_pool.py" in point for point in swept.points)


# -- a semaphore's release, and leaving its with-block -----------------------------------------


@dataclass(eq=False)
class Permits:
    semaphore: allotment.Semaphore
    helper: Worker | None
    nominating: bool = False


def _semaphore_taken(
    *, queued: bool, bounded: bool = False, fairness: str = "strict"
) -> Callable[[], Permits]:
    def setup() -> Permits:
        kind = allotment.BoundedSemaphore if bounded else allotment.Semaphore
        semaphore = kind(1, **FAIRNESS[fairness]())
        assert semaphore.acquire(blocking=False)
        helper = None
        if queued:
            helper = Worker(semaphore.acquire, name="waits for a permit with no timeout")
            helper.start()
            wait_until(lambda: pool_of_semaphore(semaphore).waiting == 1, "the helper waits")
        return Permits(semaphore, helper, fairness != "strict")

    return setup


def pool_of_semaphore(semaphore: allotment.Semaphore) -> MemoryPool:
    pool = semaphore._pool  # white box: the semaphore's MemoryPool
    assert isinstance(pool, MemoryPool)
    return pool


def _check_permits(env: Permits, outcome: Outcome, *, must_be_given: bool) -> None:
    what = outcome.describe()
    error = outcome.error
    outcome.error = outcome.result = None
    forget_frames(error)
    semaphore, helper = env.semaphore, env.helper
    pool = pool_of_semaphore(semaphore)
    try:
        assert error is None or isinstance(error, Injected), f"at {what}: {error!r}"
        del error

        def look() -> tuple[object, int]:
            with pool._lock:
                return pool.available, pool.waiting

        seen = on_another_thread(look, f"looking after {what}")
        assert isinstance(seen, tuple)
        available, waiting = seen
        assert isinstance(available, int)
        # Hand-off is eager: a free permit never sits beside a waiter (unless it was
        # nominated: bounded fairness, whose helper must then be served all the same).
        assert env.nominating or not (waiting and available), (
            f"at {what}: a permit is free and a thread waits"
        )
        given = available + (1 if helper is not None and not waiting else 0)
        if must_be_given:
            assert given == 1, f"at {what}: {given} permits were given back, not 1"
        elif given == 0:
            semaphore.release()  # it landed before anything was given: give it now
        if helper is not None:
            assert helper.outcome() is True
            semaphore.release()
        assert semaphore._value == 1, f"at {what}: the semaphore's value is {semaphore._value}"
    except BaseException:
        if helper is not None and helper.is_alive():
            semaphore.release()
            helper.join(GENEROUS)
        raise


@pytest.mark.timeout(4 * GENEROUS)
@pytest.mark.parametrize("fairness", list(FAIRNESS))
@OBSERVED
def test_an_interrupted_semaphore_release_hands_its_permit_to_a_waiter_with_no_timeout(
    fairness: str, observed: bool
) -> None:
    with frozen_gc(), observing(observed):
        sweep(
            _semaphore_taken(queued=True, fairness=fairness),
            lambda env: env.semaphore.release(),
            functools.partial(_check_permits, must_be_given=False),
        )


def _leave_a_semaphore_with_block(env: Permits) -> None:
    env.semaphore.__exit__(None, None, None)


@pytest.mark.timeout(4 * GENEROUS)
@pytest.mark.parametrize("fairness", list(FAIRNESS))
@pytest.mark.parametrize("bounded", [False, True], ids=["Semaphore", "BoundedSemaphore"])
@pytest.mark.parametrize("queued", [False, True], ids=["alone", "with-a-waiter"])
@OBSERVED
def test_leaving_a_semaphore_with_block_gives_its_permit_back_whatever_interrupts_it(
    queued: bool, bounded: bool, fairness: str, observed: bool
) -> None:
    lost: list[str] = []

    def check(env: Permits, outcome: Outcome) -> None:
        fired = outcome.run.fired or ""
        if "in __exit__ (entry)" in fired:
            # The with statement was aborted before leaving: as for a lease, pure Python
            # cannot close that window (the permit is lost, as threading's is).
            _check_permits(env, outcome, must_be_given=False)
            return
        try:
            _check_permits(env, outcome, must_be_given=True)
        except AssertionError as failure:
            lost.append(str(failure).splitlines()[0])

    with frozen_gc(), observing(observed):
        swept = sweep(
            _semaphore_taken(queued=queued, bounded=bounded, fairness=fairness),
            _leave_a_semaphore_with_block,
            check,
        )
    assert any("_pool.py" in point for point in swept.points)
    assert not lost, lost


# -- a leaked lease's finalizer ------------------------------------------------------------------


def _taken_by_a_finished_thread(manager: allotment.ResourceManager[int]) -> allotment.Lease[int]:
    """A lease of 2 whose references every thread counts alike, so the thread that drops the
    last one runs its finalizer, there and then.

    A free-threaded build counts an object's references per thread (biased reference
    counting): the last one dropped by a thread other than the object's creator is queued to
    the creator (or to whichever live thread reuses its id), which frees the object, running
    its finalizer, when it next checks: later, elsewhere, or never if it sleeps in a wait.
    When the creator drops its own references while another thread still has one, the
    counts are merged and that no longer happens; this lease is made so.
    """
    handed: list[allotment.Lease[int]] = []
    taken, kept = threading.Event(), threading.Event()

    def take() -> None:
        handed.append(manager.acquire(2))
        taken.set()
        kept.wait(GENEROUS)  # this thread's reference is not the last one
        handed.clear()

    taker = Worker(take, name="takes the lease, then lets go")
    taker.start()
    assert taken.wait(GENEROUS), "the lease was not taken"
    lease = handed[0]
    kept.set()
    taker.outcome()
    return lease


def _drop_the_lease(env: Queued) -> None:
    """Drop the only reference to a held lease: its finalizer runs here, traced."""
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        env.lease = None


# A nominated helper claims (runs the pool's code) on another core during the traced run; on a
# free-threaded build the tracer's opcode events are then unreliable for the code objects both
# threads run (instrumentation is per code object), so the sweep's paths differ run to run.
_NOMINATED_SWEEP_ON_THIS_BUILD = pytest.mark.skipif(
    not getattr(sys, "_is_gil_enabled", lambda: True)(),
    reason="tracing is not deterministic with a second thread in the traced code (free-threaded)",
)


@pytest.mark.timeout(4 * GENEROUS)
@pytest.mark.parametrize(
    "fairness",
    [
        pytest.param(name, marks=_NOMINATED_SWEEP_ON_THIS_BUILD)
        if name == "bounded-nominates"
        else name
        for name in FAIRNESS
    ],
)
@OBSERVED
def test_an_exception_anywhere_in_a_leaked_lease_finalizer_loses_no_unit(
    fairness: str, observed: bool
) -> None:
    # CPython runs a finalizer once: an exception that lands in it before it gave the units
    # back (at its first line, even) must not lose them. The pool watches the lease, and
    # gives the units back by its next operation at the latest.
    ways: dict[str, int] = {"at once": 0, "by the next operation": 0}

    def check(env: Queued, outcome: Outcome) -> None:
        what = outcome.describe()
        error = outcome.error
        outcome.error = outcome.result = None
        forget_frames(error)
        try:
            assert error is None, f"the finalizer's exception escaped at {what}: {error!r}"
            if env.ticket.state is not GRANTED:
                ways["at once"] += 1
            else:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    on_another_thread(env.manager.statistics, f"the next operation after {what}")
                assert env.ticket.state is not GRANTED, (
                    f"at {what}: the leaked lease's units are lost (its ticket still holds "
                    "them after the next operation)"
                )
                assert [w.category for w in caught] == [allotment.LeakedLeaseWarning]
                ways["by the next operation"] += 1
        except BaseException:
            env.manager.close()
            env.helper.join(GENEROUS)
            raise
        _served(env, what)

    with frozen_gc(), observing(observed):
        swept = sweep(
            functools.partial(_queued_behind_a_lease, fairness, taken_by_a_finished_thread=True),
            _drop_the_lease,
            check,
        )
    assert any("__del__" in point for point in swept.points)
    assert ways["by the next operation"] > 0, ways


# -- LocalBackend: a release, an acquire, a try, with a waiter in this or "another process" -----

_local_runs = itertools.count()


@dataclass(eq=False)
class LocalQueued:
    """A LocalBackend manager whose 2 units a lease (the subject) holds, and a waiter for 1
    with no timeout: a thread of the same backend, or of a second backend on the same
    directory (another process, as far as the file and the doorbells go)."""

    backends: list[allotment.LocalBackend]
    manager: allotment.ResourceManager[int]
    lease: allotment.Lease[int] | None
    helper: Worker | None


def _local_manager(root: Path) -> tuple[allotment.LocalBackend, allotment.ResourceManager[int]]:
    backend = allotment.LocalBackend(root)
    return backend, allotment.ResourceManager(2, name="queued-behind", backend=backend)


def _local_queued(root: Path, waiter: str | None) -> Callable[[], LocalQueued]:
    def setup() -> LocalQueued:
        directory = root / f"run-{next(_local_runs)}"
        backend, manager = _local_manager(directory)
        backends = [backend]
        lease = manager.acquire(2) if waiter is not None else None
        helper = None
        if waiter is not None:
            queued_on = manager
            if waiter == "another-process":
                other, queued_on = _local_manager(directory)
                backends.append(other)
            helper = Worker(functools.partial(queued_on.acquire, 1), name="waits, no timeout")
            helper.start()
            wait_until(lambda: _waiting(manager) == 1, "the helper is queued")
        return LocalQueued(backends, manager, lease, helper)

    return setup


def _waiting(manager: allotment.ResourceManager[int]) -> int:
    stats = manager.statistics()
    return len(stats.waiters) + stats.other_waiters


def _local_served(env: LocalQueued, outcome: Outcome, *, result_may_hold: bool = False) -> None:
    """No exception but the injected one; the helper is granted with no other release (but
    the lease's own, if the exception landed before it did anything); every unit comes back."""
    what = outcome.describe()
    error, result = outcome.error, outcome.result
    outcome.error = outcome.result = None
    forget_frames(error)
    try:
        assert error is None or isinstance(error, Injected), f"at {what}: {error!r}"
        del error
        stats = on_another_thread(env.manager.statistics, f"statistics after {what}")
        assert isinstance(stats, allotment.ManagerStatistics)
        # Hand-off is eager: a waiter that fits is never left queued beside free units.
        waiting = len(stats.waiters) + stats.other_waiters
        assert not (waiting and stats.available), f"at {what}: {stats}"
        if result_may_hold and isinstance(result, allotment.Lease):
            on_another_thread(result.release, f"releasing the result after {what}")
        del result
        lease, env.lease = env.lease, None
        if lease is not None and not lease.released:
            on_another_thread(lease.release, f"releasing again after {what}")
        del lease
        if env.helper is not None:
            granted = env.helper.outcome()
            assert isinstance(granted, allotment.Lease), f"at {what}: {granted!r}"
            granted.release()
            del granted
        assert_idle(env.manager)
    finally:
        for backend in env.backends:
            backend.close()  # refuses a helper left waiting, which would wait for ever
        if env.helper is not None:
            env.helper.join(GENEROUS)


def _with_a_waiter_on_this_build(waiter: str) -> Any:
    # The other backend's doorbell thread runs the same code as the traced thread, once rung:
    # on a free-threaded build its instrumentation makes the traced paths differ run to run
    # (see _NOMINATED_SWEEP_ON_THIS_BUILD).
    return pytest.param(
        waiter, marks=_NOMINATED_SWEEP_ON_THIS_BUILD if waiter == "another-process" else ()
    )


@pytest.mark.timeout(8 * GENEROUS)
@pytest.mark.parametrize(
    "waiter", [_with_a_waiter_on_this_build(w) for w in ("this-process", "another-process")]
)
@pytest.mark.parametrize(
    "operation", [_release, _leave_a_with_block], ids=["release", "leaving-a-with-block"]
)
def test_an_interrupted_local_release_hands_its_units_to_a_waiter_with_no_timeout(
    operation: Callable[[Any], None], waiter: str, tmp_path: Path
) -> None:
    with frozen_gc():
        swept = sweep(_local_queued(tmp_path, waiter), operation, _local_served)
    assert any("local/_state_file.py" in point for point in swept.points)


@pytest.mark.timeout(8 * GENEROUS)
@pytest.mark.parametrize(
    "operation",
    [
        lambda env: env.manager.acquire(1),
        lambda env: env.manager.try_acquire(1),
    ],
    ids=["acquire", "try-acquire"],
)
def test_an_interrupted_local_acquire_or_try_loses_no_unit(
    operation: Callable[[LocalQueued], object], tmp_path: Path
) -> None:
    with frozen_gc():
        swept = sweep(
            _local_queued(tmp_path, None),
            operation,
            functools.partial(_local_served, result_may_hold=True),
        )
    assert any("local/_state_file.py" in point for point in swept.points)
