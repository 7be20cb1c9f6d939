"""The in-memory meter: the queue and the grants of one rate limiter.

A meter is to a rate limiter what :class:`~allotment._core.MemoryPool` is to a manager, with
the same rules and the same tickets and waiters; only what makes a grant possible differs.
Units given to a pool come back when released, so a release runs the grant pass. Units of a
rate come back with *time*, so nobody releases: the grant pass runs when a waiter's tick
arrives.

- **Strict FIFO.** A request is allowed on arrival only when nobody is queued and the rule
  admits it now. Otherwise it queues, and only the head is ever granted: a large cost is
  never overtaken by small ones, and ``try_acquire`` never barges.
- **A schedule, not polling.** The queue is *planned*: each ticket gets the tick at which it
  will be allowed (``ticket.due``) if each one before it is allowed at its own tick. A waiter
  sleeps until its tick and is woken early only if its tick moved earlier (someone ahead
  left). A waiter is granted when its tick has come *and* someone notices (its own thread
  waking, or any other call), and it is recorded at that moment, which is when its call
  returns: the bound holds for the times calls return, not only for the plan. A thread that
  wakes late thus moves those behind it back by its lateness (at ``burst=1``; a larger burst
  absorbs it).
- **Reservations keep their tick.** A reservation (a ticket nobody sleeps on) was promised
  its tick and will be used then, so re-planning never moves it, earlier or later; the same
  holds for a charge made while others are queued, which is spent at the tail of the line.
  (A waiter ahead of a reservation that is allowed late may thus come less than one interval
  before the reservation's tick, by at most its lateness: documented, and rare.)
- **Time-driven hand-off.** Every section first grants, in order and under the lock, each
  head whose tick has come; the granted ones own their grant before they are woken, after
  the lock is released.
- **Spend nothing on failure.** A ticket leaving the queue (timeout, exception, a cancelled
  reservation) is taken off and the queue re-planned, so waiters behind move up as if it had
  never asked. A grant that reached a ticket as an exception did is taken back exactly when
  nothing was granted after it (:meth:`RateRule.undo`); otherwise it stays spent, which can
  only make the limiter stricter.

Exceptions and re-entry follow ``_pool.py``: every section takes an ``RLock`` in the shape of
"Releasing" in ``_section_lock`` (no ``with``, whose exit 3.10 can skip); a call from inside a
section on the same thread (a signal handler, a finalizer) raises
:class:`~allotment.ReentrantCall`; wake-ups are collected under the lock and made after it,
idempotently, retried once if an exception cuts them short.

The two sections of every uncontended call, :meth:`Meter.take_now` and
:meth:`Meter.take_undoable`, take the lock by explicit calls instead (``with`` costs twice
as much): ``lock.acquire()`` is the first call inside a ``try`` whose ``finally`` releases
first thing, inside a ``try`` of its own. ``_is_owned`` is tested first, so this frame is the
only one on its thread that can hold the lock. An exception can land only once a call returns
(or a Python callee starts): after ``acquire``, inside the ``try``; after ``release``, with
nothing held, as after ``with``'s ``__exit__``. The release is its own test of ownership (no
check point between a test and the release): a ``RuntimeError`` from it means the exception
came while this thread waited for the lock, not holding it. (3.14's ``GuardedRLock`` guards
``__enter__`` only: explicit calls need no guard.)
"""

from __future__ import annotations

import collections
import functools
import os
import threading
import weakref
from collections.abc import Callable, Sized
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import attrs

from .._errors import ReentrantCall
from ._pool import SectionLock, new_section_lock
from ._rate import Gcra, PlanEntry, RateRule
from ._tickets import FINISHED, GRANTED, PENDING, Ticket, Waiter, task_of

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "Entry",
    "Meter",
    "MeterRetired",
    "MeterSnapshot",
    "RateMeter",
    "RateTicket",
    "Spent",
    "WaitingView",
]

Entry = Literal["granted", "queued", "refused"]
Spent = list[int]
"""What :meth:`Meter.take_undoable` spent: ``[cost, rule state before, rule state after]``;
the cost is ``0`` until the grant and once it is given back."""
_R = TypeVar("_R")


class MeterRetired(Exception):
    """Internal: a keyed limiter forgot this meter; look the key up again."""


