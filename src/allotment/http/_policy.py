"""The policy: what every HTTP request through a client must take, and the server's pause.

A :class:`Policy` is a face over :func:`~allotment.acquire_all`: its parts (managers, rate
limiters, keyed limiters), a key function, cost and charge hooks; and one piece of state of
its own, the *pause*: the instant before which no request through it may be sent. Client
adapters make two calls per request: :meth:`Policy.enter` (or :meth:`Policy.enter_async`)
before sending, which returns a :class:`Grant`, and :meth:`Policy.observe` when the reply's
status and headers arrive. The grant is released when the reply's body is closed.

A pause is a move of time, not a timer. When a reply asks for one, each rate limiter of the
policy is told "nothing before ``until``" (for a GCRA, its theoretical arrival time moves to
``until``, one state change; on Redis, in Redis, so every process sees it), and waiters keep
their places in line. The policy also keeps ``until`` itself, one shared deadline: a request
that has taken its parts waits, holding them, until then. That covers a policy of
concurrency caps only, a keyed limiter's other keys, and a Redis server that could not be
told. A pause only ever moves later; headers can make a client slower, never faster.

``_lock`` guards the counters and ``_until``; it is held for arithmetic only, never while
taking parts, sleeping or calling a limiter. ``_until`` is a float written under the lock and
read without it (one load: a reader sees the old or the new deadline, both valid). Each
section is written out in the shape of "Releasing" in ``_core._section_lock`` (no ``with``:
on 3.10 a signal handler raising as an exception leaves the body would skip the release). The
lock is an ``RLock`` so that the release in the ``finally`` is its own test of ownership (a
plain lock would release another thread's hold if the exception came while waiting for it).
Re-entry on the owning thread (a signal handler or finalizer calling the policy inside one of
its sections) is refused with :class:`ReentrantCall`, as by the core: the outer section is
half way through a read-modify-write of ``_until`` or a counter.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Hashable, Iterable
from typing import Any, cast

import attrs

from .._clock import SYSTEM_CLOCK, Clock, wall_time
from .._core import RateMeter, RateTicket, SectionLock, ticks_of
from .._errors import AcquireTimeout, ReentrantCall
from .._keyed import (
    KeyedRateLimiter,
    acquire_key_ticket,
    acquire_key_ticket_async,
    pause_key,
)
from .._lease import Lease
from .._limiters import (
    LimiterParts,
    acquire_ticket,
    is_limiter,
    limiter_parts,
    rate_ticket,
    refund,
    validate_cost,
)
from .._manager import ResourceManager
from .._multi import LeaseGroup, acquire_all, acquire_all_async, validate_parts
from .._waiters import TASK, run_in_task, sleep_until_async
from ._headers import read_announcement

__all__ = ["Grant", "HTTPRequest", "Policy", "PolicyStatistics"]

logger = logging.getLogger("allotment.http")

_SERVER_REFUSALS = frozenset({429, 503})


@attrs.frozen
class HTTPRequest:
    """What the key and cost functions see of a request, the same for every client."""

    method: str
    url: str
    host: str
    client_request: object
    """The client's own request object (an ``httpx.Request``, a ``requests.PreparedRequest``
    or an ``aiohttp.ClientRequest``)."""


@attrs.frozen
class PolicyStatistics:
    """A snapshot of a policy's figures, taken under its lock."""

    requests: int
    """Requests let through (each took every part)."""
    refused: int
    """Requests refused with :class:`~allotment.AcquireTimeout` before anything was sent."""
    server_refusals: int
    """Replies with status 429 or 503."""
    pauses: int
    """Times the policy started pausing (a pause extended while it runs counts once)."""
    paused_seconds: float
    """Total time paused (overlapping pauses counted once)."""
    last_pause_reason: str | None
    """What asked for the latest pause (the header, or the caller's reason)."""
    pause_remaining: float
    """Seconds until the current pause ends (``0.0``: not paused)."""


@attrs.define(eq=False)
class Grant:
    """What one request holds while it is in flight: its leases (released when the reply's
    body is closed, or when sending fails), and the key it was limited under.

    Nothing but the client's response refers to a grant, so a response dropped unclosed
    drops its leases, which return their units and warn
    (:class:`~allotment.LeakedLeaseWarning`) as any leaked lease does."""

    _group: LeaseGroup | Lease[Any] | None
    key: Hashable | None = None
    request: HTTPRequest | None = None

    @property
    def released(self) -> bool:
        """``True`` once the request holds nothing."""
        return self._group is None or self._group.released

    def release(self) -> None:
        """Release every lease the request holds. Idempotent; from any thread."""
        group = self._group
        if group is not None:
            group.release()

    async def release_async(self) -> None:
        """:meth:`release` for an asyncio task: a backend's round trips (Redis) run on the
        task's loop without blocking it. Idempotent."""
        group = self._group
        if group is not None:
            await group.release_async()

    def abandon(self) -> None:
        """Drop the leases unreleased: the reply was garbage-collected while open, and its
        leases report the leak as their own (their units return)."""
        self._group = None


