"""The one clock: every "now" and every timed sleep in allotment goes through a :class:`Clock`.

A manager is built with a clock (``clock=``, default :data:`SYSTEM_CLOCK`). Its waiters ask the
clock for the time when they arrive and are granted, and sleep through the clock until their
deadline. Tests pass an :class:`allotment.testing.ManualClock` instead, and time then moves
only when they say so: a waiter with ``timeout=5`` times out when the clock has been advanced
five seconds, not before, and not in real time.

Sleeping belongs to the clock, not only reading it: a thread sleeping on a real timeout would
ignore a manual clock's ``advance()``. So a sleeper hands its wake-up handle (a lock created
held, released by whoever wakes it) to :meth:`Clock.sleep_until`, and a manual clock releases
that handle when it is advanced past the deadline.
"""

from __future__ import annotations

import math
import numbers
import threading
import time
from collections.abc import Callable
from typing import Protocol, cast

import attrs

__all__ = [
    "SYSTEM_CLOCK",
    "Clock",
    "SystemClock",
    "WakeHandle",
    "deadline_after",
    "nanoseconds_of",
    "wall_time",
]

_TIMEOUT_MAX = threading.TIMEOUT_MAX
_SPIN = 0.0003
"""Seconds before a deadline that a sleeper stops sleeping and yields until it instead."""


class WakeHandle(Protocol):
    """A lock-like handle created held: ``acquire`` blocks until someone ``release``s it."""

    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...


class Clock(Protocol):
    """What allotment needs of time: a monotonic "now" and a sleep that ends at a deadline.

    A clock may also offer ``now_ns()``, the same reading in whole nanoseconds (an int):
    rate limiters count time in nanoseconds and use it when present, else they round
    ``now()`` to the nearest nanosecond. :class:`SystemClock` and
    :class:`~allotment.testing.ManualClock` both have it.

    Asyncio tasks cannot block in ``sleep_until``. A clock that does not move in real time
    offers ``call_at(deadline, callback)`` instead, which calls ``callback`` (from any
    thread) once ``now()`` reaches ``deadline`` and returns an object with ``cancel()``, as
    :class:`~allotment.testing.ManualClock` does. Without it, a task sleeps on its event
    loop's timers for the difference of ``now()`` readings: right for any real-time clock."""

    def now(self) -> float:
        """Seconds on a monotonic scale (only differences mean anything)."""
        ...

    def sleep_until(self, handle: WakeHandle, deadline: float) -> bool:
        """Block until ``handle`` can be acquired (return ``True``) or until ``now()`` reaches
        ``deadline`` (return ``False``). Someone else releases the handle to end the sleep
        early; a ``True`` may also come from a clock that released it at the deadline, so the
        caller decides what happened from its own state, not from this result alone."""
        ...


@attrs.frozen
class SystemClock:
    """Real time: ``time.monotonic`` and lock timeouts."""

    # A staticmethod bound to the builtin: reading the time costs no Python frame.
    now = staticmethod(time.monotonic)
    now_ns = staticmethod(time.monotonic_ns)
    """The same clock in whole nanoseconds (what rate limiters count in): an int read with
    no float rounding, a third of the cost of ``round(now() * 1e9)``."""
    wall_ns = staticmethod(time.time_ns)
    """The wall clock in nanoseconds: never to measure time, only to seed a number that must
    keep increasing across a reboot (a LocalBackend's first fencing token in a new file)."""

    def sleep_until(self, handle: WakeHandle, deadline: float) -> bool:
        # A lock's timed wait returns a scheduling delay late (about 0.1 ms here). So sleep
        # until a little before the deadline, then yield the processor until it: a waiter for
        # a rate slot is then late by microseconds, not by a wake-up, and at most that little
        # time is spent awake per sleep.
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if remaining <= _SPIN:
                break
            # Lock.acquire rejects timeouts above TIMEOUT_MAX; longer sleeps take several rounds.
            if handle.acquire(True, min(remaining - _SPIN, _TIMEOUT_MAX)):
                return True
        while time.monotonic() < deadline:
            if handle.acquire(False):
                return True
            time.sleep(0)
        return handle.acquire(False)


SYSTEM_CLOCK = SystemClock()
"""The clock every manager uses unless given another."""


def nanoseconds_of(clock: Clock) -> Callable[[], int]:
    """How to read ``clock`` in whole nanoseconds: its ``now_ns`` if it has one, else its
    ``now()`` rounded to the nearest nanosecond."""
    now_ns = getattr(clock, "now_ns", None)
    if callable(now_ns):
        return cast("Callable[[], int]", now_ns)
    now = clock.now

    def rounded() -> int:
        return round(now() * 1_000_000_000)

    return rounded


def wall_time() -> float:
    """Seconds since the epoch: only to read the dates servers send (an HTTP-date, a reset
    at a Unix time), turned into a duration at once; never to time a decision."""
    return time.time()


def deadline_after(clock: Clock, timeout: object) -> float | None:
    """The deadline ``timeout`` seconds from ``clock.now()``; ``None`` means wait forever.

    ``timeout`` is ``None`` or a non-negative real number (``inf`` also means forever);
    anything else raises ``TypeError`` or ``ValueError`` before anything changes.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
    seconds = float(timeout)
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"timeout must be zero or more seconds, got {timeout!r}")
    if math.isinf(seconds):
        return None
    return clock.now() + seconds
