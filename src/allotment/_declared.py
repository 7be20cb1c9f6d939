"""Declared claims: the public face of banker mode (see :mod:`._core._policies`)."""

from __future__ import annotations

import functools
import threading
import warnings
from types import TracebackType
from typing import TYPE_CHECKING, Generic

import attrs

from . import _events
from ._acquisition import Acquisition, start_acquisition
from ._clock import deadline_after
from ._core import Account, AccountTicket, Amount, BankerPolicy, Site, describe_site
from ._errors import AcquireTimeout, BankerModeRequired
from ._lease import Lease
from ._lock_order import check_order
from ._manager import (
    ManagerParts,
    parts_of,
    record_site,
    take,
    take_async,
    take_or_none,
    timeout_summary,
)
from ._observed import ObservedLease
from ._observed_claim import report_close, take_reported, take_reported_async
from ._waiters import TASK

if TYPE_CHECKING:
    from ._manager import ResourceManager

__all__ = ["DeclaredClaim", "open_claim"]

_current_thread = threading.current_thread


def open_claim(
    manager: ResourceManager[Amount], maximum: Amount, site: Site | None
) -> DeclaredClaim[Amount]:
    """Declare a claim on ``manager`` (see :meth:`ResourceManager.claim`)."""
    parts = parts_of(manager)
    declared = parts.form.parse(maximum, "maximum")
    banker = parts.banker
    if banker is None:
        raise BankerModeRequired(
            f"{manager.name!r} was not created with banker=True, so it takes no claims"
        )
    account = Account(declared, _current_thread(), site)
    # The claim exists before its account opens: an exception at any point after leaves an
    # open account owned by a claim, whose collection closes it.
    claim = DeclaredClaim(manager, parts, banker, account)
    try:
        parts.pool.policy_call(lambda pool, woken: banker.open_account(pool, account, woken))
    except BaseException:
        claim.close()  # opened or not, nobody will get this claim
        raise
    return claim


