"""ResourceManager: weighted, fair, lease-based allocation of one or several resources."""

from __future__ import annotations

import itertools
import logging
import sys
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Generic, overload

import attrs

from ._allocator import Allocator, Snapshot
from ._amounts import Amount, Form, Quantity, ScalarForm, form_for
from ._claims import Claim, Site, caller_site, deadline_after
from ._errors import AcquireTimeout
from ._lease import Lease
from ._lock_order import (
    LockOrderPolicy,
    check_order,
    get_lock_order_policy,
    note_held,
    parse_policy,
)
from ._registry import register
from ._statistics import ManagerStatistics, statistics_from

if TYPE_CHECKING:
    from ._declared import DeclaredClaim

__all__ = ["ResourceManager"]

logger = logging.getLogger("allotment")

_monotonic = time.monotonic
_getframe = sys._getframe
_current_thread = threading.current_thread
_serial_numbers = itertools.count(1)


@attrs.define(eq=False, init=False, repr=False)
class ResourceManager(Generic[Amount]):
    """A pool of units of one resource, or of several named resources, shared by threads.

    Build it from an int for one resource, or from a mapping for several::

        pool = ResourceManager(5)
        node = ResourceManager({"gpu": 4, "ram_gb": 64})

    Amounts then take the same form: ``pool.acquire(2)``, ``node.acquire({"gpu": 1})``.

    Guarantees:

    - **Fair.** Requests are granted strictly in arrival order. A request that cannot be granted
      at once waits in a queue, and no later request, however small, is granted before it; so a
      large request is never starved. :meth:`try_acquire` never overtakes a queued request.
    - **Atomic.** A request for several resources is granted all at once or not at all; a
      waiting request holds nothing.
    - **Exact.** Units are taken and returned only through :class:`Lease` objects, each of which
      gives back exactly what it holds, once. A request that times out or whose wait is
      interrupted by an exception (``KeyboardInterrupt`` included) leaves no trace.
    - **Validated.** Bad amounts raise before anything changes (see :mod:`allotment` errors).

    All methods are thread-safe. The manager's lock is held only for bookkeeping, never while
    a thread waits.

    Every manager has a *rank*, which orders it among all managers: by ``rank`` (default 0),
    then by creation. :func:`allotment.acquire_all` takes several managers in that order, and
    the lock-order checker (``lock_order=``) reports code that does otherwise.
    """

    _form: Form[Amount]
    _scalar: bool
    _serial: int
    _name: str
    _rank: int
    _order_key: tuple[int, int]
    _lock_order: LockOrderPolicy | None
    _order_policy: LockOrderPolicy | None
    """The policy in force, ``None`` when off: the one test on the hot path."""
    _capture_sites: bool
    _allocator: Allocator

    @overload
    def __init__(
        self: ResourceManager[int],
        capacity: int,
        *,
        name: str | None = None,
        rank: int = 0,
        lock_order: LockOrderPolicy | None = None,
        banker: bool = False,
        capture_sites: bool = True,
    ) -> None: ...

    @overload
    def __init__(
        self: ResourceManager[Mapping[str, int]],
        capacity: Mapping[str, int],
        *,
        name: str | None = None,
        rank: int = 0,
        lock_order: LockOrderPolicy | None = None,
        banker: bool = False,
        capture_sites: bool = True,
    ) -> None: ...

    def __init__(
        self,
        capacity: int | Mapping[str, int],
        *,
        name: str | None = None,
        rank: int = 0,
        lock_order: LockOrderPolicy | None = None,
        banker: bool = False,
        capture_sites: bool = True,
    ) -> None:
        """Create a manager with ``capacity`` units (an int, or a mapping name -> int).

        ``name`` appears in reprs, statistics and messages. ``rank`` places the manager in
        the global acquisition order (lower first; equal ranks go by creation order).
        ``lock_order`` is this manager's lock-order policy, ``"raise"``, ``"warn"`` or
        ``"off"``; ``None`` follows :func:`allotment.set_lock_order_policy`. ``banker=True``
        enables declared claims (:meth:`claim`), whose grants never lead to a deadlock.
        ``capture_sites`` records the file and line of each ``acquire`` call for statistics,
        leak warnings and lock-order reports; turning it off saves a little time per
        acquisition.
        """
        form = form_for(capacity)
        initial = form.parse_capacity(capacity, None)
        if type(rank) is not int:
            raise TypeError(f"rank must be an int, not {type(rank).__name__} ({rank!r})")
        if lock_order is not None:
            parse_policy(lock_order)
        if type(banker) is not bool:
            raise TypeError(f"banker must be True or False, not {banker!r}")
        self._form = form  # type: ignore[assignment]
        self._scalar = isinstance(form, ScalarForm)
        self._serial = next(_serial_numbers)
        self._name = name if name is not None else f"ResourceManager-{self._serial}"
        self._rank = rank
        self._order_key = (rank, self._serial)
        self._lock_order = lock_order
        self._capture_sites = capture_sites
        self._allocator = Allocator(
            form, initial, initial, track_holders=True, accounts={} if banker else None
        )
        # Registered before reading the default, so that a concurrent
        # set_lock_order_policy() either reaches this manager or is read by it.
        register(self)
        self._order_policy = None
        self._apply_default_lock_order(get_lock_order_policy())
        logger.debug("created %r", self)

    def _apply_default_lock_order(self, policy: LockOrderPolicy) -> None:
        if self._lock_order is not None:
            policy = self._lock_order
        self._order_policy = None if policy == "off" else policy

    # -- taking ---------------------------------------------------------------------------

    def acquire(self, amount: Amount, timeout: float | None = None) -> Lease[Amount]:
        """Take ``amount`` units, waiting in line until they are granted; return the lease.

        Blocks until the request reaches the head of the queue and fits, or until ``timeout``
        seconds pass (``None``: no limit). ``timeout=0`` never waits. On timeout it raises
        :class:`AcquireTimeout` (a ``TimeoutError``) and holds nothing.

        Raises :class:`ManagerClosed` if the manager is or gets closed,
        :class:`ExceedsCapacity` if ``amount`` is more than the capacity (at once, or when a
        shrink makes a queued request impossible), and :class:`InvalidAmount` or
        :class:`InvalidAmountType` for malformed amounts, before anything changes.
        """
        if type(amount) is int and amount > 0 and self._scalar:
            request: Quantity = amount  # the common case, without a call
        else:
            request = self._form.parse(amount)
        deadline = None if timeout is None else deadline_after(timeout)
        if self._capture_sites:
            # caller_site(1), inlined: a call costs a tenth of an uncontended acquire.
            frame = _getframe(1)
            site: Site | None = (frame.f_code, frame.f_lasti)
        else:
            site = None
        if self._order_policy is not None and timeout != 0:
            # Only an acquisition that can wait can deadlock; every granted one counts as held.
            check_order((self,), site or caller_site(1), stacklevel=2)
        # The lease exists before the grant: if anything interrupts us after the grant, its
        # collection returns the units instead of leaking them.
        lease: Lease[Amount] = Lease(request, _current_thread(), site, _monotonic(), self)
        try:
            granted = self._allocator.take(request, lease, timeout != 0, deadline)
            if granted and self._order_policy is not None:
                note_held(lease)
        except BaseException:
            # An exception delivered just as take() returned a grant (it lands at the next
            # call, such as note_held's): nobody will get the lease.
            self._allocator.release(lease, None)
            raise
        if not granted:
            raise self._timeout_error(amount, timeout)
        return lease

    def try_acquire(self, amount: Amount) -> Lease[Amount] | None:
        """Take ``amount`` units if that is possible without waiting, else return ``None``.

        Fails while any other request is queued, even one that ``amount`` would fit beside:
        it never overtakes. Raises like :meth:`acquire` for closed managers and bad amounts.
        Never reported by the lock-order checker, since it cannot wait; the lease it returns
        counts as held for later acquisitions.
        """
        request = self._form.parse(amount)
        site = caller_site(1) if self._capture_sites else None
        lease: Lease[Amount] = Lease(request, _current_thread(), site, _monotonic(), self)
        return lease if self._take_lease(lease, False, None) else None

    def _take_lease(self, lease: Lease[Amount], blocking: bool, deadline: float | None) -> bool:
        """Have ``lease`` granted its units (acquire, minus the inlined fast path)."""
        try:
            granted = self._allocator.take(lease._units, lease, blocking, deadline)
            if granted and self._order_policy is not None:
                note_held(lease)
        except BaseException:
            # An exception delivered just as take() returned a grant: nobody will get the lease.
            self._allocator.release(lease, None)
            raise
        return granted

    def _timeout_error(self, amount: object, timeout: float | None) -> AcquireTimeout:
        error = AcquireTimeout(
            f"{self._name!r} did not grant {amount!r} within {timeout} s; {self._waiting_summary()}"
        )
        error.manager = self
        return error

    def claim(self, maximum: Amount) -> DeclaredClaim[Amount]:
        """Declare that the caller will hold at most ``maximum`` at once; return the claim
        to acquire through (banker mode only).

        Acquisitions through declared claims are granted only when they leave the manager in
        a *safe* state, one from which every open claim can still get its maximum and finish,
        so declared users never deadlock, even when they acquire a little at a time. Use it
        as a context manager: leaving it releases whatever the claim still holds::

            with node.claim({"gpu": 3}) as claim:
                first = claim.acquire({"gpu": 1})
                more = claim.acquire({"gpu": 2})

        Raises :class:`BankerModeRequired` unless the manager was created with
        ``banker=True``, :class:`ExceedsCapacity` for a maximum above the capacity,
        :class:`ManagerClosed` once closed, and the usual errors for a malformed amount.
        """
        from ._declared import DeclaredClaim  # the public layer above the manager

        return DeclaredClaim._open(self, maximum)

    def _release(self, claim: Claim, amount: Amount | None) -> None:
        part = None if amount is None else self._form.parse(amount, "released amount")
        self._allocator.release(claim, part)

    # -- changing -------------------------------------------------------------------------

    def resize(self, capacity: Amount) -> None:
        """Set a new capacity: an int, or a mapping of the resources to change.

        Growing grants queued requests at once. Shrinking below what is in use takes effect as
        leases return: returned units pay off the difference before any request is served.
        Queued requests larger than the new capacity are refused with
        :class:`ExceedsCapacity`. Raises :class:`ManagerClosed` once closed.
        """
        self._allocator.resize(lambda current: self._form.parse_capacity(capacity, current))
        logger.debug("resized %r", self)

    def close(self) -> None:
        """Refuse every queued request and every later one with :class:`ManagerClosed`.

        Leases already granted stay valid and can still be released. Idempotent.
        """
        self._allocator.close()
        logger.debug("closed %r", self)

    def __enter__(self) -> ResourceManager[Amount]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- looking ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The name given at creation, or an automatic ``ResourceManager-N``."""
        return self._name

    @property
    def rank(self) -> int:
        """The rank given at creation (default 0). Managers are ordered by rank, then by
        creation."""
        return self._rank

    @property
    def lock_order(self) -> LockOrderPolicy:
        """The lock-order policy in force for this manager."""
        return "off" if self._order_policy is None else self._order_policy

    @property
    def banker(self) -> bool:
        """Whether the manager runs in banker mode (declared claims)."""
        return self._allocator._accounts is not None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._allocator.closed

    def statistics(self) -> ManagerStatistics[Amount]:
        """A frozen snapshot of capacity, use, holders and waiters, taken under the lock."""
        return self._statistics_from(self._allocator.snapshot())

    def _statistics_from(self, snapshot: Snapshot) -> ManagerStatistics[Amount]:
        return statistics_from(self._name, self._form, snapshot)

    def _waiting_summary(self) -> str:
        stats = self.statistics()
        return (
            f"{len(stats.holders)} lease(s) hold {stats.in_use!r} and "
            f"{len(stats.waiters)} request(s) are queued"
        )

    def __repr__(self) -> str:
        stats = self.statistics()
        state = " closed" if stats.closed else ""
        return (
            f"<allotment.ResourceManager {self._name!r}{state}: capacity={stats.capacity!r} "
            f"in_use={stats.in_use!r} waiting={len(stats.waiters)}>"
        )
