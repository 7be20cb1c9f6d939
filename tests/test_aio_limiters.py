"""asyncio and rate limiters, acquire_all_async and async guards: one line for threads and
tasks, loop timers or a manual clock for sleeping, nothing spent by a cancelled wait."""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time

import pytest

import allotment
from aio_support import queued, rate_queued, run, until
from allotment.testing import ManualClock
from support import GENEROUS, assert_idle, start, wait_until

Limiter = allotment.RateLimiter | allotment.WindowLimiter


def drained(rate: float, burst: int = 1) -> tuple[allotment.RateLimiter, ManualClock]:
    clock = ManualClock()
    limiter = allotment.RateLimiter(rate, burst=burst, clock=clock)
    while limiter.try_acquire():
        pass
    return limiter, clock


async def asleep(limiter: Limiter, clock: ManualClock, count: int) -> None:
    """``count`` callers are queued and asleep on the clock."""
    await until(
        lambda: len(limiter.statistics().waiters) == count and clock.sleepers >= count,
        f"{count} caller(s) asleep on {limiter.name}",
    )


# -- limiters --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gcra", "window"])
def test_a_task_is_allowed_when_its_time_comes_not_before(kind: str) -> None:
    clock = ManualClock()
    limiter: Limiter = (
        allotment.RateLimiter(10, clock=clock)
        if kind == "gcra"
        else allotment.WindowLimiter(10, per=1, clock=clock)
    )
    while limiter.try_acquire():
        pass

    async def main() -> None:
        task = asyncio.create_task(limiter.acquire_async(1), name="waiter")
        await asleep(limiter, clock, 1)
        assert limiter.statistics().waiters[0].task_name == "waiter"
        due = limiter.statistics().waiters[0].allowed_in
        clock.advance(due - 1e-6)
        await asyncio.sleep(0.01)
        assert not task.done()
        clock.advance(1e-6)
        await asyncio.wait_for(task, GENEROUS)

    run(main)
    assert limiter.statistics().waiters == ()


def test_tasks_and_threads_wait_in_one_line_on_a_limiter() -> None:
    limiter, clock = drained(10)  # one unit per 0.1 s
    order: list[str] = []

    async def main() -> None:
        async def task_caller(name: str) -> None:
            await limiter.acquire_async(1)
            order.append(name)

        def thread_caller(name: str) -> None:
            limiter.acquire(1)
            order.append(name)

        tasks, threads = [], []
        for position in range(4):
            name = f"{'thread' if position % 2 == 0 else 'task'}-{position}"
            if position % 2 == 0:
                threads.append(start(thread_caller, name, name=name))
            else:
                tasks.append(asyncio.create_task(task_caller(name)))
            await asleep(limiter, clock, position + 1)
        for position in range(4):
            clock.advance(0.1)
            await until(functools.partial(_has, order, position + 1), f"{position + 1} allowed")
        await asyncio.gather(*tasks)
        for thread in threads:
            await asyncio.to_thread(thread.outcome)

    run(main)
    assert order == ["thread-0", "task-1", "thread-2", "task-3"]


def test_a_cancelled_wait_spends_nothing_and_moves_the_next_up() -> None:
    limiter, clock = drained(1)  # one unit per second

    async def main() -> None:
        victim = asyncio.create_task(limiter.acquire_async(1), name="victim")
        await asleep(limiter, clock, 1)
        behind = asyncio.create_task(limiter.acquire_async(1), name="behind")
        await asleep(limiter, clock, 2)
        assert [w.allowed_in for w in limiter.statistics().waiters] == [1.0, 2.0]
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        assert [w.allowed_in for w in limiter.statistics().waiters] == [1.0]
        clock.advance(1.0)
        await asyncio.wait_for(behind, GENEROUS)
        stats = limiter.statistics()
        assert stats.allowed == 2  # the drain and "behind"
        assert stats.waiters == ()

    run(main)


def test_a_timeout_that_the_plan_cannot_meet_fails_at_once_without_suspending() -> None:
    limiter, _ = drained(2)  # one unit per 0.5 s; nothing advances the clock

    async def main() -> None:
        with pytest.raises(allotment.AcquireTimeout, match=r"only in 0\.5 s"):
            await limiter.acquire_async(1, timeout=0.4)
        assert limiter.statistics().waiters == ()

    run(main)


def test_a_limiter_wait_on_the_system_clock_uses_loop_timers() -> None:
    limiter = allotment.RateLimiter(50, burst=1)  # one unit per 20 ms
    limiter.acquire()

    async def main() -> None:
        started = time.monotonic()  # the limiter's clock
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0)
                ticks += 1

        counting = asyncio.create_task(ticker())
        await limiter.acquire_async(1)
        counting.cancel()
        assert time.monotonic() - started >= 0.015
        assert ticks > 0  # the loop ran other tasks while this one waited

    run(main)


