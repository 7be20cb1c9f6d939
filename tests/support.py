"""Helpers shared by the tests: bounded waiting, thread injection, invariant checks."""

from __future__ import annotations

import asyncio
import ctypes
import functools
import gc
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import allotment
from allotment._core import MemoryPool
from allotment._manager import parts_of

GENEROUS = 30.0
"""Seconds a test waits for something that should happen within milliseconds."""


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = GENEROUS) -> None:
    """Poll ``predicate`` until it holds. Only for states no event can announce (a thread has
    entered the manager's queue); the bound is generous so a slow machine does not fail."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.0005)


def wait_for_waiters(manager: allotment.ResourceManager[Any], count: int) -> None:
    wait_until(
        lambda: len(manager.statistics().waiters) == count,
        f"{count} request(s) are queued on {manager.name}",
    )


def inject(thread: threading.Thread, exception: type[BaseException]) -> None:
    """Raise ``exception`` asynchronously in ``thread`` at its next bytecode boundary."""
    assert thread.ident is not None
    changed = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident), ctypes.py_object(exception)
    )
    assert changed == 1, f"could not inject into {thread.name}"


class Worker(threading.Thread):
    """A thread that runs ``target`` and keeps its result or exception for the test."""

    def __init__(self, target: Callable[[], object], name: str | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self._target_function = target
        self.result: object = None
        self.error: BaseException | None = None
        self.finished = threading.Event()

    def run(self) -> None:
        try:
            self.result = self._target_function()
        except BaseException as error:  # the test inspects it
            self.error = error
        finally:
            self.finished.set()

    def outcome(self, timeout: float = GENEROUS) -> object:
        """Join and return the result, re-raising what the thread raised."""
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} is still running after {timeout} s"
        if self.error is not None:
            raise self.error
        return self.result


def run_threads_beside_a_loop(
    thread_work: list[Callable[[], object]],
    task_work: list[Callable[[], Coroutine[Any, Any, object]]],
) -> None:
    """Run each of ``thread_work`` on a thread of its own and each of ``task_work`` as a
    task of one event loop on one more thread, all let go at once by a barrier; wait for
    them all, and fail if any raised."""
    barrier = threading.Barrier(len(thread_work) + 1)

    def released(work: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            barrier.wait(GENEROUS)
            return work()

        return run

    async def loop_main() -> None:
        await asyncio.gather(*(work() for work in task_work))

    def loop_thread() -> None:
        barrier.wait(GENEROUS)
        asyncio.run(loop_main())

    workers = [Worker(released(work)) for work in thread_work]
    workers.append(Worker(loop_thread, name="event-loop"))
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [worker.error for worker in workers] == [None] * len(workers)


def enqueue(
    manager: allotment.ResourceManager[Any],
    amount: Any,
    *,
    name: str,
    timeout: float | None = GENEROUS,
) -> Worker:
    """Start a thread that acquires ``amount``, and return once its request is queued."""
    queued = len(manager.statistics().waiters)
    worker = start(manager.acquire, amount, timeout, name=name)
    wait_for_waiters(manager, queued + 1)
    return worker


def lease_of(worker: Worker) -> allotment.Lease[Any]:
    """The lease a worker thread's acquire returned (re-raising what it raised instead)."""
    lease = worker.outcome()
    assert isinstance(lease, allotment.Lease), f"{worker.name} returned {lease!r}"
    return lease


def start(target: Callable[..., object], *args: object, name: str | None = None) -> Worker:
    """Start ``target(*args)`` on a new thread."""
    worker = Worker(lambda: target(*args), name)
    worker.start()
    return worker


def check_invariants(stats: allotment.ManagerStatistics[Any], *, nominating: bool = False) -> None:
    """What must hold in every snapshot, whatever is going on. ``nominating``: the manager
    has bounded fairness, whose young head may be woken to claim units left free (so hand-off
    is not eager there; that the head is served is for the caller to see)."""
    capacity = _as_dict(stats.capacity)
    in_use = _as_dict(stats.in_use)
    available = _as_dict(stats.available)
    held: dict[str, int] = dict.fromkeys(capacity, 0)
    for holder in stats.holders:
        amounts = _as_dict(holder.amounts)
        assert amounts, f"a holder with nothing: {holder}"
        for name, count in amounts.items():
            assert count > 0
            held[name] += count
    if not stats.other_holders:  # else other processes' leases are in in_use too
        assert held == in_use, f"holders hold {held} but in_use is {in_use}"
    for name in capacity:
        assert available[name] == max(capacity[name] - in_use[name], 0)
    if stats.waiters:
        assert not stats.closed, "a closed manager has waiters"
    if stats.waiters and not nominating:
        head = _as_dict(stats.waiters[0].requested)
        # Hand-off is eager: if the head fitted, it would have been granted already.
        assert any(count > available[name] for name, count in head.items()), (
            f"the head {head} fits {available} but is still queued"
        )
    for waiter in stats.waiters:
        for name, count in _as_dict(waiter.requested).items():
            assert 0 < count <= capacity[name]


def assert_idle(manager: allotment.ResourceManager[Any]) -> None:
    """Every unit is back and nobody waits."""
    stats = manager.statistics()
    check_invariants(stats)
    assert stats.holders == ()
    assert stats.waiters == ()
    assert stats.available == stats.capacity


def _as_dict(amount: int | Mapping[str, int]) -> dict[str, int]:
    return {"": amount} if isinstance(amount, int) else dict(amount)


@contextmanager
def frozen_gc() -> Iterator[None]:
    """No automatic collection (in a sweep, a finalizer run at a random moment would shift
    the check points; in a leak test, only the test's own ``gc.collect()`` frees cycles), and
    cheap explicit ones: what exists already is frozen out of them."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()


@contextmanager
def switch_interval(seconds: float) -> Iterator[None]:
    """Make the interpreter switch threads far more often, to shake out races."""
    import sys

    previous = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def pool_of(manager: allotment.ResourceManager[Any]) -> MemoryPool:
    """White-box tests only: the in-memory pool behind a manager."""
    pool = parts_of(manager).pool
    assert isinstance(pool, MemoryPool)
    return pool


class _Probe(Exception):
    """Raised by :func:`with_entry_checks` at the check point it looks for."""


def with_entry_checks() -> bool:
    """Whether this interpreter checks the eval breaker right after a C ``__enter__`` returns,
    outside the ``with`` block: then an asynchronous exception delivered there leaves the block
    without calling ``__exit__``. Up to 3.13 ``BEFORE_WITH`` enters without a check; 3.14
    compiles ``with`` to a plain ``CALL``, which checks (CPython gh-148874); 3.15 skips the check
    after a call of a special method. Found out, not assumed from the version: ``__enter__`` is
    a C function that makes an exception pending on this thread, and ``__exit__`` notes whether
    the block was entered."""
    exited: list[bool] = []
    make_pending = functools.partial(
        ctypes.pythonapi.PyThreadState_SetAsyncExc,
        ctypes.c_ulong(threading.get_ident()),
        ctypes.py_object(_Probe),
    )

    class Probe:
        __enter__ = staticmethod(make_pending)

        def __exit__(self, *exc_info: object) -> None:
            exited.append(True)

    try:
        with Probe():
            time.monotonic()  # a check point inside the block
        time.monotonic()
    except _Probe:
        pass
    return not exited


WITH_ENTRY_CHECKS = with_entry_checks()
