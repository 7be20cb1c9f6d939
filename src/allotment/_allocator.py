"""The allocator: the one grant mechanism behind every way of taking units.

``ResourceManager`` (through its leases) and ``Semaphore`` both take and return units here, and
only here. The rules:

- **Strict FIFO.** A request is granted on arrival only when nobody is queued and it fits;
  otherwise it joins the tail of the queue. Only the head of the queue is ever granted, so a
  large request at the head holds back smaller ones behind it and can never be starved.
- **Hand-off.** Whoever makes units available (a release, a grow, a withdrawal from the head)
  assigns them to the head claims under the lock, records those claims as holders and then
  wakes exactly those threads. A woken thread owns its units already; it never re-checks or
  competes for them.
- **Nothing is lost.** A waiter that times out, or whose wait is interrupted by any exception,
  leaves as if it had never queued; if a grant reached it first, it gives the units back, which
  hands them on to the next waiters.
- **Never wait under the lock.** The lock is held only for bookkeeping: waiting happens on the
  claim's own handle, after the lock is released.
"""

from __future__ import annotations

import collections
import threading
import time
import weakref
from collections.abc import Callable

import attrs

from ._amounts import Form, Quantity
from ._claims import FINISHED, GRANTED, PENDING, REFUSED, Claim, Site
from ._errors import ExceedsCapacity, ManagerClosed, ReleaseExceedsHeld

__all__ = ["Allocator", "ClaimView", "Snapshot"]

_monotonic = time.monotonic
_current_thread = threading.current_thread
_weak_reference = weakref.ref


@attrs.frozen
class ClaimView:
    """One claim's fields, copied under the lock."""

    units: Quantity
    since: float
    thread: threading.Thread
    site: Site | None


@attrs.frozen
class Snapshot:
    """What the allocator held at one instant, copied under its lock."""

    capacity: Quantity | None
    available: Quantity
    holders: tuple[ClaimView, ...]
    waiters: tuple[ClaimView, ...]
    closed: bool
    taken_at: float


def _view(claim: Claim) -> ClaimView:
    return ClaimView(claim._units, claim._since, claim._thread, claim._site)


