"""RedisMeter: a rate limiter's state in Redis, behind the same meter interface as memory.

One round trip per decision: the script reads the server's clock, decides, and records. A
request that must wait is *reserved*: the script records it at the time it will be allowed
(for GCRA, the theoretical arrival time moves on; for a window, an entry is logged at that
future time) and answers how long to wait, which the caller sleeps here on its own clock: a
duration, so a client clock that is minutes off changes nothing. Reservations are served in
the order the server records them: FIFO across every process.

Nothing is spent on failure: a waiter interrupted (a timeout cannot happen: a reservation is
made only if it falls within the deadline) undoes its reservation, exactly when nothing was
recorded after it on that limit; otherwise it stays spent, which can only make the limit
stricter, never looser. Ticks are this process's clock in nanoseconds (``scale`` 1).

``_lock`` guards the local queue (tickets sleeping until their reserved time) and the
counters; it is never held across a round trip. It is a section lock (``_core``): on 3.14 an
exception landing right after ``with`` takes it gives it back; a finalizer or signal handler
that would enter it again on the thread inside it gets ``ReentrantCall`` (never a deadlock,
never a section entered twice).

On a thread that runs an event loop, the round trips whose callers need no answer (a
charge, a pause, giving back a grant) run as tasks on the loop's own client: the loop never
blocks on them.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

import attrs

from .._backend import OnUnavailable
from .._core import (
    FINISHED,
    GRANTED,
    PENDING,
    Entry,
    MeterSnapshot,
    RateTicket,
    SectionLock,
    Waiter,
    WaitingView,
    new_section_lock,
    task_of,
)
from .._errors import BackendConflict, BackendUnavailable, ReentrantCall
from . import _scripts
from ._backend import RedisBackend, as_call

__all__ = ["RedisMeter", "RuleLimits"]

logger = logging.getLogger("allotment.redis")


@attrs.frozen
class RuleLimits:
    """What the faces read of a meter's rule: the largest cost it can allow."""

    largest: int


