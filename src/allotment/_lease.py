"""Leases: what ``ResourceManager.acquire`` returns, and the only way units go back."""

from __future__ import annotations

import functools
import warnings
import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic

import attrs

from ._core import (
    FINISHED,
    GRANTED,
    Amount,
    FaceTicket,
    MemoryPool,
    Pool,
    Quantity,
    Ticket,
    describe_site,
    outside_stacklevel,
    task_of,
)
from ._errors import LeakedLeaseWarning, LeaseReleased

if TYPE_CHECKING:
    from ._manager import ResourceManager

_weak = weakref.ref
_partial = functools.partial

__all__ = ["Lease", "ticket_and_pool"]


@attrs.define(eq=False, repr=False, init=False)
class Lease(Generic[Amount]):
    """Units granted by a :class:`ResourceManager`, returned exactly once.

    A lease returns exactly what it holds: :meth:`release` with no argument gives back all of
    it (a second call does nothing), and a partial release can never give back more than the
    lease still holds. Use it as a context manager so the units return even when the body
    raises::

        with pool.acquire(2) as lease:
            ...

    A lease may be released from any thread. A lease that is garbage-collected while it still
    holds units returns them and emits a :class:`LeakedLeaseWarning` (shown by default) at the
    line that dropped it, naming the thread that acquired it, how long ago, and (when sites
    are recorded) the line that acquired it.

    The lease is the public face of a ticket in its manager's pool; the pool holds the ticket,
    never the lease, so a leaked lease stays collectable. ``acquire`` on an in-memory manager
    builds the lease by hand around a :class:`~allotment._core.FaceTicket`, the ticket that
    is itself the weak reference watching the lease (one object fewer, and no ``__dict__``):
    such a lease lets go of its ticket as it is released (for the pool's ``spent`` one), so
    that it dies without waking the pool's watch.
    """

    _ticket: Ticket
    _pool: Pool
    _manager: ResourceManager[Amount]

    def __init__(self, ticket: Ticket, pool: Pool, manager: ResourceManager[Amount]) -> None:
        # attrs' __init__ and __attrs_post_init__, written out: one call fewer per acquire.
        # (A subclass made by attrs gets its own __init__, which calls the hook below.)
        self._ticket = ticket
        self._pool = pool
        self._manager = manager
        if type(pool) is MemoryPool:
            # The pool notices if this lease dies holding units and its finalizer could
            # not give them back (an exception landed in it): see MemoryPool.face_died.
            ticket.face = _weak(self, pool.face_died)

    def __attrs_post_init__(self) -> None:
        pool = self._pool
        if type(pool) is MemoryPool:
            self._ticket.face = _weak(self, pool.face_died)

    @property
    def manager(self) -> ResourceManager[Amount]:
        """The manager that granted this lease."""
        return self._manager

    @property
    def amounts(self) -> Amount:
        """What the lease holds now: an int, or a dict of the resources it still holds.

        ``0`` or ``{}`` once released.
        """
        rendered: Amount = self._pool.form.render(self._ticket.units)  # type: ignore[assignment]
        return rendered

    @property
    def fencing_token(self) -> int | None:
        """For a manager with a backend: a number strictly greater than that of every
        earlier grant on the manager (even across a server restart that lost its data).
        Pass it to the resource you guard, and have it refuse writes carrying a smaller
        token than it has seen: a holder that lost its lease is then refused. ``None`` for
        an in-memory manager."""
        return self._pool.fencing_token(self._ticket)

    @property
    def lost(self) -> bool:
        """For a manager with a backend: ``True`` once the lease expired before it could be
        renewed (its units may have gone to someone else). Always ``False`` in memory."""
        return self._pool.lost(self._ticket)

    @property
    def released(self) -> bool:
        """``True`` once the lease holds nothing."""
        return self._ticket.state is not GRANTED

    def release(self, amount: Amount | None = None) -> None:
        """Give back ``amount`` units early, or everything the lease still holds.

        With no argument this is idempotent. A partial ``amount`` takes the manager's form (an
        int, or a mapping of resource names) and raises :class:`ReleaseExceedsHeld` if it is
        more than the lease holds, or another :class:`InvalidAmount` if it is malformed; in
        both cases nothing is released. Units given back go to waiting requests at once.
        """
        ticket = self._ticket
        pool = self._pool
        if amount is not None:
            pool.release(ticket, pool.form.parse(amount, "released amount"))
            return
        pool.release(ticket, None)
        if type(ticket) is FaceTicket and ticket.state is FINISHED:  # not deferred
            self._ticket = pool.spent  # type: ignore[attr-defined]  # as in __exit__

    def exits_async(self) -> bool:
        """Whether leaving an ``async with`` makes a backend's round trip (awaited)."""
        return hasattr(self._pool, "release_async")

    async def release_async(self, amount: Amount | None = None) -> None:
        """:meth:`release` for an asyncio task. On a manager with a backend, the round trip
        runs on the task's loop without blocking it, and a cancellation does not stop the
        release (it goes on, and the cancellation propagates); in memory, the same as
        :meth:`release`."""
        part = None if amount is None else self._pool.form.parse(amount, "released amount")
        release_async = getattr(self._pool, "release_async", None)
        if release_async is None:
            self._pool.release(self._ticket, part)
        else:
            await release_async(self._ticket, part)

    def __enter__(self) -> Lease[Amount]:
        if self._ticket.state is not GRANTED:
            raise LeaseReleased("this lease was already released and holds nothing")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        ticket = self._ticket
        pool = self._pool
        try:
            pool.release(ticket, None)
        except BaseException:
            # Landed at release's first line, before it did anything: release, then go on.
            pool.release(ticket, None)
            raise
        if type(ticket) is FaceTicket and ticket.state is FINISHED:  # not deferred
            # The ticket is the weak reference watching this lease: let go of it, so that
            # the lease dies without a callback (see FaceTicket).
            self._ticket = pool.spent  # type: ignore[attr-defined]

    async def __aenter__(self) -> Lease[Amount]:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        release_async = getattr(self._pool, "release_async", None)
        if release_async is None:
            self.__exit__(exc_type, exc_value, traceback)
        else:  # a backend's round trip, on the loop without blocking it
            await release_async(self._ticket, None)

    def __repr__(self) -> str:
        # Plain reads only: a debugger or a signal handler may call this at any moment.
        state = "released" if self.released else f"holding {self.amounts!r}"
        return f"<allotment.Lease {state} from {self._manager.name!r}>"

    def __del__(self) -> None:
        try:
            ticket = self._ticket
        except AttributeError:  # __init__ was interrupted: nothing was taken for it
            return
        if ticket.state is not GRANTED:
            return
        # A leak. Give back first, describe later: the notice is only a partial of what it
        # will describe, and the pool calls it once the units are back and its lock is free,
        # so a warning turned into an error loses nothing. An exception landing in here
        # before the pool's section gives back (CPython runs a finalizer once) is caught by
        # the pool, which watches this lease (see MemoryPool.face_died).
        pool = self._pool
        pool.reclaim(ticket, _partial(_warn_leaked, pool, self._manager, ticket, ticket.units))


