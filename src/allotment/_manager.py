"""ResourceManager: weighted, fair, lease-based allocation of one or several resources."""

from __future__ import annotations

import itertools
import logging
import sys
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Generic, overload

import attrs

from ._allocator import Allocator
from ._amounts import Amount, Form, Quantity, ScalarForm, form_for
from ._claims import Claim, Site, caller_site, deadline_after
from ._errors import AcquireTimeout
from ._lease import Lease
from ._statistics import ManagerStatistics, statistics_from

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
    """

    _form: Form[Amount]
    _scalar: bool
    _name: str
    _capture_sites: bool
    _allocator: Allocator

    @overload
    def __init__(
        self: ResourceManager[int],
        capacity: int,
        *,
        name: str | None = None,
        capture_sites: bool = True,
    ) -> None: ...

    @overload
    def __init__(
        self: ResourceManager[Mapping[str, int]],
        capacity: Mapping[str, int],
        *,
        name: str | None = None,
        capture_sites: bool = True,
    ) -> None: ...

    def __init__(
        self,
        capacity: int | Mapping[str, int],
        *,
        name: str | None = None,
        capture_sites: bool = True,
    ) -> None:
        """Create a manager with ``capacity`` units (an int, or a mapping name -> int).

        ``name`` appears in reprs, statistics and messages. ``capture_sites`` records the
        file and line of each ``acquire`` call for statistics and leak warnings; turning it off
        saves a little time per acquisition.
        """
        form = form_for(capacity)
        initial = form.parse_capacity(capacity, None)
        self._form = form  # type: ignore[assignment]
        self._scalar = isinstance(form, ScalarForm)
        self._name = name if name is not None else f"ResourceManager-{next(_serial_numbers)}"
        self._capture_sites = capture_sites
        self._allocator = Allocator(form, initial, initial, track_holders=True)
        logger.debug("created %r", self)

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
        # The lease exists before the grant: if anything interrupts us after the grant, its
        # collection returns the units instead of leaking them.
        lease: Lease[Amount] = Lease(request, _current_thread(), site, _monotonic(), self)
        try:
            granted = self._allocator.take(request, lease, timeout != 0, deadline)
        except BaseException:
            # An exception delivered just as take() returned a grant: nobody will get the lease.
            self._allocator.release(lease, None)
            raise
        if not granted:
            raise AcquireTimeout(
                f"{self._name!r} did not grant {amount!r} within {timeout} s; "
                f"{self._waiting_summary()}"
            )
        return lease

    def try_acquire(self, amount: Amount) -> Lease[Amount] | None:
        """Take ``amount`` units if that is possible without waiting, else return ``None``.

        Fails while any other request is queued, even one that ``amount`` would fit beside:
        it never overtakes. Raises like :meth:`acquire` for closed managers and bad amounts.
        """
        request = self._form.parse(amount)
        site = caller_site(1) if self._capture_sites else None
        lease: Lease[Amount] = Lease(request, _current_thread(), site, _monotonic(), self)
        try:
            granted = self._allocator.take(request, lease, False, None)
        except BaseException:
            self._allocator.release(lease, None)
            raise
        return lease if granted else None

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
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._allocator.closed

    def statistics(self) -> ManagerStatistics[Amount]:
        """A frozen snapshot of capacity, use, holders and waiters, taken under the lock."""
        return statistics_from(self._name, self._form, self._allocator.snapshot())

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
