"""Finalizers, gc callbacks and signal handlers that re-enter a manager on the same thread.

CPython runs a ``__del__``, a ``weakref.finalize`` callback, a gc callback or a signal handler
between any two bytecodes, and so possibly while the thread is inside a manager's short
bookkeeping (its critical section). Calling back into that manager from there must neither
deadlock the thread on itself nor corrupt the state it is in the middle of changing: a full
release is deferred to the end of the outer section, everything else raises
:class:`allotment.ReentrantCall`. Diagnostics (``repr``, ``wait_graph``) never raise.

To run code *deterministically* inside a critical section from the public API, these tests
give the manager an :class:`InsideClock`: allotment reads its manager's clock inside the
critical section (the instant of a snapshot, of a grant), and the clock runs its hook the
first time it is read while the probe ``wait_graph(lock_timeout=0)`` lists the manager as
busy, which in a single-threaded test means: this thread is inside its section.
"""

from __future__ import annotations

import gc
import os
import re
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import tracemalloc
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TextIO

import pytest

import allotment
from support import GENEROUS, Worker, assert_idle, check_invariants, start, wait_until


class _Handle(Protocol):
    """The wake-up handle a clock sleeps on (structurally, allotment's ``WakeHandle``)."""

    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...


class InsideClock:
    """The system clock, plus a hook run once *inside* the watched manager's critical section.

    Only for single-threaded use of the watched manager: the probe cannot tell "this thread is
    inside" from "another thread holds the lock".
    """

    def __init__(self) -> None:
        self.manager: allotment.ResourceManager[Any] | None = None
        self.hook: Callable[[], None] | None = None
        self._probing = False

    def arm(self, manager: allotment.ResourceManager[Any], hook: Callable[[], None]) -> None:
        self.manager = manager
        self.hook = hook

    @property
    def fired(self) -> bool:
        return self.hook is None

    def now(self) -> float:
        hook, manager = self.hook, self.manager
        if hook is not None and manager is not None and not self._probing:
            self._probing = True  # the probe snapshots the manager, which reads this clock
            try:
                inside = _inside(manager)
            finally:
                self._probing = False
            if inside:
                self.hook = None
                hook()
        return time.monotonic()

    def sleep_until(self, handle: _Handle, deadline: float) -> bool:
        while (remaining := deadline - time.monotonic()) > 0:
            if handle.acquire(True, min(remaining, threading.TIMEOUT_MAX)):
                return True
        return False


def _inside(manager: allotment.ResourceManager[Any]) -> bool:
    """Whether a single-threaded test's manager is locked, i.e. this thread is inside it."""
    for _ in range(100):
        try:
            return manager.name in allotment.wait_graph(lock_timeout=0).busy
        except RuntimeError as error:
            # A manager collected during the walk of the registry (see
            # test_wait_graph_never_raises_while_managers_are_collected): not what the probe
            # is for, so look again.
            if "changed size during iteration" not in str(error):
                raise
    raise AssertionError("wait_graph kept failing")


@contextmanager
def _gc_threshold(threshold: int) -> Iterator[None]:
    """Collect the youngest generation at (nearly) every allocation that outlives reference
    counting, in every thread.

    A free-threaded build counts allocations net of deallocations, per thread in batches of
    512, and collects only once the count also passes a quarter of the long-lived objects
    (hundreds of thousands under pytest) unless the second threshold is 0, the escape CPython
    keeps for prompt collections; and each of its collections walks the whole heap: what
    exists already is frozen out of them."""
    previous = gc.get_threshold()
    gc.collect()
    gc.freeze()
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        gc.set_threshold(threshold, 0, previous[2])
    else:
        gc.set_threshold(threshold)
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()


BOUND = 15.0
"""Seconds a threaded test waits for its threads before declaring them deadlocked: well
below the test's timeout, so a self-deadlocked thread fails the test instead of hanging it."""


def _finish(workers: list[Worker], within: float = BOUND) -> None:
    """Join every worker within one shared bound; re-raise the first error."""
    deadline = time.monotonic() + within
    for worker in workers:
        worker.join(max(deadline - time.monotonic(), 0.0))
    stuck = [worker.name for worker in workers if worker.is_alive()]
    assert not stuck, f"still running after {within} s (deadlocked?): {stuck}"
    for worker in workers:
        worker.outcome()


