"""After os.fork(), the child's managers work: fresh locks, no trace of vanished threads."""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings

import pytest

import allotment
from support import GENEROUS, enqueue, lease_of, start

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _in_child(body: object) -> int:
    """Fork, run ``body()`` in the child (exit 0 if it returns, 1 if it raises), and return
    the child's exit status; a child that overruns GENEROUS seconds is killed and fails."""
    with warnings.catch_warnings():
        # 3.12+ warns that forking a multi-threaded process may deadlock the child: that is
        # the very case under test.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()  # type: ignore[operator]
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    deadline = time.monotonic() + GENEROUS
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung")


def test_a_child_forked_while_threads_hold_and_wait_has_a_working_manager() -> None:
    pool = allotment.ResourceManager(3, name="forked")
    mine = pool.acquire(1)
    theirs = start(pool.acquire, 2, name="holder")
    their_lease = lease_of(theirs)
    waiter = enqueue(pool, 3, name="waiter")

    def child() -> None:
        stats = pool.statistics()
        assert stats.waiters == ()  # the waiter thread does not exist here
        assert [holder.thread_name for holder in stats.holders] == ["MainThread"]
        lease = pool.acquire(2, timeout=0.5)  # the holder thread's units came back
        lease.release()
        assert pool.try_acquire(3) is None  # the forking thread's lease is still held
        mine.release()
        pool.acquire(3, timeout=0.5).release()

    assert _in_child(child) == 0
    # The parent is unaffected.
    assert len(pool.statistics().waiters) == 1
    mine.release()
    their_lease.release()
    lease_of(waiter).release()


def test_forking_while_another_thread_churns_never_hangs_the_child() -> None:
    """The lock may be copied held by a thread inside a critical section: the child's lock
    is a fresh one, so timed and untimed operations there still work."""
    pool = allotment.ResourceManager(2)
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            with pool.acquire(1, timeout=GENEROUS):
                pass

    worker = start(churn, name="churn")
    try:
        for _ in range(20):

            def child() -> None:
                pool.acquire(1, timeout=0.5).release()
                pool.statistics()

            assert _in_child(child) == 0
    finally:
        stop.set()
        worker.outcome()
    assert pool.statistics().in_use == 0