@attrs.define(eq=False, repr=False)
class DeclaredClaim(Generic[Amount]):
    """A promise to hold at most a declared maximum of a banker-mode manager at once.

    Made by :meth:`ResourceManager.claim`. Acquire through it as through the manager; each
    acquisition returns an ordinary :class:`Lease`. A grant waits while it would leave the
    manager in an unsafe state, one from which some open claim might not be able to reach its
    maximum, so threads that acquire only through claims never deadlock on this manager.

    Closing the claim (leaving its with-block) refuses its queued requests with
    :class:`ClaimClosed` and releases every lease it still holds. A claim is for the thread
    that declared it, but every method is thread-safe.
    """

    _manager: ResourceManager[Amount]
    _parts: ManagerParts
    _banker: BankerPolicy
    _account: Account
    _leases: list[Lease[Amount]] = attrs.field(factory=list)
    """The leases taken through the claim, which it owns: closing the claim releases them,
    so dropping one is not a leak. Released ones are pruned as the list doubles."""

    # -- taking ---------------------------------------------------------------------------

    def acquire(self, amount: Amount, timeout: float | None = None) -> Lease[Amount]:
        """Take ``amount`` units, waiting until they can be granted safely; return the lease.

        Like :meth:`ResourceManager.acquire`, and also raises :class:`ExceedsClaim` if this
        would take the claim's leases (held and queued) beyond its maximum, and
        :class:`ClaimClosed` once the claim is closed.
        """
        parts = self._parts
        deadline = deadline_after(parts.clock, timeout)
        ticket, lease = self._new_lease(amount, checked=timeout != 0)
        self._keep(lease)  # first: owned by the claim whatever happens next
        if isinstance(lease, ObservedLease):
            taking = functools.partial(take, parts, ticket, lease, timeout != 0, deadline)
            granted = take_reported(self._manager, lease, taking)
        else:
            granted = take(parts, ticket, lease, timeout != 0, deadline)
        if not granted:
            raise self._timeout_error(amount, timeout)
        return lease

    def acquire_async(
        self, amount: Amount, timeout: float | None = None
    ) -> Acquisition[Lease[Amount]]:
        """:meth:`acquire` for asyncio tasks, as :meth:`ResourceManager.acquire_async`:
        awaitable, or ``async with``; the task waits in the manager's queue beside threads,
        granted only safely. The amount and the timeout are checked here."""
        deadline = deadline_after(self._parts.clock, timeout)
        ticket, lease = self._new_lease(amount, checked=timeout != 0)
        return start_acquisition(self._acquire_async, ticket, lease, amount, timeout, deadline)

    async def _acquire_async(  # noqa: PLR0917 - private, called in one place
        self,
        ticket: AccountTicket,
        lease: Lease[Amount],
        amount: Amount,
        timeout: float | None,
        deadline: float | None,
        acquisition: Acquisition[Lease[Amount]],
    ) -> Lease[Amount]:
        TASK.adopt(ticket)
        self._keep(lease)  # first: owned by the claim whatever happens next
        parts = self._parts
        if timeout == 0:
            taking = functools.partial(take, parts, ticket, lease, False, None)
            if isinstance(lease, ObservedLease):
                granted = take_reported(self._manager, lease, taking)
            else:
                granted = taking()
        elif isinstance(lease, ObservedLease):
            waiting = take_async(parts, ticket, lease, deadline)
            granted = await take_reported_async(self._manager, lease, waiting)
        else:
            granted = await take_async(parts, ticket, lease, deadline)
        if not granted:
            raise self._timeout_error(amount, timeout)
        acquisition.held = lease
        return lease

    def _timeout_error(self, amount: Amount, timeout: float | None) -> AcquireTimeout:
        parts = self._parts
        error = AcquireTimeout(
            f"{parts.name!r} did not grant {amount!r} within {timeout} s; {timeout_summary(parts)}"
        )
        error.manager = self._manager
        return error

    def try_acquire(self, amount: Amount) -> Lease[Amount] | None:
        """Take ``amount`` units if that is possible safely without waiting, else ``None``."""
        ticket, lease = self._new_lease(amount, checked=False)
        self._keep(lease)
        if isinstance(lease, ObservedLease):
            taking = functools.partial(take_or_none, self._parts, ticket, lease)
            granted = take_reported(self._manager, lease, lambda: bool(taking()), waits=False)
            return lease if granted else None
        return take_or_none(self._parts, ticket, lease)

    def _keep(self, lease: Lease[Amount]) -> None:
        leases = self._leases
        leases.append(lease)
        if len(leases) >= 16 and len(leases) & (len(leases) - 1) == 0:
            leases[:] = [kept for kept in leases if not kept.released or kept is lease]

    def _new_lease(self, amount: Amount, *, checked: bool) -> tuple[AccountTicket, Lease[Amount]]:
        """A ticket and its lease for ``amount``, after the lock-order check if ``checked``
        (it may wait)."""
        parts = self._parts
        request = parts.form.parse(amount)
        site = record_site(parts, 2)
        if checked and parts.node.policy is not None:
            check_order((parts.node,), site or record_site(parts, 2), stacklevel=3)
        ticket = AccountTicket(
            request, _current_thread(), site, parts.clock.now(), account=self._account
        )
        if _events.observers:
            return ticket, ObservedLease(ticket, parts.pool, self._manager)
        return ticket, Lease(ticket, parts.pool, self._manager)

    # -- ending ---------------------------------------------------------------------------

    def close(self) -> None:
        """Refuse queued requests, release every lease the claim holds, withdraw the
        declaration. Idempotent."""
        banker, account = self._banker, self._account
        pool = self._parts.pool
        closing = functools.partial(
            pool.policy_call, lambda pool, woken: banker.close_account(pool, account, woken)
        )
        if _events.observers:
            report_close(self._leases, closing)
        else:
            closing()

    def __enter__(self) -> DeclaredClaim[Amount]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            account = self._account
        except AttributeError:  # __init__ was interrupted
            return
        if not account.open:
            return
        banker = self._banker
        notice = functools.partial(_warn_leaked_claim, self._parts.name, account)
        # Closed through the pool's deferred path: this may run inside its critical section.
        self._parts.pool.reclaim_with(
            lambda pool, woken: banker.close_account(pool, account, woken), notice
        )

    # -- looking ---------------------------------------------------------------------------

    @property
    def manager(self) -> ResourceManager[Amount]:
        """The manager the claim was declared on."""
        return self._manager

    @property
    def maximum(self) -> Amount:
        """The declared maximum."""
        rendered: Amount = self._parts.form.render(self._account.maximum)
        return rendered

    @property
    def held(self) -> Amount:
        """What the claim's leases hold now."""
        banker, account = self._banker, self._account
        held = self._parts.pool.policy_call(lambda pool, woken: banker.account_held(pool, account))
        rendered: Amount = self._parts.form.render(held)
        return rendered

    @property
    def closed(self) -> bool:
        """Whether the claim was closed."""
        return not self._account.open

    def __repr__(self) -> str:
        # Plain reads, never the lock: a debugger or a signal handler may call this.
        form = self._parts.form
        held = form.render(self._account.held(form.zero()))
        state = "closed" if self.closed else f"holding {held!r} of {self.maximum!r}"
        return f"<allotment.DeclaredClaim on {self._parts.name!r}: {state}>"


def _warn_leaked_claim(manager: str, account: Account) -> None:
    site = describe_site(account.site)
    origin = f"at {site} " if site is not None else ""
    warnings.warn(
        f"a claim on {manager!r} was garbage-collected while open; it was made {origin}by "
        f"thread {account.thread.name!r}. Its leases were released; close claims with a "
        "with-block or DeclaredClaim.close()",
        ResourceWarning,
        stacklevel=3,
    )