@attrs.define(eq=False)
class RedisMeter:
    """One rate limit (or one key of a keyed limit) kept in Redis."""

    _backend: RedisBackend
    _script: Any
    _keys: tuple[str, ...]
    _settings: tuple[object, ...]
    """The script's settings arguments; the first is the string other declarations must
    match."""
    rule: RuleLimits
    _policy: OnUnavailable
    _now_ns: Callable[[], int]
    _now: Callable[[], float]
    name: str
    scale: int = 1
    queue: collections.OrderedDict[RateTicket, None] = attrs.field(
        init=False, factory=collections.OrderedDict
    )
    allowed: int = attrs.field(init=False, default=0)
    allowed_units: int = attrs.field(init=False, default=0)
    refused: int = attrs.field(init=False, default=0)
    waited: int = attrs.field(init=False, default=0)
    charged: int = attrs.field(init=False, default=0)
    _lock: SectionLock = attrs.field(init=False, factory=new_section_lock)
    describe: Callable[[str], str] = attrs.field(init=False, default=str)
    """The settings' string in the user's terms (``50 per 1 s``), for messages."""
    forecasting: str = attrs.field(init=False, default="acquire_all")
    """The user's call that asks this meter for a forecast, for messages (a key of a keyed
    limiter is asked by ``retry_after``)."""

    @property
    def backend(self) -> RedisBackend:
        return self._backend

    def __attrs_post_init__(self) -> None:
        _live_meters.add(self)

    def _after_fork_in_child(self) -> None:
        """In a forked child: a fresh lock, and no local waiters of threads that did not
        come. Their reservations stay recorded on the server (spent, never looser)."""
        self._lock = new_section_lock()
        me = threading.current_thread()
        for ticket in list(self.queue):
            if ticket.thread is not me:
                ticket.state = FINISHED
                del self.queue[ticket]

    def declare(self) -> None:
        """Check this process's settings against those stored under the name (stored while
        the limit holds state; an idle limit has none, and a conflict shows at first use)."""
        self._call("declare")

    def _call(self, operation: str, *args: object) -> Any:
        self._section()  # re-entered on this thread: refused before anything is spent
        backend = self._backend
        try:
            return backend.run_script(
                self._script, self._keys, (operation, *self._settings, *args), self.name
            )  # fmt: skip
        except BackendConflict as conflict:
            # Settings vanish with an idle limit's state: a conflict may show only now.
            raise BackendConflict(
                f"{self.name!r} exists in Redis as {self.describe(str(conflict))}; this "
                f"process declared {self.describe(str(self._settings[0]))}. Declare the same "
                "limit, or use another name"
            ) from None

    async def _call_async(self, operation: str, *args: object) -> Any:
        """:meth:`_call` for a task, on its loop's own client: the loop never blocks."""
        self._section()
        backend = self._backend
        try:
            return await backend.run_script_async(
                self._script_name(), self._keys, (operation, *self._settings, *args), self.name
            )
        except BackendConflict as conflict:
            raise BackendConflict(
                f"{self.name!r} exists in Redis as {self.describe(str(conflict))}; this "
                f"process declared {self.describe(str(self._settings[0]))}. Declare the same "
                "limit, or use another name"
            ) from None

    def _section(self) -> SectionLock:
        """The local queue's and counters' lock; ``ReentrantCall`` on a thread already
        inside it (a signal handler or finalizer that interrupted it)."""
        lock = self._lock
        if lock._is_owned():
            raise ReentrantCall(
                f"cannot use the limiter {self.name!r} from inside its own bookkeeping on "
                "this thread (a finalizer or signal handler ran there)"
            )
        return lock

    def _script_name(self) -> str:
        return "gcra" if self._script is self._backend.gcra_script else "window"

    def _count(self, cost: int) -> None:
        lock = self._section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            self.allowed += 1
            self.allowed_units += cost
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock

    # -- decisions ---------------------------------------------------------------------------

    def take_now(self, cost: int, count_refusal: bool) -> bool | None:
        """Spend ``cost`` if it is allowed now (one round trip); never queues."""
        try:
            code, _, _, _ = self._take(cost, 0)
        except BackendUnavailable:
            return self._take_now_unavailable(count_refusal)
        return self._taken_now(code, cost, count_refusal)

    async def take_now_async(self, cost: int, count_refusal: bool) -> bool | None:
        """:meth:`take_now` for a task: the round trip on its loop's own client."""
        try:
            code, _, _, _ = _decision(await self._call_async("take", cost, 0))
        except BackendUnavailable:
            return self._take_now_unavailable(count_refusal)
        return self._taken_now(code, cost, count_refusal)

    def _take_now_unavailable(self, count_refusal: bool) -> bool:
        """Called while handling ``BackendUnavailable``: what the policy answers, or the
        error again. "deny" refuses a try_acquire; a call that may wait (count_refusal is
        False there) raises now rather than after a second round trip in enter()."""
        if self._policy == "allow":
            return True
        if self._policy == "deny" and count_refusal:
            lock = self._section()
            try:  # see "Releasing" in ``_core._section_lock``
                lock.acquire()
                self.refused += 1
            finally:
                try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                    lock.release()
                except RuntimeError:
                    pass  # not taken: the exception came while waiting for the lock
            return False
        raise  # noqa: PLE0704 - the BackendUnavailable being handled by the caller

    def _taken_now(self, code: int, cost: int, count_refusal: bool) -> bool:
        if code == 1:
            self._count(cost)
            return True
        if count_refusal:
            lock = self._section()
            try:  # see "Releasing" in ``_core._section_lock``
                lock.acquire()
                self.refused += 1
            finally:
                try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                    lock.release()
                except RuntimeError:
                    pass  # not taken: the exception came while waiting for the lock
        return False

    def _take(self, cost: int, longest: int) -> tuple[int, int, object, object]:
        return _decision(self._call("take", cost, longest))

    async def enter_async(
        self, ticket: RateTicket, sleeper: Callable[[], Waiter] | None, wait: bool, deadline: int
    ) -> Entry:
        """:meth:`enter` for a task: the round trip on its loop's own client."""
        try:
            decision = _decision(
                await self._call_async("take", ticket.cost, self._longest(wait, deadline))
            )
        except BackendUnavailable:
            if self._policy != "allow":
                raise
            ticket.state = GRANTED
            return "granted"
        return self._entered(ticket, sleeper, decision)

    def _longest(self, wait: bool, deadline: int) -> int:
        """The longest wait (us) the script may reserve: 0 for a try, -1 for any."""
        if not wait:
            return 0
        return -1 if deadline < 0 else max(0, (deadline - self._now_ns()) // 1000)

    def enter(
        self, ticket: RateTicket, sleeper: Callable[[], Waiter] | None, wait: bool, deadline: int
    ) -> Entry:
        """Grant ``ticket`` now; or reserve its place and queue it locally until its time
        (``"queued"``, ``ticket.due`` on this process's clock); or refuse it, spending
        nothing. With ``on_unavailable="allow"`` an unreachable server grants; otherwise it
        raises :class:`BackendUnavailable` (a wait cannot be promised without the server)."""
        try:
            decision = self._take(ticket.cost, self._longest(wait, deadline))
        except BackendUnavailable:
            if self._policy != "allow":
                raise
            ticket.state = GRANTED
            return "granted"
        return self._entered(ticket, sleeper, decision)

    def _entered(
        self,
        ticket: RateTicket,
        sleeper: Callable[[], Waiter] | None,
        decision: tuple[int, int, object, object],
    ) -> Entry:
        """The script's decision on ``ticket``: granted, reserved (queued here until its
        time) or refused."""
        code, wait_us, first, second = decision
        ticket.token = (first, second)
        if code == 1:
            ticket.state = GRANTED
            self._count(ticket.cost)
            return "granted"
        # Measured from when the answer arrived: later than the server meant, never earlier.
        due = self._now_ns() + wait_us * 1000
        ticket.due = due
        if code == -1:
            lock = self._section()
            try:  # see "Releasing" in ``_core._section_lock``
                lock.acquire()
                self.refused += 1
            finally:
                try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                    lock.release()
                except RuntimeError:
                    pass  # not taken: the exception came while waiting for the lock
            return "refused"
        made = None if sleeper is None else sleeper()
        ticket.sleeper = made
        if made is None:
            ticket.promised = due
        lock = self._section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            self.queue[ticket] = None
            self.waited += 1
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        return "queued"

    def group_try(self, cost: int) -> tuple[str, tuple[str, ...], tuple[object, ...]]:
        """For the group script (``_group.py``): this limit's kind (``g`` or ``w``), keys,
        and the arguments of a take that never waits."""
        self._section()  # re-entered on this thread: refused before anything is spent
        kind = "g" if self._script is self._backend.gcra_script else "w"
        return kind, self._keys, ("take", *self._settings, cost, 0)

    def group_granted(self, ticket: RateTicket, reply: Any) -> None:
        """The group script's grant of ``ticket`` (its take's reply): granted and counted,
        with the token that undoes it exactly (a refund)."""
        self._entered(ticket, None, _decision(reply))

    @property
    def allows_unreachable(self) -> bool:
        """``on_unavailable="allow"``: an unreachable server grants (for ``_group.py``)."""
        return self._policy == "allow"

    def group_unreachable(self, ticket: RateTicket) -> None:
        """The group script did not answer and this limiter allows: granted, recorded
        nowhere (as :meth:`enter` does)."""
        ticket.state = GRANTED

    def forecast(self, cost: int) -> int:
        """When ``cost`` would be allowed if it were reserved now (now, for a limiter that
        allows everything while the server is unreachable)."""
        try:
            wait_us, _ = self._call("peek", cost)
        except BackendUnavailable as error:
            if self._policy == "allow":
                return self._now_ns()
            raise as_call(error, "peek", self.forecasting, self.name) from error.__cause__
        return self._now_ns() + int(wait_us) * 1000

    async def forecast_async(self, cost: int) -> int:
        """:meth:`forecast` for a task: the round trip on its loop's own client."""
        try:
            wait_us, _ = await self._call_async("peek", cost)
        except BackendUnavailable as error:
            if self._policy == "allow":
                return self._now_ns()
            raise as_call(error, "peek", self.forecasting, self.name) from error.__cause__
        return self._now_ns() + int(wait_us) * 1000

    def count_refusal(self) -> None:
        lock = self._section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            self.refused += 1
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock

    def poll(self, ticket: RateTicket, sleeper: Callable[[], Waiter]) -> int | None:
        """The sleeper woke: granted once its reserved time has come, else sleep again."""
        if ticket.state is GRANTED:
            return None
        if ticket.state is not PENDING:
            raise ValueError("this ticket is no longer queued")
        if self._now_ns() >= ticket.due:
            self._grant(ticket)
            return None
        ticket.sleeper = sleeper()
        return ticket.due

    def _grant(self, ticket: RateTicket) -> None:
        lock = self._section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            if ticket.state is not PENDING:
                return
            self.queue.pop(ticket, None)
            ticket.state = GRANTED
            self.allowed += 1
            self.allowed_units += ticket.cost
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock

    def withdraw(self, ticket: RateTicket) -> bool:
        """The deadline passed: keep the grant if its time has come, else give it back."""
        if ticket.state is PENDING and self._now_ns() >= ticket.due:
            self._grant(ticket)
        if ticket.state is GRANTED:
            return True
        self.release(ticket)
        return False

    def release(self, ticket: RateTicket) -> bool:
        """Interrupted: undo the reservation or grant, exactly if nothing was recorded after
        it. ``True`` if this gave something back."""
        lock = self._section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            state = ticket.state
            if state is not PENDING and state is not GRANTED:
                return False
            ticket.state = FINISHED
            self.queue.pop(ticket, None)
            if state is GRANTED:
                self.allowed -= 1
                self.allowed_units -= ticket.cost
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        return self._undo(ticket)

    def _undo(self, ticket: RateTicket) -> bool:
        """Undo on the server. On a thread that runs an event loop (a task interrupted or
        timed out), the round trip runs on the loop instead, without blocking it: ``False``
        then, as its outcome is not known yet."""
        token = ticket.token
        if not isinstance(token, tuple) or token[0] is None:
            return False  # granted while the server was unreachable: nothing recorded
        if _running_loop() is not None:
            self._backend.on_loop(
                self._undo_async(token),
                functools.partial(self._undo_token, token),
                f"giving back a grant on {self.name!r}",
            )
            return False
        return self._undo_token(token)

    def _undo_token(self, token: tuple[object, ...]) -> bool:
        try:
            return bool(self._call("undo", *(part for part in token if part is not None)))
        except BackendUnavailable as error:
            logger.warning("could not give back a grant on %r: %s", self.name, error)
            return False

    async def _undo_async(self, token: tuple[object, ...]) -> None:
        try:
            await self._call_async("undo", *(part for part in token if part is not None))
        except BackendUnavailable as error:
            logger.warning("could not give back a grant on %r: %s", self.name, error)

    def cancel(self, ticket: RateTicket) -> bool:
        """A reservation given back before its time: ``True`` if refunded exactly."""
        if ticket.state is not PENDING or ticket.promised <= self._now_ns():
            return False
        lock = self._section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            if ticket.state is not PENDING:
                return False
            ticket.state = FINISHED
            self.queue.pop(ticket, None)
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        return self._undo(ticket)

    def charge(self, cost: int) -> None:
        """Spend ``cost`` now, allowed or not. On a thread that runs an event loop, the
        round trip runs on the loop (an unreachable server is logged there)."""
        if _running_loop() is not None:
            self._backend.on_loop(
                self.charge_async(cost),
                functools.partial(self._charge, cost),
                f"a charge on {self.name!r}",
            )
            return
        self._charge(cost)

    def _charge(self, cost: int) -> None:
        try:
            self._call("charge", cost)
        except BackendUnavailable:
            self._charge_dropped(cost)
            return
        self._charged(cost)

    async def charge_async(self, cost: int) -> None:
        """:meth:`charge` for a task: the round trip on its loop's own client."""
        try:
            await self._call_async("charge", cost)
        except BackendUnavailable:
            self._charge_dropped(cost)
            return
        self._charged(cost)

    def _charge_dropped(self, cost: int) -> None:
        """Called while handling ``BackendUnavailable``."""
        if self._policy == "raise":
            raise  # noqa: PLE0704 - the BackendUnavailable being handled by the caller
        logger.warning(
            "a charge of %d on %r was dropped: the server is unreachable", cost, self.name
        )

    def _charged(self, cost: int) -> None:
        lock = self._section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            self.charged += cost
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock

    def retire_if_idle(self) -> bool:
        """Nothing is kept here that the server does not keep: forgettable when no local
        caller waits."""
        return not self.queue

    def pause_until(self, until: int) -> None:
        """Nothing allowed before ``until`` (this process's clock), in every process: the
        limit's state moves forward in Redis, by the pause measured from now (a duration, as
        every wait here). Local waiters move back to it too, keeping their order; waiters of
        other processes keep the times the server already gave them."""
        delay_us = -(-(until - self._now_ns()) // 1000)
        if delay_us <= 0:
            return
        backend = self._backend
        if _running_loop() is not None:  # the loop never blocks: the pause runs on it
            backend.on_loop(
                self._pause_async(delay_us),
                functools.partial(self._pause, delay_us),
                f"a pause of {self.name!r}",
            )
        else:
            self._pause(delay_us)
        lock = self._section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            for ticket in self.queue:
                ticket.due = max(ticket.due, until)
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock

    def _pause(self, delay_us: int) -> None:
        backend = self._backend
        script = backend.client.register_script(_scripts.PAUSE)
        try:
            backend.run_script(script, self._keys, (*self._settings, delay_us), self.name)
        except BackendUnavailable as error:
            # The pause script's first argument is the settings: name the user's call.
            raise as_call(error, str(self._settings[0]), "pause", self.name) from error.__cause__

    async def _pause_async(self, delay_us: int) -> None:
        try:
            await self._backend.run_script_async(
                "pause", self._keys, (*self._settings, delay_us), self.name
            )
        except BackendUnavailable as error:
            raise as_call(error, str(self._settings[0]), "pause", self.name) from error.__cause__

    def snapshot(self) -> MeterSnapshot:
        now = self._now_ns()
        wait_us, free = self._call("peek", 1)
        lock = self._section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            queued = tuple(self.queue)
            waiting = tuple(
                WaitingView(t.cost, t.thread, t.since, t.due, t.sleeper is None, task_of(t))
                for t in queued
            )
            figures = (self.allowed, self.allowed_units, self.refused, self.waited, self.charged)
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        return MeterSnapshot(
            now=now,
            available=int(free),
            next_free=now + int(wait_us) * 1000,
            waiting=waiting,
            allowed=figures[0],
            allowed_units=figures[1],
            refused=figures[2],
            waited=figures[3],
            charged=figures[4],
            taken_at=self._now(),
        )


def _decision(reply: Any) -> tuple[int, int, object, object]:
    """A ``take`` reply: code, wait (us), and the token to undo it."""
    if len(reply) == 3:  # a window: code, wait, member
        return int(reply[0]), int(reply[1]), reply[2], None
    return int(reply[0]), int(reply[1]), reply[2], reply[3]


_running_loop = asyncio._get_running_loop  # the C accessor: no exception when there is none


def window_keys(prefix: str, name: str) -> tuple[str, str]:
    base = f"{prefix}:{{{name}}}"
    return (f"{base}:wcfg", f"{base}:wlog")


def gcra_key(prefix: str, name: str, key: str | None = None) -> tuple[str]:
    base = f"{prefix}:{{{name}}}"
    return (f"{base}:gcra",) if key is None else (f"{base}:k:{key}",)


_live_meters: weakref.WeakSet[RedisMeter] = weakref.WeakSet()


def _reinitialise_after_fork() -> None:
    for meter in list(_live_meters):
        meter._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinitialise_after_fork)
