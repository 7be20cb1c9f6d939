"""Rate arithmetic: exact, in whole numbers, with no clock and no lock inside.

A rate rule decides *when* units may be allowed; the meter (``_meter.py``) decides *who* goes
next and wakes them. Time reaches a rule as an integer number of *ticks*: the clock's reading
rounded to the nearest nanosecond, times a scale chosen so that every figure the rule needs
(one unit's emission interval, a window's length) is a whole number of ticks. Floats never
enter a decision, so the guarantees hold exactly on the nanosecond grid, not "up to rounding":
in any interval, never one unit more than the bound.

Two rules:

- :class:`Gcra`, the generic cell rate algorithm: a token bucket kept as one number, the
  *theoretical arrival time* ``tat`` at which the bucket would be full again. A cost ``c`` is
  allowed at ``now`` when ``now >= tat + c * interval - tolerance`` (``tolerance`` is
  ``burst * interval``); allowing it moves ``tat`` to ``max(tat, now) + c * interval``. In any
  interval of length ``t`` it allows at most ``burst + t / interval`` units.
- :class:`SlidingWindow`: a log of grants, one ``[time, units]`` entry per distinct grant time
  (so a thousand units granted at once cost one entry). A cost is allowed at ``now`` when the
  units granted in ``(now - window, now]`` plus the cost stay within the limit.

Both also *plan*: given the costs queued in FIFO order, the earliest tick at which each would
be allowed if every one before it were allowed at its own earliest tick. A meter sleeps its
waiters until their planned ticks, so no waiter polls.
"""

from __future__ import annotations

import collections
import decimal
import fractions
import math
import numbers
from collections.abc import Sequence
from typing import Protocol

import attrs

from .._errors import InvalidLimit, InvalidLimitType

__all__ = [
    "NANOSECONDS",
    "Gcra",
    "PlanEntry",
    "RateRule",
    "SlidingWindow",
    "exact_positive",
    "ticks_of",
]

NANOSECONDS = 1_000_000_000

PlanEntry = tuple[int, int | None, bool]
"""What a plan needs of a queued ticket: its cost, its floor (``None``: free to move) and
whether it is forced: recorded, not admitted (a reservation, promised its tick; a charge)."""


