"""Tickets: one record per request, from the moment it asks until its last unit returns.

A ticket is what a pool's queue and its table of holders hold. It is private to the core: the
public faces wrap it (a :class:`~allotment.Lease` holds one), so a face that is garbage-collected
while its ticket still holds units can be noticed and its units handed back.

A queued ticket carries a *waiter*: how the requester sleeps and is woken. A thread sleeps on
a lock handle; an asyncio task will sleep on a future. The pool never sleeps and never wakes
anyone under its lock: it records whom to wake, and wakes them once the lock is released.
"""

from __future__ import annotations

import enum
import sys
import weakref
from collections.abc import Callable
from types import CodeType
from typing import TYPE_CHECKING, Any, Protocol

import attrs

if TYPE_CHECKING:
    import asyncio
    import threading

    from ._amounts import Quantity

__all__ = [
    "FINISHED",
    "GRANTED",
    "PENDING",
    "REFUSED",
    "FaceTicket",
    "Site",
    "Ticket",
    "TicketState",
    "Waiter",
    "caller_site",
    "describe_site",
    "task_of",
]

Site = tuple[CodeType, int]
"""Where a request was made: the caller's code object and bytecode offset.

Reading ``frame.f_lineno`` costs more than the rest of an uncontended acquire, so the line is
looked up only when a site is shown.
"""


class TicketState(enum.Enum):
    """Where a ticket is in its life. It only moves down this list, and only under the lock."""

    PENDING = "pending"
    """Asking (queued, once it waits); ``units`` is the request and nothing is held."""
    GRANTED = "granted"
    """Holding ``units``; partial releases reduce them."""
    REFUSED = "refused"
    """Taken off the queue without a grant; ``error`` says why."""
    FINISHED = "finished"
    """Everything was given back (released, withdrawn or reclaimed), or never granted."""


PENDING = TicketState.PENDING
GRANTED = TicketState.GRANTED
REFUSED = TicketState.REFUSED
FINISHED = TicketState.FINISHED


class Waiter(Protocol):
    """How one queued requester sleeps and is woken. Chosen per call, not per pool."""

    def wake(self) -> None:
        """End the sleep. Called after the pool's lock is released, possibly more than once
        (a retry after an interrupted wake-up): it must be idempotent and must not block."""
        ...


@attrs.define(eq=False)
class Ticket:
    """A request and then a holding.

    ``units``, ``state``, ``since``, ``waiter`` and ``error`` are guarded by the pool's lock;
    ``thread``, ``site`` and ``task`` never change once the ticket is entered. ``since`` is
    when the ticket asked, reset to when it was granted if it had to queue (on the pool's
    clock). ``thread`` is the thread that asked,
    ``site`` where it asked (``None`` unless sites are recorded). ``task`` is the asyncio task
    that asked (on ``thread``, its loop's thread), set before the ticket is entered; a thread's
    ticket leaves it unset (read it with :func:`task_of`). ``waiter`` is set only for a ticket
    that queues, ``error`` only with the REFUSED state, ``face`` only by
    the lease (see ``MemoryPool.face_died``). Left unset, these cost nothing on
    the uncontended path.

    Equality is identity, and so is the hash: a ticket is a key of the pool's tables.
    """

    units: Quantity
    thread: threading.Thread
    site: Site | None
    since: float
    state: TicketState = PENDING
    waiter: Waiter = attrs.field(init=False)
    error: BaseException = attrs.field(init=False)
    task: asyncio.Task[Any] = attrs.field(init=False)
    face: weakref.ref[Any] | None = attrs.field(init=False)
    """A weak reference to the lease that wraps this ticket (in a pool that watches its
    faces): if the lease dies while this is set, the reference itself lands on the pool's
    deferred work. Cleared (under the lock) once nothing is held or asked."""


if TYPE_CHECKING:

    class FaceTicket(Ticket):
        """For the type checker, a :class:`Ticket` (see the class below)."""

        def __init__(self, face: object, callback: Callable[[Any], object], /) -> None: ...

else:

    class FaceTicket(weakref.ref):
        """A ticket that is itself the weak reference watching its lease: the one-object
        lease of an in-memory manager (the lease and this, instead of a lease, a ticket, its
        ``__dict__`` and a weak reference).

        It has a :class:`Ticket`'s fields, in slots, set by its maker right after
        ``FaceTicket(lease, pool.face_died)`` (``face`` is the ticket itself: the pool clears
        it like any ticket's, and finds the ticket of a dead face by it). Its hash and
        equality are the weak reference's: the lease's identity, cached at the first hash
        (taken while the lease lives), so it is a key of the pool's tables like any ticket.

        The lease holds it and the pool's tables hold it; it holds the lease weakly. A lease
        that dies while this is alive calls the callback with it, so the lease drops it as
        it releases (swapping in the pool's ``spent`` ticket): a released lease then dies
        without a callback. A lease released another way (a partial release that gives back
        the rest, ``release_async``) keeps it, and its death costs one entry on the pool's
        ``_orphans``, found holding nothing.
        """

        __slots__ = ("error", "face", "since", "site", "state", "task", "thread", "units", "waiter")


def task_of(ticket: Ticket) -> asyncio.Task[Any] | None:
    """The task that asked for ``ticket``, or ``None`` for a thread."""
    return getattr(ticket, "task", None)


def caller_site(depth: int) -> Site:
    """Where the code ``depth`` frames above the caller of this function is."""
    frame = sys._getframe(depth + 1)
    return (frame.f_code, frame.f_lasti)


def describe_site(site: Site | None) -> str | None:
    """``"path/to/file.py:42 in function"``, or ``None`` when no site was recorded."""
    if site is None:
        return None
    code, offset = site
    line = next(
        (line for start, end, line in code.co_lines() if start <= offset < end),
        code.co_firstlineno,
    )
    return f"{code.co_filename}:{line} in {code.co_name}"
