"""Waiters: how a queued requester sleeps until the pool hands it its units.

A thread sleeps on a private *wake-up handle*: a lock created already held, which the thread
that grants its ticket releases (after releasing the pool's lock). Each waiter sleeps on its
own handle, so a release wakes exactly the waiters it granted: no ``notify_all`` herd, and no
``Condition``, whose ``wait`` would build this same handle inside, then make the woken thread
take the shared lock again and re-check, racing newcomers and its own timeout.

An asyncio task sleeps on a future instead (:class:`TaskWaiter`), with the same ``wake``: the
thread that grants it (any thread) resolves the future through the task's loop, after the
pool's lock is released. Both kinds wait in the same queue of the same pool, so threads and
tasks are served in one arrival order.

The cancellation protocol, for tasks (the same as for a thread interrupted by an exception):
whatever interrupts the wait (``task.cancel()``, a timeout scope, a sibling's failure) makes
the requester call the pool's one release path, which withdraws a queued ticket, or gives back
a grant that reached it in the gap between "granted" and "resumed" and hands it on to the next
waiters. The exception then propagates unchanged. No state is kept in the future: it is only an
alarm, so cancelling it loses nothing.
"""

from __future__ import annotations

import asyncio
import fractions
import functools
import math
import threading
from collections.abc import Callable, Generator
from typing import Any, Generic, Protocol, TypeVar, cast

import attrs

from ._clock import Clock
from ._core import (
    GRANTED,
    NANOSECONDS,
    REFUSED,
    Pool,
    RateMeter,
    RateTicket,
    Ticket,
    Waiter,
    ticks_of,
)

__all__ = [
    "TASK",
    "THREAD",
    "Alarm",
    "TaskWaiter",
    "ThreadWaiter",
    "Waiting",
    "await_grant",
    "await_grant_async",
    "await_rate",
    "await_rate_async",
    "new_task_waiter",
    "new_thread_waiter",
    "run_blocking",
    "seconds_at",
    "seconds_of",
    "set_alarm",
    "sleep_until_async",
]

_T = TypeVar("_T")
_new_lock = threading.Lock
_running_loop = asyncio._get_running_loop  # the C accessor: no exception when there is none


@attrs.define(eq=False)
class ThreadWaiter:
    """A thread's wake-up handle. ``_woken`` is set by the pool's waker, before it releases
    the handle; a clock that ends the sleep at a deadline releases the handle without it."""

    _handle: threading.Lock
    _woken: bool = False

    def wake(self) -> None:
        """Idempotent: a retried wake-up, or one after the clock released the handle, is a
        no-op."""
        self._woken = True
        try:  # noqa: SIM105 - contextlib.suppress costs a call on every hand-off
            self._handle.release()
        except RuntimeError:  # released already
            pass

    @property
    def woken(self) -> bool:
        """Whether a wake-up is under way or done since the last :meth:`rearm`: read under
        the pool's lock, ``True`` means the requester will run and claim after this
        section, so waking it again is useless."""
        return self._woken

    def rearm(self) -> None:
        """Ready to sleep again after a wake-up that brought no grant (bounded fairness).
        Under the pool's lock. The handle is held again already (the sleep took it, or the
        clock never got it); a wake-up that lands after this still ends the next sleep."""
        self._woken = False

    def sleep(self, clock: Clock, deadline: float | None) -> bool:
        """Sleep until woken (``True``) or until ``deadline`` on ``clock`` (``False``).

        A ``False`` only means the deadline came first: a grant may have raced it, which the
        pool's ``withdraw`` settles under its lock.
        """
        if deadline is None:
            self._handle.acquire()
        else:
            clock.sleep_until(self._handle, deadline)
        return self._woken


def new_thread_waiter() -> ThreadWaiter:
    """A waiter for the calling thread; the pool makes one only for a ticket that queues."""
    handle = _new_lock()
    handle.acquire()
    return ThreadWaiter(handle)


