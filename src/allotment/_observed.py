"""The observed paths: what a manager's acquisitions report while someone observes.

A face checks :data:`allotment._events.observers` once, on entry; while it is empty nothing
here runs. Otherwise the acquisition takes the observed path, which makes the same pool
calls as the plain one and reports around them, always after they return (never under a
pool's lock):

- the lease is an :class:`ObservedLease`, which reports each release (and a lost lease);
- a queued request sleeps on an observed waiter, which notes on whose behalf the thread or
  task that wakes it was in the pool (:data:`~allotment._events.handing`, set around every
  observed release and wait): the ``handed_by`` of the grant, the FIFO hand-off.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs

from . import _events
from ._core import GRANTED, Amount, MemoryPool, Pool, Ticket
from ._errors import ExceedsCapacity, LeaseLost, ManagerClosed
from ._events import EventOwner, current_owner, defer, emit, handing, now_ns
from ._lease import Lease
from ._waiters import TaskWaiter, ThreadWaiter

if TYPE_CHECKING:
    from ._manager import ResourceManager

__all__ = [
    "ObservedLease",
    "ObservedTaskWaiter",
    "ObservedThreadWaiter",
    "manager_record",
    "new_observed_task_waiter",
    "new_observed_thread_waiter",
    "released_record",
    "report_failure",
    "report_grant",
]

_running_loop = asyncio._get_running_loop  # the C accessor: never raises
_weak = weakref.ref


@attrs.define(eq=False)
class ObservedThreadWaiter(ThreadWaiter):
    """A thread's waiter that notes who handed it its grant. ``handed_by`` is written by
    the waker before it releases the handle, so the woken thread reads it after."""

    handed_by: int | None = None

    def wake(self) -> None:
        self.handed_by = handing.get()
        super().wake()


@attrs.define(eq=False)
class ObservedTaskWaiter(TaskWaiter):
    """A task's waiter that notes who handed it its grant (before the loop is told)."""

    handed_by: int | None = None

    def wake(self) -> None:
        self.handed_by = handing.get()
        super().wake()


def new_observed_thread_waiter() -> ObservedThreadWaiter:
    """:func:`~allotment._waiters.new_thread_waiter`, observed. Made under the lock: no
    user code."""
    handle = threading.Lock()
    handle.acquire()
    return ObservedThreadWaiter(handle)


def new_observed_task_waiter() -> ObservedTaskWaiter:
    """:func:`~allotment._waiters.new_task_waiter`, observed."""
    loop = _running_loop()
    assert loop is not None, "only called from a running task"
    return ObservedTaskWaiter(loop, loop.create_future())


def manager_record(  # noqa: PLR0917 - positional on purpose: the observed hot path
    kind: str,
    name: str,
    t_ns: int,
    owner: EventOwner,
    amount: object,
    request: int,
    wait: float | None = None,
    hold: float | None = None,
    remaining: object = None,
    handed_by: int | None = None,
    capacity: object = None,
    reason: str | None = None,
) -> tuple[Any, ...]:
    """A manager event's record, in :class:`~allotment._events.Event`'s field order."""
    return (
        kind,
        name,
        t_ns,
        owner,
        amount,
        request,
        wait,
        hold,
        remaining,
        handed_by,
        capacity,
        None,
        False,
        reason,
    )


def _capacity(pool: Pool) -> object:
    capacity = pool.capacity
    return None if capacity is None else pool.form.render_all(capacity)


def report_grant(  # noqa: PLR0917 - private, its callers' own arguments
    lease: ObservedLease[Any],
    ticket: Ticket,
    owner: EventOwner,
    request: int,
    wait: float,
    now: float | None,
) -> None:
    """Report ``lease``'s grant (``now``: the manager's clock then, ``None`` for the system
    clock, whose reading the event's own time is); on any exception (an observer's
    interrupt) it holds nothing."""
    pool = lease.pool_of()
    try:
        handed_by = getattr(getattr(ticket, "waiter", None), "handed_by", None)
        units: object = ticket.units
        capacity: object = pool.capacity
        if type(units) is not int:  # named resources: in the face's form
            units = pool.form.render(ticket.units)
            capacity = _capacity(pool)
        record = (
            "granted",
            lease.manager.name,
            now_ns(),
            owner,
            units,
            request,
            wait,
            None,
            None,
            handed_by,
            capacity,
            None,
            False,
            None,
        )
        lease.grant(record, now)
        emit(record)
    except BaseException:
        pool.release(ticket, None)
        raise