@attrs.define(eq=False)
class RateTicket(Ticket):
    """A ticket for a rate: ``units`` is the cost (a positive int).

    ``due`` (the planned tick), ``sleeper`` and ``token`` are guarded by the meter's lock.
    ``sleeper`` is the waiter of a blocked thread; ``None`` for a reservation or a charge,
    whose tick is fixed once planned. ``token`` undoes the grant (set once GRANTED).
    """

    charge: bool = False
    """A debt queued at the tail by ``charge``: not a request, never counted as allowed."""
    due: int = attrs.field(init=False, default=-1)
    promised: int = attrs.field(init=False, default=-1)
    """A reservation's or a queued charge's tick, fixed when it queued (``-1``: none)."""
    sleeper: Waiter | None = attrs.field(init=False, default=None)
    token: object = attrs.field(init=False, default=None)

    @property
    def cost(self) -> int:
        """``units``, typed as what a rate ticket holds: a positive int."""
        return self.units  # type: ignore[return-value]


@attrs.frozen
class WaitingView:
    """One queued ticket, copied under the lock."""

    units: int
    thread: threading.Thread
    since: float
    due: int
    reservation: bool
    task: asyncio.Task[Any] | None = None


@attrs.frozen
class MeterSnapshot:
    """A meter's figures, copied in one section. Ticks are on the meter's scale."""

    now: int
    available: int
    next_free: int
    """The tick at which one more unit, queued behind everyone, would be allowed."""
    waiting: tuple[WaitingView, ...]
    allowed: int
    allowed_units: int
    refused: int
    waited: int
    charged: int
    taken_at: float


class _Largest(Protocol):
    @property
    def largest(self) -> int: ...


class RateMeter(Protocol):
    """The state of one rate limit, wherever it lives: :class:`Meter` in this process, or a
    meter in Redis. The faces (the limiters, ``acquire_all``, guards) use this and nothing
    else. Ticks are on the meter's ``scale`` (ticks per nanosecond of the limiter's clock)."""

    @property
    def scale(self) -> int: ...

    @property
    def queue(self) -> Sized: ...

    @property
    def rule(self) -> _Largest: ...

    def take_now(self, cost: int, count_refusal: bool) -> bool | None: ...

    def enter(
        self, ticket: RateTicket, sleeper: Callable[[], Waiter] | None, wait: bool, deadline: int
    ) -> Entry: ...

    def forecast(self, cost: int) -> int: ...

    def count_refusal(self) -> None: ...

    def poll(self, ticket: RateTicket, sleeper: Callable[[], Waiter]) -> int | None: ...

    def withdraw(self, ticket: RateTicket) -> bool: ...

    def release(self, ticket: RateTicket) -> bool: ...

    def cancel(self, ticket: RateTicket) -> bool: ...

    def charge(self, cost: int) -> None: ...

    def retire_if_idle(self) -> bool: ...

    def snapshot(self) -> MeterSnapshot: ...

    def pause_until(self, until: int) -> None: ...