def test_bad_input_to_a_limiter_is_refused_before_anything_is_awaited() -> None:
    limiter = allotment.RateLimiter(10, burst=2)
    keyed = allotment.KeyedRateLimiter(10, burst=2)
    with pytest.raises(allotment.ExceedsBurst):
        _ = limiter.acquire_async(3)
    with pytest.raises(allotment.InvalidAmountType):
        _ = limiter.acquire_async(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        _ = limiter.acquire_async(1, timeout=-1)
    with pytest.raises(allotment.InvalidKey):
        _ = keyed.acquire_async(["unhashable"])  # type: ignore[arg-type]
    with pytest.raises(allotment.ExceedsBurst):
        _ = keyed.acquire_async("key", 3)
    assert limiter.statistics().allowed == 0


def test_keyed_limiter_tasks_wait_per_key() -> None:
    clock = ManualClock()
    users = allotment.KeyedRateLimiter(1, burst=1, clock=clock)

    async def main() -> None:
        await users.acquire_async("alice")
        waiting = asyncio.create_task(users.acquire_async("alice"))
        await until(lambda: clock.sleepers == 1, "alice's second call sleeps")
        await asyncio.wait_for(users.acquire_async("bob"), GENEROUS)  # another key: at once
        assert not waiting.done()
        clock.advance(1)
        await asyncio.wait_for(waiting, GENEROUS)
        cancelled = asyncio.create_task(users.acquire_async("alice"))
        await until(lambda: clock.sleepers == 1, "alice's third call sleeps")
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert users.statistics("alice").waiters == ()

    run(main)


def test_async_with_a_limiter_and_a_reservation_waited_for_in_a_task() -> None:
    limiter, clock = drained(4)  # one unit per 0.25 s

    async def main() -> None:
        reservation = limiter.reserve()
        waiting = asyncio.create_task(reservation.wait_async())
        await until(lambda: clock.sleepers == 1, "the reservation's wait sleeps")
        clock.advance(0.25)
        await asyncio.wait_for(waiting, GENEROUS)
        entered = asyncio.create_task(_enter(limiter))
        await asleep(limiter, clock, 1)
        clock.advance(0.25)
        await asyncio.wait_for(entered, GENEROUS)
        assert limiter.statistics().allowed_units == 1 + 2  # the drain (burst 1), then two

    run(main)


def _has(items: list[str], count: int) -> bool:
    return len(items) == count


async def _enter(limiter: allotment.RateLimiter) -> None:
    async with limiter:
        pass


# -- acquire_all_async ---------------------------------------------------------------------------


def test_acquire_all_async_takes_managers_and_limiters_all_or_nothing() -> None:
    clock = ManualClock()
    gpus = allotment.ResourceManager({"gpu": 2}, name="gpus", clock=clock)
    cpus = allotment.ResourceManager(4, name="cpus", rank=1, clock=clock)
    api = allotment.RateLimiter(10, burst=1, clock=clock, name="api")

    async def main() -> None:
        async with allotment.acquire_all_async(
            [(cpus, 2), (gpus, {"gpu": 1}), (api, 1)], timeout=5
        ) as group:
            assert isinstance(group, allotment.LeaseGroup)
            assert [lease.amounts for lease in group] == [2, {"gpu": 1}]
            assert group.rates == (allotment.RateGrant(api, 1),)
            assert [h.task_name for h in gpus.statistics().holders] != [None]
        # The rate is spent (the limiter waits 0.1 s), the units are back.
        assert api.statistics().allowed == 1
        held = await gpus.acquire_async({"gpu": 2})
        group_task = asyncio.create_task(
            allotment.acquire_all_async([(gpus, {"gpu": 1}), (cpus, 4), (api, 1)])
        )
        await queued(gpus, 1)
        group_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await group_task
        held.release()
        assert api.statistics().allowed == 1  # the cancelled group spent no rate

    run(main)
    assert_idle(gpus)
    assert_idle(cpus)


def test_acquire_all_async_cancelled_while_waiting_for_rate_gives_everything_back() -> None:
    clock = ManualClock()
    pool = allotment.ResourceManager(2, name="pool", clock=clock)
    api = allotment.RateLimiter(1, burst=1, clock=clock, name="api")
    api.acquire()  # drained: the next unit in one second

    async def main() -> None:
        task = asyncio.create_task(allotment.acquire_all_async([(pool, 2), (api, 1)]))
        await asleep(api, clock, 1)
        assert pool.statistics().in_use == 2  # managers first, then the rate
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert api.statistics().waiters == ()

    run(main)
    assert_idle(pool)
    assert api.statistics().allowed == 1


def test_acquire_all_async_timeout_names_the_manager_and_holds_nothing() -> None:
    clock = ManualClock()
    first = allotment.ResourceManager(1, name="first", clock=clock)
    second = allotment.ResourceManager(1, name="second", rank=1, clock=clock)

    async def main() -> None:
        held = await second.acquire_async(1)
        task = asyncio.create_task(allotment.acquire_all_async([(first, 1), (second, 1)], 3))
        await until(lambda: clock.sleepers == 1, "the group waits on the second manager")
        assert first.statistics().in_use == 1
        clock.advance(3)
        with pytest.raises(allotment.AcquireTimeout) as caught:
            await task
        assert caught.value.manager is second
        held.release()

    run(main)
    assert_idle(first)
    assert_idle(second)


# -- guards on async def -------------------------------------------------------------------------


def test_a_guarded_coroutine_function_stays_one_and_holds_while_it_runs() -> None:
    pool = allotment.ResourceManager(1, name="pool")
    api = allotment.RateLimiter(1000, burst=10, name="api")
    seen: list[object] = []

    @pool.guard(1)
    async def infer(x: int) -> int:
        """Doubles."""
        seen.append(pool.statistics().in_use)
        await asyncio.sleep(0)
        return 2 * x

    @allotment.guard((pool, 1), (api, 2))
    async def call_model(prompt: str) -> str:
        seen.append((pool.statistics().in_use, api.statistics().allowed_units))
        return prompt.upper()

    @api.guard(1)
    async def ping() -> None:
        seen.append(api.statistics().allowed_units)

    for function in (infer, call_model, ping):
        assert inspect.iscoroutinefunction(function)
    assert infer.__name__ == "infer"
    assert infer.__doc__ == "Doubles."
    assert str(inspect.signature(infer)) == "(x: 'int') -> 'int'"

    async def main() -> None:
        assert await infer(2) == 4
        assert await call_model("hi") == "HI"
        await ping()
        assert pool.statistics().in_use == 0

    run(main)
    assert seen == [1, (1, 2), 3]
    assert_idle(pool)


def test_guarded_tasks_are_served_in_order_and_a_failing_body_releases() -> None:
    pool = allotment.ResourceManager(1)
    order: list[int] = []

    @pool.guard(1)
    async def work(n: int) -> None:
        order.append(n)
        await asyncio.sleep(0)
        if n == 2:
            raise KeyError(n)

    async def main() -> None:
        results = await asyncio.gather(*(work(n) for n in range(5)), return_exceptions=True)
        assert [type(r).__name__ for r in results] == ["NoneType"] * 2 + ["KeyError"] + [
            "NoneType"
        ] * 2

    run(main)
    assert order == [0, 1, 2, 3, 4]
    assert_idle(pool)


def test_a_guarded_call_cancelled_before_its_body_starts_refunds_the_rate() -> None:
    clock = ManualClock()
    pool = allotment.ResourceManager(1, clock=clock)
    api = allotment.RateLimiter(10, burst=5, clock=clock)
    started = threading.Event()

    @allotment.guard((pool, 1), (api, 1))
    async def work() -> None:
        started.set()

    async def main() -> None:
        held = await pool.acquire_async(1)
        task = asyncio.create_task(work())
        await queued(pool, 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        held.release()

    run(main)
    assert not started.is_set()
    assert api.statistics().allowed == 0
    assert_idle(pool)


def test_a_guard_with_a_timeout_in_a_task() -> None:
    clock = ManualClock()
    pool = allotment.ResourceManager(1, clock=clock)

    @allotment.guard((pool, 1), timeout=2)
    async def work() -> None:
        raise AssertionError("never runs")

    async def main() -> None:
        held = await pool.acquire_async(1)
        task = asyncio.create_task(work())
        await until(lambda: clock.sleepers == 1, "the guarded call waits")
        clock.advance(2)
        with pytest.raises(allotment.AcquireTimeout):
            await task
        held.release()

    run(main)
    wait_until(lambda: pool.statistics().waiters == (), "the queue is empty")
    assert_idle(pool)


def test_rate_queued_helper_sees_task_waiters() -> None:
    limiter, clock = drained(1)

    async def main() -> None:
        task = asyncio.create_task(limiter.acquire_async(1))
        await rate_queued(limiter, 1)
        clock.advance(1)
        await asyncio.wait_for(task, GENEROUS)

    run(main)


def test_a_rate_grant_that_reached_a_cancelled_task_is_refunded_exactly() -> None:
    """The meter grants a sleeping task at its time when anyone calls (here a try_acquire);
    the task is cancelled before it resumes: the grant is undone, the unit is free again."""
    limiter, clock = drained(1)  # one unit per second

    async def main() -> None:
        for round_ in range(20):
            task = asyncio.create_task(limiter.acquire_async(1), name=f"round-{round_}")
            await asleep(limiter, clock, 1)
            allowed = limiter.statistics().allowed
            clock.advance(1)  # its time has come; its alarm rings ...
            assert not limiter.try_acquire()  # ... and this call grants it, at once
            assert limiter.statistics().allowed == allowed + 1
            task.cancel()  # before it resumes
            with pytest.raises(asyncio.CancelledError):
                await task
            assert limiter.statistics().allowed == allowed  # refunded exactly
            assert limiter.try_acquire()  # and the unit is there for the next caller

    run(main)