def report_requested(
    manager: ResourceManager[Any], owner: EventOwner, ticket: Ticket, request: int, asked_ns: int
) -> None:
    """Report that a request queued (it is then granted, refused, timed out or cancelled)."""
    pool = manager_pool(manager)
    emit(
        manager_record(
            "requested",
            manager.name,
            asked_ns,
            owner,
            pool.form.render(ticket.units),
            request,
            None,
            None,
            None,
            None,
            _capacity(pool),
        )
    )


def report_failure(  # noqa: PLR0917 - private, its callers' own arguments
    manager: ResourceManager[Any],
    owner: EventOwner,
    ticket: Ticket,
    request: int,
    asked: float,
    error: BaseException | None,
) -> None:
    """Report a request that ends with nothing: ``timed_out`` (``error`` is ``None`` or a
    timeout), ``refused`` (a closed manager, a request that can never fit) or ``cancelled``
    (any other exception, a task's cancellation included)."""
    if error is None or isinstance(error, TimeoutError):
        kind, reason = "timed_out", None
    elif isinstance(error, (ManagerClosed, ExceedsCapacity)):
        kind, reason = "refused", type(error).__name__
    else:
        kind, reason = "cancelled", type(error).__name__
    pool = manager_pool(manager)
    emit(
        manager_record(
            kind,
            manager.name,
            now_ns(),
            owner,
            pool.form.render(ticket.units),
            request,
            manager.clock.now() - asked,
            None,
            None,
            None,
            _capacity(pool),
            reason,
        )
    )


def report_refused_try(manager: ResourceManager[Any], owner: EventOwner, ticket: Ticket) -> None:
    """Report a ``try_acquire`` that found no room."""
    pool = manager_pool(manager)
    emit(
        manager_record(
            "refused",
            manager.name,
            now_ns(),
            owner,
            pool.form.render(ticket.units),
            _events.new_request_id(),
            0.0,
            None,
            None,
            None,
            _capacity(pool),
            "WouldWait",
        )
    )


def report_resized(manager: ResourceManager[Any], owner: EventOwner) -> None:
    pool = manager_pool(manager)
    capacity = _capacity(pool)
    emit(
        manager_record(
            "resized", manager.name, now_ns(), owner, capacity, 0, None, None, None, None, capacity
        )
    )


def manager_pool(manager: ResourceManager[Any]) -> Pool:
    from ._manager import parts_of

    return parts_of(manager).pool


def released_record(granted: tuple[Any, ...], began_ns: int, returned: int) -> tuple[Any, ...]:
    """The full record of a compact one (:data:`~allotment._events.Record`): a whole
    release of ``returned`` units, granted as ``granted`` says (on the system clock), timed
    from ``began_ns``."""
    return (
        "released", granted[1], began_ns, granted[3], returned, granted[5], None,
        (began_ns - granted[2]) / 1e9, 0, None, None, None, False, None,
    )  # fmt: skip