# -- finalizers in bulk, under load ---------------------------------------------------------


class _ReleasesInDel:
    """Cyclic garbage whose ``__del__`` releases a lease (on whichever thread collects it)."""

    def __init__(self, lease: allotment.Lease[int], errors: list[BaseException]) -> None:
        self.lease = lease
        self.errors = errors
        self.me = self

    def __del__(self) -> None:
        try:
            self.lease.release()
        except BaseException as error:  # unraisable otherwise: record it for the test
            self.errors.append(error)


class _Cyclic:
    """Cyclic garbage watched by a ``weakref.finalize``."""

    def __init__(self) -> None:
        self.me = self


class _Plain:
    """An object freed by reference counting alone."""


def _release_recording(lease: allotment.Lease[int], errors: list[BaseException]) -> None:
    try:
        lease.release()
    except BaseException as error:
        errors.append(error)


@pytest.mark.timeout(60)
def test_finalizers_releasing_leases_under_load_neither_deadlock_nor_lose_units() -> None:
    threads, iterations, pending_limit = 4, 150, 8
    # Garbage holds at most threads * pending_limit units; the two units beyond that are
    # always free or held by a live thread, so a blocked acquire never waits for garbage.
    capacity = threads * pending_limit + 2
    pool = allotment.ResourceManager(capacity, name="finalized")
    errors: list[BaseException] = []
    extras: list[list[allotment.Lease[int]]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def work(index: int) -> None:
        mine = extras[index]  # strong references: only the holders become garbage
        pending: list[allotment.Lease[int]] = []
        barrier.wait(GENEROUS)
        for step in range(iterations):
            pending = [lease for lease in pending if not lease.released]
            if len(pending) >= pending_limit:
                gc.collect()  # returns at once while another thread collects: fine
            with pool.acquire(1, timeout=GENEROUS):
                if len(pending) >= pending_limit:
                    continue
                extra = pool.try_acquire(1)
                if extra is None:
                    continue
                mine.append(extra)
                pending.append(extra)
                if step % 2:
                    _ReleasesInDel(extra, errors)
                else:
                    weakref.finalize(_Cyclic(), _release_recording, extra, errors)
            pool.statistics()

    workers = [start(work, index, name=f"finalizing-{index}") for index in range(threads)]
    try:
        with _gc_threshold(1):
            barrier.wait(GENEROUS)
            deadline = time.monotonic() + BOUND
            while not all(worker.finished.is_set() for worker in workers):
                assert time.monotonic() < deadline, "the workers did not finish: deadlock?"
                check_invariants(pool.statistics())
                time.sleep(0.01)
    finally:
        _finish(workers)
    gc.collect()
    assert errors == []
    assert all(lease.released for mine in extras for lease in mine)
    assert sum(map(len, extras)) > 0
    assert_idle(pool)


# -- gc callbacks ----------------------------------------------------------------------------


@contextmanager
def _gc_callback(callback: Callable[[str, dict[str, int]], None]) -> Iterator[None]:
    gc.callbacks.append(callback)
    try:
        yield
    finally:
        gc.callbacks.remove(callback)


_CALLBACK_OUTCOMES = {
    "try_acquire: ReentrantCall",
    "try_acquire: granted",
    "try_acquire: None",
    "statistics: ReentrantCall",
    "statistics: ok",
}


_FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


@pytest.mark.timeout(60)
def test_gc_callback_using_the_manager_under_load_in_a_fresh_process() -> None:
    """The next test, where collections come fast enough. A free-threaded build's collection
    stops the world and walks the whole heap, which the rest of the suite has made large:
    about 370 a second in a fresh process here, too few in this one."""
    if not _FREE_THREADED:
        pytest.skip("a build with the GIL runs the next test in this process")
    run = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-c",
            "import test_reentry as t; "
            "t.test_gc_callback_using_the_manager_under_load_succeeds_or_gets_reentrant_call()",
        ],
        cwd=os.path.dirname(__file__),
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.skipif(_FREE_THREADED, reason="run in a fresh process on free-threaded builds")
@pytest.mark.timeout(60)
def test_gc_callback_using_the_manager_under_load_succeeds_or_gets_reentrant_call() -> None:
    pool = allotment.ResourceManager(2, name="gc-callback")
    errors: list[BaseException] = []
    outcomes: list[str] = []  # list.append is atomic; a lock here could deadlock in gc
    stop = threading.Event()

    def callback(phase: str, info: dict[str, int]) -> None:
        if threading.current_thread() is threading.main_thread():
            return  # pytest's own collections are not the point
        try:
            try:
                lease = pool.try_acquire(1)
            except allotment.ReentrantCall:
                outcomes.append("try_acquire: ReentrantCall")
            else:
                outcomes.append("try_acquire: granted" if lease else "try_acquire: None")
                if lease is not None:
                    lease.release()
            try:
                check_invariants(pool.statistics())
            except allotment.ReentrantCall:
                outcomes.append("statistics: ReentrantCall")
            else:
                outcomes.append("statistics: ok")
        except BaseException as error:  # unraisable otherwise
            errors.append(error)

    def churn() -> None:
        while not stop.is_set():
            with pool.acquire(1, timeout=GENEROUS) as lease:
                pool.statistics()  # allocates inside the section: collections happen there
                assert not lease.released
            # Garbage that only a collection frees: a free-threaded build's young count grows
            # (by allocations net of deallocations) and it collects every few rounds.
            [_Cyclic() for _ in range(32)]

    workers = [start(churn, name=f"churn-{index}") for index in range(3)]
    try:
        with _gc_threshold(1), _gc_callback(callback):
            wait_until(lambda: len(outcomes) >= 4000, "the callback ran 2000 times", BOUND)
    finally:
        stop.set()
        _finish(workers)
    assert errors == []
    assert set(outcomes) <= _CALLBACK_OUTCOMES
    assert_idle(pool)


