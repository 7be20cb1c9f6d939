"""Declared claims: the public face of banker mode (see :mod:`._banker`)."""

from __future__ import annotations

import threading
import time
import warnings
from types import TracebackType
from typing import TYPE_CHECKING, Generic

import attrs

from ._amounts import Amount
from ._banker import Account
from ._claims import caller_site, deadline_after, describe_site
from ._errors import BankerModeRequired
from ._lease import Lease
from ._lock_order import check_order

if TYPE_CHECKING:
    from ._manager import ResourceManager

__all__ = ["DeclaredClaim"]

_current_thread = threading.current_thread
_monotonic = time.monotonic


@attrs.define(eq=False, repr=False)
class _ClaimLease(Lease[Amount]):
    """A lease granted through a declared claim: the allocator charges it to ``_account``."""

    _account: Account = attrs.field(kw_only=True)


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
    _account: Account

    @classmethod
    def _open(cls, manager: ResourceManager[Amount], maximum: Amount) -> DeclaredClaim[Amount]:
        declared = manager._form.parse(maximum, "maximum")
        if not manager.banker:
            raise BankerModeRequired(
                f"{manager.name!r} was not created with banker=True, so it takes no claims"
            )
        site = caller_site(2) if manager._capture_sites else None
        thread = _current_thread()
        account = manager._allocator.open_account(declared, thread, site)
        return cls(manager, account)

    # -- taking ---------------------------------------------------------------------------

    def acquire(self, amount: Amount, timeout: float | None = None) -> Lease[Amount]:
        """Take ``amount`` units, waiting until they can be granted safely; return the lease.

        Like :meth:`ResourceManager.acquire`, and also raises :class:`ExceedsClaim` if this
        would take the claim's leases (held and queued) beyond its maximum, and
        :class:`ClaimClosed` once the claim is closed.
        """
        manager = self._manager
        deadline = deadline_after(timeout)
        lease = self._new_lease(amount, checked=timeout != 0)
        if not manager._take_lease(lease, timeout != 0, deadline):
            raise manager._timeout_error(amount, timeout)
        return lease

    def try_acquire(self, amount: Amount) -> Lease[Amount] | None:
        """Take ``amount`` units if that is possible safely without waiting, else ``None``."""
        lease = self._new_lease(amount, checked=False)
        return lease if self._manager._take_lease(lease, False, None) else None

    def _new_lease(self, amount: Amount, *, checked: bool) -> Lease[Amount]:
        """A lease for ``amount``, after the lock-order check if ``checked`` (it may wait)."""
        manager = self._manager
        request = manager._form.parse(amount)
        site = caller_site(2) if manager._capture_sites else None
        if checked and manager._order_policy is not None:
            check_order((manager,), site or caller_site(2), stacklevel=3)
        return _ClaimLease(
            request,
            _current_thread(),
            site,
            _monotonic(),
            manager,
            account=self._account,
        )

    # -- ending ---------------------------------------------------------------------------

    def close(self) -> None:
        """Refuse queued requests, release every lease the claim holds, withdraw the
        declaration. Idempotent."""
        self._manager._allocator.close_account(self._account)

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
        if not self._account.open:
            return
        self._manager._allocator.reclaim_account(self._account)
        site = describe_site(self._account.site) or "an unrecorded site (capture_sites=False)"
        warnings.warn(
            f"a claim on {self._manager.name!r} was garbage-collected while open; it was made "
            f"at {site} by thread {self._account.thread.name!r}. Its leases were released; close "
            "claims with a with-block or DeclaredClaim.close()",
            ResourceWarning,
            stacklevel=2,
            source=self,
        )

    # -- looking ---------------------------------------------------------------------------

    @property
    def manager(self) -> ResourceManager[Amount]:
        """The manager the claim was declared on."""
        return self._manager

    @property
    def maximum(self) -> Amount:
        """The declared maximum."""
        return self._manager._form.render(self._account.maximum)

    @property
    def held(self) -> Amount:
        """What the claim's leases hold now."""
        return self._manager._form.render(self._manager._allocator.account_held(self._account))

    @property
    def closed(self) -> bool:
        """Whether the claim was closed."""
        return not self._account.open

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"holding {self.held!r} of {self.maximum!r}"
        return f"<allotment.DeclaredClaim on {self._manager.name!r}: {state}>"
