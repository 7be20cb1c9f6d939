"""Tools for testing code that uses allotment: a clock that moves only when told to.

>>> from allotment.testing import ManualClock
>>> clock = ManualClock()
>>> clock.advance(2.5)
>>> clock.now()
2.5
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable
from typing import Protocol

import attrs

from ._clock import WakeHandle
from ._core import SectionLock, new_section_lock

__all__ = ["ManualClock"]


@attrs.define(eq=False, repr=False)
class ManualClock:
    """A monotonic clock that stands still until :meth:`advance` moves it.

    Pass it to a manager (``ResourceManager(4, clock=clock)``, ``Semaphore(1, clock=clock)``)
    and every timeout of that manager is measured on it: a thread waiting with ``timeout=5``
    times out once the clock has been advanced five seconds past the moment it asked, however
    long that takes in real time, and never before. A manager's grants still arrive at once:
    only its timeouts depend on the clock. Pass it to a rate limiter
    (``RateLimiter(10, clock=clock)``) and time itself is the clock's: a waiting thread is
    allowed when :meth:`advance` reaches its time, and a bucket refills only as it advances.

    ``_lock`` guards ``_now`` and ``_sleepers``; it is never held while a thread sleeps or
    while a sleeper is woken. It is a section lock (see ``_core._section_lock``), and each
    section is written out in the shape of "Releasing" there: a ``with`` block's exit can be
    skipped on 3.10 (and its entry on 3.14), and every later ``advance`` would hang.
    """

    _now: float = 0.0
    _lock: SectionLock = attrs.field(init=False, factory=new_section_lock)
    _sleepers: dict[_Releasable, float] = attrs.field(init=False, factory=dict)
    """Each sleeping thread's wake-up handle, and each task's alarm, with its deadline."""

    def now(self) -> float:
        """The current reading, in seconds (starts at the value given, 0.0 by default)."""
        return self._now

    def now_ns(self) -> int:
        """The reading in whole nanoseconds (the nearest), as rate limiters count time."""
        return round(self._now * 1_000_000_000)

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` and wake every thread whose deadline has
        come (``now() >= deadline``). Raises ``ValueError`` for a negative, NaN or infinite
        amount: a monotonic clock never goes back."""
        if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real):
            raise TypeError(f"seconds must be a number, not {seconds!r}")
        step = float(seconds)
        if not math.isfinite(step) or step < 0:
            raise ValueError(
                f"a monotonic clock only moves forward by a finite amount: {seconds!r}"
            )
        lock = self._lock
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            self._now += step
            now = self._now
            due = [handle for handle, deadline in self._sleepers.items() if deadline <= now]
            for handle in due:
                del self._sleepers[handle]
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        for handle in due:
            _release_once(handle)

    @property
    def sleepers(self) -> int:
        """How many threads and asyncio tasks are sleeping on this clock now: a test advances
        the clock once those it expects are asleep."""
        return len(self._sleepers)

    def call_at(self, deadline: float, callback: Callable[[], object]) -> _Alarm:
        """Call ``callback`` once the clock reaches ``deadline``: from the thread that
        advances it there, or at once if it is there already. Returns an alarm whose
        ``cancel()`` calls it off. How asyncio tasks sleep on this clock; ``callback`` must
        be safe to call from any thread."""
        alarm = _Alarm(self, callback)
        lock = self._lock
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            ring_now = self._now >= deadline
            if not ring_now:
                self._sleepers[alarm] = deadline
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        if ring_now:
            callback()
        return alarm

    def sleep_until(self, handle: WakeHandle, deadline: float) -> bool:
        """Block until ``handle`` is released by a waker (``True``) or by :meth:`advance`
        reaching ``deadline`` (``False``)."""
        lock = self._lock
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            if self._now >= deadline:
                return False
            self._sleepers[handle] = deadline
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        try:
            handle.acquire()
        finally:
            # The finally opens with the section's try: on 3.10 nothing checks on the way in.
            try:
                lock.acquire()
                self._sleepers.pop(handle, None)
            finally:
                try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                    lock.release()
                except RuntimeError:
                    pass  # not taken: the exception came while waiting for the lock
        return self._now < deadline

    def __repr__(self) -> str:
        return f"<allotment.testing.ManualClock now={self._now!r} sleepers={self.sleepers}>"


class _Releasable(Protocol):
    def release(self) -> None: ...


@attrs.define(eq=False)
class _Alarm:
    """A task's alarm on a manual clock: ``release`` (by ``advance``) rings it."""

    _clock: ManualClock
    _callback: Callable[[], object] | None

    def release(self) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()

    def cancel(self) -> None:
        self._callback = None
        clock = self._clock
        lock = clock._lock
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            clock._sleepers.pop(self, None)
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock


def _release_once(handle: _Releasable) -> None:
    with contextlib.suppress(RuntimeError):  # already released by the waker that granted it
        handle.release()