Part = Any
"""A :class:`~allotment.ResourceManager`, a rate limiter, a
:class:`~allotment.KeyedRateLimiter`, or a ``(part, amount)`` pair."""


class Policy:
    """The limits every request through a client takes, and the pauses its server asks for.

    ``parts`` are taken as :func:`~allotment.acquire_all` takes them, all or nothing, in the
    same FIFO lines as every other user of those managers and limiters: each a manager, a
    rate limiter (:class:`~allotment.RateLimiter`, :class:`~allotment.WindowLimiter`), a
    :class:`~allotment.KeyedRateLimiter` (which needs ``key``), or a ``(part, amount)``
    pair; a bare part takes 1. ``key(request)`` picks a keyed limiter's key;
    ``cost(request)`` is what each request costs every rate part (instead of its amount);
    ``charge(response)`` is charged to every rate part once the reply's headers arrive (the
    response is the client's own; return ``0`` to charge nothing). ``request`` is an
    :class:`HTTPRequest`.

    A request that cannot take everything within ``timeout`` seconds (``None``: wait as long
    as it takes) raises :class:`~allotment.AcquireTimeout` before anything is sent; so does
    one whose deadline falls inside a pause. One policy may serve any number of clients,
    threads and event loops at once.

    Replies are read (see :mod:`allotment.http`): a 429 or 503 with ``Retry-After``, or
    rate-limit headers saying nothing is left, pause the whole policy until the instant
    announced, but never more than ``max_pause`` seconds from now (default an hour; a
    positive finite number): a longer announcement is clamped, with a warning logged on
    ``allotment.http``, before any limiter is told. A request refused or cancelled after
    taking its parts gives back its leases and refunds every rate it took. A streamed reply
    holds its concurrency slots until its body is closed.
    """

    __slots__ = (
        "_charge",
        "_clock",
        "_cost",
        "_describes",
        "_fixed",
        "_key",
        "_keyed",
        "_last_reason",
        "_limiters",
        "_lock",
        "_managers",
        "_max_pause",
        "_paused_seconds",
        "_pauses",
        "_rates",
        "_refused",
        "_requests",
        "_server_refusals",
        "_simple",
        "_timeout",
        "_until",
        "name",
    )

    def __init__(
        self,
        *parts: Part,
        key: Callable[[HTTPRequest], Hashable] | None = None,
        cost: Callable[[HTTPRequest], int] | None = None,
        charge: Callable[[Any], int] | None = None,
        timeout: float | None = None,
        clock: Clock | None = None,
        name: str | None = None,
        max_pause: float = 3600.0,
    ) -> None:
        if not parts:
            raise TypeError("a Policy needs at least one part: a manager or a rate limiter")
        managers: list[tuple[Any, Any]] = []
        rates: list[tuple[Any, Any]] = []
        keyed: list[tuple[KeyedRateLimiter, Any]] = []
        for part in parts:
            limit, amount = part if isinstance(part, tuple) and len(part) == 2 else (part, 1)
            if isinstance(limit, KeyedRateLimiter):
                keyed.append((limit, amount))
            elif is_limiter(limit):
                rates.append((limit, amount))
            elif isinstance(limit, ResourceManager):
                managers.append((limit, amount))
            else:
                raise TypeError(
                    f"a Policy's parts are managers, rate limiters, keyed rate limiters or "
                    f"(part, amount) pairs, not {part!r}"
                )
        if keyed and key is None:
            raise TypeError("a Policy with a KeyedRateLimiter needs key=, a function of requests")
        validate_parts([*managers, *rates])
        for limiter, amount in keyed:
            validate_cost(amount, limiter.burst, f"cost on {limiter.name!r}")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0
        ):
            raise ValueError(f"timeout must be zero or more seconds, or None, not {timeout!r}")
        if (
            isinstance(max_pause, bool)
            or not isinstance(max_pause, (int, float))
            or not math.isfinite(max_pause)
            or max_pause <= 0
        ):
            raise ValueError(
                f"max_pause must be a positive finite number of seconds, not {max_pause!r}"
            )
        self._max_pause = float(max_pause)
        self._managers = tuple(managers)
        self._rates = tuple(rates)
        self._keyed = tuple(keyed)
        self._limiters = tuple(limiter for limiter, _ in rates)
        self._fixed = [*managers, *rates]
        # One manager and one limiter need no group: taken one after the other (the
        # manager first, as acquire_all does), at a seventh of acquire_all's cost.
        self._simple = not keyed and len(managers) <= 1 and len(rates) <= 1
        self._requests = 0
        self._cost = cost
        self._charge = charge
        self._describes = key is not None or cost is not None
        self._timeout = None if timeout is None or math.isinf(timeout) else float(timeout)
        self._clock: Clock = SYSTEM_CLOCK if clock is None else clock
        self._lock = cast("SectionLock", threading.RLock())  # see the module's docstring
        self._until = -math.inf
        self._pauses = 0
        self._paused_seconds = 0.0
        self._last_reason: str | None = None
        self._refused = 0
        self._server_refusals = 0
        self.name = "http-policy" if name is None else str(name)
        self._key = key

    # -- before sending ----------------------------------------------------------------------

    def _parts_for(self, request: HTTPRequest | None) -> list[tuple[Any, Any]]:
        cost = self._cost
        if cost is None or request is None:
            return self._fixed
        price = cost(request)
        return [*self._managers, *((limiter, price) for limiter, _ in self._rates)]

    def _deadline(self) -> float | None:
        timeout = self._timeout
        return None if timeout is None else self._clock.now() + timeout

    def _left(self, deadline: float | None) -> float | None:
        return None if deadline is None else max(0.0, deadline - self._clock.now())

    def _refuse_paused(self, until: float) -> AcquireTimeout:
        """The error for a request whose deadline falls inside the pause (counted by the
        caller, once: :meth:`enter` counts every refusal it raises)."""
        lock = self._lock
        if lock._is_owned():
            raise _reentered(self.name)
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            reason = self._last_reason
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        return AcquireTimeout(
            f"{self.name!r} is paused for {until - self._clock.now():.3f} s more ({reason}), "
            f"past this request's deadline ({self._timeout} s); nothing was sent"
        )

    def _count_refusal(self) -> None:
        lock = self._lock
        if lock._is_owned():
            raise _reentered(self.name)
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            self._refused += 1
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock

    def enter(self, client_request: object, describe: Callable[[object], HTTPRequest]) -> Grant:
        """Take every part for one request about to be sent, from a thread; wait out a
        pause, holding them. ``describe`` turns the client's request into an
        :class:`HTTPRequest` (called only if the policy has a key or cost function).

        Raises :class:`~allotment.AcquireTimeout`, holding nothing, if that cannot be done
        within the policy's timeout."""
        request = describe(client_request) if self._describes else None
        deadline = self._deadline()
        until = self._until
        if deadline is not None and until > deadline:
            self._count_refusal()
            raise self._refuse_paused(until)
        group: LeaseGroup | Lease[Any] | None = None
        spent: list[tuple[RateMeter, RateTicket]] = []  # rate taken outside a group
        try:
            if self._simple:
                group = self._take_simple(request, deadline, spent)
            elif self._fixed:
                group = acquire_all(self._parts_for(request), self._left(deadline))
            key = self._take_keyed(request, deadline, spent)
            self._wait_out_pause(deadline)
        except BaseException as error:
            try:
                _refund(spent)
            finally:
                _give_back(group)
            if isinstance(error, AcquireTimeout):
                self._count_refusal()
            raise
        lock = self._lock
        if lock._is_owned():
            raise _reentered(self.name)
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            self._requests += 1
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        return Grant(group, key, request)

    async def enter_async(
        self, client_request: object, describe: Callable[[object], HTTPRequest]
    ) -> Grant:
        """:meth:`enter` for an asyncio task: the same lines, the same deadline. A
        cancellation gives back whatever was taken, then propagates."""
        request = describe(client_request) if self._describes else None
        deadline = self._deadline()
        until = self._until
        if deadline is not None and until > deadline:
            self._count_refusal()
            raise self._refuse_paused(until)
        group: LeaseGroup | Lease[Any] | None = None
        spent: list[tuple[RateMeter, RateTicket]] = []
        try:
            if self._simple:
                group = await self._take_simple_async(request, deadline, spent)
            elif self._fixed:
                group = await acquire_all_async(self._parts_for(request), self._left(deadline))
            key = await self._take_keyed_async(request, deadline, spent)
            await self._wait_out_pause_async(deadline)
        except BaseException as error:
            try:
                _refund(spent)
            finally:
                await _give_back_async(group)
            if isinstance(error, AcquireTimeout):
                self._count_refusal()
            raise
        lock = self._lock
        if lock._is_owned():
            raise _reentered(self.name)
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            self._requests += 1
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        return Grant(group, key, request)

    def _take_simple(
        self,
        request: HTTPRequest | None,
        deadline: float | None,
        spent: list[tuple[RateMeter, RateTicket]],
    ) -> Lease[Any] | None:
        """The manager, then the limiter; each limiter's ticket goes to ``spent``, so that a
        refusal later (a pause extended past the deadline) can refund it."""
        lease = None
        for manager, amount in self._managers:
            lease = manager.acquire(amount, self._left(deadline))
        try:
            for limiter, amount in self._rates:
                parts = limiter_parts(limiter)
                cost = validate_cost(self._rate_cost(request, amount), parts.largest)
                ticket = acquire_ticket(parts, parts.meter, cost, self._left(deadline))
                spent.append((parts.meter, ticket))
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        return lease

    async def _take_simple_async(
        self,
        request: HTTPRequest | None,
        deadline: float | None,
        spent: list[tuple[RateMeter, RateTicket]],
    ) -> Lease[Any] | None:
        lease = None
        for manager, amount in self._managers:
            lease = await manager.acquire_async(amount, self._left(deadline))
        try:
            for limiter, amount in self._rates:
                parts = limiter_parts(limiter)
                cost = validate_cost(self._rate_cost(request, amount), parts.largest)
                steps = rate_ticket(parts, parts.meter, cost, self._left(deadline), TASK)
                spent.append((parts.meter, await run_in_task(steps)))
        except BaseException:
            if lease is not None:
                await lease.release_async()
            raise
        return lease

    def _key_of(self, request: HTTPRequest | None) -> Hashable | None:
        key = self._key
        if key is None or request is None:
            return None
        return key(request)

    def _rate_cost(self, request: HTTPRequest | None, amount: Any) -> Any:
        return amount if self._cost is None or request is None else self._cost(request)

    def _take_keyed(
        self,
        request: HTTPRequest | None,
        deadline: float | None,
        spent: list[tuple[RateMeter, RateTicket]],
    ) -> Hashable | None:
        key = self._key_of(request)
        for limiter, amount in self._keyed:
            price = self._rate_cost(request, amount)
            spent.append(acquire_key_ticket(limiter, key, price, self._left(deadline)))
        return key

    async def _take_keyed_async(
        self,
        request: HTTPRequest | None,
        deadline: float | None,
        spent: list[tuple[RateMeter, RateTicket]],
    ) -> Hashable | None:
        key = self._key_of(request)
        for limiter, amount in self._keyed:
            price = self._rate_cost(request, amount)
            spent.append(await acquire_key_ticket_async(limiter, key, price, self._left(deadline)))
        return key

    def _wait_out_pause(self, deadline: float | None) -> None:
        clock = self._clock
        while True:
            until = self._until  # re-read: a pause may be extended while this one sleeps
            if until <= clock.now():
                return
            if deadline is not None and until > deadline:
                raise self._refuse_paused(until)
            handle = threading.Lock()
            handle.acquire()
            clock.sleep_until(handle, until)  # nobody releases it: a sleep until the end

    async def _wait_out_pause_async(self, deadline: float | None) -> None:
        clock = self._clock
        while True:
            until = self._until
            if until <= clock.now():
                return
            if deadline is not None and until > deadline:
                raise self._refuse_paused(until)
            await sleep_until_async(clock, until)

    # -- after the reply's headers -----------------------------------------------------------

    def observe(
        self, grant: Grant, status: int, headers: Iterable[tuple[str, str]], response: object
    ) -> None:
        """Read a reply's status and headers (name, value pairs): pause if it asks, then
        charge. Header values never raise here; if the charge function raises, the grant is
        released and the error propagates."""
        try:
            if status in _SERVER_REFUSALS:
                lock = self._lock
                if lock._is_owned():
                    raise _reentered(self.name)
                try:  # see "Releasing" in ``_core._section_lock``
                    lock.acquire()
                    self._server_refusals += 1
                finally:
                    try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                        lock.release()
                    except RuntimeError:
                        pass  # not taken: the exception came while waiting for the lock
            try:
                announced = read_announcement(status, headers, wall_time())
            except Exception:  # the reader raises for no header value; stay out of the request
                logger.exception("could not read the rate-limit headers of a reply")
                announced = None
            if announced is not None:
                seconds = self._bounded(announced.seconds, announced.reason)
                self._pause(seconds, announced.reason, grant.key)
            charge = self._charge
            if charge is not None:
                extra = charge(response)
                if extra:
                    for limiter in self._limiters:
                        limiter.charge(extra)
                    for keyed, _ in self._keyed:
                        keyed.charge(grant.key, extra)
        except BaseException:
            grant.release()
            raise

    # -- pauses ------------------------------------------------------------------------------

    def pause(self, seconds: float, reason: str = "paused by the caller") -> None:
        """Send nothing through this policy for ``seconds`` from now (as a reply's
        ``Retry-After`` does). Only ever extends a pause. Raises ``ValueError`` for a
        negative or non-finite duration."""
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not math.isfinite(seconds)
            or seconds < 0
        ):
            raise ValueError(f"seconds must be a finite number, zero or more, not {seconds!r}")
        self._pause(float(seconds), str(reason), None)

    def _bounded(self, seconds: float, reason: str) -> float:
        """A pause a server announced, at most ``max_pause``: a huge value (a bug, or a
        hostile server) must neither stall the policy for days nor overflow a limiter."""
        limit = self._max_pause
        if seconds <= limit:  # also False for NaN
            return seconds
        logger.warning(
            "%r: a reply asked for a pause of %s s (%s); pausing for max_pause, %s s",
            self.name,
            seconds,
            reason,
            limit,
        )
        return limit

    def _pause(self, seconds: float, reason: str, key: Hashable | None) -> None:
        now = self._clock.now()
        until = now + seconds
        lock = self._lock
        if lock._is_owned():
            raise _reentered(self.name)
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            current = self._until
            if until <= current:
                return  # already paused at least that long
            start = current if current > now else now
            if current <= now:
                self._pauses += 1
            self._paused_seconds += until - start
            self._until = until
            self._last_reason = reason
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        for limiter in self._limiters:
            try:
                parts = limiter_parts(limiter)
                parts.meter.pause_until(_ticks(parts, seconds))
            except Exception:
                _not_told(limiter)
        if key is not None:
            for keyed, _ in self._keyed:
                try:
                    pause_key(keyed, key, seconds)
                except Exception:
                    _not_told(keyed)

    def statistics(self) -> PolicyStatistics:
        """The policy's figures now."""
        now = self._clock.now()
        lock = self._lock
        if lock._is_owned():
            raise _reentered(self.name)
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            return PolicyStatistics(
                requests=self._requests,
                refused=self._refused,
                server_refusals=self._server_refusals,
                pauses=self._pauses,
                paused_seconds=self._paused_seconds,
                last_pause_reason=self._last_reason,
                pause_remaining=max(0.0, self._until - now),
            )
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock

    def __repr__(self) -> str:
        parts = [*self._fixed, *self._keyed]
        return f"<allotment.http.Policy {self.name!r}: {len(parts)} part(s)>"