@attrs.define(eq=False)
class TaskWaiter:
    """A task's wake-up: a future of the task's loop, resolved through that loop.

    ``wake`` may run on any thread: on the loop's own thread it resolves the future at once,
    from any other through ``call_soon_threadsafe``. ``_woken`` is set by the pool's waker; an
    alarm (the deadline, on the clock) resolves the future without it. If the loop is closed,
    the task will never run again: ``lost`` (set by the requester once it is queued) is called
    instead, and hands the ticket back so that the queue moves on.
    """

    _loop: asyncio.AbstractEventLoop
    _future: asyncio.Future[None]
    lost: Callable[[], object] | None = None
    _woken: bool = False

    def wake(self) -> None:
        """Idempotent and non-blocking, like every waiter's."""
        self._woken = True
        # A loop closed just after the wake-up was scheduled drops it: the task never resumes
        # either way. (One that closes later still has a window; asyncio.run never does
        # that, as it cancels every task first.)
        if not self._ring() or self._loop.is_closed():
            lost, self.lost = self.lost, None
            if lost is not None:
                lost()

    @property
    def woken(self) -> bool:
        """As :attr:`ThreadWaiter.woken`."""
        return self._woken

    def rearm(self) -> None:
        """:meth:`ThreadWaiter.rearm`: a fresh future if the last one was resolved (a
        wake-up reads the future when it rings, so one after this resolves the new one)."""
        future = self._future
        if future.done():
            future = self._loop.create_future()
        self._woken = False
        self._future = future

    def alarm(self) -> None:
        """The deadline came: end the sleep, leaving ``_woken`` as it is."""
        self._ring()

    def _ring(self) -> bool:
        loop = self._loop
        if _running_loop() is loop:
            _resolve(self._future)
            return True
        try:
            loop.call_soon_threadsafe(_resolve, self._future)
        except RuntimeError:  # the loop is closed
            return False
        return True

    async def sleep(self, clock: Clock, deadline: float | None) -> bool:
        """Wait until woken (``True``) or until ``deadline`` on ``clock`` (``False``): the
        task's side of :meth:`ThreadWaiter.sleep`. A cancellation propagates from here."""
        if deadline is None:
            await self._future
        else:
            alarm = set_alarm(clock, self._loop, deadline, self.alarm)
            try:
                await self._future
            finally:
                alarm.cancel()
        return self._woken


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # a retried wake-up, or one after a cancellation
        future.set_result(None)


def new_task_waiter() -> TaskWaiter:
    """A waiter for the running task. Made under the pool's lock, only for a ticket that
    queues: it runs no user code (the loop's ``create_future``)."""
    loop = _running_loop()
    assert loop is not None, "only called from a running task"
    return TaskWaiter(loop, loop.create_future())


class Alarm(Protocol):
    """A callback set for a deadline on a clock; ``cancel`` is idempotent."""

    def cancel(self) -> None: ...


def set_alarm(
    clock: Clock, loop: asyncio.AbstractEventLoop, deadline: float, callback: Callable[[], None]
) -> Alarm:
    """Call ``callback`` once ``clock`` reaches ``deadline``: through the clock's own
    ``call_at`` if it has one (a manual clock, which calls it as it is advanced), else on
    ``loop``'s timers, measuring the delay on the clock (any clock that moves in real time)."""
    call_at = getattr(clock, "call_at", None)
    if call_at is not None:
        return cast("Alarm", call_at(deadline, callback))
    alarm = _LoopAlarm(clock, loop, deadline, callback)
    alarm.ring_or_rearm()
    return alarm


