"""Leases: what ``ResourceManager.acquire`` returns, and the only way units go back."""

from __future__ import annotations

import threading
import warnings
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic

import attrs

from ._clock import Clock
from ._core import GRANTED, Amount, Form, Pool, Quantity, Site, Ticket, describe_site, task_of
from ._errors import LeaseReleased

if TYPE_CHECKING:
    import asyncio

    from ._manager import ResourceManager

__all__ = ["Lease"]


@attrs.define(eq=False, repr=False)
class Lease(Generic[Amount]):
    """Units granted by a :class:`ResourceManager`, returned exactly once.

    A lease returns exactly what it holds: :meth:`release` with no argument gives back all of
    it (a second call does nothing), and a partial release can never give back more than the
    lease still holds. Use it as a context manager so the units return even when the body
    raises::

        with pool.acquire(2) as lease:
            ...

    A lease may be released from any thread. A lease that is garbage-collected while it still
    holds units returns them and emits a :class:`ResourceWarning` naming the thread that
    acquired it, how long ago, and (when sites are recorded) the line.

    The lease is the public face of a ticket in its manager's pool; the pool holds the ticket,
    never the lease, so a leaked lease stays collectable.
    """

    _ticket: Ticket
    _pool: Pool
    _manager: ResourceManager[Amount]

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
        part = None if amount is None else self._pool.form.parse(amount, "released amount")
        self._pool.release(self._ticket, part)

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
        try:
            self._pool.release(self._ticket, None)
        except BaseException:
            # Landed at release's first line, before it did anything: release, then go on.
            self._pool.release(self._ticket, None)
            raise

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
        # A leak. The pool hands the units back first and only then calls the notice (after
        # its lock is released), so a warning turned into an error loses nothing.
        notice = _LeakNotice(
            self._pool.form,
            ticket.units,
            self._manager.name,
            ticket.thread,
            ticket.since,
            ticket.site,
            self._manager.clock,
            task_of(ticket),
        )
        self._pool.reclaim(ticket, notice)


@attrs.frozen
class _LeakNotice:
    """The leak warning of one lease, issued once its units are back and the lock is free."""

    form: Form[object]
    units: Quantity
    manager: str
    thread: threading.Thread
    since: float
    site: Site | None
    clock: Clock
    task: asyncio.Task[Any] | None

    def __call__(self) -> None:
        age = self.clock.now() - self.since
        where = describe_site(self.site)
        who = f"thread {self.thread.name!r}"
        if self.task is not None:
            who = f"task {self.task.get_name()!r} on {who}"
        if where is None:
            origin = (
                f"it was acquired by {who} {age:.3f} s before; to record where, pass "
                "capture_sites=True, run Python with -X dev, or enable tracemalloc"
            )
        else:
            origin = f"it was acquired at {where} by {who} {age:.3f} s before"
        warnings.warn(
            f"a lease of {self.form.render(self.units)!r} from {self.manager!r} was "
            f"garbage-collected while still held; {origin}. Its units were returned; release "
            "leases with a with-block or Lease.release()",
            ResourceWarning,
            stacklevel=3,
        )
