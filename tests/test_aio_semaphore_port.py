"""CPython's asyncio.Semaphore tests (Lib/test/test_asyncio/test_locks.py), ported to
``acquire_async``: FIFO order, cancellation before and after a wake-up, and the hangs that
took asyncio.Semaphore several rounds of fixes (gh-90155 and its follow-ups).

A semaphore of value ``n`` is a manager of capacity ``n``; ``Semaphore(0)`` is a manager whose
only unit the test holds, and ``sem.release()`` releases one unit the test holds.
``await asyncio.sleep(0)`` lets every ready task run one step, as in the originals.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

import allotment
from aio_support import run
from support import assert_idle


class Sem:
    """A manager and the leases the test itself holds, so that ``release()`` reads as in
    the originals."""

    def __init__(self, capacity: int, value: int) -> None:
        self.manager = allotment.ResourceManager(capacity)
        self.held = [self.manager.acquire(1) for _ in range(capacity - value)]

    def release(self) -> None:
        self.held.pop().release()

    def drain(self) -> None:
        """Release what the test still holds, then check that every unit is back."""
        while self.held:
            self.release()
        assert_idle(self.manager)

    def locked(self) -> bool:
        return self.manager.statistics().available == 0

    async def acquire(self) -> bool:
        self.held.append(await self.manager.acquire_async(1))
        return True


async def settle(rounds: int = 3) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def test_acquire_fifo_order() -> None:
    sem = Sem(1, 1)
    result: list[str] = []

    async def coro(tag: str) -> None:
        for round_ in (1, 2):
            async with sem.manager.acquire_async(1):
                result.append(f"{tag}_{round_}")
                await asyncio.sleep(0.01)

    async def main() -> None:
        await asyncio.gather(coro("c1"), coro("c2"), coro("c3"))

    run(main)
    assert result == ["c1_1", "c2_1", "c3_1", "c1_2", "c2_2", "c3_2"]
    assert_idle(sem.manager)


def test_acquire_fifo_order_2() -> None:
    """Adapted: asyncio.Semaphore's release may raise its value above the start, so this is
    capacity 2 with one unit held by the test. The grants come in FIFO order at the two
    releases (t1's, then the test's): t2 and t3 both hold a unit before either resumes. So
    t2's second acquire, made after t3 was granted, is a new arrival that fits at once. The
    original expects [1, 2, 3, 4], because asyncio counts a woken, not yet resumed waiter as
    still queued; here the hand-off already happened, and the order of grants is checked."""
    sem = Sem(2, 1)
    result: list[int] = []
    holders_at_4: list[str | None] = []

    async def main() -> None:
        async def c1() -> None:
            await sem.acquire()
            result.append(1)

        async def c2() -> None:
            await sem.acquire()
            result.append(2)
            sem.release()
            await sem.acquire()
            result.append(4)
            holders_at_4.extend(h.task_name for h in sem.manager.statistics().holders)

        async def c3() -> None:
            await sem.acquire()
            result.append(3)

        tasks = [asyncio.create_task(c(), name=c.__name__) for c in (c1, c2, c3)]
        await asyncio.sleep(0)
        sem.release()
        sem.release()
        await asyncio.gather(*tasks)

    run(main)
    assert result == [1, 2, 4, 3]
    assert "c3" in holders_at_4  # t3 was granted before t2 asked again
    sem.drain()


def test_acquire_fifo_order_3() -> None:
    sem = Sem(2, 0)
    result: list[int] = []

    async def main() -> None:
        async def taker(n: int) -> None:
            await sem.acquire()
            result.append(n)

        tasks = [asyncio.create_task(taker(n)) for n in (1, 2, 3)]
        await asyncio.sleep(0)
        tasks[0].cancel()
        await asyncio.sleep(0)
        sem.release()
        sem.release()
        await asyncio.gather(*tasks, return_exceptions=True)

    run(main)
    assert result == [2, 3]
    sem.drain()


def test_acquire_cancel() -> None:
    sem = Sem(1, 0)

    async def main() -> None:
        task = asyncio.create_task(sem.acquire())
        asyncio.get_running_loop().call_soon(task.cancel)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sem.manager.statistics().waiters == ()

    run(main)
    sem.drain()


def test_acquire_cancel_before_awoken() -> None:
    sem = Sem(1, 0)

    async def main() -> None:
        t1, t2, t3, t4 = (asyncio.create_task(sem.acquire()) for _ in range(4))
        await asyncio.sleep(0)
        t1.cancel()
        t2.cancel()
        sem.release()
        await settle()
        assert t3.done()
        assert not t4.done()
        t4.cancel()
        await asyncio.gather(t1, t2, t4, return_exceptions=True)
        assert t3.result() is True

    run(main)
    sem.drain()


def test_acquire_cancel_after_awoken() -> None:
    sem = Sem(1, 0)

    async def main() -> None:
        t1, t2, t3, t4 = (asyncio.create_task(sem.acquire()) for _ in range(4))
        await asyncio.sleep(0)
        sem.release()  # t1 is granted ...
        t1.cancel()  # ... and cancelled before it resumes: t2 gets the unit
        await settle()
        assert [t.done() for t in (t2, t3, t4)] == [True, False, False]
        t3.cancel()
        t4.cancel()
        await asyncio.gather(t1, t3, t4, return_exceptions=True)
        assert t1.cancelled()

    run(main)
    sem.drain()


def test_acquire_hang() -> None:
    sem = Sem(1, 0)

    async def main() -> None:
        t1 = asyncio.create_task(sem.acquire())
        t2 = asyncio.create_task(sem.acquire())
        await asyncio.sleep(0)
        t1.cancel()
        sem.release()
        await settle()
        assert sem.locked()
        assert t2.done()

    run(main)
    sem.drain()


def test_acquire_no_hang() -> None:
    sem = Sem(1, 1)

    async def main() -> None:
        async def c1() -> None:
            async with sem.manager.acquire_async(1):
                await asyncio.sleep(0)
            t.cancel()

        async def c2() -> None:
            async with sem.manager.acquire_async(1):
                raise AssertionError("cancelled before it could run")

        t1 = asyncio.create_task(c1())
        t = asyncio.create_task(c2())
        t2 = asyncio.create_task(sem.acquire())
        await asyncio.wait_for(asyncio.gather(t1, t, t2, return_exceptions=True), 5)
        assert t2.done()
        assert t.cancelled()

    run(main)
    sem.drain()


def test_cancel_race() -> None:
    """asyncio.Lock's race: B is cancelled as A releases; C must still get it."""
    manager = allotment.ResourceManager(1)

    async def main() -> None:
        gate = asyncio.get_running_loop().create_future()

        async def lockit(blocker: asyncio.Future[None] | None) -> None:
            async with manager.acquire_async(1):
                if blocker is not None:
                    await blocker

        ta = asyncio.create_task(lockit(gate))
        await asyncio.sleep(0)
        tb = asyncio.create_task(lockit(None))
        await asyncio.sleep(0)
        tc = asyncio.create_task(lockit(None))
        await asyncio.sleep(0)
        assert len(manager.statistics().waiters) == 2
        gate.set_result(None)
        tb.cancel()
        await settle()
        assert ta.done()
        assert tb.cancelled()
        assert tc.done()

    run(main)
    assert_idle(manager)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is new in 3.11")
def test_a_timeout_racing_a_grant_never_loses_the_unit() -> None:
    """gh-90155's shape with a timeout scope: the deadline and the grant land close together,
    in either order, over many rounds; whoever ends up with the unit gives it back, and the
    waiter behind is always served."""
    manager = allotment.ResourceManager(1)
    timeout_scope: Any = getattr(asyncio, "timeout")  # noqa: B009 - absent before 3.11

    async def main() -> None:
        outcomes = {True: 0, False: 0}
        for round_ in range(60):
            held = await manager.acquire_async(1)

            async def timed(delay: float) -> bool:
                try:
                    async with timeout_scope(delay):
                        lease = await manager.acquire_async(1)
                except TimeoutError:
                    return False
                lease.release()
                return True

            first = asyncio.create_task(timed(0.0005 * (round_ % 4)))
            await asyncio.sleep(0)
            second = asyncio.create_task(manager.acquire_async(1))
            await asyncio.sleep(0.0005 * (round_ % 3))
            held.release()
            outcome, lease = await asyncio.wait_for(asyncio.gather(first, second), 5)
            outcomes[outcome] += 1
            lease.release()
            assert_idle(manager)
        assert sum(outcomes.values()) == 60

    run(main)