@attrs.define(eq=False)
class _LoopAlarm:
    """An alarm on the loop's timers. The loop's time may not be the clock's, and its timers
    may ring a little early or late: each ring compares the clock with the deadline and
    re-arms for what is left."""

    _clock: Clock
    _loop: asyncio.AbstractEventLoop
    _deadline: float
    _callback: Callable[[], None]
    _handle: asyncio.TimerHandle | None = None

    def ring_or_rearm(self) -> None:
        remaining = self._deadline - self._clock.now()
        if remaining <= 0:
            self._handle = None
            self._callback()
        else:
            self._handle = self._loop.call_later(remaining, self.ring_or_rearm)

    def cancel(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()


async def sleep_until_async(clock: Clock, deadline: float) -> None:
    """Sleep the running task until ``clock`` reaches ``deadline``."""
    loop = asyncio.get_running_loop()
    await TaskWaiter(loop, loop.create_future()).sleep(clock, deadline)


def await_grant(pool: Pool, ticket: Ticket, clock: Clock, deadline: float | None) -> bool:
    """The calling thread's side of a queued ticket: sleep, then settle with the pool.

    Returns ``True`` once granted, ``False`` if the deadline passed first (the ticket has
    then left the queue). Raises the refusal of a refused ticket. The caller hands the
    ticket back (``pool.release(ticket, None)``) on any exception, including one raised here.
    """
    waiter = ticket.waiter
    assert isinstance(waiter, ThreadWaiter)
    if getattr(pool, "nominates", False):
        return _await_claim(pool, ticket, waiter, clock, deadline)
    if waiter.sleep(clock, deadline):
        if ticket.state is REFUSED:
            raise ticket.error
        return True
    # The deadline passed: leave, unless a grant arrived meanwhile, which wins.
    return pool.withdraw(ticket)


def _await_claim(
    pool: Pool, ticket: Ticket, waiter: ThreadWaiter, clock: Clock, deadline: float | None
) -> bool:
    """:func:`await_grant` under bounded fairness: a wake-up may be a nomination (units are
    free, take them if still there) rather than a grant, so every wake-up, whatever its
    cause, ends in :meth:`MemoryPool.claim`, which decides under the lock."""
    claim = pool.claim  # type: ignore[attr-defined]
    while True:
        waiter.sleep(clock, deadline)
        # A grant handed off under the lock before the wake-up needs no claim (nor the lock).
        if ticket.state is GRANTED:
            return True
        outcome: bool | None = claim(ticket, deadline)
        if outcome is not None:
            return outcome


async def await_grant_async(
    pool: Pool, ticket: Ticket, clock: Clock, deadline: float | None
) -> bool:
    """A task's side of a queued ticket: :func:`await_grant`, sleeping on the task's loop.

    The caller hands the ticket back on any exception (a cancellation included), which
    withdraws it or, if a grant reached it first, gives the grant on to the next waiters.
    """
    waiter = ticket.waiter
    assert isinstance(waiter, TaskWaiter)
    if getattr(pool, "nominates", False):
        claim = pool.claim  # type: ignore[attr-defined]
        while True:  # as in _await_claim
            waiter.lost = functools.partial(pool.release, ticket, None)
            await waiter.sleep(clock, deadline)
            waiter.lost = None
            # As in _await_claim: a grant handed off before the wake-up needs no lock.
            if ticket.state is GRANTED:
                return True
            outcome: bool | None = claim(ticket, deadline)
            if outcome is not None:
                return outcome
    # Set only now, but in time: the loop runs this task, so it cannot be closed before.
    waiter.lost = functools.partial(pool.release, ticket, None)
    woken = await waiter.sleep(clock, deadline)
    waiter.lost = None  # resumed: the ticket is this task's to settle
    if woken:
        if ticket.state is REFUSED:
            raise ticket.error
        return True
    withdraw_async = getattr(pool, "withdraw_async", None)  # a pool kept elsewhere (Redis)
    if withdraw_async is not None:
        return bool(await withdraw_async(ticket))
    return pool.withdraw(ticket)


def await_rate(meter: RateMeter, ticket: RateTicket, clock: Clock, deadline: float | None) -> bool:
    """The calling thread's side of a queued rate ticket: sleep until its planned tick, then
    let the meter grant it; sleep again whenever the plan moved.

    Returns ``True`` once granted, ``False`` if ``deadline`` (clock seconds) passed first (the
    ticket has then left the queue). The caller calls ``meter.release(ticket)`` on any
    exception, including one raised here.
    """
    due: int | None = ticket.due
    while due is not None:
        waiter = ticket.sleeper
        assert isinstance(waiter, ThreadWaiter)
        waiter.sleep(clock, _wake_at(due, meter.scale, deadline))
        due = meter.poll(ticket, new_thread_waiter)
        if due is not None and deadline is not None and clock.now() >= deadline:
            # The deadline passed (a charge pushed the plan past it): leave, unless a grant
            # arrived meanwhile, which wins.
            return meter.withdraw(ticket)
    return True


async def await_rate_async(
    meter: RateMeter, ticket: RateTicket, clock: Clock, deadline: float | None
) -> bool:
    """A task's side of a queued rate ticket: :func:`await_rate`, sleeping on loop timers
    (or on a manual clock's alarms). The caller calls ``meter.release(ticket)`` on any
    exception, a cancellation included: nothing is then spent."""
    due: int | None = ticket.due
    while due is not None:
        waiter = ticket.sleeper
        assert isinstance(waiter, TaskWaiter)
        waiter.lost = functools.partial(meter.release, ticket)
        await waiter.sleep(clock, _wake_at(due, meter.scale, deadline))
        waiter.lost = None
        due = meter.poll(ticket, new_task_waiter)
        if due is not None and deadline is not None and clock.now() >= deadline:
            return meter.withdraw(ticket)
    return True


def _wake_at(due: int, scale: int, deadline: float | None) -> float:
    wake_at = seconds_at(due, scale)
    return wake_at if deadline is None or wake_at <= deadline else deadline


def seconds_of(tick: int, scale: int) -> float:
    """A tick as clock seconds, the nearest float: for showing, not for sleeping."""
    return float(fractions.Fraction(tick, scale * NANOSECONDS))


def seconds_at(tick: int, scale: int) -> float:
    """The earliest clock reading (seconds) at which the meter's tick count reaches ``tick``:
    readings are rounded to the nearest nanosecond, so it is half a nanosecond early, give or
    take the float steps that rounding lands on."""
    nanoseconds = -(-tick // scale)
    seconds = (nanoseconds - 0.5) / NANOSECONDS
    while ticks_of(seconds, scale) < tick:
        seconds = math.nextafter(seconds, math.inf)
    while ticks_of(earlier := math.nextafter(seconds, -math.inf), scale) >= tick:
        seconds = earlier
    return seconds


Steps = Generator[Any, Any, _T]
"""Code that may wait, written once for threads and tasks: a generator that suspends (yields
to the event loop) only where a task awaits. A thread's waits block instead and never
suspend, so :func:`run_blocking` runs it to the end in one step. A generator rather than an
``async def``: one that an exception stops before it starts leaves no "never awaited"
warning behind."""


@attrs.frozen
class Waiting:
    """How a caller waits: a thread blocks, a task awaits (see :data:`Steps`). A manager's
    grant is awaited by ``take``/``take_async`` in ``_manager.py``, chosen by ``in_task``."""

    new_waiter: Callable[[], Waiter]
    for_rate: Callable[[RateMeter, RateTicket, Clock, float | None], Steps[bool]]
    in_task: bool

    def adopt(self, ticket: Ticket) -> None:
        """Mark ``ticket`` as the running task's (a thread's needs nothing)."""
        if self.in_task:
            task = asyncio.current_task()
            if task is None:
                raise RuntimeError("allotment's async methods must be awaited in an asyncio task")
            ticket.task = task


def _rate_blocking(
    meter: RateMeter, ticket: RateTicket, clock: Clock, deadline: float | None
) -> Steps[bool]:
    return await_rate(meter, ticket, clock, deadline)
    yield  # a generator that never suspends


def _rate_in_task(
    meter: RateMeter, ticket: RateTicket, clock: Clock, deadline: float | None
) -> Steps[bool]:
    return (yield from await_rate_async(meter, ticket, clock, deadline).__await__())


THREAD = Waiting(new_thread_waiter, _rate_blocking, in_task=False)
TASK = Waiting(new_task_waiter, _rate_in_task, in_task=True)


def run_blocking(steps: Steps[_T]) -> _T:
    """Run steps written against :data:`THREAD` to their end on this thread.

    The result is collected by ``yield from`` into a list, not caught from a
    ``StopIteration``: an exception landing in a handler would chain that ``StopIteration``,
    and with it the result (leases), to itself for as long as anyone keeps the exception.
    """
    result: list[_T] = []
    for _ in _collect(steps, result):
        raise RuntimeError("a blocking wait suspended: it was given a task's waiting")
    return result[0]


def _collect(steps: Steps[_T], into: list[_T]) -> Steps[None]:
    into.append((yield from steps))


@attrs.frozen
class _Awaiting(Generic[_T]):
    steps: Steps[_T]

    def __await__(self) -> Steps[_T]:
        return self.steps


async def run_in_task(steps: Steps[_T]) -> _T:
    """Run steps written against :data:`TASK` in the running task."""
    return await _Awaiting(steps)