def test_gc_callback_inside_the_critical_section_gets_reentrant_call() -> None:
    clock = InsideClock()
    pool = allotment.ResourceManager(2, name="gc-callback-inside", clock=clock)
    seen: list[tuple[bool, str, str]] = []
    active = threading.Event()

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase != "start" or not active.is_set() or seen:
            return
        try:
            inside = _inside(pool)
            try:
                lease = pool.try_acquire(1)
                took = "None" if lease is None else "granted"
                if lease is not None:
                    lease.release()
            except BaseException as error:
                took = type(error).__name__
            try:
                pool.statistics()
                stats = "ok"
            except BaseException as error:
                stats = type(error).__name__
            seen.append((inside, took, stats))
        except BaseException as error:  # unraisable otherwise
            seen.append((False, repr(error), ""))

    def collect_inside() -> None:
        active.set()
        try:
            gc.collect()
        finally:
            active.clear()

    clock.arm(pool, collect_inside)
    with _gc_callback(callback):
        pool.statistics()
    assert clock.fired, "the manager never read its clock inside its critical section"
    assert seen == [(True, "ReentrantCall", "ReentrantCall")]
    assert_idle(pool)


# -- finalizers inside the critical section ---------------------------------------------------


class _RunsInDel:
    """Runs ``action`` from ``__del__`` and keeps what it returned or raised."""

    def __init__(self, action: Callable[[], object]) -> None:
        self.action = action
        self.result: list[object] = []

    def __del__(self) -> None:
        try:
            self.result.append(self.action())
        except BaseException as error:  # unraisable otherwise
            self.result.append(error)


def _in_del_inside(
    pool: allotment.ResourceManager[Any], clock: InsideClock, action: Callable[[], object]
) -> object:
    """Run ``action`` from a ``__del__`` that runs inside ``pool``'s critical section (the
    hook drops the last reference) during an outer ``statistics()``; return its outcome."""
    garbage = [_RunsInDel(action)]
    result = garbage[0].result
    clock.arm(pool, garbage.clear)
    pool.statistics()
    assert clock.fired, "the manager never read its clock inside its critical section"
    (outcome,) = result
    return outcome


def _in_finalize_inside(
    pool: allotment.ResourceManager[Any], clock: InsideClock, action: Callable[[], object]
) -> object:
    """As :func:`_in_del_inside`, from a ``weakref.finalize`` callback."""
    result: list[object] = []

    def run() -> None:
        try:
            result.append(action())
        except BaseException as error:
            result.append(error)

    garbage = [_Plain()]  # no cycle: dropping the last reference frees it at once
    weakref.finalize(garbage[0], run)
    clock.arm(pool, garbage.clear)
    pool.statistics()
    assert clock.fired, "the manager never read its clock inside its critical section"
    (outcome,) = result
    return outcome