def _warn_leaked(
    pool: Pool, manager: ResourceManager[Any], ticket: Ticket, units: Quantity
) -> None:
    """The leak warning of one lease, issued once its units are back and the lock is free.

    A :class:`LeakedLeaseWarning`, which Python shows by default, attributed to the first
    frame outside allotment: the user's line that dropped the lease (for ``pool.acquire(1)``
    as a bare statement, that very line).
    """
    form = pool.form
    age = manager.clock.now() - ticket.since
    where = describe_site(ticket.site)
    who = f"thread {ticket.thread.name!r}"
    task = task_of(ticket)
    if task is not None:
        who = f"task {task.get_name()!r} on {who}"
    if where is None:
        origin = (
            f"it was acquired by {who} {age:.3f} s before; to record where, pass "
            "capture_sites=True, run Python with -X dev, or enable tracemalloc"
        )
    else:
        origin = f"it was acquired at {where} by {who} {age:.3f} s before"
    warnings.warn(
        f"a lease of {form.render(units)!r} from {manager.name!r} was garbage-collected while "
        f"still held, so nothing was held after this line; {origin}. Its units were returned; "
        "hold leases in a with-block (with pool.acquire(1): ...) or keep them and call "
        "Lease.release()",
        LeakedLeaseWarning,
        stacklevel=outside_stacklevel(),
    )


def ticket_and_pool(lease: Lease[Any]) -> tuple[Ticket, Pool]:
    """The ticket and pool behind ``lease``: for a backend that releases a group of leases
    in one request."""
    return lease._ticket, lease._pool
