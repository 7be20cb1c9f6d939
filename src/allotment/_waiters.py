"""Waiters: how a queued requester sleeps until the pool hands it its units.

A thread sleeps on a private *wake-up handle*: a lock created already held, which the thread
that grants its ticket releases (after releasing the pool's lock). Each waiter sleeps on its
own handle, so a release wakes exactly the waiters it granted: no ``notify_all`` herd, and no
``Condition``, whose ``wait`` would build this same handle inside, then make the woken thread
take the shared lock again and re-check, racing newcomers and its own timeout.

An asyncio task will sleep on a future instead: a sibling class with the same ``wake``.
"""

from __future__ import annotations

import fractions
import math
import threading

import attrs

from ._clock import Clock
from ._core import NANOSECONDS, REFUSED, Meter, Pool, RateTicket, Ticket, ticks_of

__all__ = [
    "ThreadWaiter",
    "await_grant",
    "await_rate",
    "new_thread_waiter",
    "seconds_at",
    "seconds_of",
]

_new_lock = threading.Lock


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


def await_grant(pool: Pool, ticket: Ticket, clock: Clock, deadline: float | None) -> bool:
    """The calling thread's side of a queued ticket: sleep, then settle with the pool.

    Returns ``True`` once granted, ``False`` if the deadline passed first (the ticket has
    then left the queue). Raises the refusal of a refused ticket. The caller hands the
    ticket back (``pool.release(ticket, None)``) on any exception, including one raised here.
    """
    waiter = ticket.waiter
    assert isinstance(waiter, ThreadWaiter)
    if waiter.sleep(clock, deadline):
        if ticket.state is REFUSED:
            raise ticket.error
        return True
    # The deadline passed: leave, unless a grant arrived meanwhile, which wins.
    return pool.withdraw(ticket)


def await_rate(meter: Meter, ticket: RateTicket, clock: Clock, deadline: float | None) -> bool:
    """The calling thread's side of a queued rate ticket: sleep until its planned tick, then
    let the meter grant it; sleep again whenever the plan moved.

    Returns ``True`` once granted, ``False`` if ``deadline`` (clock seconds) passed first (the
    ticket has then left the queue). The caller calls ``meter.release(ticket)`` on any
    exception, including one raised here.
    """
    scale = meter.scale
    due: int | None = ticket.due
    while due is not None:
        waiter = ticket.sleeper
        assert isinstance(waiter, ThreadWaiter)
        wake_at = seconds_at(due, scale)
        if deadline is not None and deadline < wake_at:
            wake_at = deadline
        waiter.sleep(clock, wake_at)
        due = meter.poll(ticket, new_thread_waiter)
        if due is not None and deadline is not None and clock.now() >= deadline:
            # The deadline passed (a charge pushed the plan past it): leave, unless a grant
            # arrived meanwhile, which wins.
            return meter.withdraw(ticket)
    return True


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