_FINALIZERS = {"__del__": _in_del_inside, "weakref.finalize": _in_finalize_inside}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("finalizer", sorted(_FINALIZERS))
def test_acquire_from_a_finalizer_inside_the_critical_section_raises_reentrant_call(
    finalizer: str,
) -> None:
    clock = InsideClock()
    pool = allotment.ResourceManager(2, name=f"acquire-from-{finalizer}", clock=clock)

    def acquire() -> object:
        assert _inside(pool), "the finalizer did not run inside the critical section"
        return pool.acquire(1)  # no timeout: blocking on our own section would hang

    outcome = _FINALIZERS[finalizer](pool, clock, acquire)
    assert isinstance(outcome, allotment.ReentrantCall), outcome
    assert isinstance(outcome, allotment.AllotmentError)
    assert isinstance(outcome, RuntimeError)
    assert_idle(pool)


_REFUSED_FROM_INSIDE: dict[
    str, Callable[[allotment.ResourceManager[int], allotment.Lease[int]], object]
] = {
    "acquire": lambda pool, lease: pool.acquire(1),
    "acquire with timeout": lambda pool, lease: pool.acquire(1, timeout=0.1),
    "try_acquire": lambda pool, lease: pool.try_acquire(1),
    "statistics": lambda pool, lease: pool.statistics(),
    "resize": lambda pool, lease: pool.resize(5),
    "close": lambda pool, lease: pool.close(),
    "acquire_all": lambda pool, lease: allotment.acquire_all([(pool, 1)]),
    "try_acquire_all": lambda pool, lease: allotment.try_acquire_all([(pool, 1)]),
    "partial release": lambda pool, lease: lease.release(1),
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("operation", sorted(_REFUSED_FROM_INSIDE))
def test_operations_from_a_del_inside_the_critical_section_raise_and_change_nothing(
    operation: str,
) -> None:
    clock = InsideClock()
    pool = allotment.ResourceManager(4, name=f"refuses-{operation}", clock=clock)
    lease = pool.acquire(2)
    outcome = _in_del_inside(pool, clock, lambda: _REFUSED_FROM_INSIDE[operation](pool, lease))
    assert isinstance(outcome, allotment.ReentrantCall), outcome
    assert "critical section" in str(outcome)
    stats = pool.statistics()
    check_invariants(stats)
    assert (stats.capacity, stats.in_use, stats.closed) == (4, 2, False)
    assert lease.amounts == 2
    lease.release()
    assert_idle(pool)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("how", ["release()", "with-block exit", "LeaseGroup.release()"])
def test_full_release_from_a_del_inside_the_critical_section_is_done_when_it_ends(
    how: str,
) -> None:
    clock = InsideClock()
    pool = allotment.ResourceManager(3, name=f"deferred-{how}", clock=clock)
    if how == "LeaseGroup.release()":
        group = allotment.acquire_all([(pool, 2)])
        release: Callable[[], None] = group.release
        leases = list(group)
    else:
        lease = pool.acquire(2)
        leases = [lease]

        def release() -> None:
            if how == "release()":
                lease.release()
            else:
                lease.__exit__(None, None, None)

    outcome = _in_del_inside(pool, clock, release)
    assert outcome is None
    # Done before the outer operation (the statistics() above) returned to its caller.
    assert all(lease.released for lease in leases)
    assert_idle(pool)
    release()  # and still idempotent
    assert_idle(pool)


def test_reprs_from_a_del_inside_the_critical_section_never_raise() -> None:
    clock = InsideClock()
    pool = allotment.ResourceManager(3, name="repr-inside", clock=clock)
    lease = pool.acquire(1)
    outcome = _in_del_inside(pool, clock, lambda: (repr(pool), repr(lease)))
    assert isinstance(outcome, tuple), outcome
    manager_repr, lease_repr = outcome
    assert "repr-inside" in manager_repr
    assert "repr-inside" in lease_repr
    lease.release()
    assert_idle(pool)


def test_wait_graph_from_a_del_inside_the_critical_section_lists_the_manager_as_busy() -> None:
    clock = InsideClock()
    pool = allotment.ResourceManager(3, name="graph-inside", clock=clock)
    lease = pool.acquire(1)

    def graph() -> tuple[float, allotment.WaitGraph]:
        began = time.monotonic()
        result = allotment.wait_graph(lock_timeout=0.5)
        return time.monotonic() - began, result

    outcome = _in_del_inside(pool, clock, graph)
    assert isinstance(outcome, tuple), outcome
    elapsed, result = outcome
    assert elapsed < 0.5 + GENEROUS / 10
    # It could not snapshot a manager this thread is inside, so it says so (or, were it able
    # to read it without the lock, shows it).
    shown = [stats.name for stats in result.managers]
    assert "graph-inside" in result.busy or "graph-inside" in shown
    lease.release()
    assert_idle(pool)


class _Owner:
    """Cyclic garbage that owns a manager: collecting it frees the manager."""

    def __init__(self) -> None:
        self.manager = allotment.ResourceManager(1, name="collected")
        self.me = self


@pytest.mark.timeout(60)
def test_wait_graph_never_raises_while_managers_are_collected() -> None:
    """The registry of live managers loses an entry whenever a manager is collected, which the
    allocations of ``wait_graph`` itself may trigger at any point of its walk."""
    errors: list[BaseException] = []
    with _gc_threshold(1):
        for _ in range(300):
            for _ in range(5):
                _Owner()
            try:
                allotment.wait_graph(lock_timeout=0)
            except BaseException as error:
                errors.append(error)
    gc.collect()
    assert errors == []


# -- signal handlers ----------------------------------------------------------------------------


# A main thread deadlocked inside a signal handler runs no further handler, not even
# pytest-timeout's SIGALRM one: only the thread method (which ends the session) stops it.
@pytest.mark.timeout(60, method="thread")
@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs pthread_kill")
def test_signal_handler_using_the_manager_never_hangs_the_main_thread() -> None:
    assert threading.current_thread() is threading.main_thread()
    signals = 60
    pool = allotment.ResourceManager(2, name="signalled")
    outcomes: list[tuple[str, str, float]] = []
    errors: list[BaseException] = []
    handled = threading.Event()
    done = threading.Event()
    stop_churn = threading.Event()

    def handler(signum: int, frame: object) -> None:
        try:
            try:
                lease = pool.try_acquire(1)
            except allotment.ReentrantCall:
                took = "ReentrantCall"
            else:
                took = "None" if lease is None else "granted"
                if lease is not None:
                    lease.release()
            try:
                check_invariants(pool.statistics())
            except allotment.ReentrantCall:
                stats = "ReentrantCall"
            else:
                stats = "ok"
            assert "signalled" in repr(pool)
            began = time.monotonic()
            graph = allotment.wait_graph(lock_timeout=0.5)
            elapsed = time.monotonic() - began
            str(graph)
            outcomes.append((took, stats, elapsed))
        except BaseException as error:  # would surface in the hammering loop otherwise
            errors.append(error)
        finally:
            handled.set()

    def send() -> None:
        main = threading.main_thread().ident
        assert main is not None
        for _ in range(signals):
            if stop_churn.is_set():
                return  # the main thread gave up
            handled.clear()
            signal.pthread_kill(main, signal.SIGUSR1)
            assert handled.wait(BOUND), "the main thread stopped handling signals"
        done.set()

    def churn() -> None:
        while not stop_churn.is_set():
            with pool.acquire(1, timeout=GENEROUS):
                pass

    previous = signal.signal(signal.SIGUSR1, handler)
    churner = start(churn, name="churn")
    sender = start(send, name="sender")
    try:
        deadline = time.monotonic() + BOUND
        rounds = 0
        while not done.is_set() and sender.is_alive():
            assert time.monotonic() < deadline
            with pool.acquire(1, timeout=GENEROUS):
                rounds += 1
            if rounds % 16 == 0:
                pool.statistics()
    finally:
        stop_churn.set()
        try:
            _finish([sender, churner])
        finally:
            # Only once the sender is gone: SIGUSR1's default action ends the process.
            signal.signal(signal.SIGUSR1, previous)
    assert errors == []
    assert len(outcomes) == signals
    for took, stats, elapsed in outcomes:
        assert took in {"ReentrantCall", "None", "granted"}
        assert stats in {"ReentrantCall", "ok"}
        assert elapsed < 0.5 + GENEROUS / 10
    assert_idle(pool)


# -- the leak warning is issued after the lock is released ------------------------------------


@contextmanager
def _showwarning(
    callback: Callable[[Warning | str, type[Warning], str, int], None],
) -> Iterator[None]:
    """Route leak warnings (always shown) to ``callback``; restore everything after."""

    def show(  # noqa: PLR0917 - the signature of warnings.showwarning
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        callback(message, category, filename, lineno)

    with warnings.catch_warnings():
        warnings.simplefilter("always", allotment.LeakedLeaseWarning)
        warnings.showwarning = show
        yield


def _leak(pool: allotment.ResourceManager[int], clock: InsideClock | None, amount: int) -> None:
    """Leak a lease of ``amount``: dropped outside any critical section, or (with ``clock``)
    inside one, during an outer ``statistics()``."""
    leases = [pool.acquire(amount)]
    if clock is None:
        leases.clear()
    else:
        clock.arm(pool, leases.clear)
        pool.statistics()
        assert clock.fired, "the manager never read its clock inside its critical section"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("where", ["outside", "inside a critical section"])
def test_leak_warning_handler_can_use_the_manager_and_sees_the_units_back(where: str) -> None:
    clock = InsideClock()
    pool = allotment.ResourceManager(3, name=f"leak-{where}", clock=clock)
    seen: list[object] = []

    def on_warning(
        message: Warning | str, category: type[Warning], filename: str, lineno: int
    ) -> None:
        try:
            stats = pool.statistics()
            check_invariants(stats)
            lease = pool.try_acquire(3)
            seen.append((category, stats.available, lease is not None))
            if lease is not None:
                lease.release()
        except BaseException as error:  # unraisable otherwise
            seen.append(error)

    with _showwarning(on_warning):
        _leak(pool, clock if where != "outside" else None, 2)
    assert seen == [(allotment.LeakedLeaseWarning, 3, True)]
    assert_idle(pool)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("where", ["outside", "inside a critical section"])
def test_leak_warning_turned_into_an_error_still_returns_the_units(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = InsideClock()
    pool = allotment.ResourceManager(3, name=f"leak-error-{where}", clock=clock)
    unraisable: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda hook: unraisable.append(hook.exc_value))
    with warnings.catch_warnings():
        warnings.simplefilter("error", allotment.LeakedLeaseWarning)
        _leak(pool, clock if where != "outside" else None, 2)
    (error,) = unraisable
    assert isinstance(error, allotment.LeakedLeaseWarning)
    assert "garbage-collected while still held" in str(error)
    assert_idle(pool)


# -- where the leak warning says the lease was acquired ---------------------------------------


def _leak_message(pool: allotment.ResourceManager[int]) -> tuple[str, int]:
    """Leak a lease of ``pool``; return the warning's text and the line that acquired it."""
    line = sys._getframe().f_lineno + 1
    lease = pool.acquire(1)
    with pytest.warns(allotment.LeakedLeaseWarning) as record:  # noqa: PT031 - the del warns
        del lease
        gc.collect()
    # Only this manager's: the collection may also find garbage of an earlier, failed test.
    (message,) = [m for w in record.list if f"from {pool.name!r}" in (m := str(w.message))]
    return message, line


@pytest.mark.skipif(sys.flags.dev_mode, reason="-X dev records sites by default")
def test_leak_warning_without_a_site_says_how_to_get_one() -> None:
    if tracemalloc.is_tracing():
        pytest.skip("tracemalloc is tracing: sites are recorded by default")
    pool = allotment.ResourceManager(1, name="siteless")
    message, _ = _leak_message(pool)
    assert "acquired at" not in message
    assert "test_reentry.py" not in message
    for hint in ("capture_sites=True", "-X dev", "tracemalloc"):
        assert hint in message
    assert "MainThread" in message
    assert_idle(pool)


def test_leak_warning_names_the_line_while_tracemalloc_traces() -> None:
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        pool = allotment.ResourceManager(1, name="traced")
        message, line = _leak_message(pool)
    finally:
        if not was_tracing:
            tracemalloc.stop()
    assert re.search(rf"acquired at .*test_reentry\.py:{line} in _leak_message", message), message
    assert_idle(pool)


def test_leak_warning_names_the_line_with_capture_sites() -> None:
    pool = allotment.ResourceManager(1, name="captured", capture_sites=True)
    message, line = _leak_message(pool)
    assert re.search(rf"acquired at .*test_reentry\.py:{line} in _leak_message", message), message
    assert_idle(pool)