# Both classes write their __init__ out; attrs still makes an unused __attrs_init__ for each,
# whose signatures differ as their fields do.
@attrs.define(eq=False, repr=False, init=False)
class ObservedLease(Lease[Amount]):  # type: ignore[override]
    """A :class:`~allotment.Lease` granted while someone observed: it reports its releases.

    ``granted`` is the record of its grant (its request number, owner and time) and
    ``granted_at`` the manager's clock then (``None`` for the system clock: the record's
    time is the same reading), both set once, before the lease is returned; until then
    (``granted`` is ``None``: a part of a group being taken) it releases unreported, as a
    plain lease. Each release reports what it gave back, timed as its call began.

    Invariant: ``_unreported`` is an append-only log (a list) of *decisions*, each a new
    tuple ``(held, began_ns)``: what the lease held when a release looked at its ticket,
    after its own change, ``None`` for nothing (the ticket done); the first is ``(what it
    asked for, None)`` (a group's part: what it holds once the group is taken). The
    ticket's units only shrink, so the ``held`` are all comparable. A release decides by
    appending its own tuple (one atomic call), then reports what the least ``held`` before
    it in the log exceeds its own (if it does): the reports of the log's decisions add up
    to what the lease first held less the least ever seen, each unit once, whatever order
    two threads, or a thread and its own signal handler, append in. Nothing is ever taken
    out or put back, and no lock guards it (a handler or finalizer that releases in the
    middle of a release on the same thread cannot deadlock on it). So an asynchronous
    exception anywhere in a release costs at most that release's own report: one before
    its append leaves its change to the next decision, one after it loses only its event;
    every later release is still reported.

    ``_seen`` is ``(log, count, least)``: the least ``held`` of ``log``'s first ``count``
    decisions (``None`` if one saw the lease done), so that a decision scans only what came
    after it and n partial releases cost O(n), not O(n**2). The log's items before an index
    never change, so a ``_seen`` once true stays true: a thread may replace a newer one with
    an older one (one atomic store), which costs a longer scan, never a wrong report. It is
    ignored unless ``log`` is the current ``_unreported``.
    """

    granted: tuple[Any, ...] | None
    granted_at: float | None
    _unreported: Any
    _seen: Any

    def __init__(self, ticket: Ticket, pool: Pool, manager: ResourceManager[Amount]) -> None:
        self._ticket = ticket
        self._pool = pool
        self._manager = manager
        self.granted = None
        self.granted_at = None
        self._unreported = log = [(ticket.units, None)]  # a new ticket's: what it asks for
        self._seen = (log, 1, ticket.units)
        if type(pool) is MemoryPool:  # Lease.__attrs_post_init__, inlined: the pool watches
            ticket.face = _weak(self, pool.face_died)

    def grant(self, record: tuple[Any, ...], granted_at: float | None) -> None:
        """Note the grant's record and clock time, and what it holds now (a part of a group
        holds its share only once the group is taken)."""
        units = self._ticket.units
        self._unreported = log = [(units, None)]
        self._seen = (log, 1, units)
        self.granted_at = granted_at
        self.granted = record

    def pool_of(self) -> Pool:
        return self._pool

    def ticket_of(self) -> Ticket:
        return self._ticket

    def _returned(self, done: bool, began_ns: int) -> tuple[Any, Any] | None:
        """What this lease gave back that no earlier decision reported, with what it still
        holds, now decided as reported by this release (see the class's invariant); ``None``
        if earlier decisions saw all of it. ``done``: a full release returned, so nothing
        is held (even if the ticket still says so: a release made inside a section is done
        as that section ends)."""
        ticket = self._ticket
        held = ticket.units if ticket.state is GRANTED and not done else None
        mine = (held, began_ns)  # a new tuple: this decision's own, found by identity
        log = self._unreported
        log.append(mine)
        least = _least_before(self, log, mine)
        if not least:
            return None  # an earlier decision saw the lease done, or nothing held
        if held is None:
            return least, self._pool.form.zero()
        if held <= least and held != least:
            return least - held, held
        return None

    def release(self, amount: Amount | None = None) -> None:
        ticket = self._ticket
        granted = self.granted
        if ticket.state is not GRANTED or granted is None or not _events.observers:
            Lease.release(self, amount)
            return
        held = ticket.units
        began_ns = now_ns()
        hold = self._held_for(began_ns)
        token = handing.set(granted[5])
        try:
            Lease.release(self, amount)
        except LeaseLost as error:
            self._report_lost(held, began_ns, hold, error)
            raise
        finally:
            handing.reset(token)
        self._report_returned(began_ns, hold, done=amount is None)

    async def release_async(self, amount: Amount | None = None) -> None:
        """:meth:`release` for a task (a backend's round trip on its loop), reported."""
        ticket = self._ticket
        granted = self.granted
        if ticket.state is not GRANTED or granted is None or not _events.observers:
            await Lease.release_async(self, amount)
            return
        held = ticket.units
        began_ns = now_ns()
        hold = self._held_for(began_ns)
        try:
            await Lease.release_async(self, amount)
        except LeaseLost as error:
            self._report_lost(held, began_ns, hold, error)
            raise
        except BaseException:
            # A cancellation does not stop a backend's release: what it gave back counts.
            self._report_returned(began_ns, hold, done=False)
            raise
        self._report_returned(began_ns, hold, done=amount is None)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self.exits_async():
            self.__exit__(exc_type, exc_value, traceback)
        else:  # a backend's round trip, on the loop without blocking it; reported
            await self.release_async()

    def report_given_back(self, began_ns: int) -> None:
        """Report what was given back for this lease, other than by its own methods (its
        claim closed, from ``began_ns``), if anything was."""
        if self.granted is not None:
            self._report_returned(began_ns, self._held_for(began_ns), done=False)

    def _report_returned(self, began_ns: int, hold: float, *, done: bool) -> None:
        # A full release that left the ticket granted was made inside a section (by a
        # finalizer or a signal handler), which does it as it ends: no observer runs here.
        inside = done and self._ticket.state is GRANTED
        change = self._returned(done, began_ns)
        if change is not None:
            returned, remaining = change
            self._report_release(returned, remaining, began_ns, hold, None, deferring=inside)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Written out, calls saved: this is the exit of every observed with-block.
        ticket = self._ticket
        granted = self.granted
        if granted is None:  # a part of a group being taken: unreported
            Lease.__exit__(self, exc_type, exc_value, traceback)
            return
        began_ns = now_ns()
        pool = self._pool
        # Only a release with waiters hands anything on; a memory pool's queue, read bare,
        # saves the ``waiting`` property's call (any other pool: set it, to be sure). An
        # idle memory pool's release of a released lease does nothing, and its box then
        # holds nothing to report: no need to look at the ticket first.
        if type(pool) is not MemoryPool or pool.queue:
            if ticket.state is not GRANTED:
                Lease.__exit__(self, exc_type, exc_value, traceback)
                return
            held = ticket.units
            token = handing.set(granted[5])
            try:
                Lease.__exit__(self, exc_type, exc_value, traceback)
            except LeaseLost as error:
                self._report_lost(held, began_ns, self._held_for(began_ns), error)
                raise
            finally:
                handing.reset(token)
        else:
            # Lease.__exit__, inlined (a memory pool never loses a lease).
            try:
                pool.release(ticket, None)
            except BaseException:
                # Landed at release's first line, before it did anything: release, go on.
                pool.release(ticket, None)
                raise
        # self._returned(), inlined: the ticket is done, so this decision holds nothing; an
        # exception from here on can cost only this one report.
        log = self._unreported
        mine = (None, began_ns)  # a new tuple (see the class's invariant): holds nothing
        log.append(mine)
        # The first decision after the grant's (nearly always): what was asked for returns.
        returned = log[0][0] if log[1] is mine else _least_before(self, log, mine)
        if not returned:
            return  # earlier decisions reported it
        solo = _events.solo
        if (
            solo is not None
            and type(returned) is int
            and self.granted_at is None
            and not _events.deferred
        ):
            # One recorder, a scalar pool on the system clock: a compact record, the full
            # one made when the recorder's events are read (emit, inlined).
            solo[0]((released_record, granted, began_ns, returned))
            solo[1]()
            return
        at = self.granted_at
        hold = (began_ns - granted[2]) / 1e9 if at is None else self._manager.clock.now() - at
        remaining: object = 0
        if type(returned) is not int:
            form = pool.form
            returned, remaining = form.render(returned), form.render(form.zero())
        record = (
            "released", granted[1], began_ns, granted[3], returned, granted[5], None, hold,
            remaining, None, None, None, False, None,
        )  # fmt: skip
        if ticket.state is GRANTED:  # released inside a section, as it ends: not here
            defer(record)
        else:
            emit(record)

    def _held_for(self, began_ns: int) -> float:
        granted_at = self.granted_at
        if granted_at is None:
            assert self.granted is not None
            started: int = self.granted[2]
            return (began_ns - started) / 1e9
        return self._manager.clock.now() - granted_at

    def _report_release(
        self,
        returned: Any,
        remaining: Any,
        began_ns: int,
        hold: float,
        reason: str | None,
        *,
        deferring: bool = False,
    ) -> None:
        form = self._pool.form
        if type(returned) is not int:
            returned = form.render(returned)
            remaining = form.render(form.zero() if remaining is None else remaining)
        elif remaining is None:
            remaining = 0
        granted = self.granted
        assert granted is not None, "reported only once granted"
        (defer if deferring else emit)(
            (
                "released",
                granted[1],
                began_ns,
                granted[3],
                returned,
                granted[5],
                None,
                hold,
                remaining,
                None,
                None,
                None,
                False,
                reason,
            )
        )

    def _report_lost(self, held: Any, began_ns: int, hold: float, error: LeaseLost) -> None:
        form = self._pool.form
        granted = self.granted
        assert granted is not None, "reported only once granted"
        emit(
            (
                "lost",
                granted[1],
                began_ns,
                granted[3],
                form.render(held),
                granted[5],
                None,
                hold,
                form.render(form.zero()),
                None,
                None,
                None,
                False,
                type(error).__name__,
            )
        )

    def __del__(self) -> None:
        try:
            ticket = self._ticket
        except AttributeError:  # __init__ was interrupted: nothing was taken for it
            return
        if ticket.state is not GRANTED:
            return  # released, as nearly every lease is: nothing for Lease.__del__ either
        granted = self.granted  # None: the grant was never reported
        if granted is not None and _events.observers:
            # A finalizer may run inside any pool's section: no observer runs here; the
            # record waits for the next delivery. Timed before the units go back.
            form = self._pool.form
            began_ns = now_ns()
            defer(
                (
                    "released",
                    granted[1],
                    began_ns,
                    granted[3],
                    form.render(ticket.units),
                    granted[5],
                    None,
                    self._held_for(began_ns),
                    form.render(form.zero()),
                    None,
                    None,
                    None,
                    False,
                    "leaked",
                )
            )
        super().__del__()