@attrs.define(eq=False)
class Meter:
    """The state of one rate limiter in this process.

    ``_lock`` guards everything below it. Between sections:

    - every ticket in ``queue`` is PENDING, in arrival order, with ``due`` as planned from
      the rule's state at ``last`` (the largest tick seen; ticks never go back); a promised
      ticket (reservation, queued charge) is planned no earlier than its promise;
    - dues never decrease along the queue, and a head whose ``due <= last`` is granted by the
      next section before anything else;
    - a queued ticket's sleeper has been woken, or is being woken by the thread that made
      the change, if its ticket was granted or its ``due`` moved earlier;
    - ``retired`` only ever goes from ``False`` to ``True``, with an empty queue.
    """

    rule: RateRule
    scale: int
    """Ticks per nanosecond."""
    _now: Callable[[], float]
    """The clock's ``now`` (seconds), for what statistics show."""
    _now_ns: Callable[[], int]
    """The clock in whole nanoseconds: what decisions are made on."""
    last: int
    queue: collections.OrderedDict[RateTicket, None] = attrs.field(
        init=False, factory=collections.OrderedDict
    )
    retired: bool = attrs.field(init=False, default=False)
    allowed: int = attrs.field(init=False, default=0)
    allowed_units: int = attrs.field(init=False, default=0)
    refused: int = attrs.field(init=False, default=0)
    waited: int = attrs.field(init=False, default=0)
    charged: int = attrs.field(init=False, default=0)
    _lock: SectionLock = attrs.field(init=False, factory=new_section_lock)

    _gcra: Gcra | None = attrs.field(init=False, default=None)
    """The rule, if it is a GCRA: its arithmetic is written out on the fast path."""

    def __attrs_post_init__(self) -> None:
        if type(self.rule) is Gcra:
            self._gcra = self.rule
        _live_meters.add(self)

    # -- sections ------------------------------------------------------------------------------

    def take_now(self, cost: int, count_refusal: bool) -> bool | None:
        """Spend ``cost`` now if nobody is queued and the rule admits it: the path of every
        call allowed at once, with no ticket (nothing to queue, wake or undo). ``False`` if
        the rule refuses (counted as a refusal if ``count_refusal``); ``None``, having
        changed nothing, if anyone is queued: then :meth:`enter` decides, after granting
        those whose time has come."""
        lock = self._lock
        if lock._is_owned():
            raise _reentrant()
        # Explicit calls, not ``with lock`` (twice the cost): see the module's docstring.
        try:
            lock.acquire()
            if self.queue or self.retired:
                if self.retired:
                    raise MeterRetired
                answer = None
            else:
                # _tick and, for GCRA, the rule's take, written out: this is every
                # uncontended call's path, and a call costs a sixth of it.
                now = self._now_ns()
                scale = self.scale
                if scale != 1:  # most limiters count in whole nanoseconds: no product
                    now *= scale
                if now < self.last:  # noqa: PLR1730 - max() is a call
                    now = self.last
                self.last = now
                gcra = self._gcra
                if gcra is not None:
                    tat = gcra.tat
                    spent = cost * gcra.interval
                    # Gcra.take's test, now >= tat + spent - tolerance, rearranged: the two
                    # large readings meet in one difference (usually small), not two sums
                    answer = tat - now <= gcra.tolerance - spent
                    if answer:
                        gcra.tat = (tat if tat > now else now) + spent
                        self.allowed += 1
                        self.allowed_units += cost
                    elif count_refusal:
                        self.refused += 1
                elif self.rule.take(now, cost):
                    answer = True
                    self.allowed += 1
                    self.allowed_units += cost
                else:
                    answer = False
                    if count_refusal:
                        self.refused += 1
            return answer
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock

    def take_undoable(self, spent: Spent, cost: int, count_refusal: bool) -> bool | None:
        """:meth:`take_now` for a part of a group, which may have to give the rate back: on a
        grant (``True``) ``spent`` is filled in, in the same step as the rule's state moves,
        so that :meth:`give_back` undoes exactly this grant. ``None``, having changed
        nothing, if anyone is queued or the rule is not a GCRA (then :meth:`enter` decides,
        with a ticket); ``False`` if the rule refuses (counted if ``count_refusal``)."""
        lock = self._lock
        if lock._is_owned():
            raise _reentrant()
        try:  # take_now's shape: see the module's docstring
            lock.acquire()
            gcra = self._gcra
            if self.queue or self.retired or gcra is None:
                if self.retired:
                    raise MeterRetired
                answer = None
            else:
                # take_now's step, written out again (a call would cost every group)
                now = self._now_ns()
                scale = self.scale
                if scale != 1:
                    now *= scale
                if now < self.last:  # noqa: PLR1730 - max() is a call
                    now = self.last
                self.last = now
                tat = gcra.tat
                charged = cost * gcra.interval
                answer = tat - now <= gcra.tolerance - charged
                if answer:
                    after = (tat if tat > now else now) + charged
                    # One straight run of stores, no call and no jump: nothing can land
                    # between the rule's move and the record that undoes it.
                    spent[1] = tat
                    spent[2] = after
                    gcra.tat = after
                    spent[0] = cost
                    self.allowed += 1
                    self.allowed_units += cost
                elif count_refusal:
                    self.refused += 1
            return answer
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock

    def give_back(self, spent: Spent) -> bool:
        """Undo what :meth:`take_undoable` recorded in ``spent``: exactly, if nothing was
        recorded on the rule after it (``True``); otherwise it stays spent, which can only
        make the limiter stricter. Idempotent (``spent`` is marked given back), and a
        ``spent`` never filled in gives nothing back."""
        if not spent[0]:
            # Never filled in, or given back: nothing to take the lock for. ``spent[0]`` is
            # set to the cost once, by the thread that takes it, before anyone else can see
            # ``spent``, and back to 0 once: a 0 read without the lock is final. A group
            # interrupted while it waited for the lock thus does not wait for it again.
            return False
        return self._section(functools.partial(self._give_back_locked, spent))

    def _give_back_locked(self, spent: Spent, woken: list[Waiter]) -> bool:
        cost, before, after = spent
        gcra = self._gcra
        if cost and gcra is not None and gcra.tat == after:
            # Straight stores again: an exception lands before them (repeated in full) or
            # after them (done, and marked done).
            spent[0] = 0
            gcra.tat = before
            self.allowed -= 1
            self.allowed_units -= cost
            if self.queue:  # those queued behind move up, as if it had never been taken
                self._replan(self._tick(), woken)
            return True
        spent[0] = 0
        return False

    def enter(
        self, ticket: RateTicket, sleeper: Callable[[], Waiter] | None, wait: bool, deadline: int
    ) -> Entry:
        """Grant ``ticket`` now (``"granted"``); or, if ``wait``, queue it at its planned tick
        (``"queued"``, with ``ticket.due`` set and a sleeper made by ``sleeper``; a ticket
        without one is a reservation); else refuse it (``"refused"``). A ticket whose
        planned tick is after ``deadline`` (``-1``: no deadline) is refused too, with
        ``ticket.due`` set. A refused ticket spends nothing."""

        def enter_locked(woken: list[Waiter]) -> Entry:
            if self.retired:
                raise MeterRetired
            now = self._tick()
            self._advance(now, woken)
            cost = ticket.cost
            rule = self.rule
            if not self.queue and rule.admits(now, cost):
                ticket.token = rule.record(now, cost)
                ticket.state = GRANTED
                self.allowed += 1
                self.allowed_units += cost
                return "granted"
            if not wait:
                self.refused += 1
                return "refused"
            due = self._plan_after(now, cost)
            made = None if sleeper is None else sleeper()
            if deadline >= 0 and due > deadline:
                ticket.due = due
                self.refused += 1
                return "refused"
            ticket.sleeper = made
            ticket.due = due
            if made is None:
                ticket.promised = due  # a reservation: its holder acts then
            self.queue[ticket] = None
            self.waited += 1
            return "queued"

        return self._section(enter_locked)

    def forecast(self, cost: int) -> int:
        """The tick at which ``cost`` would be allowed if it queued now (or now, if it
        would be granted at once). Changes nothing a caller can see."""

        def forecast_locked(woken: list[Waiter]) -> int:
            now = self._tick()
            self._advance(now, woken)
            if not self.queue and self.rule.admits(now, cost):
                return now
            return self._plan_after(now, cost)

        return self._section(forecast_locked)

    def count_refusal(self) -> None:
        """A request refused outside the meter (a group's forecast) counts as refused."""
        self._section(self._count_refusal_locked)

    def _count_refusal_locked(self, woken: list[Waiter]) -> None:
        self.refused += 1

    def poll(self, ticket: RateTicket, sleeper: Callable[[], Waiter]) -> int | None:
        """A queued ticket's owner woke: grant every head whose tick has come. Returns
        ``None`` if ``ticket`` is granted; otherwise its planned tick, with a fresh sleeper
        (made by ``sleeper``) to sleep on until then. Raises ``ValueError`` for a ticket that
        is neither queued nor granted."""

        def poll_locked(woken: list[Waiter]) -> int | None:
            if ticket.state is GRANTED:
                return None
            if ticket.state is not PENDING:
                raise ValueError("this ticket is no longer queued")
            made = sleeper()
            self._advance(self._tick(), woken)
            if ticket.state is GRANTED:
                return None
            ticket.sleeper = made
            return ticket.due

        return self._section(poll_locked)

    def withdraw(self, ticket: RateTicket) -> bool:
        """The owner of a queued ticket gives up (its deadline passed): leave the queue as if
        it had never asked, unless a grant already reached it, which it keeps (``True``)."""
        return self._section(lambda woken: self._leave(ticket, woken, keep=True))

    def release(self, ticket: RateTicket) -> bool:
        """An exception interrupted the owner: withdraw a queued ticket, or take back a grant
        that reached it, exactly if nothing was granted after it. Idempotent. Returns
        ``True`` if this call gave something back (a place in line, or a grant)."""

        def release_locked(woken: list[Waiter]) -> bool:
            if ticket.state is not PENDING and ticket.state is not GRANTED:
                return False
            return not self._leave(ticket, woken, keep=False)

        return self._section(release_locked)

    def cancel(self, ticket: RateTicket) -> bool:
        """A reservation is given back: refunded exactly if its tick has not come yet (and
        waiters behind it move up); ``False`` if it had come (the reservation was used)."""

        def cancel_locked(woken: list[Waiter]) -> bool:
            now = self._tick()
            self._advance(now, woken)
            if ticket.state is not PENDING or ticket.promised <= now:
                return False  # its time came: the holder may have acted
            self._leave(ticket, woken, keep=True)
            return True

        return self._section(cancel_locked)

    def charge(self, cost: int) -> None:
        """Spend ``cost`` now, allowed or not: the limiter may go into debt. With others
        queued it is spent at the tail of the line: their ticks stay, later callers wait."""

        def charge_locked(woken: list[Waiter]) -> None:
            if self.retired:
                raise MeterRetired
            now = self._tick()
            self._advance(now, woken)
            # Calls first, then the count: an exception never leaves a charge counted unspent.
            if not self.queue:
                self.rule.record(now, cost)
                self.charged += cost
                return
            debt = RateTicket(cost, threading.current_thread(), None, 0.0, charge=True)
            debt.due = debt.promised = next(reversed(self.queue)).due  # right after the last
            self.queue[debt] = None
            self.charged += cost

        self._section(charge_locked)

    def pause_until(self, until: int) -> None:
        """Allow nothing before tick ``until`` (a server said to wait): the rule's state moves
        forward once, and the queue is planned again from it, every waiter keeping its place
        in line. Heads whose tick has come are granted first; a reservation keeps its
        promised tick. A tick already past changes nothing."""

        def pause_locked(woken: list[Waiter]) -> None:
            if self.retired:
                raise MeterRetired
            now = self._tick()
            self._advance(now, woken)
            if until > now and self.rule.hold_until(until) and self.queue:
                self._replan(now, woken)

        self._section(pause_locked)

    def retire_if_idle(self) -> bool:
        """Retire the meter if forgetting it would change nothing (nobody queued, the rule
        back in its initial state); ``True`` if retired."""

        def retire_locked(woken: list[Waiter]) -> bool:
            now = self._tick()
            if self.queue or not self.rule.idle(now):
                return False
            self.retired = True
            return True

        return self._section(retire_locked)

    def snapshot(self) -> MeterSnapshot:
        """The meter's figures, after granting the heads whose tick has come. Never waits on
        a long section (sections are arithmetic); from inside a section on this thread (a
        signal handler), reads without the lock rather than deadlock."""
        if self._lock._is_owned():
            return self._snapshot_now()

        def snapshot_locked(woken: list[Waiter]) -> MeterSnapshot:
            self._advance(self._tick(), woken)
            return self._snapshot_now()

        return self._section(snapshot_locked)

    def _snapshot_now(self) -> MeterSnapshot:
        taken_at = self._now()
        now = max(self.last, self._now_ns() * self.scale)
        queue = tuple(self.queue)
        rule = self.rule
        return MeterSnapshot(
            now=now,
            available=0 if queue else rule.available(now),
            next_free=self._plan_after(now, 1),
            waiting=tuple(
                WaitingView(t.cost, t.thread, t.since, t.due, t.sleeper is None, task_of(t))
                for t in queue
                if not t.charge
            ),
            allowed=self.allowed,
            allowed_units=self.allowed_units,
            refused=self.refused,
            waited=self.waited,
            charged=self.charged,
            taken_at=taken_at,
        )

    # -- inside a section ----------------------------------------------------------------------

    def _section(self, operation: Callable[[list[Waiter]], _R]) -> _R:
        lock = self._lock
        if lock._is_owned():
            raise _reentrant()
        woken: list[Waiter] = []
        try:
            try:  # take_now's shape: see "Releasing" in ``_section_lock``
                lock.acquire()
                return operation(woken)
            finally:
                try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                    lock.release()
                except RuntimeError:
                    pass  # not taken: the exception came while waiting for the lock
        finally:
            _wake_all_retrying(woken)

    def _tick(self) -> int:
        now = self._now_ns() * self.scale
        if now < self.last:
            return self.last  # a clock that stepped back: time stands still instead
        self.last = now
        return now

    def _plan_after(self, now: int, cost: int) -> int:
        """The tick of ``cost`` queued behind everyone now queued."""
        entries = [_entry(ticket) for ticket in self.queue]
        entries.append((cost, None, False))
        return self.rule.plan(now, entries)[-1]

    def _advance(self, now: int, woken: list[Waiter]) -> None:
        """Grant, in order, every head whose tick has come: a waiter at ``now`` (when it is
        allowed, and returns), a reservation or a charge at its fixed tick."""
        queue = self.queue
        rule = self.rule
        while queue:
            head = next(iter(queue))
            due = head.due
            if due > now:
                break
            sleeper = head.sleeper
            at = due if sleeper is None else now
            token = rule.record(at, head.cost)
            queue.popitem(last=False)
            head.token = token
            head.state = GRANTED
            if not head.charge:
                self.allowed += 1
                self.allowed_units += head.cost
            if sleeper is not None:
                woken.append(sleeper)
            if at > due and queue:
                # Allowed late (its thread woke late, or nobody called at its tick): the
                # interval counts from now, so those behind move back by the lateness.
                self._replan(now, woken)

    def _replan(self, now: int, woken: list[Waiter]) -> None:
        """Plan every queued ticket again (fixed ones keep their ticks); wake the waiters
        whose tick moved earlier."""
        queue = self.queue
        planned = self.rule.plan(now, [_entry(ticket) for ticket in queue])
        for ticket, due in zip(queue, planned, strict=True):
            if due < ticket.due and ticket.sleeper is not None:
                woken.append(ticket.sleeper)
            ticket.due = due

    def _leave(self, ticket: RateTicket, woken: list[Waiter], *, keep: bool) -> bool:
        """Take a ticket out: ``True`` if it ends up granted (``keep`` and a grant had reached
        it, or the grant could not be undone)."""
        now = self._tick()
        self._advance(now, woken)
        state = ticket.state
        if state is PENDING:
            queue = self.queue
            ticket.state = FINISHED
            queue.pop(ticket, None)
            if queue:
                self._replan(now, woken)
            return False
        if state is GRANTED:
            if keep:
                return True
            undone = self.rule.undo(ticket.token)
            ticket.state = FINISHED
            if undone:
                self.allowed -= 1
                self.allowed_units -= ticket.cost
                if self.queue:
                    self._replan(now, woken)
            return not undone
        return False

    def _after_fork_in_child(self) -> None:
        """In a forked child: a fresh lock, and no queued tickets of threads that did not
        come (nobody will wait on them); the plan is made again on the next call."""
        self._lock = new_section_lock()
        me = threading.current_thread()
        for ticket in list(self.queue):
            if ticket.thread is not me and ticket.sleeper is not None:
                ticket.state = FINISHED
                del self.queue[ticket]


def _entry(ticket: RateTicket) -> PlanEntry:
    promised = ticket.promised
    if promised < 0:
        return (ticket.cost, None, False)
    # Promised: recorded at its tick (or right after the one ahead, if that one was late),
    # never re-admitted: its holder acts at the promised tick whatever the plan says.
    return (ticket.cost, promised, True)


def _wake_all_retrying(woken: list[Waiter]) -> None:
    # Wake-ups are idempotent: an exception landing in the loop repeats it once.
    try:
        for waiter in woken:
            waiter.wake()
    except BaseException:
        for waiter in woken:
            waiter.wake()
        raise


def _reentrant() -> ReentrantCall:
    return ReentrantCall(
        "cannot use a rate limiter from inside its own critical section: this thread is "
        "already in one (the call came from a finalizer, a gc callback or a signal handler "
        "that ran there). Defer the work"
    )


_live_meters: weakref.WeakSet[Meter] = weakref.WeakSet()


def _reinitialise_after_fork() -> None:
    for meter in list(_live_meters):
        meter._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinitialise_after_fork)
