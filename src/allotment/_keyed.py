"""Keyed rate limits: one GCRA limiter per key (per user, per tenant, per host).

Each key has its own meter, made on first use, with its own lock: no lock is held across
keys while anyone waits (a limiter-wide lock held across keys is how one hot key slows
every other). The table of keys has a small lock of its own, held only to find, add or
forget a meter.

Memory stays bounded by the keys active within about one period: a key whose bucket is full
again carries no state, and forgetting it changes nothing, so it is dropped. Every lookup
sweeps from the oldest end of the table: it forgets idle keys until it meets a busy one,
which it moves to the back, or until it has forgotten ``_SWEEP`` keys. Each key is forgotten
at most once after it was added, so a lookup costs amortised O(1), and at most ``_SWEEP``
retirements. A key in debt or with waiters is never dropped. A meter is retired under its
own lock, so a caller that found it just before it was forgotten notices and looks the key up
again: two meters never exist for one key.
"""

from __future__ import annotations

import collections
import fractions
import functools
import threading
from collections.abc import Callable, Coroutine, Hashable
from typing import Any

from . import _events
from ._backend import Backend, OnUnavailable, check_backend_name, check_on_unavailable
from ._clock import SYSTEM_CLOCK, Clock, deadline_after
from ._core import MeterRetired, RateMeter, RateTicket, new_section_lock, ticks_of
from ._errors import InvalidKey, ReentrantCall, UnsupportedByBackend
from ._limiters import (
    GcraSettings,
    LimiterParts,
    Number,
    acquire_ticket,
    gcra_settings,
    observed_acquire,
    observed_acquire_async,
    rate_ticket,
    statistics_of,
    take_now_async,
    try_take,
    validate_charge,
    validate_cost,
)
from ._observed import report_rate
from ._statistics import RateStatistics
from ._waiters import TASK, run_in_task, seconds_of

__all__ = ["KeyedRateLimiter", "pause_key"]

_SWEEP = 256
"""The most idle keys one lookup forgets: more than the one a lookup can add, so the table
follows the active keys within a few hundred calls even after a spike of a hundred thousand,
while no lookup does more than this much work."""

_current_thread = threading.current_thread
_SECONDS = (int, float)


