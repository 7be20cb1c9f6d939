"""wait_graph(): who holds what and who waits for whom, and the deadlocks among them."""

from __future__ import annotations

import signal
import threading

import pytest

import allotment
from support import GENEROUS, Worker, enqueue, pool_of, start, wait_for_waiters


def hold_then_wait(
    first: allotment.ResourceManager[int],
    second: allotment.ResourceManager[int],
    ready: threading.Barrier,
) -> None:
    with first.acquire(1):
        ready.wait(GENEROUS)
        second.acquire(1, timeout=GENEROUS).release()


def test_a_real_deadlock_is_found_and_explained() -> None:
    a = allotment.ResourceManager(1, name="db", capture_sites=True)
    b = allotment.ResourceManager(1, name="gpu", capture_sites=True)
    ready = threading.Barrier(2)
    one = start(hold_then_wait, a, b, ready, name="one")
    two = start(hold_then_wait, b, a, ready, name="two")
    wait_for_waiters(a, 1)
    wait_for_waiters(b, 1)

    graph = allotment.wait_graph()

    assert {thread.name for thread in graph.deadlocked} == {"one", "two"}
    assert len(graph.cycles) == 1
    cycle = graph.cycles[0]
    assert {(edge.waiter.name, edge.blocker.name, edge.manager) for edge in cycle} == {
        ("one", "two", "gpu"),
        ("two", "one", "db"),
    }
    text = str(graph)
    assert "DEADLOCK: one, two wait only for each other" in text
    assert "thread 'one' waits on 'gpu', where thread 'two' holds 1" in text
    assert "test_wait_graph.py" in text  # where each lease was acquired
    names = [stats.name for stats in graph.managers]
    assert names.index("db") < names.index("gpu")
    # End it: closing 'db' refuses the wait of 'two', whose unwinding gives 'gpu' back, which
    # is handed to 'one' (closing both at once would race that hand-off).
    a.close()
    with pytest.raises(allotment.ManagerClosed):
        two.outcome()
    assert one.outcome() is None
    b.close()


def test_waiting_for_a_running_thread_is_not_a_deadlock() -> None:
    pool = allotment.ResourceManager(2, name="pool")
    held = pool.acquire(2)
    first = enqueue(pool, 2, name="first")
    second = enqueue(pool, 1, name="second")
    graph = allotment.wait_graph()
    assert graph.deadlocked == ()
    assert graph.cycles == ()
    me = threading.current_thread().name
    assert {(edge.waiter.name, edge.blocker.name, edge.reason) for edge in graph.edges} == {
        ("first", me, "holds 2"),
        ("second", me, "holds 2"),
        ("second", "first", "is queued ahead for 2"),
    }
    assert "no cycles" in str(graph)
    held.release()
    for worker in (first, second):
        result = worker.outcome()
        assert isinstance(result, allotment.Lease)
        result.release()


def test_a_thread_waiting_on_itself_is_a_deadlock() -> None:
    pool = allotment.ResourceManager(1, name="pool")

    def nest() -> None:
        with pool.acquire(1):
            pool.acquire(1, timeout=GENEROUS)

    worker: Worker = start(nest, name="nester")
    wait_for_waiters(pool, 1)
    graph = allotment.wait_graph()
    assert [thread.name for thread in graph.deadlocked] == ["nester"]
    assert [[(e.waiter.name, e.blocker.name) for e in c] for c in graph.cycles] == [
        [("nester", "nester")]
    ]
    pool.close()
    with pytest.raises(allotment.ManagerClosed):
        worker.outcome()


def test_a_manager_whose_lock_is_held_is_skipped_not_waited_for() -> None:
    pool = allotment.ResourceManager(1, name="stuck")
    with pool.acquire(1):
        lock = pool_of(pool)._lock
        with lock:  # as if a signal handler had interrupted the thread holding it
            graph = allotment.wait_graph(lock_timeout=0.01)
        assert "stuck" in graph.busy
        assert "skipped (lock busy): 'stuck'" in str(graph)
        assert "stuck" in [stats.name for stats in allotment.wait_graph().managers]


def test_idle_managers_are_left_out() -> None:
    allotment.ResourceManager(1, name="idle")
    assert "idle" not in [stats.name for stats in allotment.wait_graph().managers]


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")
def test_it_can_be_printed_from_a_signal_handler() -> None:
    pool = allotment.ResourceManager(1, name="pool")
    held = pool.acquire(1)
    waiter = enqueue(pool, 1, name="waiter")
    reports: list[str] = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: reports.append(str(allotment.wait_graph())))
    try:
        signal.raise_signal(signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert len(reports) == 1
    assert "1. 1 waiting" in reports[0]
    assert "waiter" in reports[0]
    held.release()
    lease = waiter.outcome()
    assert isinstance(lease, allotment.Lease)
    lease.release()
