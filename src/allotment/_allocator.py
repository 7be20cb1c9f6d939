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

In *banker mode* (declared claims, see :mod:`._banker`) two rules change, and only there: a
grant must also leave the state safe, and a request from an account that already holds units
may overtake the queue. Without that overtaking, an account that holds units and asks for
more would wait behind a request that needs those very units: a deadlock.
"""

from __future__ import annotations

import collections
import threading
import time
import weakref
from collections.abc import Callable, Sequence

import attrs

from ._amounts import Form, Quantity
from ._banker import Account, account_of, finishable
from ._claims import FINISHED, GRANTED, PENDING, REFUSED, Claim, Site
from ._errors import (
    ClaimClosed,
    ExceedsCapacity,
    ExceedsClaim,
    ManagerClosed,
    ReleaseExceedsHeld,
)

__all__ = ["AccountView", "Allocator", "ClaimView", "Snapshot"]

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
class AccountView:
    """One declared claim's figures, copied under the lock."""

    maximum: Quantity
    held: Quantity
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
    accounts: tuple[AccountView, ...] = ()


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
    - ``_accounts`` is ``None`` unless in banker mode; then it holds the open accounts, the
      state is *safe* (every account could finish, see ``_finishable``: grants, resizes and
      new accounts all keep it so), and the invariant of eager hand-off reads: no queued
      claim that ``_grant_waiters`` may consider fits and is safe.

    ``_capacity`` is ``None`` for a semaphore, whose releases may add units beyond any bound.
    ``_orphans`` receives the claims of leases garbage-collected while held (and the accounts
    of declared claims garbage-collected while open). ``Lease.__del__``
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
    _orphans: collections.deque[Claim | Account] = attrs.field(factory=collections.deque)
    _accounts: dict[Account, None] | None = None
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
                    accounts = self._accounts
                    if accounts is None:
                        grant_now = not self._queue and request <= self._available
                    else:
                        assert claim is not None
                        grant_now = self._may_grant_on_arrival(claim, request)
                    if grant_now:
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
                    if accounts is not None:
                        account = account_of(claim)  # type: ignore[arg-type]
                        if account is not None:
                            account.claims.append(claim)  # type: ignore[arg-type]
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
                    if head is claim or self._accounts is not None:
                        # The head held the others back; those behind it may fit now. In
                        # banker mode any claim may have held others back.
                        self._grant_waiters()
                elif claim._state is GRANTED:
                    self._give_back(claim, claim._units)
        finally:
            if self._orphans:
                self._return_orphans()

    def _grant_waiters(self) -> None:
        """Hand available units to the head of the queue, in order. Lock held."""
        if self._accounts is not None:
            self._grant_waiters_safely()
            return
        queue = self._queue
        now = None
        while queue:
            claim = next(iter(queue))
            if not claim._units <= self._available:
                # Strict FIFO: nobody overtakes the head, however small.
                return
            if now is None:
                now = _monotonic()
            self._grant_queued(claim, now)

    def _grant_queued(self, claim: Claim, now: float) -> None:
        """Grant a queued claim and wake its thread. Lock held."""
        del self._queue[claim]
        self._available -= claim._units
        claim._state = GRANTED
        claim._since = now
        if self._track_holders:
            self._holders[id(claim)] = _weak_reference(claim)
        claim._wake()

    # -- banker mode ----------------------------------------------------------------------

    def _may_grant_on_arrival(self, claim: Claim, request: Quantity) -> bool:
        """Banker mode: check a new request against its account and decide whether it is
        granted at once. Raises before any state changes. Lock held."""
        account = account_of(claim)
        in_progress = False
        if account is not None:
            if not account.open:
                raise ClaimClosed("the declared claim is closed")
            reserved = account.reserved(self._zero)
            if not reserved + request <= account.maximum:
                raise ExceedsClaim(
                    f"a request for {self._form.render(request)!r} would take the claim to "
                    f"{self._form.render(reserved + request)!r}, beyond its declared maximum "
                    f"of {self._form.render(account.maximum)!r}"
                )
            in_progress = bool(account.held(self._zero))
        return (
            (in_progress or not self._queue)
            and request <= self._available
            and self._safe(account, request)
        )

    def _grant_waiters_safely(self) -> None:
        """Banker mode's grant pass. Lock held.

        Requests are considered in arrival order. One that cannot be granted (it does not fit,
        or the state after it would be unsafe) holds back every later request from an account
        holding nothing, as in strict FIFO; requests from accounts that hold units may still
        be granted past it. Some such account can always finish (the state is safe), so they
        keep moving, return their units, and the queue drains.
        """
        held_back = False
        now = _monotonic()
        for claim in list(self._queue):
            account = account_of(claim)
            in_progress = account is not None and bool(account.held(self._zero))
            if held_back and not in_progress:
                continue
            if claim._units <= self._available and self._safe(account, claim._units):
                self._grant_queued(claim, now)
            else:
                held_back = True

    def _safe(self, account: Account | None, request: Quantity) -> bool:
        """Whether granting ``request`` to ``account`` leaves a safe state. Lock held.

        O(holders + accounts^2): banker mode trades speed for deadlock freedom.
        """
        if account is None:
            # Needs nothing more once granted, so it can finish first and give it all back.
            return True
        work = self._available - request
        need = account.maximum - account.held(self._zero) - request
        if not need or need <= work:
            # It could finish first and give back more than it took, after which the order
            # that made the current state safe (an invariant) still works: no search needed.
            return True
        return self._finishable(work, account, request)

    def _finishable(self, work: Quantity, account: Account | None, request: Quantity) -> bool:
        """The full safety test: can every account finish, ``account`` holding ``request``
        more, starting from ``work`` units? Lock held."""
        assert self._accounts is not None
        for reference in self._holders.values():
            holder = reference()
            if holder is not None and account_of(holder) is None:
                work = work + holder._units
        accounts = []
        for each in self._accounts:
            held = each.held(self._zero)
            if each is account:
                held = held + request
            accounts.append((each.maximum - held, held))
        return finishable(work, accounts)

    def _check_banker_capacity(self, capacity: Quantity) -> None:
        """Refuse a new capacity below an open claim's maximum, or one that would leave the
        claims unable to finish (a shrink below what they hold). Lock held."""
        assert self._accounts is not None
        for account in self._accounts:
            if not account.maximum <= capacity:
                raise ExceedsCapacity(
                    f"cannot set the capacity to {self._form.render_all(capacity)!r}: "
                    f"an open claim declares {self._form.render(account.maximum)!r}"
                )
        assert self._capacity is not None
        work = self._available + (capacity - self._capacity)
        if not self._finishable(work, None, self._zero):
            raise ExceedsCapacity(
                f"cannot set the capacity to {self._form.render_all(capacity)!r}: the open "
                "claims could no longer all finish (banker mode shrinks only to safe states)"
            )

    def open_account(
        self, maximum: Quantity, thread: threading.Thread, site: Site | None
    ) -> Account:
        """Open an account that may hold up to ``maximum``. Always safe: an account holding
        nothing can finish last, when everything else has returned."""
        try:
            with self._lock:
                if self._closed:
                    raise ManagerClosed("the manager is closed")
                assert self._accounts is not None
                assert self._capacity is not None
                if not maximum <= self._capacity:
                    raise ExceedsCapacity(
                        f"a claim of {self._form.render(maximum)!r} can never be met: "
                        f"the capacity is {self._form.render_all(self._capacity)!r}"
                    )
                account = Account(maximum, thread, site)
                self._accounts[account] = None
                return account
        finally:
            if self._orphans:
                self._return_orphans()

    def close_account(self, account: Account) -> None:
        """Refuse the account's queued requests, return what it holds, forget it. Idempotent."""
        try:
            with self._lock:
                self._close_account(account)
        finally:
            if self._orphans:
                self._return_orphans()

    def _close_account(self, account: Account) -> None:
        if not account.open:
            return
        account.open = False
        assert self._accounts is not None
        del self._accounts[account]
        claims, account.claims = account.claims, []
        # Refuse first: giving back runs the grant pass, which must not serve this account.
        for claim in claims:
            if claim._state is PENDING and claim in self._queue:
                self._refuse(claim, ClaimClosed("the declared claim was closed while waiting"))
        for claim in claims:
            if claim._state is GRANTED:
                self._give_back(claim, claim._units)
        if self._queue:
            # Its declared need no longer counts: requests it made unsafe may be safe now.
            self._grant_waiters()

    def account_held(self, account: Account) -> Quantity:
        try:
            with self._lock:
                return account.held(self._zero)
        finally:
            if self._orphans:
                self._return_orphans()

    def reclaim_account(self, account: Account) -> None:
        """Close the account of a declared claim garbage-collected while open. Never blocks
        (see ``reclaim``)."""
        self._orphans.append(account)
        self._return_orphans()

    def _refuse(self, claim: Claim, error: BaseException) -> None:
        """Take a queued claim off the queue without a grant and wake it. Lock held."""
        del self._queue[claim]
        claim._state = REFUSED
        claim._error = error
        claim._wake()

    def split(self, claim: Claim, parts: Sequence[Claim]) -> None:
        """Move units from the granted ``claim`` to ``parts``, which become granted holders
        of their own ``_units``; ``claim`` keeps the rest (nonzero, like every part).

        Turns one atomic grant into one lease per request. Nothing changes if ``claim`` is no
        longer granted (an interrupted caller gives everything back anyway).
        """
        try:
            with self._lock:
                if claim._state is not GRANTED:
                    return
                for part in parts:
                    claim._units = claim._units - part._units
                    part._state = GRANTED
                    part._since = claim._since
                    if self._track_holders:
                        self._holders[id(part)] = _weak_reference(part)
        finally:
            if self._orphans:
                self._return_orphans()

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
                    orphan = orphans.popleft()
                    if isinstance(orphan, Account):
                        self._close_account(orphan)
                    elif orphan._state is GRANTED:
                        self._give_back(orphan, orphan._units)
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
                if self._accounts is not None:
                    self._check_banker_capacity(capacity)
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
        snapshot = self.try_snapshot(-1)
        assert snapshot is not None
        return snapshot

    def try_snapshot(self, timeout: float) -> Snapshot | None:
        """``snapshot()``, or ``None`` if the lock cannot be taken within ``timeout`` seconds:
        a diagnostic run from a signal handler may have interrupted the very thread that
        holds it."""
        if not self._lock.acquire(timeout=timeout):
            return None
        try:
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
                accounts=tuple(
                    AccountView(
                        account.maximum, account.held(self._zero), account.thread, account.site
                    )
                    for account in self._accounts or ()
                ),
            )
        finally:
            self._lock.release()
            if self._orphans:
                self._return_orphans()
        return snapshot

    def _too_large(self, request: Quantity, capacity: Quantity) -> str:
        return (
            f"a request for {self._form.render(request)!r} can never be granted: "
            f"the capacity is {self._form.render_all(capacity)!r}"
        )
