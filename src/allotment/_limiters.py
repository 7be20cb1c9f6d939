"""Rate limiters: :class:`RateLimiter` (GCRA) and :class:`WindowLimiter` (sliding log).

Both are faces of a :class:`~allotment._core.Meter`: one strict-FIFO queue whose waiters
sleep until their planned time on the limiter's clock. Validation happens here, before the
meter is touched, so bad input changes nothing.
"""

from __future__ import annotations

import decimal
import fractions
import itertools
import math
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import attrs

from . import _events
from ._backend import Backend, OnUnavailable, check_backend_name, check_on_unavailable
from ._clock import SYSTEM_CLOCK, Clock, deadline_after, nanoseconds_of
from ._core import (
    NANOSECONDS,
    Gcra,
    Meter,
    MeterRetired,
    RateMeter,
    RateTicket,
    SlidingWindow,
    exact_positive,
    ticks_of,
)
from ._errors import (
    AcquireTimeout,
    ExceedsBurst,
    InvalidAmount,
    InvalidAmountType,
    InvalidLimit,
    InvalidLimitType,
    UnsupportedByBackend,
)
from ._observed import report_rate, report_rate_failure
from ._waiters import (
    TASK,
    THREAD,
    Steps,
    Waiting,
    run_blocking,
    run_in_task,
    seconds_at,
    seconds_of,
    sleep_until_async,
)

if TYPE_CHECKING:
    from ._statistics import RateStatistics

__all__ = [
    "GcraSettings",
    "LimiterParts",
    "Number",
    "RateGrant",
    "RateLimiter",
    "Reservation",
    "WindowLimiter",
    "acquire_ticket",
    "gcra_settings",
    "is_limiter",
    "limiter_parts",
    "observed_acquire",
    "observed_acquire_async",
    "rate_ticket",
    "refund",
    "statistics_of",
    "try_take",
    "validate_charge",
    "validate_cost",
    "whole_number",
]

Number = float | fractions.Fraction | decimal.Decimal
"""A rate or a period: an int, a float (read as the decimal it prints as), or exact."""
_P = ParamSpec("_P")
_T = TypeVar("_T")
_current_thread = threading.current_thread
_SECONDS = (int, float)
_serial = itertools.count(1)  # atomic on free-threaded builds too, unlike a range iterator


def validate_cost(cost: object, largest: int, what: str = "cost") -> int:
    """``cost`` as a positive int no larger than ``largest``; raises before anything changes."""
    if type(cost) is int and 0 < cost <= largest:
        return cost
    if isinstance(cost, bool) or not isinstance(cost, int):
        raise InvalidAmountType(f"{what} must be a positive int, not {cost!r}")
    if cost <= 0:
        raise InvalidAmount(f"{what} must be a positive int, got {cost!r}")
    raise ExceedsBurst(
        f"{what} {cost} can never be allowed: at most {largest} unit(s) are allowed at once"
    )


def validate_charge(cost: object) -> int:
    if isinstance(cost, bool) or not isinstance(cost, int):
        raise InvalidAmountType(f"a charge must be a positive int, not {cost!r}")
    if cost <= 0:
        raise InvalidAmount(f"a charge must be a positive int, got {cost!r}")
    return cost