def _reentered(name: str) -> ReentrantCall:
    return ReentrantCall(
        f"cannot use the HTTP policy {name!r} from inside its own bookkeeping on this thread "
        "(a finalizer or signal handler ran there)"
    )


def _not_told(limiter: object) -> None:
    # The policy's own deadline still holds in this process: never fail the reply.
    logger.warning("could not pause %r", limiter, exc_info=True)


def _ticks(parts: LimiterParts, seconds: float) -> int:
    """``seconds`` from now on a limiter's own clock, in its meter's ticks."""
    return ticks_of(parts.clock.now() + seconds, parts.meter.scale)


def _refund(spent: list[tuple[RateMeter, RateTicket]]) -> None:
    """Nothing was sent: give back the rate taken outside a group, the last taken first
    (exact for each limiter that granted nothing since, as a group's refund)."""
    for meter, ticket in reversed(spent):
        refund(meter, ticket)


def _give_back(group: LeaseGroup | Lease[Any] | None) -> None:
    """Nothing was sent: refund the rate spent (a group's), release the leases."""
    if isinstance(group, LeaseGroup):
        try:
            group.refund()
        finally:
            group.release()
    elif group is not None:
        group.release()


async def _give_back_async(group: LeaseGroup | Lease[Any] | None) -> None:
    """:func:`_give_back` for a task: the leases' round trips (Redis) on its loop."""
    if isinstance(group, LeaseGroup):
        try:
            group.refund()
        finally:
            await group.release_async()
    elif group is not None:
        await group.release_async()
