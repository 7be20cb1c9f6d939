"""The in-memory pool: the one grant mechanism behind every face.

``ResourceManager`` (through its leases, ``acquire_all`` and declared claims) and ``Semaphore``
take and return units here, and only here, through the :class:`Pool` interface. The rules:

- **Strict order.** An admission policy decides who may be granted: on arrival, and in the
  grant pass that runs whenever units become available. The plain policy is strict FIFO: a
  request is granted on arrival only when nobody is queued and it fits, and only the head of
  the queue is ever granted, so a large request is never starved.
- **Hand-off.** Whoever makes units available (a release, a grow, a withdrawal) runs the grant
  pass under the lock: the granted tickets own their units before anyone is woken. A woken
  requester never re-checks or competes.
- **Arrival, wait, withdrawal** are three steps. :meth:`MemoryPool.enter` grants or queues; the
  requester then sleeps on its own waiter, outside the pool; when its deadline passes it calls
  :meth:`MemoryPool.withdraw`, which keeps a grant that already arrived (an arrived grant beats
  an expired deadline); an exception makes it call :meth:`MemoryPool.release`, which withdraws
  a queued ticket or gives back a granted one: the one release path.
- **Wake after unlock.** A grant pass collects the waiters it granted; they are woken once the
  lock is released, so a waker that writes to a socket (an event loop, later) never runs under
  the lock.

Exceptions and re-entry. Every section takes an ``RLock`` in the one shape that no asynchronous
exception can cut between the lock and its ``try`` or between a raise and the release, on any
interpreter ("Releasing" in ``_section_lock``). Inside a section every call comes before the first
mutation, and the mutations are plain stores, so an exception (Ctrl-C, an injected one) lands
either before anything changed or after everything did. A grant pass cut short by one is run
again before the exception leaves the operation, and wake-ups are idempotent so they can be
retried. A finalizer, gc callback or signal handler that re-enters a pool on the thread inside
its section is detected exactly (``RLock._is_owned``): a full release is deferred onto
``_orphans`` and done by the outer section's epilogue on that thread; anything else raises
:class:`ReentrantCall`.

Explicit lock calls. The two sections of every with-block, :meth:`MemoryPool.enter` and
:meth:`MemoryPool.release`, take the lock by explicit calls instead of ``with`` (which costs
twice as much, ~80 ns per section on 3.11), in the shape every core section has ("Releasing"
in ``_section_lock``): ``_is_owned`` tested first, so this frame is the only one on its thread
that can hold the lock; ``lock.acquire()`` the first call inside a ``try``; and a ``finally``
whose first statement is ``try: lock.release()``, whose ``RuntimeError`` means the lock was
not taken (the exception came while waiting for it). Every way out of the body, a return
included, goes through that release, and nothing between a raise and the release is a check
point on any interpreter: on 3.10, where the jump to a handler is one unless the handler
starts with ``SETUP_FINALLY``, a ``finally`` opening a ``try`` starts with it (an
``except BaseException: lock.release()`` handler, their earlier shape, let a signal
handler that raised there leave the lock held). 3.14's ``GuardedRLock`` guards
``__enter__`` only: explicit calls need no guard.
"""

from __future__ import annotations

import collections
import functools
import os
import sys
import threading
import types
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import attrs

from .._errors import (
    ExceedsCapacity,
    LeakedLeaseWarning,
    ManagerClosed,
    ReentrantCall,
    ReleaseExceedsHeld,
)
from ._section_lock import SectionLock, new_section_lock
from ._tickets import FINISHED, GRANTED, PENDING, REFUSED, Site, Ticket, Waiter, task_of

if TYPE_CHECKING:
    import asyncio

    from ._amounts import Form, Quantity

__all__ = [
    "AccountView",
    "AdmissionPolicy",
    "MemoryPool",
    "Pool",
    "SectionLock",
    "Snapshot",
    "TicketView",
    "new_section_lock",
    "outside_stacklevel",
    "report_unraisable",
]

_NO_WAKEUPS: tuple[Waiter, ...] = ()
_Deferred = tuple[Callable[[list[Waiter]], None], Callable[[], None] | None]
"""A release deferred by a re-entrant call, and the notice to give once it is done."""
_R = TypeVar("_R")


@attrs.frozen
class TicketView:
    """One ticket's fields, copied under the lock."""

    units: Quantity
    since: float
    thread: threading.Thread
    site: Site | None
    task: asyncio.Task[Any] | None = None


@attrs.frozen
class AccountView:
    """One declared claim's figures, copied under the lock."""

    maximum: Quantity
    held: Quantity
    thread: threading.Thread
    site: Site | None