def whole_number(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidLimitType(f"{what} must be a whole number (an int), not {value!r}")
    if value < 1:
        raise InvalidLimit(f"{what} must be at least 1, got {value!r}")
    return value


@attrs.frozen
class LimiterParts:
    """What the other faces (``acquire_all``, guards, keyed limiters) use of a limiter."""

    meter: RateMeter
    clock: Clock
    name: str
    largest: int


def acquire_ticket(
    parts: LimiterParts, meter: RateMeter, cost: int, timeout: float | None
) -> RateTicket:
    """Wait until ``cost`` (validated) is allowed on ``meter``; return its granted ticket.

    Raises ``AcquireTimeout`` at once, spending nothing, when the plan puts the grant after
    the deadline (and later, if a charge pushed it there); on any exception, spends nothing.
    """
    return run_blocking(rate_ticket(parts, meter, cost, timeout, THREAD))


def observed_acquire(
    parts: LimiterParts, meter: RateMeter, cost: int, timeout: float | None, key: object
) -> None:
    """:meth:`RateLimiter.acquire` while someone observes: the same meter calls, reported
    after each returns. ``MeterRetired`` goes to the caller (a keyed limiter looks again)."""
    if (timeout is None or (type(timeout) in _SECONDS and timeout >= 0)) and meter.take_now(
        cost, False
    ):
        report_rate("rate_allowed", parts.name, cost, 0.0, key)
        return
    asked = parts.clock.now()
    try:
        acquire_ticket(parts, meter, cost, timeout)
    except MeterRetired:
        raise
    except BaseException as error:
        report_rate_failure(parts.name, cost, parts.clock.now() - asked, key, error)
        raise
    report_rate("rate_waited", parts.name, cost, parts.clock.now() - asked, key)


async def take_now_async(meter: RateMeter, cost: int) -> bool:
    """``meter.take_now(cost, False)`` from a task: a meter kept elsewhere (Redis) makes its
    round trip on the loop, not blocking it."""
    take_now = getattr(meter, "take_now_async", None)
    if take_now is None:
        return bool(meter.take_now(cost, False))
    return bool(await take_now(cost, False))


async def observed_acquire_async(
    parts: LimiterParts, meter: RateMeter, cost: int, timeout: float | None, key: object
) -> None:
    """:func:`observed_acquire` for a task."""
    if await take_now_async(meter, cost):
        report_rate("rate_allowed", parts.name, cost, 0.0, key)
        return
    asked = parts.clock.now()
    try:
        await run_in_task(rate_ticket(parts, meter, cost, timeout, TASK))
    except MeterRetired:
        raise
    except BaseException as error:
        report_rate_failure(parts.name, cost, parts.clock.now() - asked, key, error)
        raise
    report_rate("rate_waited", parts.name, cost, parts.clock.now() - asked, key)


def rate_ticket(
    parts: LimiterParts, meter: RateMeter, cost: int, timeout: float | None, waiting: Waiting
) -> Steps[RateTicket]:
    """:func:`acquire_ticket`, for a thread or a task as ``waiting`` says."""
    clock = parts.clock
    deadline = None if timeout is None else deadline_after(clock, timeout)
    ticket = RateTicket(cost, _current_thread(), None, clock.now())
    waiting.adopt(ticket)
    limit = -1 if deadline is None else ticks_of(deadline, meter.scale)
    try:
        enter_async = getattr(meter, "enter_async", None) if waiting.in_task else None
        if enter_async is None:
            entry = meter.enter(ticket, waiting.new_waiter, timeout != 0, limit)
        else:  # a meter kept elsewhere (Redis): its round trip on the loop, not blocking it
            entry = yield from enter_async(
                ticket, waiting.new_waiter, timeout != 0, limit
            ).__await__()
        if entry == "granted" or (
            entry == "queued" and (yield from waiting.for_rate(meter, ticket, clock, deadline))
        ):
            return ticket
    except BaseException:
        meter.release(ticket)
        raise
    raise _timeout(
        parts, meter, ticket=ticket, cost=cost, timeout=timeout, at_once=entry == "refused"
    )


def try_take(meter: RateMeter, cost: int) -> bool:
    """Spend ``cost`` (validated) if allowed now and nobody is queued; never waits."""
    taken = meter.take_now(cost, True)
    if taken is None:
        return _try_behind_queue(meter, cost)
    return taken


def _try_behind_queue(meter: RateMeter, cost: int) -> bool:
    """Someone is queued: the meter grants those whose time has come, then decides."""
    ticket = RateTicket(cost, _current_thread(), None, 0.0)
    return meter.enter(ticket, None, False, -1) == "granted"


def refund(meter: RateMeter, ticket: RateTicket) -> bool:
    """Give back a grant the caller never used (the guarded call never started), exactly if
    nothing was granted after it; ``True`` if refunded."""
    return meter.release(ticket)


def _timeout(
    parts: LimiterParts,
    meter: RateMeter,
    *,
    ticket: RateTicket,
    cost: int,
    timeout: float | None,
    at_once: bool,
) -> AcquireTimeout:
    if at_once and timeout == 0:
        why = "it is not allowed now, or others are queued"
    elif at_once:
        wait = seconds_of(ticket.due, meter.scale) - parts.clock.now()
        why = f"it would be allowed only in {wait:.6g} s"
    else:
        why = "it was not allowed in time"
    return AcquireTimeout(
        f"{parts.name!r} cannot allow {cost} unit(s) within {timeout} s: {why} "
        f"({len(meter.queue)} request(s) queued); nothing was spent"
    )


@attrs.frozen
class RateGrant:
    """What a rate limiter allowed in :func:`acquire_all`: ``cost`` units of ``limiter``.
    There is nothing to give back; it stands in the group where a lease would."""

    limiter: RateLimiter | WindowLimiter
    cost: int


@attrs.define(eq=False, repr=False)
class Reservation:
    """A place in a limiter's line, taken without waiting: see :meth:`RateLimiter.reserve`.

    ``time`` is when the reserved units are allowed, on the limiter's clock; act then (or
    :meth:`wait`). :meth:`cancel` before that time gives them back exactly.
    """

    cost: int
    time: float
    """When the units are allowed (seconds on the limiter's clock)."""
    _ticket: RateTicket
    _meter: RateMeter
    _clock: Clock

    @property
    def delay(self) -> float:
        """Seconds from now until the units are allowed (``0.0`` once that time has come)."""
        return max(0.0, self.time - self._clock.now())

    def wait(self) -> None:
        """Sleep (on the limiter's clock) until the reserved time."""
        if self.time <= self._clock.now():
            return
        handle = threading.Lock()
        handle.acquire()
        self._clock.sleep_until(handle, seconds_at(self._ticket.due, self._meter.scale))

    async def wait_async(self) -> None:
        """:meth:`wait` for an asyncio task: sleeps on the loop, never blocks it."""
        if self.time > self._clock.now():
            await sleep_until_async(self._clock, seconds_at(self._ticket.due, self._meter.scale))

    def cancel(self) -> bool:
        """Give the units back: ``True`` if this refunded them exactly (the reserved time had
        not come; those queued behind move up); ``False`` if the time had come, or on a
        second call."""
        return self._meter.cancel(self._ticket)  # idempotent: only a queued ticket leaves

    def __repr__(self) -> str:
        return f"<allotment.Reservation of {self.cost} in {self.delay:.6g} s>"


class _Limiter:
    """What :class:`RateLimiter` and :class:`WindowLimiter` share: the meter's faces.

    Thread-safe. The meter's lock is held only for arithmetic, never while a caller sleeps.
    """

    __slots__ = ("_clock", "_largest", "_meter", "_name", "_parts", "_per")

    _largest: int
    _meter: RateMeter
    _clock: Clock
    _name: str
    _per: fractions.Fraction
    _parts: LimiterParts

    def _setup(self, name: str | None, kind: str, clock: Clock | None, meter: RateMeter) -> None:
        self._meter = meter
        self._clock = SYSTEM_CLOCK if clock is None else clock
        self._name = f"{kind}-{next(_serial)}" if name is None else str(name)
        self._largest = meter.rule.largest
        self._parts = LimiterParts(meter, self._clock, self._name, self._largest)

    @property
    def name(self) -> str:
        """The limiter's name, for messages and statistics."""
        return self._name

    @property
    def per(self) -> float:
        """The period, in seconds."""
        return float(self._per)

    @property
    def clock(self) -> Clock:
        """The clock this limiter measures time on."""
        return self._clock

    def acquire(self, cost: int = 1, timeout: float | None = None) -> None:
        """Wait in line until ``cost`` units are allowed, and spend them.

        Never returns before the units are allowed; queued callers are served in arrival
        order. With a ``timeout``, raises :class:`AcquireTimeout` *at once*, spending nothing,
        when the wait it would need is longer (``timeout=0``: only if allowed now). A wait
        interrupted by any exception spends nothing, and those behind move up.

        Raises :class:`ExceedsBurst` for a cost that can never be allowed at once, and
        :class:`InvalidAmount`/:class:`InvalidAmountType` for a cost that is not a positive
        int, before anything changes.
        """
        if type(cost) is not int or not 0 < cost <= self._largest:
            cost = validate_cost(cost, self._largest)
        meter = self._meter
        if _events.observers:
            observed_acquire(self._parts, meter, cost, timeout, None)
            return
        # Allowed at once: no ticket. A bad timeout is refused below, before anything.
        if (timeout is None or (type(timeout) in _SECONDS and timeout >= 0)) and meter.take_now(
            cost, False
        ):
            return
        acquire_ticket(self._parts, meter, cost, timeout)

    def acquire_async(
        self, cost: int = 1, timeout: float | None = None
    ) -> Coroutine[Any, Any, None]:
        """:meth:`acquire` for asyncio tasks: ``await api.acquire_async(3, timeout=1)``.

        Tasks and threads wait in one line. A waiting task sleeps on its loop's timers (or
        on a manual clock), never blocking the loop; a cancelled wait spends nothing and
        those behind move up. ``cost`` and ``timeout`` are checked here, before anything is
        awaited.
        """
        parts = self._parts
        if type(cost) is not int or not 0 < cost <= parts.largest:
            cost = validate_cost(cost, parts.largest)
        if timeout is not None:
            deadline_after(parts.clock, timeout)  # refuse a bad timeout now
        return self._acquire_async(cost, timeout)

    async def _acquire_async(self, cost: int, timeout: float | None) -> None:
        parts = self._parts
        meter = parts.meter
        if _events.observers:
            await observed_acquire_async(parts, meter, cost, timeout, None)
        elif not await take_now_async(meter, cost):
            await run_in_task(rate_ticket(parts, meter, cost, timeout, TASK))

    async def __aenter__(self) -> None:
        await self.acquire_async()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    def try_acquire(self, cost: int = 1) -> bool:
        """Spend ``cost`` units if they are allowed now and nobody is queued; never waits."""
        if type(cost) is not int or not 0 < cost <= self._largest:
            cost = validate_cost(cost, self._largest)
        if _events.observers:
            allowed = try_take(self._meter, cost)
            report_rate("rate_allowed" if allowed else "rate_refused", self._name, cost, 0.0, None)
            return allowed
        taken = self._meter.take_now(cost, True)
        if taken is None:  # the try_take, written out: a call is a tenth of this path
            return _try_behind_queue(self._meter, cost)
        return taken

    def reserve(self, cost: int = 1) -> Reservation:
        """Take the next place in line for ``cost`` units without waiting (behind every queued
        caller) and return it: its ``delay`` says how long until the units are allowed."""
        parts = self._parts
        cost = validate_cost(cost, parts.largest)
        clock = parts.clock
        ticket = RateTicket(cost, _current_thread(), None, clock.now())
        meter = parts.meter
        entry = meter.enter(ticket, None, True, -1)
        when = clock.now() if entry == "granted" else seconds_of(ticket.due, meter.scale)
        return Reservation(cost, when, ticket, meter, clock)

    def charge(self, cost: int) -> None:
        """Spend ``cost`` units now, allowed or not: for a cost known only after the work
        (tokens counted in a response). Never waits and never fails for being large; the
        limiter may go into debt, and later callers wait until it is paid off."""
        self._meter.charge(validate_charge(cost))
        if _events.observers:
            report_rate("charged", self._name, cost, None, None)

    def guard(
        self, cost: int = 1, *, timeout: float | None = None
    ) -> Callable[[Callable[_P, _T]], Callable[_P, _T]]:
        """A decorator: every call of the function first acquires ``cost`` units (waiting
        up to ``timeout``). See :func:`allotment.guard`."""
        from ._guard import guard

        return guard((self, cost), timeout=timeout)

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    def statistics(self) -> RateStatistics:
        """A frozen snapshot: settings, what is available now, who waits, totals."""
        raise NotImplementedError


def statistics_of(
    parts: LimiterParts, rate: float, per: float, burst: int, kind: str
) -> RateStatistics:
    """A limiter's statistics, from one snapshot of its meter."""
    from ._statistics import RateStatistics, RateWaiterInfo

    meter = parts.meter
    snapshot = meter.snapshot()
    scale = meter.scale
    now = snapshot.taken_at
    return RateStatistics(
        name=parts.name,
        kind=kind,
        rate=rate,
        per=per,
        burst=burst,
        available=snapshot.available,
        next_allowed=seconds_of(snapshot.next_free, scale),
        waiters=tuple(
            RateWaiterInfo(
                cost=view.units,
                thread_name=view.thread.name,
                thread_id=view.thread.ident,
                waited=now - view.since,
                allowed_in=max(0.0, seconds_of(view.due, scale) - now),
                reservation=view.reservation,
                task_name=None if view.task is None else view.task.get_name(),
            )
            for view in snapshot.waiting
        ),
        allowed=snapshot.allowed,
        allowed_units=snapshot.allowed_units,
        refused=snapshot.refused,
        waited=snapshot.waited,
        charged=snapshot.charged,
    )


def _shared_name(name: str | None, backend: Backend, clock: Clock | None, kind: str) -> str:
    if clock is not None:
        raise UnsupportedByBackend(f"a {kind} with a backend runs on the server's clock")
    return check_backend_name(name, backend, kind)


def limiter_parts(limiter: _Limiter) -> LimiterParts:
    """The meter and settings of ``limiter``, for the other faces of this package."""
    return limiter._parts


def is_limiter(candidate: object) -> bool:
    return isinstance(candidate, _Limiter)


@attrs.frozen
class GcraSettings:
    """A GCRA's settings, validated and exact: what :class:`RateLimiter` and each key of a
    :class:`KeyedRateLimiter` are made from."""

    rate: fractions.Fraction
    per: fractions.Fraction
    burst: int
    interval: int
    """One unit's emission interval, in ticks."""
    scale: int
    """Ticks per nanosecond: the denominator of the interval in nanoseconds, so that the
    interval is a whole number of ticks."""

    def meter(self, clock: Clock) -> RateMeter:
        """A fresh meter on ``clock``, its bucket full from now."""
        start = ticks_of(clock.now(), self.scale)
        rule = Gcra(self.interval, self.burst, start, self.scale)
        return Meter(rule, self.scale, clock.now, nanoseconds_of(clock), start)


def gcra_settings(rate: object, per: object, burst: object) -> GcraSettings:
    """Validate a GCRA's settings (``burst=None``: ``max(1, floor(rate))``) before anything
    is made; raises ``InvalidLimit`` or ``InvalidLimitType``."""
    exact_rate = exact_positive(rate, "rate")
    exact_per = exact_positive(per, "per")
    whole = whole_number(max(1, math.floor(exact_rate)) if burst is None else burst, "burst")
    interval = exact_per * NANOSECONDS / exact_rate
    return GcraSettings(exact_rate, exact_per, whole, interval.numerator, interval.denominator)


class RateLimiter(_Limiter):
    """At most ``rate`` units per ``per`` seconds sustained, in bursts of at most ``burst``.

    The generic cell rate algorithm (a token bucket kept exactly, in whole ticks): in any
    interval of ``t`` seconds it allows at most ``burst + t * rate / per`` units; with
    ``burst=1`` consecutive units are at least ``per / rate`` seconds apart. ``burst`` defaults
    to ``max(1, floor(rate))``: the whole quota of a period at once, as a per-period quota
    promises. The bucket starts full. State is one number, whatever the traffic.

    ::

        api = RateLimiter(100, per=60)   # 100 per minute, up to 100 at once
        api.acquire()                    # waits its turn
        with api: ...                    # the same, for one unit

    ``rate`` and ``per`` take ints, floats (read as the decimal they print as), ``Decimal``
    and ``Fraction``; bad settings raise :class:`InvalidLimit` or :class:`InvalidLimitType`.
    """

    __slots__ = ("_burst", "_rate")

    def __init__(
        self,
        rate: Number,
        per: Number = 1.0,
        *,
        burst: int | None = None,
        name: str | None = None,
        clock: Clock | None = None,
        backend: Backend | None = None,
        on_unavailable: OnUnavailable | None = None,
    ) -> None:
        settings = gcra_settings(rate, per, burst)
        chosen = SYSTEM_CLOCK if clock is None else clock
        policy = check_on_unavailable(on_unavailable, backend)
        if backend is None:
            meter = settings.meter(chosen)
        else:
            name = _shared_name(name, backend, clock, "RateLimiter")
            interval = fractions.Fraction(settings.interval, settings.scale)
            meter = backend.gcra_meter(name, interval, settings.burst, None, policy)
        self._rate = settings.rate
        self._per = settings.per
        self._burst = settings.burst
        self._setup(name, "rate-limiter", chosen, meter)

    @property
    def rate(self) -> float:
        """Units allowed per period, sustained."""
        return float(self._rate)

    @property
    def burst(self) -> int:
        """The most units allowed at once (and the largest cost)."""
        return self._burst

    def statistics(self) -> RateStatistics:
        """A frozen snapshot: settings, what is available now, who waits, totals."""
        return statistics_of(self._parts, self.rate, self.per, self._burst, "gcra")

    def __repr__(self) -> str:
        meter = self._meter
        return (
            f"<allotment.RateLimiter {self._name!r}: {self.rate:g} per {self.per:g} s, "
            f"burst {self._burst}, waiting={len(meter.queue)}>"
        )


class WindowLimiter(_Limiter):
    """At most ``limit`` units in any window of ``per`` seconds: a sliding log.

    A unit allowed at time ``t`` counts in every window ``[s, s + per)`` that holds ``t``, and
    no such window ever holds more than ``limit`` units: the guarantee a server enforcing
    "100 per minute" with a sliding log checks. Unlike :class:`RateLimiter` it allows a whole
    ``limit`` again as soon as the window has moved past earlier units. State is one entry
    per distinct grant time within the window (a thousand units allowed at once are one
    entry).
    """

    __slots__ = ("_limit",)

    def __init__(
        self,
        limit: int,
        per: Number = 1.0,
        *,
        name: str | None = None,
        clock: Clock | None = None,
        backend: Backend | None = None,
        on_unavailable: OnUnavailable | None = None,
    ) -> None:
        limit = whole_number(limit, "limit")
        exact_per = exact_positive(per, "per")
        window = exact_per * NANOSECONDS
        chosen = SYSTEM_CLOCK if clock is None else clock
        policy = check_on_unavailable(on_unavailable, backend)
        meter: RateMeter
        if backend is None:
            scale = window.denominator
            rule = SlidingWindow(limit, window.numerator, scale)
            now = ticks_of(chosen.now(), scale)
            meter = Meter(rule, scale, chosen.now, nanoseconds_of(chosen), now)
        else:
            name = _shared_name(name, backend, clock, "WindowLimiter")
            meter = backend.window_meter(name, limit, exact_per, policy)
        self._limit = limit
        self._per = exact_per
        self._setup(name, "window-limiter", chosen, meter)

    @property
    def limit(self) -> int:
        """The most units allowed in any window of ``per`` seconds."""
        return self._limit

    def statistics(self) -> RateStatistics:
        """A frozen snapshot: settings, what is available now, who waits, totals."""
        limit = self._limit
        return statistics_of(self._parts, float(limit), self.per, limit, "window")

    def __repr__(self) -> str:
        return (
            f"<allotment.WindowLimiter {self._name!r}: {self._limit} per {self.per:g} s, "
            f"waiting={len(self._meter.queue)}>"
        )