def exact_positive(value: object, what: str) -> fractions.Fraction:
    """``value`` as an exact fraction: a positive, finite real number.

    A float is read as the decimal it prints as (``0.1`` is one tenth, not the binary fraction
    nearest to it), since that is what its writer meant. Raises ``InvalidLimitType`` for a
    bool or a non-number and ``InvalidLimit`` for zero, negatives, NaN and infinities.
    """
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, decimal.Decimal)):
        raise InvalidLimitType(f"{what} must be a real number, not {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidLimit(f"{what} must be finite, got {value!r}")
        exact = fractions.Fraction(repr(value))
    elif isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise InvalidLimit(f"{what} must be finite, got {value!r}")
        exact = fractions.Fraction(value)
    else:
        try:
            exact = fractions.Fraction(value)  # type: ignore[call-overload]
        except (OverflowError, ValueError) as error:  # a Real that is not finite
            raise InvalidLimit(f"{what} must be finite, got {value!r}") from error
    if exact <= 0:
        raise InvalidLimit(f"{what} must be more than zero, got {value!r}")
    return exact


def ticks_of(seconds: float, scale: int) -> int:
    """A clock reading in ticks: the nearest nanosecond, times ``scale``. Monotone: a later
    reading never gives fewer ticks."""
    return round(seconds * NANOSECONDS) * scale


class RateRule(Protocol):
    """The arithmetic of one limiter. Every method is called with the meter's lock held.

    ``now`` never decreases from one call to the next (the meter passes the largest reading
    it has seen), and costs are positive whole numbers no larger than :attr:`largest`.
    """

    @property
    def largest(self) -> int:
        """The largest cost that can ever be allowed."""
        ...

    def admits(self, now: int, cost: int) -> bool:
        """May ``cost`` be allowed at ``now``?"""
        ...

    def record(self, now: int, cost: int) -> object:
        """Allow ``cost`` at ``now`` (admitted or not: a charge may go into debt). Returns a
        token for :meth:`undo`."""
        ...

    def take(self, now: int, cost: int) -> bool:
        """``admits`` then ``record``, in one call and without an undo token: the path of
        every call allowed at once."""
        ...

    def undo(self, token: object) -> bool:
        """Take back the grant ``token`` recorded, exactly, if nothing was recorded after it
        (``True``); otherwise change nothing (``False``): a later grant was judged with it
        counted, and taking it back then could allow more than the bound."""
        ...

    def plan(self, now: int, entries: Sequence[PlanEntry]) -> list[int]:
        """The tick at which each entry, served in order from ``now``, would be allowed,
        each recorded at its own tick: never before its floor (a reservation's promised
        tick) nor before the one ahead of it. A *forced* entry (a promised reservation, a
        charge) is not admitted, only recorded: at its floor, or right after the one ahead."""
        ...

    def available(self, now: int) -> int:
        """Units that could be allowed at ``now`` by this rule alone (no queue)."""
        ...

    def hold_until(self, until: int) -> bool:
        """Allow nothing before ``until`` (a server asked for a pause): a move of the rule's
        state, never a timer. Only ever makes the rule stricter; ``True`` if it changed."""
        ...

    def idle(self, now: int) -> bool:
        """The rule is back in its initial state at ``now``: forgetting it changes nothing."""
        ...


@attrs.define(eq=False)
class Gcra:
    """The generic cell rate algorithm. ``tat`` is the only state.

    ``interval`` is one unit's emission interval and ``tolerance`` is ``burst * interval``, both
    in ticks. A bucket starts full: ``tat`` is the tick the rule was made at.
    """

    interval: int
    burst: int
    tat: int
    grain: int = 1
    """Ticks per nanosecond: a waiter can be allowed only at a clock reading, so the plan
    puts each waiter on the next whole nanosecond, where it will really be allowed."""
    tolerance: int = attrs.field(init=False)

    @tolerance.default
    def _tolerance_default(self) -> int:
        return self.burst * self.interval

    @property
    def largest(self) -> int:
        return self.burst

    def admits(self, now: int, cost: int) -> bool:
        return now >= self.tat + cost * self.interval - self.tolerance

    def take(self, now: int, cost: int) -> bool:
        tat = self.tat
        spent = cost * self.interval
        if now < tat + spent - self.tolerance:
            return False
        self.tat = (tat if tat > now else now) + spent
        return True

    def record(self, now: int, cost: int) -> object:
        before = self.tat
        after = max(before, now) + cost * self.interval
        self.tat = after
        return (before, after)

    def undo(self, token: object) -> bool:
        before: int
        after: int
        before, after = token  # type: ignore[misc]
        if self.tat != after:
            return False
        self.tat = before
        return True

    def plan(self, now: int, entries: Sequence[PlanEntry]) -> list[int]:
        tat, interval, tolerance = self.tat, self.interval, self.tolerance
        due = now
        planned = []
        grain = self.grain
        for cost, floor, forced in entries:
            if not forced:
                due = max(due, tat + cost * interval - tolerance)
                due = -(-due // grain) * grain
            if floor is not None and floor > due:
                due = floor
            tat = max(tat, due) + cost * interval
            planned.append(due)
        return planned

    def available(self, now: int) -> int:
        return max(0, (self.tolerance - max(0, self.tat - now)) // self.interval)

    def idle(self, now: int) -> bool:
        return self.tat <= now

    def hold_until(self, until: int) -> bool:
        # One unit becomes allowed at ``until`` exactly, and the bucket refills from there.
        floor = until + self.tolerance - self.interval
        if floor <= self.tat:
            return False
        self.tat = floor
        return True


@attrs.define(eq=False)
class SlidingWindow:
    """At most ``limit`` units in any window of ``window`` ticks: a grant at ``t`` counts
    in every window ``(s - window, s]`` that holds ``t``.

    ``log`` holds ``[tick, units]`` for every distinct grant tick still inside the window of
    the latest reading, oldest first; ``total`` is the sum of its units.
    """

    limit: int
    window: int
    grain: int = 1
    """Ticks per nanosecond (see :class:`Gcra`)."""
    log: collections.deque[list[int]] = attrs.field(init=False, factory=collections.deque)
    total: int = attrs.field(init=False, default=0)

    @property
    def largest(self) -> int:
        return self.limit

    # Every change below is plain stores followed by at most one C call (``popleft``,
    # ``append``), with no jump between: CPython can deliver an exception only after that
    # call returns, when ``total`` and ``log`` agree again.

    def _expire(self, now: int) -> None:
        log = self.log
        horizon = now - self.window
        while log:
            oldest = log[0]
            if oldest[0] > horizon:
                break
            self.total -= oldest[1]
            log.popleft()

    def admits(self, now: int, cost: int) -> bool:
        self._expire(now)
        return self.total + cost <= self.limit

    def take(self, now: int, cost: int) -> bool:
        self._expire(now)
        total = self.total + cost
        if total > self.limit:
            return False
        log = self.log
        if log and log[-1][0] == now:
            log[-1][1] += cost
            self.total = total
        else:
            entry = [now, cost]
            self.total = total
            log.append(entry)
        return True

    def record(self, now: int, cost: int) -> object:
        self._expire(now)
        log = self.log
        total = self.total + cost
        if log and log[-1][0] == now:
            entry = log[-1]
            entry[1] += cost
            self.total = total
        else:
            entry = [now, cost]
            self.total = total
            log.append(entry)
        return (entry, entry[1], cost)

    def undo(self, token: object) -> bool:
        entry: list[int]
        count: int
        cost: int
        entry, count, cost = token  # type: ignore[misc]
        log = self.log
        if not log or log[-1] is not entry or entry[1] != count:
            return False  # expired, or something was recorded since
        entry[1] -= cost
        self.total -= cost
        if not entry[1]:
            log.pop()
        return True

    def plan(self, now: int, entries: Sequence[PlanEntry]) -> list[int]:
        # Simulate on copies ([tick, units] of the log in the window, then of each planned
        # grant), leaving the log as it is: statistics plan from a signal handler too.
        horizon = now - self.window
        times = [entry[0] for entry in self.log if entry[0] > horizon]
        units = [entry[1] for entry in self.log if entry[0] > horizon]
        total, first, due = sum(units), 0, now
        limit, window = self.limit, self.window
        planned = []
        for cost, floor, forced in entries:
            if floor is not None and floor > due:
                due = floor
            # Drop the oldest grants until the cost fits; it may go once the last one dropped
            # has left the window.
            while not forced and total + cost > limit:
                due = max(due, times[first] + window)
                total -= units[first]
                first += 1
            if not forced:
                due = -(-due // self.grain) * self.grain
            # Grants the advance to ``due`` pushed out of the window leave it too.
            horizon = due - window
            while first < len(times) and times[first] <= horizon:
                total -= units[first]
                first += 1
            times.append(due)
            units.append(cost)
            total += cost
            planned.append(due)
        return planned

    def in_window(self, now: int) -> int:
        """Units granted in ``(now - window, now]``, without changing the log."""
        horizon = now - self.window
        return sum(units for tick, units in self.log if tick > horizon)

    def available(self, now: int) -> int:
        return max(0, self.limit - self.in_window(now))

    def idle(self, now: int) -> bool:
        log = self.log
        return not log or log[-1][0] <= now - self.window

    def hold_until(self, until: int) -> bool:
        # A full window's worth logged at ``until - window``: it fills every window that ends
        # before ``until`` and leaves the window exactly then. Kept in tick order; a later
        # undo of an earlier grant is then refused, which is stricter, never looser.
        at = until - self.window
        log = self.log
        index = len(log)
        while index and log[index - 1][0] > at:
            index -= 1
        self.total += self.limit
        log.insert(index, [at, self.limit])
        return True