def _least_before(
    lease: ObservedLease[Any], log: list[tuple[Any, Any]], mine: tuple[Any, Any]
) -> Any:
    """The least ``held`` of the decisions before ``mine`` in ``log`` (``lease``'s): what
    they left unreported; ``None`` if one saw the lease done. Starts from ``lease._seen``
    when it covers no more than the decisions before ``mine``, and leaves it covering them
    (see :class:`ObservedLease`'s invariant)."""
    at = len(log) - 1
    while log[at] is not mine:  # past the decisions appended after it: usually none
        at -= 1
    seen_log, count, least = lease._seen
    if seen_log is not log or count > at:
        count, least = 1, log[0][0]
    while count < at and least is not None:
        held = log[count][0]
        if held is None or held <= least:  # amounts define <= only: no min()
            least = held
        count += 1
    lease._seen = (log, at, least)
    return least


def rate_record(  # noqa: PLR0917 - positional on purpose: the observed hot path
    kind: str,
    name: str,
    owner: EventOwner,
    cost: int,
    wait: float | None,
    key: object,
    reason: str | None = None,
) -> tuple[Any, ...]:
    """A rate limiter event's record, in :class:`~allotment._events.Event`'s field order."""
    return (kind, name, now_ns(), owner, cost, 0, wait, None, None, None, None, key, True, reason)


def report_rate(  # noqa: PLR0917 - private, positional like the records
    kind: str, name: str, cost: int, wait: float | None, key: object, reason: str | None = None
) -> None:
    emit(rate_record(kind, name, current_owner(), cost, wait, key, reason))


def report_rate_failure(
    name: str, cost: int, wait: float, key: object, error: BaseException
) -> None:
    """A wait for a rate that ended with nothing spent: ``timed_out`` or ``cancelled``."""
    if isinstance(error, TimeoutError):
        report_rate("timed_out", name, cost, wait, key)
    else:
        report_rate("cancelled", name, cost, wait, key, type(error).__name__)