class KeyedRateLimiter:
    """A :class:`RateLimiter` per key: ``rate`` units per ``per`` seconds for each key, in
    bursts of at most ``burst``, with the same guarantees per key (exact GCRA, FIFO among a
    key's waiters, timeouts at once, nothing spent on failure).

    ::

        users = KeyedRateLimiter(10, per=1, burst=5)
        users.acquire("user-42")                 # waits for that user's turn only
        if not users.try_acquire("user-7", 2): ...

    Keys are made on first use and forgotten once their bucket is full again, so a million
    one-off keys cost only the keys active within about one period. ``len()`` counts the keys
    the table holds: each call forgets idle keys from the oldest end (up to 256), so after a
    spike of one-off keys the count, and the memory, follow the active keys within a few
    hundred calls. Keys must be hashable (:class:`InvalidKey` otherwise).
    """

    __slots__ = (
        "_burst",
        "_clock",
        "_lock",
        "_make",
        "_meters",
        "_name",
        "_settings",
        "_shared",
    )

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
        """``backend`` keeps every key's state elsewhere, shared by every process that
        names the limiter (``name`` is then required, keys must be ``str``, ``int`` or
        ``bytes``, and the clock is the server's); ``on_unavailable`` overrides the
        backend's failure policy for this limiter."""
        self._settings = gcra_settings(rate, per, burst)
        self._burst = self._settings.burst
        policy = check_on_unavailable(on_unavailable, backend)
        if backend is not None:
            if clock is not None:
                raise UnsupportedByBackend("a limiter with a backend runs on the server's clock")
            name = check_backend_name(name, backend, "KeyedRateLimiter")
            self._make: Callable[[Hashable], RateMeter] = functools.partial(
                _shared_meter, backend, name, self._settings, policy
            )
        else:
            self._make = functools.partial(_local_meter, self._settings, clock or SYSTEM_CLOCK)
        self._shared = backend is not None
        self._clock: Clock = SYSTEM_CLOCK if clock is None else clock
        self._name = "keyed-rate-limiter" if name is None else str(name)
        self._lock = new_section_lock()
        """Guards ``_meters`` (its keys and their order); held only to find, add or forget a
        meter, never while a meter's own lock is waited on by a sleeper."""
        self._meters: collections.OrderedDict[Hashable, RateMeter] = collections.OrderedDict()

    @property
    def rate(self) -> float:
        return float(self._settings.rate)

    @property
    def per(self) -> float:
        return float(self._settings.per)

    @property
    def burst(self) -> int:
        return self._burst

    @property
    def name(self) -> str:
        return self._name

    def acquire(self, key: Hashable, cost: int = 1, timeout: float | None = None) -> None:
        """Wait in ``key``'s line until ``cost`` units are allowed; as
        :meth:`RateLimiter.acquire`, per key."""
        cost = validate_cost(cost, self._burst)
        _check_key(key)
        # Allowed at once: no ticket, no wait. A bad timeout never takes that path, and
        # acquire_ticket refuses it before anything changes (as RateLimiter.acquire).
        at_once = timeout is None or (type(timeout) in _SECONDS and timeout >= 0)
        observed = _events.observers
        while True:
            meter = self._meter_for(key)
            try:
                if observed:
                    observed_acquire(self._parts(meter), meter, cost, timeout, key)
                elif not (at_once and meter.take_now(cost, False)):
                    acquire_ticket(self._parts(meter), meter, cost, timeout)
            except MeterRetired:
                continue  # forgotten between the lookup and the call: look it up again
            return

    def acquire_async(
        self, key: Hashable, cost: int = 1, timeout: float | None = None
    ) -> Coroutine[Any, Any, None]:
        """:meth:`acquire` for asyncio tasks (see :meth:`RateLimiter.acquire_async`);
        ``key``, ``cost`` and ``timeout`` are checked here, before anything is awaited."""
        cost = validate_cost(cost, self._burst)
        _check_key(key)
        if timeout is not None:
            deadline_after(self._clock, timeout)
        return self._acquire_async(key, cost, timeout)

    async def _acquire_async(self, key: Hashable, cost: int, timeout: float | None) -> None:
        observed = _events.observers
        while True:
            meter = self._meter_for(key)
            try:
                if observed:
                    await observed_acquire_async(self._parts(meter), meter, cost, timeout, key)
                elif not await take_now_async(meter, cost):
                    await run_in_task(rate_ticket(self._parts(meter), meter, cost, timeout, TASK))
            except MeterRetired:
                continue
            return

    def try_acquire(self, key: Hashable, cost: int = 1) -> bool:
        """Spend ``cost`` of ``key``'s units if allowed now and nobody of that key waits."""
        cost = validate_cost(cost, self._burst)
        _check_key(key)
        while True:
            meter = self._meter_for(key)
            try:
                allowed = try_take(meter, cost)
            except MeterRetired:
                continue
            if _events.observers:
                kind = "rate_allowed" if allowed else "rate_refused"
                report_rate(kind, self._name, cost, 0.0, key)
            return allowed

    def charge(self, key: Hashable, cost: int) -> None:
        """Spend ``cost`` of ``key``'s units now, allowed or not (see
        :meth:`RateLimiter.charge`)."""
        cost = validate_charge(cost)
        _check_key(key)
        while True:
            meter = self._meter_for(key)
            try:
                meter.charge(cost)
            except MeterRetired:
                continue
            if _events.observers:
                report_rate("charged", self._name, cost, None, key)
            return

    def retry_after(self, key: Hashable, cost: int = 1) -> float:
        """Seconds until ``cost`` of ``key``'s units would be allowed, behind the key's
        waiters (``0.0``: now). Changes nothing: for a ``Retry-After`` header."""
        cost = validate_cost(cost, self._burst)
        _check_key(key)
        meter = self._meters.get(key)
        if meter is None:
            if self._shared:  # the key's state is on the server: ask it
                meter = self._make(key)
            else:
                return 0.0  # an unknown key has a full bucket
        try:
            allowed_at = meter.forecast(cost)
        except MeterRetired:
            return 0.0
        return max(0.0, seconds_of(allowed_at, meter.scale) - self._clock.now())

    def statistics(self, key: Hashable) -> RateStatistics:
        """A frozen snapshot of ``key``'s limiter (a full bucket if the key holds no state)."""
        _check_key(key)
        meter = self._meters.get(key)
        if meter is None:
            meter = self._make(key)  # in memory a full bucket; shared, the server's state
        return statistics_of(
            self._parts(meter), float(self._settings.rate), self.per, self._burst, "gcra"
        )

    def __len__(self) -> int:
        return len(self._meters)

    def __contains__(self, key: object) -> bool:
        try:
            return key in self._meters
        except TypeError:
            return False

    def _parts(self, meter: RateMeter) -> LimiterParts:
        return LimiterParts(meter, self._clock, self._name, self._burst)

    def _meter_for(self, key: Hashable) -> RateMeter:
        """The key's meter, made if new; sweeps idle keys on the way."""
        lock = self._lock
        if lock._is_owned():
            raise ReentrantCall(
                "cannot use a keyed rate limiter from inside its own bookkeeping on this "
                "thread (a finalizer or signal handler ran there)"
            )
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            meters = self._meters
            forgotten = 0
            # "while True", and a statement (not an if) last: see "Loops in sections" in
            # design.md.
            while True:
                if not meters or forgotten >= _SWEEP:
                    break
                oldest, meter = next(iter(meters.items()))
                if oldest == key:
                    break
                if not meter.retire_if_idle():
                    meters.move_to_end(oldest)  # busy: its turn comes again after the rest
                    break
                del meters[oldest]
                forgotten += 1
            found = meters.get(key)
            if found is not None:
                return found
            fresh = self._make(key)
            meters[key] = fresh
            return fresh
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock

    def __repr__(self) -> str:
        return (
            f"<allotment.KeyedRateLimiter {self._name!r}: {self.rate:g} per {self.per:g} s "
            f"per key, burst {self._burst}, keys={len(self._meters)}>"
        )


