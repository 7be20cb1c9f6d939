"""asyncio: tasks and threads on one manager's queue, cancellation, timeouts, diagnostics."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
import warnings
from typing import Any

import pytest

import allotment
from aio_support import queued, run, until
from allotment.testing import ManualClock
from support import GENEROUS, assert_idle, check_invariants, enqueue, lease_of, start

# -- the API ---------------------------------------------------------------------------------


def test_a_task_gets_the_same_lease_a_thread_would() -> None:
    pool = allotment.ResourceManager({"gpu": 2, "ram_gb": 8}, name="node")

    async def main() -> None:
        lease = await pool.acquire_async({"gpu": 1}, timeout=5)
        assert isinstance(lease, allotment.Lease)
        assert lease.amounts == {"gpu": 1}
        async with pool.acquire_async({"ram_gb": 8}) as other:
            assert pool.statistics().in_use == {"gpu": 1, "ram_gb": 8}
            assert other.amounts == {"ram_gb": 8}
        assert other.released
        async with lease:
            pass
        assert lease.released

    run(main)
    assert_idle(pool)


def test_the_body_raising_still_releases() -> None:
    pool = allotment.ResourceManager(1)

    async def main() -> None:
        with pytest.raises(KeyError):
            async with pool.acquire_async(1):
                raise KeyError("body")

    run(main)
    assert_idle(pool)


def test_the_acquisition_is_a_coroutine_for_create_task_wait_for_and_gather() -> None:
    pool = allotment.ResourceManager(3)

    async def main() -> None:
        task = asyncio.create_task(pool.acquire_async(1), name="taker")
        by_task = await task
        by_wait_for = await asyncio.wait_for(pool.acquire_async(1), GENEROUS)
        (by_gather,) = await asyncio.gather(pool.acquire_async(1))
        stats = pool.statistics()
        assert sorted(holder.task_name or "" for holder in stats.holders)[-1] == "taker"
        for lease in (by_task, by_wait_for, by_gather):
            lease.release()

    run(main)
    assert_idle(pool)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="TaskGroup is new in 3.11")
def test_a_task_group_sibling_failing_cancels_a_queued_acquisition() -> None:
    pool = allotment.ResourceManager(1)
    task_group: Any = getattr(asyncio, "TaskGroup")  # noqa: B009 - absent before 3.11

    async def main() -> None:
        held = await pool.acquire_async(1)

        async def fail_when_queued() -> None:
            await queued(pool, 1)
            raise KeyError("sibling")

        async def both() -> None:
            async with task_group() as group:
                group.create_task(pool.acquire_async(1))
                group.create_task(fail_when_queued())

        with pytest.raises(Exception) as caught:  # noqa: PT011 - ExceptionGroup is new in 3.11
            await both()
        assert [type(inner) for inner in caught.value.exceptions] == [KeyError]  # type: ignore[attr-defined]
        assert pool.statistics().waiters == ()
        held.release()

    run(main)
    assert_idle(pool)


def test_bad_input_is_refused_before_anything_is_awaited() -> None:
    pool = allotment.ResourceManager({"gpu": 2})
    with pytest.raises(allotment.InvalidAmount):
        pool.acquire_async({"gpu": 0})
    with pytest.raises(allotment.UnknownResource):
        pool.acquire_async({"tpu": 1})
    with pytest.raises(allotment.InvalidAmountType):
        pool.acquire_async({"gpu": True})
    with pytest.raises(ValueError, match="timeout"):
        pool.acquire_async({"gpu": 1}, timeout=-1)
    with pytest.raises(TypeError, match="timeout"):
        pool.acquire_async({"gpu": 1}, timeout="soon")  # type: ignore[arg-type]

    async def main() -> None:
        with pytest.raises(allotment.ExceedsCapacity):
            await pool.acquire_async({"gpu": 3})

    run(main)
    assert_idle(pool)


def test_awaiting_outside_a_task_is_refused() -> None:
    pool = allotment.ResourceManager(1)
    acquisition = pool.acquire_async(1)
    with pytest.raises(RuntimeError):
        acquisition.send(None)
    assert_idle(pool)


def test_timeout_zero_never_waits_and_try_acquire_works_from_a_task() -> None:
    pool = allotment.ResourceManager(1)

    async def main() -> None:
        lease = pool.try_acquire(1)
        assert lease is not None
        assert pool.try_acquire(1) is None
        with pytest.raises(allotment.AcquireTimeout):
            await pool.acquire_async(1, timeout=0)
        lease.release()
        async with pool.acquire_async(1, timeout=0):
            pass

    run(main)
    assert_idle(pool)


def test_a_closed_manager_refuses_a_queued_task() -> None:
    pool = allotment.ResourceManager(1)

    async def main() -> None:
        held = await pool.acquire_async(1)
        waiting = asyncio.create_task(pool.acquire_async(1))
        await queued(pool, 1)
        pool.close()
        with pytest.raises(allotment.ManagerClosed):
            await waiting
        held.release()

    run(main)
    assert pool.statistics().waiters == ()


def test_a_shrink_refuses_a_queued_task_that_no_longer_fits() -> None:
    pool = allotment.ResourceManager(4)

    async def main() -> None:
        held = await pool.acquire_async(1)
        waiting = asyncio.create_task(pool.acquire_async(4))
        await queued(pool, 1)
        pool.resize(2)
        with pytest.raises(allotment.ExceedsCapacity):
            await waiting
        held.release()

    run(main)
    assert_idle(pool)


# -- one queue for threads and tasks ---------------------------------------------------------


def test_threads_and_tasks_are_served_in_one_arrival_order() -> None:
    pool = allotment.ResourceManager(1, name="shared")
    order: list[str] = []

    async def main() -> None:
        held = await pool.acquire_async(1)
        workers = []

        async def task_taker(name: str) -> None:
            async with pool.acquire_async(1):
                order.append(name)

        tasks = []
        for position in range(6):
            name = f"{'thread' if position % 2 == 0 else 'task'}-{position}"
            if position % 2 == 0:

                def thread_taker(name: str = name) -> None:
                    with pool.acquire(1, timeout=GENEROUS):
                        order.append(name)

                workers.append(start(thread_taker, name=name))
            else:
                tasks.append(asyncio.create_task(task_taker(name), name=name))
            await queued(pool, position + 1)
        stats = pool.statistics()
        assert [waiter.task_name for waiter in stats.waiters] == [
            None,
            "task-1",
            None,
            "task-3",
            None,
            "task-5",
        ]
        held.release()  # from the loop's thread: the grants then pass thread, task, thread...
        await asyncio.gather(*tasks)
        for worker in workers:
            await asyncio.to_thread(worker.outcome)

    run(main)
    assert order == [f"{'thread' if p % 2 == 0 else 'task'}-{p}" for p in range(6)]
    assert_idle(pool)


def test_a_release_from_a_thread_wakes_the_task_it_granted_and_vice_versa() -> None:
    pool = allotment.ResourceManager(2)

    async def main() -> None:
        held = pool.acquire(2)  # by this thread, released by another below
        task = asyncio.create_task(pool.acquire_async(2))
        await queued(pool, 1)
        await asyncio.to_thread(held.release)
        lease = await asyncio.wait_for(task, GENEROUS)
        # Now a thread waits and the task's release wakes it.
        worker = enqueue(pool, 1, name="thread-waiter")
        lease.release()
        lease_of(await asyncio.to_thread(lambda: worker)).release()

    run(main)
    assert_idle(pool)


def test_a_large_task_at_the_head_is_not_overtaken_by_smaller_threads() -> None:
    pool = allotment.ResourceManager(4)

    async def main() -> None:
        held = [await pool.acquire_async(1) for _ in range(4)]
        big = asyncio.create_task(pool.acquire_async(4))
        await queued(pool, 1)
        small = enqueue(pool, 1, name="small")
        held.pop().release()
        held.pop().release()
        stats = pool.statistics()
        assert stats.available == 2
        assert len(stats.waiters) == 2  # the small one fits but waits behind the big one
        for lease in held:
            lease.release()
        (await big).release()
        lease_of(small).release()

    run(main)
    assert_idle(pool)


def test_several_event_loops_in_several_threads_share_one_manager() -> None:
    pool = allotment.ResourceManager({"gpu": 3, "ram": 5}, name="shared")
    taken = [0] * 4

    def loop_thread(index: int) -> None:
        async def worker(amount: dict[str, int]) -> None:
            for _ in range(25):
                async with pool.acquire_async(amount, timeout=GENEROUS):
                    taken[index] += 1
                    check_invariants(pool.statistics())
                    await asyncio.sleep(0)

        async def main() -> None:
            await asyncio.gather(*(worker({"gpu": 1 + n % 2, "ram": 1 + n % 3}) for n in range(6)))

        asyncio.run(main())

    def plain_thread() -> None:
        for _ in range(25):
            with pool.acquire({"gpu": 2, "ram": 2}, timeout=GENEROUS):
                check_invariants(pool.statistics())

    workers = [start(loop_thread, index, name=f"loop-{index}") for index in range(4)]
    workers += [start(plain_thread, name=f"plain-{n}") for n in range(3)]
    for worker in workers:
        worker.outcome()
    assert taken == [150] * 4
    assert_idle(pool)


# -- cancellation ----------------------------------------------------------------------------


def test_a_task_cancelled_while_queued_leaves_as_if_it_had_never_asked() -> None:
    pool = allotment.ResourceManager(2)

    async def main() -> None:
        held = await pool.acquire_async(2)
        first = asyncio.create_task(pool.acquire_async(2), name="first")
        await queued(pool, 1)
        second = asyncio.create_task(pool.acquire_async(1), name="second")
        await queued(pool, 2)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert [w.task_name for w in pool.statistics().waiters] == ["second"]
        held.release()
        (await second).release()

    run(main)
    assert_idle(pool)


def test_cancelling_the_head_lets_those_behind_through_at_once() -> None:
    pool = allotment.ResourceManager(3)

    async def main() -> None:
        held = await pool.acquire_async(2)
        big = asyncio.create_task(pool.acquire_async(3))
        await queued(pool, 1)
        small = asyncio.create_task(pool.acquire_async(1))
        await queued(pool, 2)
        big.cancel()
        lease = await asyncio.wait_for(small, GENEROUS)  # fits beside what is held
        with pytest.raises(asyncio.CancelledError):
            await big
        lease.release()
        held.release()

    run(main)
    assert_idle(pool)


def test_the_cancellation_propagates_as_the_same_instance() -> None:
    pool = allotment.ResourceManager(1)

    async def main() -> None:
        held = await pool.acquire_async(1)
        acquisition = pool.acquire_async(1)
        future = acquisition.send(None)  # queued: it suspends on its wake-up future
        assert isinstance(future, asyncio.Future)
        assert len(pool.statistics().waiters) == 1
        error = asyncio.CancelledError("mine")
        with pytest.raises(asyncio.CancelledError) as caught:
            acquisition.throw(error)
        assert caught.value is error
        assert pool.statistics().waiters == ()
        held.release()

    run(main)
    assert_idle(pool)


def test_a_grant_that_reached_a_task_as_it_was_cancelled_goes_to_the_next_waiter() -> None:
    pool = allotment.ResourceManager(1)

    async def main() -> None:
        held = await pool.acquire_async(1)
        first = asyncio.create_task(pool.acquire_async(1), name="first")
        await queued(pool, 1)
        second = asyncio.create_task(pool.acquire_async(1), name="second")
        await queued(pool, 2)
        held.release()  # granted to "first", which has not resumed yet ...
        assert pool.statistics().holders[0].task_name == "first"
        first.cancel()  # ... and is cancelled before it does
        with pytest.raises(asyncio.CancelledError):
            await first
        lease = await asyncio.wait_for(second, GENEROUS)
        assert [h.task_name for h in pool.statistics().holders] == ["second"]
        lease.release()

    run(main)
    assert_idle(pool)


def test_a_grant_from_another_thread_racing_a_cancellation_is_never_lost() -> None:
    """Many rounds of: a thread releases exactly as the loop cancels the granted task."""
    pool = allotment.ResourceManager(1)

    async def main() -> None:
        outcomes = {"granted": 0, "cancelled": 0}
        for _ in range(200):
            held = pool.acquire(1)
            task = asyncio.create_task(pool.acquire_async(1))
            await queued(pool, 1)
            go = threading.Barrier(2)

            def release(held: allotment.Lease[int] = held, go: threading.Barrier = go) -> None:
                go.wait()
                held.release()

            releaser = start(release, name="releaser")
            await asyncio.to_thread(go.wait)
            task.cancel()
            try:
                lease = await task
            except asyncio.CancelledError:
                outcomes["cancelled"] += 1
            else:
                outcomes["granted"] += 1  # it resumed before the cancellation landed
                lease.release()
            await asyncio.to_thread(releaser.outcome)
            assert_idle(pool)
        assert sum(outcomes.values()) == 200

    run(main)


def test_a_timeout_scope_leaves_no_trace() -> None:
    pool = allotment.ResourceManager(1)

    async def main() -> None:
        held = await pool.acquire_async(1)
        with pytest.raises(asyncio.TimeoutError):  # the builtin TimeoutError from 3.11
            await asyncio.wait_for(pool.acquire_async(1), 0.01)
        assert pool.statistics().waiters == ()
        if sys.version_info >= (3, 11):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.01):
                    await pool.acquire_async(1)
            assert pool.statistics().waiters == ()
        held.release()

    run(main)
    assert_idle(pool)


# -- timeouts on the manager's clock ---------------------------------------------------------


def test_a_task_times_out_when_the_manual_clock_passes_its_deadline_not_before() -> None:
    clock = ManualClock()
    pool = allotment.ResourceManager(1, clock=clock)

    async def main() -> None:
        held = await pool.acquire_async(1)
        task = asyncio.create_task(pool.acquire_async(1, timeout=5))
        await until(lambda: clock.sleepers == 1, "the task sleeps on the clock")
        clock.advance(4.999)
        await asyncio.sleep(0.01)
        assert not task.done()
        clock.advance(0.001)
        with pytest.raises(allotment.AcquireTimeout):
            await asyncio.wait_for(task, GENEROUS)
        assert clock.sleepers == 0
        assert pool.statistics().waiters == ()
        held.release()

    run(main)
    assert_idle(pool)


def test_a_grant_that_arrived_beats_a_deadline_that_passed_before_the_task_resumed() -> None:
    clock = ManualClock()
    pool = allotment.ResourceManager(1, clock=clock)

    async def main() -> None:
        held = await pool.acquire_async(1)
        task = asyncio.create_task(pool.acquire_async(1, timeout=5))
        await until(lambda: clock.sleepers == 1, "the task sleeps on the clock")
        clock.advance(10)  # the alarm rings ...
        held.release()  # ... and the grant arrives before the task runs again
        lease = await task
        lease.release()

    run(main)
    assert_idle(pool)


def test_a_real_timeout_on_the_system_clock() -> None:
    pool = allotment.ResourceManager(1)

    async def main() -> None:
        held = await pool.acquire_async(1)
        started = time.monotonic()  # the manager's clock (a loop's own may be coarser)
        with pytest.raises(allotment.AcquireTimeout) as caught:
            await pool.acquire_async(1, timeout=0.05)
        assert time.monotonic() - started >= 0.05
        assert caught.value.manager is pool
        held.release()

    run(main)
    assert_idle(pool)


# -- loops that go away ----------------------------------------------------------------------


def test_a_loop_closed_with_a_task_still_queued_leaks_nothing() -> None:
    pool = allotment.ResourceManager(1, name="survivor")
    held = pool.acquire(1)
    loop = asyncio.new_event_loop()
    try:

        async def queue_and_return() -> asyncio.Task[Any]:
            task = asyncio.create_task(pool.acquire_async(1))
            await queued(pool, 1)
            return task

        orphan = loop.run_until_complete(queue_and_return())
    finally:
        loop.close()  # the task never ran again: it is still queued
    thread_waiter = enqueue(pool, 1, name="after-the-orphan")
    assert len(pool.statistics().waiters) == 2
    held.release()  # grants the orphan, whose loop is closed: the grant goes on
    lease_of(thread_waiter).release()
    del orphan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Task was destroyed but it is pending"
        gc.collect()
    assert_idle(pool)


def test_asyncio_run_cancels_a_queued_task_and_withdraws_it() -> None:
    pool = allotment.ResourceManager(1)
    held = pool.acquire(1)

    async def main() -> None:
        pending = asyncio.create_task(pool.acquire_async(1))
        await queued(pool, 1)
        assert not pending.done()
        # Returning with the task pending: asyncio.run cancels it.

    run(main)
    assert pool.statistics().waiters == ()
    held.release()
    assert_idle(pool)


# -- diagnostics -----------------------------------------------------------------------------


def test_statistics_tell_tasks_from_threads() -> None:
    pool = allotment.ResourceManager(2, name="diag")

    async def main() -> None:
        asyncio.current_task().set_name("holder")  # type: ignore[union-attr]
        held = await pool.acquire_async(2)
        thread_waiter = enqueue(pool, 1, name="thread-waiter")
        task = asyncio.create_task(pool.acquire_async(1), name="task-waiter")
        await queued(pool, 2)
        stats = pool.statistics()
        assert [h.task_name for h in stats.holders] == ["holder"]
        assert [(w.thread_name, w.task_name) for w in stats.waiters] == [
            ("thread-waiter", None),
            (threading.current_thread().name, "task-waiter"),
        ]
        text = str(stats)
        assert "by task holder (thread " in text
        assert "thread thread-waiter" in text
        assert "task task-waiter" in text
        held.release()
        lease_of(await asyncio.to_thread(lambda: thread_waiter)).release()
        (await task).release()

    run(main)
    assert_idle(pool)


def test_the_wait_graph_keeps_two_tasks_on_one_thread_apart() -> None:
    first = allotment.ResourceManager(1, name="first")
    second = allotment.ResourceManager(1, name="second")

    async def hold_then_wait(
        holds: allotment.ResourceManager[int],
        wants: allotment.ResourceManager[int],
        ready: asyncio.Event,
        other_ready: asyncio.Event,
    ) -> None:
        async with holds.acquire_async(1):
            ready.set()
            await other_ready.wait()
            await wants.acquire_async(1)

    async def main() -> None:
        a_ready, b_ready = asyncio.Event(), asyncio.Event()
        tasks = [
            asyncio.create_task(hold_then_wait(first, second, a_ready, b_ready), name="A"),
            asyncio.create_task(hold_then_wait(second, first, b_ready, a_ready), name="B"),
        ]
        await queued(first, 1)
        await queued(second, 1)
        graph = allotment.wait_graph()
        deadlocked = {ref.task_name for ref in graph.deadlocked}
        assert deadlocked == {"A", "B"}
        assert all(ref.name == threading.current_thread().name for ref in graph.deadlocked)
        assert graph.cycles
        assert "task 'A'" in str(graph)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    run(main)
    assert_idle(first)
    assert_idle(second)


def test_the_lock_order_checker_keeps_each_task_its_own_holdings() -> None:
    low = allotment.ResourceManager(1, name="low", rank=0, lock_order="raise")
    high = allotment.ResourceManager(1, name="high", rank=1, lock_order="raise")

    async def main() -> None:
        holding_high = asyncio.Event()
        done = asyncio.Event()

        async def holder() -> None:
            async with high.acquire_async(1):
                holding_high.set()
                await done.wait()

        other = asyncio.create_task(holder())
        await holding_high.wait()
        # Another task on this thread holds "high": this task holds nothing, so taking
        # "low" is no inversion.
        async with low.acquire_async(1):
            pass
        done.set()
        await other
        # This task's own inversion is caught.
        async with high.acquire_async(1):
            with pytest.raises(allotment.LockOrderViolation):
                low.acquire_async(1)

    run(main)
    assert_idle(low)
    assert_idle(high)


def test_a_leaked_lease_names_the_task_that_took_it() -> None:
    pool = allotment.ResourceManager(1, name="leaky")

    async def main() -> None:
        await pool.acquire_async(1)  # dropped on the floor

    async def leak() -> None:
        await asyncio.create_task(main(), name="leaker")

    def leak_and_collect() -> None:
        run(leak)
        gc.collect()

    with pytest.warns(allotment.LeakedLeaseWarning, match=r"by task 'leaker' on thread"):
        leak_and_collect()
    assert_idle(pool)


# -- the loop never blocks ---------------------------------------------------------------------


def test_the_loop_keeps_ticking_while_threads_hammer_the_same_manager() -> None:
    """Loop lag, measured: a ticker on the loop while 8 threads and 50 tasks share the
    manager. The bound is generous (scheduling on a loaded 2-core machine); what it rules out
    is a loop blocked on a wait."""
    pool = allotment.ResourceManager(2, name="hammered")
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            with pool.acquire(1, timeout=GENEROUS):
                pass

    async def main() -> float:
        threads = [start(hammer, name=f"hammer-{n}") for n in range(8)]
        loop = asyncio.get_running_loop()
        worst = 0.0

        async def task_user() -> None:
            for _ in range(20):
                async with pool.acquire_async(1, timeout=GENEROUS):
                    await asyncio.sleep(0)

        users = [asyncio.create_task(task_user()) for _ in range(50)]
        for _ in range(100):
            before = loop.time()
            await asyncio.sleep(0.001)
            worst = max(worst, loop.time() - before - 0.001)
        await asyncio.gather(*users)
        stop.set()
        for thread in threads:
            await asyncio.to_thread(thread.outcome)
        return worst

    worst = asyncio.run(main())
    assert worst < 2.0, f"the loop stalled for {worst:.3f} s"
    assert_idle(pool)


# -- declared claims (banker mode) -------------------------------------------------------------


def test_two_tasks_with_claims_wait_instead_of_deadlocking() -> None:
    pool = allotment.ResourceManager(2, name="banker", banker=True)

    async def main() -> None:
        first = pool.claim(2)
        await first.acquire_async(1)
        second = pool.claim(2)
        # Granting this would leave each claim one short with nothing available: unsafe.
        waiting = asyncio.create_task(second.acquire_async(1), name="second")
        await queued(pool, 1)
        assert pool.statistics().waiters[0].task_name == "second"
        async with first.acquire_async(1, timeout=0):  # the holder still gets what it needs
            pass
        first.close()
        lease = await asyncio.wait_for(waiting, GENEROUS)
        assert isinstance(lease, allotment.Lease)
        async with second.acquire_async(1, timeout=0):
            pass
        second.close()

    run(main)
    assert_idle(pool)


def test_closing_a_claim_refuses_its_queued_task_and_a_cancelled_one_leaves_no_trace() -> None:
    pool = allotment.ResourceManager(3, name="banker", banker=True)

    async def main() -> None:
        held = await pool.acquire_async(3)
        claim = pool.claim(2)
        refused = asyncio.create_task(claim.acquire_async(1))
        await queued(pool, 1)
        claim.close()
        with pytest.raises(allotment.ClaimClosed):
            await refused
        other = pool.claim(1)
        cancelled = asyncio.create_task(other.acquire_async(1))
        await queued(pool, 1)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert pool.statistics().waiters == ()
        other.close()
        held.release()
        # Checked by the pool, when awaited.
        with pool.claim(1) as small, pytest.raises(allotment.ExceedsClaim):
            await small.acquire_async(2)

    run(main)
    assert_idle(pool)