@attrs.frozen
class Snapshot:
    """What a pool held at one instant, copied under its lock."""

    capacity: Quantity | None
    available: Quantity
    holders: tuple[TicketView, ...]
    waiters: tuple[TicketView, ...]
    closed: bool
    taken_at: float
    accounts: tuple[AccountView, ...] = ()
    other_holders: int = 0
    """Holders of other processes (a pool kept elsewhere): not in ``holders``."""
    other_waiters: int = 0
    """Waiters of other processes (a pool kept elsewhere): not in ``waiters``."""


class AdmissionPolicy(Protocol):
    """Decides which requests a :class:`MemoryPool` grants; the pool does the bookkeeping.

    Every method runs under the pool's lock and may read the pool's state (``queue``,
    ``available``, ``capacity``, ``holders``, ``zero``, ``form``). None may mutate it except
    through :meth:`MemoryPool.grant_queued` and :meth:`MemoryPool.refuse`, and every check
    that can refuse must raise before anything changes.
    """

    @property
    def fifo_arrival(self) -> bool:
        """Whether :meth:`admits` is exactly "nobody queued and it fits", which the pool may
        then apply without calling it."""
        ...

    @property
    def nominates(self) -> bool:
        """Whether the grant pass may wake queued tickets without granting them, leaving the
        units free (bounded fairness): a woken requester then claims with
        :meth:`MemoryPool.claim`, and :meth:`may_barge` and :meth:`may_claim` exist."""
        ...

    def admits(self, pool: MemoryPool, ticket: Ticket) -> bool:
        """Whether a new ticket is granted on arrival (else it queues, or fails a try)."""
        ...

    def grant_waiters(self, pool: MemoryPool, woken: list[Waiter]) -> None:
        """Grant the queued tickets that may go now, each with ``pool.grant_queued``."""
        ...

    def after_withdraw(self, pool: MemoryPool, was_head: bool) -> bool:
        """Whether withdrawing a queued ticket may let others through (run a grant pass)."""
        ...

    def check_capacity(self, pool: MemoryPool, capacity: Quantity) -> None:
        """Raise to refuse a resize to ``capacity``."""
        ...

    def views(self, pool: MemoryPool) -> tuple[AccountView, ...]:
        """Policy bookkeeping to show in a snapshot."""
        ...


class Pool(Protocol):
    """The state of one manager or semaphore, wherever it lives.

    Each method is one atomic step. The faces (``ResourceManager``, ``Lease``, ``LeaseGroup``,
    ``DeclaredClaim``, ``Semaphore``, the diagnostics) use this interface and nothing else, so
    another pool (an asyncio-aware one, one in Redis) can stand where :class:`MemoryPool`
    stands. The read-only figures (``capacity`` ... ``waiting``) are read without the lock:
    each is exact, but two of them are not one instant.
    """

    @property
    def form(self) -> Form[object]: ...

    @property
    def capacity(self) -> Quantity | None: ...

    @property
    def available(self) -> Quantity: ...

    @property
    def closed(self) -> bool: ...

    @property
    def holding(self) -> int: ...

    @property
    def waiting(self) -> int: ...

    def enter(self, ticket: Ticket, waiter: Callable[[], Waiter] | None) -> bool: ...

    def withdraw(self, ticket: Ticket) -> bool: ...

    def release(self, ticket: Ticket, part: Quantity | None) -> None: ...

    def reclaim(self, ticket: Ticket, notice: Callable[[], None]) -> None: ...

    def reclaim_with(
        self, operation: Callable[[MemoryPool, list[Waiter]], None], notice: Callable[[], None]
    ) -> None: ...

    def split(self, ticket: Ticket, parts: Sequence[Ticket]) -> None: ...

    def take(self, units: Quantity, receipt: list[Quantity]) -> bool: ...

    def give(self, units: Quantity, limit: Quantity | None) -> bool: ...

    def resize(self, new_capacity: Callable[[Quantity], Quantity]) -> None: ...

    def close(self) -> None: ...

    def fits_capacity(self, units: Quantity) -> bool: ...

    def policy_call(self, operation: Callable[[MemoryPool, list[Waiter]], _R]) -> _R: ...

    def snapshot(self) -> Snapshot: ...

    def try_snapshot(self, timeout: float) -> Snapshot | None: ...

    def fencing_token(self, ticket: Ticket) -> int | None: ...

    def lost(self, ticket: Ticket) -> bool: ...