@attrs.define(eq=False)
class Allocator:
    """Units of one or several resources, handed out first come, first served.

    ``_lock`` guards every field but ``_orphans``. Between operations (lock free) these hold:

    - ``_available == _capacity - sum(units of the GRANTED claims)``, element-wise, unless
      ``_capacity`` is ``None``. ``_available`` goes negative after a shrink below what is in
      use: returning units pay off that debt before any waiter is served.
    - ``_queue`` holds exactly the PENDING claims, in arrival order; each fits ``_capacity``.
    - Hand-off is eager: the head of ``_queue``, if any, does not fit ``_available``.
    - With ``_track_holders``, ``_holders`` maps ``id(claim)`` to a weak reference for exactly
      the GRANTED claims, each holding nonzero units. Weak, because a claim is a lease and a
      leaked lease must stay collectable so that its finalizer can return its units.
    - Once ``_closed``, the queue stays empty.

    ``_capacity`` is ``None`` for a semaphore, whose releases may add units beyond any bound.
    ``_orphans`` receives the claims of leases garbage-collected while held. ``Lease.__del__``
    can run at any moment, even on a thread inside one of these critical sections, so it must
    neither block nor touch guarded state: it appends to the deque, and every critical section
    ends, in a ``finally`` once the lock is released (on returns and raises alike), by
    returning the orphans' units (``_return_orphans``).
    """

    _form: Form[object]
    _available: Quantity
    _capacity: Quantity | None
    _track_holders: bool
    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    _queue: collections.OrderedDict[Claim, None] = attrs.field(factory=collections.OrderedDict)
    _holders: dict[int, weakref.ref[Claim]] = attrs.field(factory=dict)
    _closed: bool = False
    _orphans: collections.deque[Claim] = attrs.field(factory=collections.deque)
    _zero: Quantity = attrs.field(init=False)

    @_zero.default
    def _zero_default(self) -> Quantity:
        return self._form.zero()

    # -- taking ---------------------------------------------------------------------------

    def take(
        self, request: Quantity, claim: Claim | None, blocking: bool, deadline: float | None
    ) -> bool:
        """Grant ``request`` now, or queue for it and wait until the monotonic ``deadline``.

        ``claim`` is the record to grant (a lease, whose units are ``request``); a semaphore
        passes ``None`` and a record is made only if it must queue. Returns ``True`` once
        granted, ``False`` if not granted without waiting (``blocking`` false) or by the
        deadline. Raises ``ManagerClosed``, or ``ExceedsCapacity`` for a request that can never
        fit.
        """
        queued: Claim | None = None
        granted_at_once = False
        try:
            try:
                with self._lock:
                    if self._closed:
                        raise ManagerClosed("the manager is closed")
                    capacity = self._capacity
                    if capacity is not None and not request <= capacity:
                        raise ExceedsCapacity(self._too_large(request, capacity))
                    if not self._queue and request <= self._available:
                        self._available -= request
                        granted_at_once = True
                        if claim is not None:
                            claim._state = GRANTED
                            if self._track_holders:
                                self._holders[id(claim)] = _weak_reference(claim)
                    elif not blocking:
                        return False
                    else:
                        if claim is None:
                            claim = Claim(request, _current_thread(), None, _monotonic(), None)
                        claim._prepare_to_wait()
                        self._queue[claim] = None
                        queued = claim
            finally:
                if self._orphans:
                    self._return_orphans()
            if queued is None:
                return True
            woken = queued._wait(deadline)
            if not woken:
                self._withdraw(queued)
            # A refusal (close, shrink) that raced the deadline is the more useful answer.
            if queued._state is REFUSED:
                raise queued._error
            return woken
        except BaseException:
            # Refused, or interrupted (KeyboardInterrupt, an exception injected into this
            # thread...) at any point: leave as if we had never asked. A grant that reached us
            # already goes back, and on to the next waiters.
            if queued is not None:
                self._withdraw(queued)
            elif granted_at_once:
                if claim is not None:
                    self.release(claim, None)
                else:
                    self.give(request, None)
            raise

    def _withdraw(self, claim: Claim) -> None:
        """Leave as if ``claim`` had never queued, giving back a grant that already reached it.

        Idempotent: a claim that was refused or has finished is left alone.
        """
        try:
            with self._lock:
                if claim._state is PENDING:
                    head = next(iter(self._queue))
                    del self._queue[claim]
                    claim._state = FINISHED
                    if head is claim:
                        # The head held the others back; those behind it may fit now.
                        self._grant_waiters()
                elif claim._state is GRANTED:
                    self._give_back(claim, claim._units)
        finally:
            if self._orphans:
                self._return_orphans()

    def _grant_waiters(self) -> None:
        """Hand available units to the head of the queue, in order. Lock held."""
        queue = self._queue
        now = None
        while queue:
            claim = next(iter(queue))
            if not claim._units <= self._available:
                # Strict FIFO: nobody overtakes the head, however small.
                return
            del queue[claim]
            self._available -= claim._units
            claim._state = GRANTED
            if now is None:
                now = _monotonic()
            claim._since = now
            if self._track_holders:
                self._holders[id(claim)] = _weak_reference(claim)
            claim._wake()

    def _refuse(self, claim: Claim, error: BaseException) -> None:
        """Take a queued claim off the queue without a grant and wake it. Lock held."""
        del self._queue[claim]
        claim._state = REFUSED
        claim._error = error
        claim._wake()

    # -- giving back ----------------------------------------------------------------------

    def release(self, claim: Claim, part: Quantity | None) -> None:
        """Give back ``part`` of what ``claim`` holds, or all of it (``None``, idempotent).

        Raises ``ReleaseExceedsHeld`` if ``part`` is more than the claim holds; nothing changes.
        """
        try:
            with self._lock:
                if part is None:
                    if claim._state is GRANTED:
                        # _give_back, unrolled: this is the path of every with-block's exit.
                        self._available += claim._units
                        claim._units = self._zero
                        claim._state = FINISHED
                        if self._track_holders:
                            del self._holders[id(claim)]
                        if self._queue:
                            self._grant_waiters()
                elif claim._state is GRANTED and part <= claim._units:
                    self._give_back(claim, part)
                else:
                    held = claim._units if claim._state is GRANTED else self._zero
                    raise ReleaseExceedsHeld(
                        f"cannot release {self._form.render(part)!r}: "
                        f"the lease holds {self._form.render(held)!r}"
                    )
        finally:
            if self._orphans:
                self._return_orphans()

    def _give_back(self, claim: Claim, part: Quantity) -> None:
        """Return ``part`` of a granted claim and pass units on. Lock held."""
        remaining = claim._units - part
        claim._units = remaining
        self._available += part
        if not remaining:
            claim._state = FINISHED
            if self._track_holders:
                del self._holders[id(claim)]
        if self._queue:
            self._grant_waiters()

    def give(self, amount: Quantity, limit: Quantity | None) -> bool:
        """Add ``amount`` units that no claim holds (a semaphore's release).

        Returns ``False``, changing nothing, if that would make more than ``limit`` available.
        """
        try:
            with self._lock:
                available = self._available + amount
                if limit is not None and not available <= limit:
                    return False
                self._available = available
                if self._queue:
                    self._grant_waiters()
        finally:
            if self._orphans:
                self._return_orphans()
        return True

    def reclaim(self, claim: Claim) -> None:
        """Give back everything a garbage-collected lease held. Never blocks.

        Runs from ``Lease.__del__``, possibly on a thread inside one of this allocator's
        critical sections. So the claim goes on ``_orphans`` and is returned now if the lock is
        free; otherwise the thread holding the lock returns it right after releasing the lock.
        """
        self._orphans.append(claim)
        self._return_orphans()

    def _return_orphans(self) -> None:
        # An orphan appended while another thread holds the lock is seen by that thread, which
        # calls this after releasing the lock: the append precedes the failed try-lock below,
        # which precedes that release, which precedes that thread's check of the deque. New
        # orphans can arrive while we drain, hence the outer loop.
        orphans = self._orphans
        while orphans and self._lock.acquire(blocking=False):
            try:
                while orphans:
                    claim = orphans.popleft()
                    if claim._state is GRANTED:
                        self._give_back(claim, claim._units)
            finally:
                self._lock.release()

    # -- changing the manager -------------------------------------------------------------

    def resize(self, new_capacity: Callable[[Quantity], Quantity]) -> None:
        """Set the capacity to ``new_capacity(current capacity)``, computed under the lock so
        that concurrent partial resizes of named resources never undo each other; if it
        raises, nothing changes.

        Growing grants waiters at once; shrinking takes effect as units return. Queued requests
        that no longer fit the capacity are refused with ``ExceedsCapacity``.
        """
        try:
            with self._lock:
                if self._closed:
                    raise ManagerClosed("the manager is closed")
                assert self._capacity is not None
                capacity = new_capacity(self._capacity)
                self._available += capacity - self._capacity
                self._capacity = capacity
                for claim in [claim for claim in self._queue if not claim._units <= capacity]:
                    self._refuse(claim, ExceedsCapacity(self._too_large(claim._units, capacity)))
                self._grant_waiters()
        finally:
            if self._orphans:
                self._return_orphans()

    def close(self) -> None:
        """Refuse every queued request and every later one with ``ManagerClosed``. Idempotent."""
        try:
            with self._lock:
                self._closed = True
                for claim in list(self._queue):
                    self._refuse(claim, ManagerClosed("the manager was closed while waiting"))
        finally:
            if self._orphans:
                self._return_orphans()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- looking ---------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Everything statistics need, copied in one critical section."""
        try:
            with self._lock:
                # A reference that is already dead belongs to a lease the cyclic garbage collector
                # is finalizing; its finalizer returns the units in a moment.
                holders = [reference() for reference in self._holders.values()]
                snapshot = Snapshot(
                    capacity=self._capacity,
                    available=self._available,
                    holders=tuple(_view(claim) for claim in holders if claim is not None),
                    waiters=tuple(map(_view, self._queue)),
                    closed=self._closed,
                    taken_at=_monotonic(),
                )
        finally:
            if self._orphans:
                self._return_orphans()
        return snapshot

    def _too_large(self, request: Quantity, capacity: Quantity) -> str:
        return (
            f"a request for {self._form.render(request)!r} can never be granted: "
            f"the capacity is {self._form.render_all(capacity)!r}"
        )
