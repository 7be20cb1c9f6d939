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
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs

from . import _events
from ._core import GRANTED, Amount, Pool, Ticket
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
    "report_failure",
    "report_grant",
]

_running_loop = asyncio._get_running_loop  # the C accessor: never raises


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


def report_grant(lease: ObservedLease[Any], ticket: Ticket, asked: float, queued: bool) -> None:
    """Report ``lease``'s grant; on any exception (an observer's interrupt) it holds
    nothing."""
    pool = lease.pool_of()
    try:
        now = lease.manager.clock.now()
        lease.granted_at = now
        handed_by = getattr(getattr(ticket, "waiter", None), "handed_by", None)
        emit(
            manager_record(
                "granted",
                lease.manager.name,
                now_ns(),
                lease.owner,
                pool.form.render(ticket.units),
                lease.request,
                now - asked if queued else 0.0,
                None,
                None,
                handed_by,
                _capacity(pool),
            )
        )
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


@attrs.define(eq=False, repr=False)
class ObservedLease(Lease[Amount]):
    """A :class:`~allotment.Lease` granted while someone observed: it reports its releases.

    Releases of one observed lease are serialised by ``_release_lock`` (never held while
    an observer runs), so that two threads releasing it at once report exactly what each
    gave back. The lock is taken before the pool's, never after it.
    """

    request: int = attrs.field(kw_only=True)
    owner: EventOwner = attrs.field(kw_only=True)
    granted_at: float = 0.0
    _release_lock: Any = attrs.field(init=False, factory=threading.RLock)

    def pool_of(self) -> Pool:
        return self._pool

    def release(self, amount: Amount | None = None) -> None:
        self._reported(lambda: Lease.release(self, amount))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._reported(lambda: Lease.__exit__(self, exc_type, exc_value, traceback))

    def _reported(self, give_back: Callable[[], None]) -> None:
        ticket = self.ticket_of()
        if ticket.state is not GRANTED or not _events.observers:
            give_back()
            return
        pool = self.pool_of()
        manager = self.manager
        lost: LeaseLost | None = None
        with self._release_lock:
            held = ticket.units
            began_ns = now_ns()
            began = manager.clock.now()
            token = handing.set(self.request)
            try:
                give_back()
            except LeaseLost as error:
                lost = error
            finally:
                handing.reset(token)
            remaining = ticket.units if ticket.state is GRANTED else pool.form.zero()
        form = pool.form
        if lost is not None:
            emit(
                manager_record(
                    "lost",
                    manager.name,
                    began_ns,
                    self.owner,
                    form.render(held),
                    self.request,
                    None,
                    began - self.granted_at,
                    form.render(remaining),
                    None,
                    None,
                    "LeaseLost",
                )
            )
            raise lost
        returned = held - remaining
        if returned:
            emit(
                manager_record(
                    "released",
                    manager.name,
                    began_ns,
                    self.owner,
                    form.render(returned),
                    self.request,
                    None,
                    began - self.granted_at,
                    form.render(remaining),
                )
            )

    def ticket_of(self) -> Ticket:
        return self._ticket

    def __del__(self) -> None:
        try:
            ticket = self._ticket
        except AttributeError:  # __init__ was interrupted: nothing was taken for it
            return
        if ticket.state is GRANTED and _events.observers:
            # A finalizer may run inside any pool's section: no observer runs here; the
            # record waits for the next delivery. Timed before the units go back.
            form = self._pool.form
            defer(
                manager_record(
                    "released",
                    self.manager.name,
                    now_ns(),
                    self.owner,
                    form.render(ticket.units),
                    self.request,
                    None,
                    self.manager.clock.now() - self.granted_at,
                    form.render(form.zero()),
                    None,
                    None,
                    "leaked",
                )
            )
        super().__del__()


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