@attrs.define(eq=False)
class MemoryPool:
    """Units of one or several resources, granted under one lock by an admission policy.

    ``_lock`` (an ``RLock``, for its exact ``_is_owned``) guards every field but ``_orphans``
    and the constant ones (``form``, ``zero``, ``_policy``, ``_now``). Between operations (lock
    free) these hold:

    - ``available == capacity - sum(units of the GRANTED tickets)``, element-wise, unless
      ``capacity`` is ``None`` (a semaphore, whose releases may add units beyond any bound).
      ``available`` goes negative after a shrink below what is in use: returning units pay
      off that debt before any waiter is served.
    - ``queue`` holds exactly the PENDING tickets that wait, in arrival order, each fitting
      ``capacity`` and each with a ``waiter``.
    - Hand-off is eager: the policy's grant pass would grant nobody now.
    - ``holders`` (``None`` for a semaphore, which keeps no records) holds exactly the
      GRANTED tickets, each holding nonzero units, in grant order.
    - Once ``closed``, the queue stays empty.
    - Every waiter granted or refused has been woken, or is being woken by the thread that
      granted it, right after it released the lock.
    - ``_orphans`` holds no deferred release: only the thread inside a section appends one
      (a release that re-entered from a finalizer or signal handler), and that section's
      epilogue drains it. It may hold the weak references of watched faces (leases) that
      died still holding or asking (their finalizer was interrupted before it gave back):
      the garbage collector appends them, from any thread, and the next operation's
      epilogue gives their tickets' units back.
    """

    form: Form[object]
    capacity: Quantity | None
    available: Quantity
    _policy: AdmissionPolicy
    _now: Callable[[], float]
    holders: dict[Ticket, None] | None
    _fifo_arrival: bool = attrs.field(init=False)
    """The policy admits arrivals by the plain FIFO rule, which ``enter`` then applies
    without a call (a tenth of an uncontended acquire)."""
    nominates: bool = attrs.field(init=False)
    """The policy wakes queued tickets without a grant (bounded fairness): a woken
    requester claims its units itself (:meth:`claim`)."""
    queue: collections.OrderedDict[Ticket, None] = attrs.field(
        init=False, factory=collections.OrderedDict
    )
    closed: bool = attrs.field(init=False, default=False)
    zero: Quantity = attrs.field(init=False)
    _lock: SectionLock = attrs.field(init=False, factory=new_section_lock)
    _orphans: collections.deque[_Deferred | weakref.ref[Any]] = attrs.field(
        init=False, factory=collections.deque
    )
    face_died: Callable[[weakref.ref[Any]], None] = attrs.field(init=False)
    """The callback of the weak reference a face (a lease) keeps on its ticket
    (``ticket.face = weakref.ref(lease, pool.face_died)``), so that the pool notices if the
    lease dies while its ticket holds or asks. A lease's finalizer gives its units back at
    once, but an exception can land in it before it does (at its first line, even), and
    CPython runs a finalizer only once. This callback is ``_orphans.append``, C code, so
    nothing cuts it short: the reference lands on ``_orphans`` and the next operation's
    epilogue gives the units back and warns. Every way a ticket stops holding or asking
    clears ``face``, so a lease that dies after its release costs nothing more. (A
    :class:`FaceTicket` is its own weak reference, made with this callback, and its own
    ``face``.)"""

    spent: Ticket = attrs.field(init=False)
    """A ticket that holds nothing (FINISHED, ``zero`` units), never in a table: what a
    released one-object lease keeps in place of its :class:`FaceTicket`, so that it dies
    without calling ``face_died``."""

    @face_died.default
    def _face_died_default(self) -> Callable[[weakref.ref[Any]], None]:
        return self._orphans.append

    @spent.default
    def _spent_default(self) -> Ticket:
        return Ticket(self.zero, threading.main_thread(), None, 0.0, FINISHED)

    @zero.default
    def _zero_default(self) -> Quantity:
        return self.form.zero()

    @_fifo_arrival.default
    def _fifo_arrival_default(self) -> bool:
        return self._policy.fifo_arrival

    @nominates.default
    def _nominates_default(self) -> bool:
        return bool(getattr(self._policy, "nominates", False))

    def now(self) -> float:
        """The pool's clock, for policies."""
        return self._now()

    def __attrs_post_init__(self) -> None:
        _live_pools.add(self)

    # -- read without the lock ------------------------------------------------------------

    @property
    def holding(self) -> int:
        holders = self.holders
        return 0 if holders is None else len(holders)

    @property
    def waiting(self) -> int:
        return len(self.queue)

    # -- arrival, withdrawal, release: the hot paths, written out -----------------------------
    #
    # Each is one section (explicit lock calls: see the module's docstring), then an
    # epilogue that hands on a grant pass an exception cut short, wakes whom the section
    # granted (idempotently, so a retry is harmless) and drains deferred releases. ``run`` is
    # the same shape as a function; these three are written out because an extra call costs
    # a tenth of an uncontended acquire.

    def enter(self, ticket: Ticket, waiter: Callable[[], Waiter] | None) -> bool:
        """Grant ``ticket`` now (``True``), or queue it with a waiter made by ``waiter`` and
        return ``False``; with ``waiter=None``, return ``False`` without queueing.

        Raises ``ManagerClosed``, ``ExceedsCapacity`` for a request that can never fit, what
        the policy raises, and ``ReentrantCall`` from inside a section on this thread.
        """
        lock = self._lock
        if lock._is_owned():
            raise _reentrant("acquire from")
        # Explicit calls, not ``with lock`` (twice the cost): see "Explicit lock calls" in the
        # module's docstring.
        try:
            try:  # see "Releasing" in ``_section_lock``
                lock.acquire()
                if self.closed:
                    raise ManagerClosed("the manager is closed")
                units = ticket.units
                if (
                    not self.queue and units <= self.available
                    if self._fifo_arrival
                    else self._policy.admits(self, ticket)
                ):
                    # Granted units fit what is available, hence the capacity: no check.
                    available = self.available - units
                    self.available = available
                    ticket.state = GRANTED
                    if self.holders is not None:
                        self.holders[ticket] = None
                    return True
                capacity = self.capacity
                if capacity is not None and not units <= capacity:
                    raise ExceedsCapacity(self.too_large(units, capacity))
                if waiter is None:
                    ticket.face = None  # a try that failed: its lease is no leak
                else:
                    ticket.waiter = waiter()
                    self.queue[ticket] = None
                return False
            finally:
                try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                    lock.release()
                except RuntimeError:
                    pass  # not taken: the exception came while waiting for the lock
        finally:
            # Inside a try: an exception at the branch or at _settle's first line retries.
            try:
                if self._orphans:
                    self._settle(_NO_WAKEUPS)
            except BaseException:
                self._settle(_NO_WAKEUPS)
                raise

    def release(self, ticket: Ticket, part: Quantity | None) -> None:
        """Give back ``part`` of what ``ticket`` holds, or all of it (``None``): the one
        release path. With ``None`` it is idempotent, and it also withdraws a queued ticket
        (an interrupted requester leaving as if it had never asked).

        Raises ``ReleaseExceedsHeld`` if ``part`` is more than the ticket holds; nothing
        changes. A full release from inside a section on this thread (a finalizer) is done
        when that section ends; a partial one raises ``ReentrantCall``.
        """
        lock = self._lock
        if lock._is_owned():
            if part is not None:
                raise _reentrant("partially release a lease from")
            self._orphans.append((functools.partial(self._reclaim_locked, ticket), None))
            return
        woken: list[Waiter] | tuple[Waiter, ...] = _NO_WAKEUPS
        # Explicit calls, not ``with lock``: as in enter.
        try:
            try:  # see "Releasing" in ``_section_lock``
                lock.acquire()
                state = ticket.state
                if part is None:
                    if state is GRANTED:
                        # _give_back, written out: this is the path of every with-block's exit.
                        available = self.available + ticket.units
                        self.available = available
                        ticket.units = self.zero
                        ticket.state = FINISHED
                        ticket.face = None
                        if self.holders is not None:
                            self.holders.pop(ticket, None)
                        if self.queue:
                            woken = []
                            self._policy.grant_waiters(self, woken)
                    elif state is PENDING:
                        woken = []
                        self._withdraw(ticket, woken)
                elif state is GRANTED and part <= ticket.units:
                    woken = []
                    self._give_back(ticket, part, woken)
                else:
                    held = ticket.units if state is GRANTED else self.zero
                    raise ReleaseExceedsHeld(
                        f"cannot release {self.form.render(part)!r}: "
                        f"the lease holds {self.form.render(held)!r}"
                    )
            finally:
                try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                    lock.release()
                except RuntimeError:
                    pass  # not taken: the exception came while waiting for the lock
        except BaseException:
            # Whatever the exception cut short, and even before ``woken`` was set (right
            # after the units were added, where a pending Ctrl-C lands once the lock is
            # taken): a waiter that fits is granted before the exception goes on.
            self._restore(woken)
            raise
        finally:
            try:
                if woken or self._orphans:
                    self._settle(woken)
            except BaseException:
                self._settle(woken)
                raise

    def withdraw(self, ticket: Ticket) -> bool:
        """After a waiter's deadline passed: leave the queue, unless a grant already reached
        the ticket, which it keeps (``True``); ``False`` if withdrawn. Raises the refusal if
        the ticket was refused (closed manager, shrink)."""

        def withdraw_locked(woken: list[Waiter]) -> bool:
            state = ticket.state
            if state is GRANTED:
                return True
            if state is REFUSED:
                raise ticket.error
            if state is PENDING:
                self._withdraw(ticket, woken)
            return False

        return self.run(withdraw_locked)

    def claim(self, ticket: Ticket, deadline: float | None) -> bool | None:
        """A queued ticket's requester, woken (nominated, or by its deadline, or spuriously),
        under a policy that nominates: take the units now if the policy allows (``True``),
        keep a grant that reached the ticket (``True``), leave the queue if ``deadline`` has
        passed on the pool's clock (``False``), or else re-arm the waiter to sleep again
        (``None``). Raises the refusal of a refused ticket."""

        def claim_locked(woken: list[Waiter]) -> bool | None:
            state = ticket.state
            if state is GRANTED:
                return True
            if state is REFUSED:
                raise ticket.error
            if state is not PENDING or ticket not in self.queue:
                return False
            if self._policy.may_claim(self, ticket):  # type: ignore[attr-defined]
                mine: list[Waiter] = []  # its own waiter: nobody to wake
                self.grant_queued(ticket, mine)
                return True
            if deadline is not None and not self._now() < deadline:
                self._withdraw(ticket, woken)
                return False
            ticket.waiter.rearm()  # type: ignore[attr-defined]
            return None

        return self.run(claim_locked)

    def _withdraw(self, ticket: Ticket, woken: list[Waiter]) -> None:
        """Take a PENDING ticket off the queue (if it is queued) and let others through."""
        queue = self.queue
        was_head = bool(queue) and next(iter(queue)) is ticket
        follow = self._policy.after_withdraw(self, was_head)
        ticket.state = FINISHED
        ticket.face = None
        queue.pop(ticket, None)
        if follow and queue:
            self._policy.grant_waiters(self, woken)

    def _give_back(self, ticket: Ticket, part: Quantity, woken: list[Waiter]) -> None:
        """Return ``part`` of a granted ticket and pass units on. Lock held."""
        remaining = ticket.units - part
        available = self.available + part
        ticket.units = remaining
        self.available = available
        if not remaining:
            ticket.state = FINISHED
            ticket.face = None
            if self.holders is not None:
                self.holders.pop(ticket, None)
        if self.queue:
            self._policy.grant_waiters(self, woken)

    # -- for policies (lock held) ------------------------------------------------------------

    def grant_queued(self, ticket: Ticket, woken: list[Waiter]) -> None:
        """Grant a queued ticket; its waiter goes on ``woken``, to be woken after the lock."""
        now = self._now()
        available = self.available - ticket.units
        waiter = ticket.waiter
        holders = self.holders
        # Plain stores and C-level container updates: nothing can cut in between them. The
        # branch comes before the first store, and each way runs straight to the append: a
        # taken jump is a check point (3.10 checks at its target), and one between the grant
        # and the append would lose the wake-up.
        if holders is None:  # a semaphore: no records
            del self.queue[ticket]
            self.available = available
            ticket.state = GRANTED
            ticket.since = now
            woken.append(waiter)
        else:
            del self.queue[ticket]
            self.available = available
            ticket.state = GRANTED
            ticket.since = now
            holders[ticket] = None
            woken.append(waiter)

    def give_back(self, ticket: Ticket, woken: list[Waiter]) -> None:
        """Return everything a granted ticket holds and pass units on."""
        if ticket.state is GRANTED:
            self._give_back(ticket, ticket.units, woken)

    def refuse(self, ticket: Ticket, error: BaseException, woken: list[Waiter]) -> None:
        """Take a queued ticket off the queue without a grant; it will raise ``error``."""
        waiter = ticket.waiter
        del self.queue[ticket]
        ticket.error = error
        ticket.state = REFUSED
        ticket.face = None
        woken.append(waiter)

    def too_large(self, units: Quantity, capacity: Quantity) -> str:
        return (
            f"a request for {self.form.render(units)!r} can never be granted: "
            f"the capacity is {self.form.render_all(capacity)!r}"
        )

    # -- the rest: one shape, through run() ------------------------------------------------

    def run(self, operation: Callable[[list[Waiter]], _R]) -> _R:
        """Run ``operation(woken)`` as one critical section, with the standard epilogue.

        ``operation`` mutates only after its last call, and appends the waiters it grants
        or refuses to ``woken``; they are woken after the lock is released.
        """
        lock = self._lock
        if lock._is_owned():
            raise _reentrant("use")
        woken: list[Waiter] = []
        try:
            try:  # see "Releasing" in ``_section_lock``
                lock.acquire()
                return operation(woken)
            finally:
                try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                    lock.release()
                except RuntimeError:
                    pass  # not taken: the exception came while waiting for the lock
        except BaseException:
            self._restore(woken)
            raise
        finally:
            try:
                if woken or self._orphans:
                    self._settle(woken)
            except BaseException:
                self._settle(woken)
                raise

    def split(self, ticket: Ticket, parts: Sequence[Ticket]) -> None:
        """Move units from the granted ``ticket`` to ``parts``, which become granted holders
        of their own ``units``; ``ticket`` keeps the rest (nonzero, like every part).

        Turns one atomic grant into one record per request. Nothing changes if ``ticket`` is
        no longer granted (an interrupted caller gives everything back anyway).
        """

        def split_locked(woken: list[Waiter]) -> None:
            if ticket.state is not GRANTED:
                return
            remaining = ticket.units
            for part in parts:
                remaining = remaining - part.units
            since = ticket.since
            for part in parts:
                part.since = since
            ticket.units = remaining
            holders = self.holders
            for part in parts:
                part.state = GRANTED
                if holders is not None:
                    holders[part] = None

        self.run(split_locked)

    def take(self, units: Quantity, receipt: list[Quantity]) -> bool:
        """Grant ``units`` with no record if nobody waits (or the policy lets an arrival
        overtake the queue now) and they fit: a semaphore's fast path; ``False``, changing
        nothing, otherwise.

        The grant's last step appends ``units`` to ``receipt``, the caller's list: if an
        exception lands anywhere after the grant, even as the result is returned, the caller
        sees from the receipt that it must give the units back.
        """
        lock = self._lock
        if lock._is_owned():
            raise _reentrant("acquire from")
        try:
            try:  # see "Releasing" in ``_section_lock``
                lock.acquire()
                if not units <= self.available or (
                    self.queue and not (self.nominates and self._policy.may_barge(self))  # type: ignore[attr-defined]
                ):
                    return False
                available = self.available - units
                self.available = available
                receipt.append(units)
                return True
            finally:
                try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                    lock.release()
                except RuntimeError:
                    pass  # not taken: the exception came while waiting for the lock
        finally:
            # Inside a try: an exception at the branch or at _settle's first line retries.
            try:
                if self._orphans:
                    self._settle(_NO_WAKEUPS)
            except BaseException:
                self._settle(_NO_WAKEUPS)
                raise

    def give(
        self, units: Quantity, limit: Quantity | None, receipt: list[bool | None] | None = None
    ) -> bool:
        """Add ``units`` that no ticket holds (a semaphore's release) and pass them on.

        Returns ``False``, changing nothing, if that would make more than ``limit`` available.
        A give from inside a section on this thread is done when that section ends (a limit
        it would break is then ignored).

        The decision's last step stores its answer in ``receipt[0]`` (the caller's list,
        ``[None]``): a caller that an exception interrupts anywhere sees from a receipt still
        ``[None]`` that nothing was decided, and may call again (``Semaphore.__exit__``
        does), never giving twice.
        (A receipt is for the in-memory pool alone: the only one with a semaphore face.)
        """
        lock = self._lock
        if lock._is_owned():
            given = Ticket(units, threading.current_thread(), None, 0.0, GRANTED)
            self._orphans.append((functools.partial(self._reclaim_locked, given), None))
            if receipt is not None:
                receipt[0] = True
            return True
        woken: list[Waiter] | tuple[Waiter, ...] = _NO_WAKEUPS
        try:
            try:  # see "Releasing" in ``_section_lock``
                lock.acquire()
                available = self.available + units
                if limit is not None and not available <= limit:
                    if receipt is not None:
                        receipt[0] = False
                    return False
                self.available = available
                if receipt is not None:
                    receipt[0] = True  # a plain store: no check point since the one above
                if self.queue:
                    woken = []
                    self._policy.grant_waiters(self, woken)
                return True
            finally:
                try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                    lock.release()
                except RuntimeError:
                    pass  # not taken: the exception came while waiting for the lock
        except BaseException:
            self._restore(woken)  # as in release: never dependent on ``woken`` being set
            raise
        finally:
            try:
                if woken or self._orphans:
                    self._settle(woken)
            except BaseException:
                self._settle(woken)
                raise

    def _reclaim_dead_face(
        self, face: weakref.ref[Any], woken: list[Waiter]
    ) -> Callable[[], None] | None:
        """Give back what the ticket of a dead, watched face holds or asks; the notice to give
        (a leak warning), if it held units. Lock held."""
        found = None
        for ticket in (*(self.holders or ()), *self.queue):
            if getattr(ticket, "face", None) is face:
                found = ticket
                break
        if found is None:
            return None  # its finalizer gave back first (then it is not found), or a refusal
        units = found.units
        state = found.state
        notice = functools.partial(_warn_dead_face, self.form, units)
        if state is GRANTED:
            self._give_back(found, units, woken)
            return notice
        self._withdraw(found, woken)
        return None

    def reclaim(self, ticket: Ticket, notice: Callable[[], None]) -> None:
        """Give back everything a garbage-collected face's ticket holds, then call ``notice``
        (the leak warning) once the lock is released. Never blocks on its own thread.

        Runs from a finalizer, possibly on a thread inside one of this pool's sections: then
        both are deferred to that section's epilogue.
        """
        self.reclaim_with(lambda pool, woken: pool._reclaim_locked(ticket, woken), notice)

    def reclaim_with(
        self, operation: Callable[[MemoryPool, list[Waiter]], None], notice: Callable[[], None]
    ) -> None:
        """Run ``operation(pool, woken)`` as a section on behalf of a finalizer, then call
        ``notice``; deferred to the epilogue of the section this thread is inside, if any."""
        if self._lock._is_owned():
            self._orphans.append((functools.partial(operation, self), notice))
            return
        self.run(functools.partial(operation, self))
        notice()

    def _reclaim_locked(self, ticket: Ticket, woken: list[Waiter]) -> None:
        if ticket.state is GRANTED:
            self._give_back(ticket, ticket.units, woken)
        elif ticket.state is PENDING:
            self._withdraw(ticket, woken)

    def fits_capacity(self, units: Quantity) -> bool:
        """Whether ``units`` could ever be granted at the current capacity."""
        return self.run(lambda woken: self.capacity is None or units <= self.capacity)

    def policy_call(self, operation: Callable[[MemoryPool, list[Waiter]], _R]) -> _R:
        """Run a policy's own operation (banker accounts) as one critical section."""
        return self.run(lambda woken: operation(self, woken))

    def resize(self, new_capacity: Callable[[Quantity], Quantity]) -> None:
        """Set the capacity to ``new_capacity(current capacity)``, computed under the lock so
        that concurrent partial resizes of named resources never undo each other; if it
        raises, nothing changes.

        Growing grants waiters at once; shrinking takes effect as units return. Queued requests
        that no longer fit the capacity are refused with ``ExceedsCapacity``.
        """

        def resize_locked(woken: list[Waiter]) -> None:
            if self.closed:
                raise ManagerClosed("the manager is closed")
            current = self.capacity
            assert current is not None
            capacity = new_capacity(current)
            self._policy.check_capacity(self, capacity)
            available = self.available + (capacity - current)
            too_large = [
                (ticket, ExceedsCapacity(self.too_large(ticket.units, capacity)))
                for ticket in self.queue
                if not ticket.units <= capacity
            ]
            self.capacity = capacity
            self.available = available
            for ticket, error in too_large:
                self.refuse(ticket, error, woken)
            self._policy.grant_waiters(self, woken)

        self.run(resize_locked)

    def close(self) -> None:
        """Refuse every queued request and every later one with ``ManagerClosed``. Idempotent.

        The queue is emptied before the pool is marked closed, so that an exception between
        the two leaves an open pool, never a closed one with waiters.
        """

        def close_locked(woken: list[Waiter]) -> None:
            errors = [ManagerClosed("the manager was closed while waiting") for _ in self.queue]
            for ticket, error in zip(list(self.queue), errors, strict=True):
                self.refuse(ticket, error, woken)
            self.closed = True

        self.run(close_locked)

    # -- looking -------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Everything statistics need, copied in one critical section."""
        return self.run(self._snapshot_locked)

    def try_snapshot(self, timeout: float) -> Snapshot | None:
        """``snapshot()``, or ``None`` if the lock is not free within ``timeout`` seconds or
        belongs to this thread (a diagnostic run from a signal handler that interrupted a
        section)."""
        lock = self._lock
        if lock._is_owned():
            return None
        try:  # see "Releasing" in ``_section_lock``
            if not lock.acquire(True, timeout):
                return None  # not taken: the release below refuses, harmlessly
            return self._snapshot_locked(_NO_WAKEUPS)
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: timed out, or the exception came while waiting

    def fencing_token(self, ticket: Ticket) -> int | None:
        """In memory there is nobody to fence off: ``None``."""
        return None

    def lost(self, ticket: Ticket) -> bool:
        """A lease in memory is never lost."""
        return False

    def _snapshot_locked(self, woken: object) -> Snapshot:
        holders = self.holders
        return Snapshot(
            capacity=self.capacity,
            available=self.available,
            holders=tuple(map(_view, holders or ())),
            waiters=tuple(map(_view, self.queue)),
            closed=self.closed,
            taken_at=self._now(),
            accounts=self._policy.views(self),
        )

    # -- epilogues -------------------------------------------------------------------------------

    def _restore(self, woken: list[Waiter] | tuple[Waiter, ...]) -> None:
        """An exception left a section, possibly half done (a loop of refusals, a grant pass
        cut short): restore the invariants before it goes on. Queued requests that no longer
        fit the capacity, or wait on a closed pool, are refused; then the grant pass runs, so
        no unit sits free while a waiter that fits sleeps."""
        if self._lock._is_owned():
            return  # the exception is leaving an inner section: the outer one restores
        extra: list[Waiter] = []
        lock = self._lock
        try:  # see "Releasing" in ``_section_lock``
            lock.acquire()
            for ticket in list(self.queue):
                # A call, not an if, ends the body: see "Loops in sections" in design.md.
                self._refuse_if_unservable(ticket, extra)
            if self.queue:
                self._policy.grant_waiters(self, extra)
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        if isinstance(woken, list):
            woken.extend(extra)
        else:
            _wake_all(extra)

    def _refuse_if_unservable(self, ticket: Ticket, woken: list[Waiter]) -> None:
        """Refuse a queued ticket that waits on a closed pool or no longer fits the capacity."""
        capacity = self.capacity
        if self.closed:
            self.refuse(ticket, ManagerClosed("the manager was closed while waiting"), woken)
        elif capacity is not None and not ticket.units <= capacity:
            self.refuse(ticket, ExceedsCapacity(self.too_large(ticket.units, capacity)), woken)

    def _settle(self, woken: list[Waiter] | tuple[Waiter, ...]) -> None:
        """After a section: do the releases deferred into it, then wake whom it granted.

        Callers retry it once if an exception cuts it short (even at its first line):
        wake-ups are idempotent and each deferred release is popped only after it is done.
        The wake-up comes last, so that none of the waker's own work waits behind the thread
        it wakes, which the scheduler often runs at once on the waker's CPU (see "Release
        cost with waiters" in benchmarks.md).
        """
        if self._orphans:
            self._drain_orphans()
        for waiter in woken:
            waiter.wake()

    def _drain_orphans(self) -> None:
        lock = self._lock
        if not self._orphans or lock._is_owned():
            return  # nothing to do, or an inner section: the outer epilogue drains
        notices: list[Callable[[], None] | None] = []
        woken: list[Waiter] = []
        try:  # see "Releasing" in ``_section_lock``
            lock.acquire()
            orphans = self._orphans
            # "while True", and a call (not an if) last: see "Loops in sections" in design.md.
            while True:
                if not orphans:
                    break
                entry = orphans[0]
                if isinstance(entry, tuple):
                    operation, notice = entry
                    operation(woken)
                else:  # a watched face that died holding units
                    notice = self._reclaim_dead_face(entry, woken)
                orphans.popleft()
                notices.append(notice)
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        _wake_all(woken)
        for notice in notices:
            if notice is None:
                continue
            try:
                notice()
            except Exception:  # a leak warning turned into an error: as from __del__
                report_unraisable(notice)

    def _after_fork_in_child(self) -> None:
        """In a forked child: a fresh lock, and no trace of the threads that did not come.

        Requests queued by other threads are dropped (nobody will wait for them); units held
        by them are returned, since no thread of the child can release them through those
        threads; the forking thread's own tickets stay as they are.
        """
        self._lock = new_section_lock()
        me = threading.current_thread()
        dead_faces = [entry for entry in self._orphans if not isinstance(entry, tuple)]
        self._orphans.clear()
        self._orphans.extend(dead_faces)  # the next operation gives their units back
        for ticket in list(self.queue):
            if ticket.thread is not me:
                del self.queue[ticket]
                ticket.state = FINISHED
        if self.holders is not None:
            for ticket in list(self.holders):
                if ticket.thread is not me:
                    self.available = self.available + ticket.units
                    ticket.units = self.zero
                    ticket.state = FINISHED
                    del self.holders[ticket]
        woken: list[Waiter] = []
        if self.queue:
            self._policy.grant_waiters(self, woken)
        _wake_all(woken)


