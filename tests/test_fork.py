"""os.fork(): in the child every manager works, and keeps no trace of the threads left behind.

The child of a fork has one thread, the one that forked. Whatever the other threads were doing
with a manager (holding its lock, waiting in its queue, holding leases) they will never finish
there. The child must be able to use every manager at once: its lock works, queued requests of
threads that did not come are dropped, leases of those threads are released, and the forking
thread's own leases stay held.

The child never returns into pytest: its body runs under ``try``/``except BaseException``,
reports through a pipe, and ends with ``os._exit``. The parent waits for it within a bound
and kills it if it overruns (a hang in the child is the bug these tests look for).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import allotment
from support import (
    GENEROUS,
    assert_idle,
    check_invariants,
    enqueue,
    lease_of,
    start,
)

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

CHILD_BOUND = 10.0
"""Seconds a child may take (it needs milliseconds; a hung one is killed after this)."""


@contextmanager
def _fork_allowed() -> Iterator[None]:
    """Python 3.12+ warns (DeprecationWarning) when a multi-threaded process forks; these
    tests fork with threads on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"(?s).*use of fork\(\) may lead to deadlocks",
            category=DeprecationWarning,
        )
        yield


def _child_main(write_end: int, body: Callable[[], object]) -> None:
    """Run ``body`` in the child and report; never returns."""
    code = 1
    try:
        try:
            report: dict[str, object] = {"ok": True, "result": body()}
            code = 0
        except BaseException:
            report = {"ok": False, "error": traceback.format_exc()[-8000:]}
        data = json.dumps(report, default=repr).encode()
        while data:
            data = data[os.write(write_end, data) :]
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def run_in_child(body: Callable[[], object], bound: float = CHILD_BOUND) -> object:
    """Fork; run ``body`` in the child; return what it returned there (JSON-encoded and back).

    Fails if the child raised (showing its traceback), exited abnormally, or did not finish
    within ``bound`` seconds (it is then killed).
    """
    read_end, write_end = os.pipe()
    try:
        with _fork_allowed():
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(read_end)
            _child_main(write_end, body)
        os.close(write_end)
        write_end = -1
        deadline = time.monotonic() + bound
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"the child did not finish within {bound} s: it hung")
            time.sleep(0.002)
        chunks = []
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
    finally:
        os.close(read_end)
        if write_end != -1:
            os.close(write_end)
    raw = b"".join(chunks)
    assert raw, f"the child reported nothing (exit status {status:#x})"
    report = json.loads(raw)
    assert report["ok"], f"the child failed:\n{report['error']}"
    assert os.waitstatus_to_exitcode(status) == 0
    return report["result"]


def _holder_thread(
    manager: allotment.ResourceManager[Any], amount: Any, name: str
) -> tuple[threading.Event, list[allotment.Lease[Any]], threading.Thread]:
    """A thread that acquires ``amount`` and holds it until the returned event is set."""
    go = threading.Event()
    box: list[allotment.Lease[Any]] = []
    held = threading.Event()

    def hold() -> None:
        lease = manager.acquire(amount, timeout=GENEROUS)
        box.append(lease)
        held.set()
        go.wait(GENEROUS)
        lease.release()

    thread = start(hold, name=name)
    assert held.wait(GENEROUS)
    return go, box, thread


@pytest.mark.timeout(60)
def test_child_drops_other_threads_waiters_and_leases_but_keeps_its_own() -> None:
    pool = allotment.ResourceManager(3, name="forked")
    own = pool.acquire(1)
    go, box, holder = _holder_thread(pool, 2, "holder")
    (holder_lease,) = box
    waiter = enqueue(pool, 1, name="waiter")
    me = threading.current_thread().name

    def child() -> object:
        stats = pool.statistics()
        check_invariants(stats)
        assert stats.waiters == (), f"the parent's queued request survived: {stats.waiters}"
        assert [(h.thread_name, h.amounts) for h in stats.holders] == [(me, 1)]
        assert stats.available == 2, "the holder thread's units did not come back"
        assert holder_lease.released, "the lease of a thread that did not come is still held"
        holder_lease.release()  # idempotent: gives nothing back twice
        assert pool.statistics().available == 2
        assert not own.released
        assert own.amounts == 1
        # The lock works, with and without a timeout, and timeouts still time out.
        second = pool.acquire(1, timeout=0.5)
        third = pool.try_acquire(1)
        assert third is not None
        assert pool.try_acquire(1) is None
        try:
            pool.acquire(1, timeout=0.05)
        except allotment.AcquireTimeout:
            timed_out = True
        else:
            timed_out = False
        assert timed_out
        for lease in (own, second, third):
            lease.release()
        assert_idle(pool)
        return "ok"

    try:
        assert run_in_child(child) == "ok"
        # The parent is unaffected: its waiter is still queued, both leases still held.
        stats = pool.statistics()
        check_invariants(stats)
        assert [w.thread_name for w in stats.waiters] == ["waiter"]
        assert sorted((h.thread_name, h.amounts) for h in stats.holders) == sorted(
            [("holder", 2), (me, 1)]
        )
        assert not holder_lease.released
        assert not own.released
    finally:
        own.release()  # lets the waiter in
        go.set()
        lease_of(waiter).release()
        holder.join(GENEROUS)
    assert_idle(pool)