def _local_meter(settings: GcraSettings, clock: Clock, key: Hashable) -> RateMeter:
    return settings.meter(clock)


def _shared_meter(
    backend: Backend,
    name: str,
    settings: GcraSettings,
    policy: OnUnavailable | None,
    key: Hashable,
) -> RateMeter:
    if type(key) is str:
        encoded = f"s:{key}"
    elif type(key) is int:
        encoded = f"i:{key}"
    elif type(key) is bytes:
        encoded = f"b:{key.hex()}"
    else:
        raise InvalidKey(
            f"a key of a limiter with a backend must be a str, an int or bytes, not "
            f"{type(key).__name__}"
        )
    interval = fractions.Fraction(settings.interval, settings.scale)
    return backend.gcra_meter(name, interval, settings.burst, encoded, policy)


def _check_key(key: object) -> None:
    try:
        hash(key)
    except TypeError:
        raise InvalidKey(f"a key must be hashable, not {type(key).__name__}") from None


def acquire_key_ticket(
    limiter: KeyedRateLimiter, key: Hashable, cost: int, timeout: float | None
) -> tuple[RateMeter, RateTicket]:
    """:meth:`KeyedRateLimiter.acquire`, keeping the grant's meter and ticket so that it can
    be refunded (``refund``) if the work it paid for never starts."""
    cost = validate_cost(cost, limiter.burst)
    _check_key(key)
    while True:
        meter = limiter._meter_for(key)
        try:
            return meter, acquire_ticket(limiter._parts(meter), meter, cost, timeout)
        except MeterRetired:
            continue  # forgotten between the lookup and the call: look it up again


async def acquire_key_ticket_async(
    limiter: KeyedRateLimiter, key: Hashable, cost: int, timeout: float | None
) -> tuple[RateMeter, RateTicket]:
    """:func:`acquire_key_ticket` for an asyncio task."""
    cost = validate_cost(cost, limiter.burst)
    _check_key(key)
    while True:
        meter = limiter._meter_for(key)
        try:
            parts = limiter._parts(meter)
            return meter, await run_in_task(rate_ticket(parts, meter, cost, timeout, TASK))
        except MeterRetired:
            continue


def pause_key(limiter: KeyedRateLimiter, key: Hashable, seconds: float) -> None:
    """Allow nothing for ``key`` for ``seconds`` from now (a server said to wait; see
    ``Meter.pause_until``). A paused key is not idle, so it is not forgotten meanwhile."""
    while True:
        meter = limiter._meter_for(key)
        try:
            meter.pause_until(ticks_of(limiter._clock.now() + seconds, meter.scale))
        except MeterRetired:
            continue  # forgotten just now: look the key up again
        return