def _view(ticket: Ticket) -> TicketView:
    return TicketView(ticket.units, ticket.since, ticket.thread, ticket.site, task_of(ticket))


def _wake_all(woken: list[Waiter] | tuple[Waiter, ...]) -> None:
    for waiter in woken:
        waiter.wake()


def _reentrant(what: str) -> ReentrantCall:
    return ReentrantCall(
        f"cannot {what} a manager from inside its own critical section: this thread is "
        "already in one (the call came from a finalizer, a gc callback or a signal handler "
        "that ran there). Release leases from there, or defer the work"
    )


def report_unraisable(notice: object) -> None:
    """Hand the exception being handled to ``sys.unraisablehook``, as if raised in __del__."""
    kind, value, traceback = sys.exc_info()
    arguments = types.SimpleNamespace(
        exc_type=kind,
        exc_value=value,
        exc_traceback=traceback,
        err_msg="Exception ignored in a deferred allotment leak warning",
        object=notice,
    )
    sys.unraisablehook(arguments)


def outside_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning issued by the caller of this function name the
    first frame outside allotment (the user's line), on every Python: ``skip_file_prefixes``
    exists only from 3.12."""
    level = 1
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _warn_dead_face(form: Form[object], units: Quantity) -> None:
    warnings.warn(
        f"a lease of {form.render(units)!r} was garbage-collected while still held, and an "
        "exception interrupted its finalizer before it gave its units back; they were "
        "returned by the manager's next operation. Release leases with a with-block or "
        "Lease.release()",
        LeakedLeaseWarning,
        stacklevel=outside_stacklevel(),
    )


_live_pools: weakref.WeakSet[MemoryPool] = weakref.WeakSet()


def _reinitialise_after_fork() -> None:
    # The child has one thread, so nothing can race this walk.
    for pool in list(_live_pools):
        pool._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinitialise_after_fork)