@pytest.mark.timeout(60)
def test_child_keeps_the_forking_threads_lease_of_several_resources() -> None:
    node = allotment.ResourceManager({"gpu": 2, "ram_gb": 16}, name="forked-node")
    own = node.acquire({"gpu": 1, "ram_gb": 4})
    go, box, other = _holder_thread(node, {"gpu": 1, "ram_gb": 8}, "other")
    (other_lease,) = box
    me = threading.current_thread().name

    def child() -> object:
        stats = node.statistics()
        check_invariants(stats)
        assert [(h.thread_name, h.amounts) for h in stats.holders] == [
            (me, {"gpu": 1, "ram_gb": 4})
        ]
        assert other_lease.released
        assert own.amounts == {"gpu": 1, "ram_gb": 4}
        # Only possible if the other thread's units came back.
        with node.acquire({"gpu": 1, "ram_gb": 12}, timeout=0.5):
            pass
        own.release()
        assert_idle(node)
        return "ok"

    try:
        assert run_in_child(child) == "ok"
        stats = node.statistics()
        assert sorted(h.thread_name for h in stats.holders) == sorted(["other", me])
        assert not own.released
    finally:
        own.release()
        go.set()
        other.join(GENEROUS)
    assert_idle(node)


@pytest.mark.timeout(120)
def test_every_child_forked_during_churn_can_use_the_manager() -> None:
    """Regression: a fork while another thread is inside the manager's critical section copies
    its lock held; in the child, ``acquire(timeout=...)`` then hung forever."""
    forks = 20
    pool = allotment.ResourceManager(1, name="churned")
    stop = threading.Event()
    rounds = [0, 0]

    def churn(index: int) -> None:
        while not stop.is_set():
            with pool.acquire(1, timeout=GENEROUS):
                rounds[index] += 1
            if rounds[index] % 8 == 0:
                pool.statistics()

    def child() -> object:
        lease = pool.acquire(1, timeout=0.5)  # nobody else is left to hold it
        try:
            pool.acquire(1, timeout=0.01)
        except allotment.AcquireTimeout:
            pass
        else:
            raise AssertionError("a second unit was granted from a capacity of 1")
        lease.release()
        check_invariants(pool.statistics())
        with pool.acquire(1, timeout=0.5):
            pass
        assert_idle(pool)
        return "ok"

    churners = [start(churn, index, name=f"churn-{index}") for index in range(2)]
    try:
        for _ in range(forks):
            before = list(rounds)
            deadline = time.monotonic() + GENEROUS
            while rounds == before:  # the churn goes on between forks
                assert time.monotonic() < deadline, "the churners stopped"
                time.sleep(0.0005)
            assert run_in_child(child) == "ok"
    finally:
        stop.set()
        for churner in churners:
            churner.outcome()
    assert_idle(pool)


def test_a_forked_child_neither_releases_nor_renews_the_parents_redis_leases(
    redis_backend: Any,
) -> None:
    """The leases a child inherits belong to its parent: releasing them there does nothing on
    the server, and the child's own requests get a process id (wake-up list) of their own."""
    pool = allotment.ResourceManager(2, name="forked", backend=redis_backend)
    parents = pool.acquire(1)
    token = parents.fencing_token

    def child() -> object:
        parents.release()  # the parent's: nothing happens on the server
        stats = pool.statistics()
        with pool.acquire(1, timeout=GENEROUS) as own:  # may wait: the child's own keeper
            mine = own.fencing_token
        return [stats.in_use, mine is not None and mine > (token or 0)]

    outcome = run_in_child(child)
    assert isinstance(outcome, list)
    in_use, newer = outcome
    assert in_use == 1
    assert newer
    assert not parents.released
    assert pool.statistics().in_use == 1
    parents.release()
    assert pool.statistics().in_use == 0


def test_a_forked_child_drops_the_parents_waiters_on_a_redis_limiter(redis_backend: Any) -> None:
    api = allotment.RateLimiter(1, per=2, burst=1, name="forked-rate", backend=redis_backend)
    api.acquire()
    waiter = start(api.acquire, name="waiting")  # reserved, sleeping for about 2 s
    deadline = time.monotonic() + GENEROUS
    while not api.statistics().waiters and time.monotonic() < deadline:
        time.sleep(0.001)
    assert api.statistics().waiters

    def child() -> object:
        stats = api.statistics()
        return [len(stats.waiters), api.try_acquire()]

    outcome = run_in_child(child)
    assert outcome == [0, False]  # the parent's waiter is not the child's; still spent
    waiter.join(GENEROUS)
    assert waiter.error is None
