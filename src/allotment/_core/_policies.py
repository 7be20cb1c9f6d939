"""Admission policies: who a pool grants, and when. The pool does the bookkeeping.

:class:`FifoPolicy` is strict first come, first served. :class:`BankerPolicy` is banker mode:
declared claims (*accounts*) whose grants always leave a safe state. Each runs only under the
pool's lock, reads the pool's state, and changes it only through
:meth:`MemoryPool.grant_queued` and :meth:`MemoryPool.refuse`.

The banker's algorithm: a manager in banker mode knows, for each open account, the most it may
ever hold at once. A grant is *safe* when, after it, there is still an order in which every
account could be given the rest of its maximum and finish: each in turn needs no more than
what is available plus what the accounts before it gave back. Granting only safe requests
means declared users can never deadlock, even when each holds units while asking for more.
Requests made without a claim need nothing more once granted, so they never make a state
unsafe.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar, Literal

import attrs

from .._errors import ClaimClosed, ExceedsCapacity, ExceedsClaim, ManagerClosed
from ._pool import AccountView
from ._tickets import GRANTED, PENDING, Site, Ticket, Waiter

if TYPE_CHECKING:
    from ._amounts import Quantity
    from ._pool import MemoryPool

__all__ = [
    "FAIRNESS",
    "Account",
    "AccountTicket",
    "BankerPolicy",
    "BoundedPolicy",
    "Fairness",
    "FifoPolicy",
    "fairness_policy",
    "finishable",
]

Fairness = Literal["strict", "bounded"]
"""How a manager or semaphore orders its grants (``fairness=``)."""
FAIRNESS = ("strict", "bounded")
"""The words ``fairness=`` takes."""
DEFAULT_FAIRNESS_BOUND = 0.001
"""Seconds a waiter may be overtaken for in bounded mode, unless told otherwise (Go's
``sync.Mutex`` switches to strict hand-off after the same millisecond)."""


@attrs.frozen
class FifoPolicy:
    """Strict FIFO: granted on arrival only when nobody is queued and it fits; afterwards only
    the head of the queue, so a large request holds back smaller ones behind it and is never
    starved."""

    fifo_arrival: ClassVar[bool] = True
    nominates: ClassVar[bool] = False

    def admits(self, pool: MemoryPool, ticket: Ticket) -> bool:
        return not pool.queue and ticket.units <= pool.available

    def grant_waiters(self, pool: MemoryPool, woken: list[Waiter]) -> None:
        queue = pool.queue
        while queue:
            head = next(iter(queue))
            if not head.units <= pool.available:
                return  # nobody overtakes the head, however small
            pool.grant_queued(head, woken)

    def after_withdraw(self, pool: MemoryPool, was_head: bool) -> bool:
        # Only the head held the others back.
        return was_head

    def check_capacity(self, pool: MemoryPool, capacity: Quantity) -> None:
        pass

    def views(self, pool: MemoryPool) -> tuple[AccountView, ...]:
        return ()


@attrs.frozen
class BoundedPolicy:
    """Bounded fairness (``fairness="bounded"``): FIFO, except that free units may be taken by
    a request that did not wait for them while the head of the queue has waited less than
    ``bound`` seconds; past it, strict hand-off, as in :class:`FifoPolicy`. This is Go's
    ``sync.Mutex`` with its starvation mode.

    What strict FIFO pays for at every hand-off under contention, a wake-up and a context
    switch before the units are used again, a running thread skips here: a releasing thread
    that asks again takes its units back at once. In exchange a waiter may be overtaken, for
    at most ``bound`` seconds plus the hold that is under way when the bound passes.

    The rules, all under the pool's lock:

    - **Arrival** (``acquire``, ``try_acquire``, a semaphore's ``take``) is granted if it fits
      and nobody waits, or the head is *young* (has waited less than ``bound``).
    - **Units made free** (a release, a grow, a withdrawal) go to the head by hand-off if it
      is *old*, as in strict mode, and then to the next old heads. While the head is young,
      they stay free and the queued requests they fit, in order, are *nominated*: woken
      without a grant. A nominated requester claims its units under the lock when it runs
      (:meth:`may_claim`); if an arrival took them first, it sleeps again.
    - A large head is never starved: once it is old, nothing overtakes it, and what returns
      accumulates for it.

    The pool's eager hand-off invariant becomes: the grant pass would grant nobody now, and
    if the head fits what is free, it is young and has been nominated since the units became
    free (or is being woken by the thread that freed them).
    """

    bound: float
    fifo_arrival: ClassVar[bool] = False
    nominates: ClassVar[bool] = True

    def young(self, pool: MemoryPool) -> bool:
        """Whether the head of the (nonempty) queue has waited less than the bound."""
        head = next(iter(pool.queue))
        return pool.now() - head.since < self.bound

    def admits(self, pool: MemoryPool, ticket: Ticket) -> bool:
        return ticket.units <= pool.available and (not pool.queue or self.young(pool))

    def may_barge(self, pool: MemoryPool) -> bool:
        """Whether a request that did not queue may take free units past the queue."""
        return self.young(pool)

    def may_claim(self, pool: MemoryPool, ticket: Ticket) -> bool:
        """Whether a queued, nominated ``ticket`` may take its units now: they are free, and
        it is the head or the head is young (it may do what an arrival may)."""
        if not ticket.units <= pool.available:
            return False
        return next(iter(pool.queue)) is ticket or self.young(pool)

    def grant_waiters(self, pool: MemoryPool, woken: list[Waiter]) -> None:
        queue = pool.queue
        while True:
            if not queue:
                break
            head = next(iter(queue))
            if not head.units <= pool.available:
                break  # nobody overtakes the head from inside the queue
            if pool.now() - head.since < self.bound:
                self._nominate(pool, woken)
                break
            pool.grant_queued(head, woken)  # old: strict hand-off

    def _nominate(self, pool: MemoryPool, woken: list[Waiter]) -> None:
        """Wake, without a grant, the queued tickets that the free units fit, in order
        (no mutation: an exception here leaves the pool as it was, and the restore pass
        nominates again). One already woken and not yet back (``waiter.woken``, which only
        its own claim clears, under this lock) will claim after this section anyway: waking
        it again would cost a failed release per operation while it waits for a CPU."""
        free = pool.available
        for ticket in pool.queue:
            if not ticket.units <= free:
                break
            free = free - ticket.units
            waiter = ticket.waiter
            woken.extend(() if getattr(waiter, "woken", False) else (waiter,))

    def after_withdraw(self, pool: MemoryPool, was_head: bool) -> bool:
        # A nominated ticket that leaves may leave free units another one fits.
        return True

    def check_capacity(self, pool: MemoryPool, capacity: Quantity) -> None:
        pass

    def views(self, pool: MemoryPool) -> tuple[AccountView, ...]:
        return ()


def fairness_policy(fairness: object, fairness_bound: object) -> FifoPolicy | BoundedPolicy:
    """The policy for ``fairness=`` and ``fairness_bound=``; raises ``TypeError`` or
    ``ValueError`` for anything else, before anything is made."""
    if type(fairness) is not str:
        raise TypeError(f"fairness must be 'strict' or 'bounded', not {fairness!r}")
    if fairness not in FAIRNESS:
        raise ValueError(f"fairness must be 'strict' or 'bounded', not {fairness!r}")
    if fairness == "strict":
        if fairness_bound is not None:
            raise ValueError(
                "fairness_bound applies only to fairness='bounded' (strict FIFO never lets "
                "anyone overtake a waiter)"
            )
        return FifoPolicy()
    if fairness_bound is None:
        return BoundedPolicy(DEFAULT_FAIRNESS_BOUND)
    if type(fairness_bound) not in (int, float):
        raise TypeError(
            f"fairness_bound must be a number of seconds (int or float), not "
            f"{type(fairness_bound).__name__} ({fairness_bound!r})"
        )
    bound = float(fairness_bound)  # type: ignore[arg-type]
    if not 0 < bound < math.inf:
        raise ValueError(
            f"fairness_bound must be a positive, finite number of seconds, not {fairness_bound!r}"
        )
    return BoundedPolicy(bound)


@attrs.define(eq=False)
class Account:
    """One declared claim's bookkeeping; guarded by its pool's lock.

    ``tickets`` are the requests made through the account, in the order they were made; it
    may also hold tickets that never reached the queue (an exception cut their arrival short)
    or have finished: those count for nothing and are pruned as the account is read.
    ``thread`` and ``site`` say who declared it, for statistics.
    """

    maximum: Quantity
    thread: threading.Thread
    site: Site | None
    tickets: list[Ticket] = attrs.field(factory=list)
    open: bool = False
    """Set when the policy registers the account, cleared when it closes it."""

    def held(self, zero: Quantity) -> Quantity:
        """What the account's granted tickets hold now."""
        total = zero
        for ticket in self.tickets:
            if ticket.state is GRANTED:
                total = total + ticket.units
        return total

    def reserved(self, pool: MemoryPool) -> Quantity:
        """What it holds plus what it waits for in the queue; prunes finished tickets."""
        total = pool.zero
        kept = []
        for ticket in self.tickets:
            state = ticket.state
            if state is GRANTED or (state is PENDING and ticket in pool.queue):
                total = total + ticket.units
                kept.append(ticket)
            elif state is PENDING:
                kept.append(ticket)  # arriving now
        self.tickets = kept
        return total


@attrs.define(eq=False)
class AccountTicket(Ticket):
    """A ticket made through a declared claim: the policy charges it to ``account``."""

    account: Account = attrs.field(kw_only=True)


def _account_of(ticket: Ticket) -> Account | None:
    return ticket.account if isinstance(ticket, AccountTicket) else None


@attrs.define(eq=False)
class BankerPolicy:
    """Banker mode. Two rules differ from FIFO, and only here: a grant must also leave the
    state safe, and a request from an account that already holds units may overtake the
    queue. Without that overtaking, an account that holds units and asks for more would wait
    behind a request that needs those very units: a deadlock.

    ``accounts`` holds the open accounts (guarded by the pool's lock). The state is always
    safe (grants, resizes and new accounts all keep it so), and eager hand-off reads: no
    queued ticket that the grant pass may consider fits and is safe.
    """

    accounts: dict[Account, None] = attrs.field(factory=dict)
    fifo_arrival: ClassVar[bool] = False
    nominates: ClassVar[bool] = False

    def admits(self, pool: MemoryPool, ticket: Ticket) -> bool:
        account = _account_of(ticket)
        request = ticket.units
        in_progress = False
        if account is not None:
            if not account.open:
                raise ClaimClosed("the declared claim is closed")
            reserved = account.reserved(pool)
            if not reserved + request <= account.maximum:
                form = pool.form
                raise ExceedsClaim(
                    f"a request for {form.render(request)!r} would take the claim to "
                    f"{form.render(reserved + request)!r}, beyond its declared maximum "
                    f"of {form.render(account.maximum)!r}"
                )
            in_progress = bool(account.held(pool.zero))
        granted = (
            (in_progress or not pool.queue)
            and request <= pool.available
            and self._safe(pool, account, request)
        )
        if account is not None:
            # Last, and harmless if the arrival goes no further: an unqueued, ungranted
            # ticket counts for nothing.
            account.tickets.append(ticket)
        return granted

    def grant_waiters(self, pool: MemoryPool, woken: list[Waiter]) -> None:
        """Requests are considered in arrival order. One that cannot be granted (it does not
        fit, or the state after it would be unsafe) holds back every later request from an
        account holding nothing, as in strict FIFO; requests from accounts that hold units
        may still be granted past it. Some such account can always finish (the state is
        safe), so they keep moving, return their units, and the queue drains."""
        held_back = False
        for ticket in list(pool.queue):
            account = _account_of(ticket)
            if account is not None and not account.open:
                pool.refuse(
                    ticket, ClaimClosed("the declared claim was closed while waiting"), woken
                )
                continue
            in_progress = account is not None and bool(account.held(pool.zero))
            if held_back and not in_progress:
                continue
            if ticket.units <= pool.available and self._safe(pool, account, ticket.units):
                pool.grant_queued(ticket, woken)
            else:
                held_back = True

    def after_withdraw(self, pool: MemoryPool, was_head: bool) -> bool:
        return True  # any queued request may have held others back

    def check_capacity(self, pool: MemoryPool, capacity: Quantity) -> None:
        """Refuse a capacity below an open claim's maximum, or one that would leave the
        claims unable to finish (a shrink below what they hold)."""
        form = pool.form
        for account in self.accounts:
            if not account.maximum <= capacity:
                raise ExceedsCapacity(
                    f"cannot set the capacity to {form.render_all(capacity)!r}: "
                    f"an open claim declares {form.render(account.maximum)!r}"
                )
        assert pool.capacity is not None
        work = pool.available + (capacity - pool.capacity)
        if not self._finishable(pool, work, None, pool.zero):
            raise ExceedsCapacity(
                f"cannot set the capacity to {form.render_all(capacity)!r}: the open "
                "claims could no longer all finish (banker mode shrinks only to safe states)"
            )

    def views(self, pool: MemoryPool) -> tuple[AccountView, ...]:
        return tuple(
            AccountView(account.maximum, account.held(pool.zero), account.thread, account.site)
            for account in self.accounts
        )

    def _safe(self, pool: MemoryPool, account: Account | None, request: Quantity) -> bool:
        """Whether granting ``request`` to ``account`` leaves a safe state.

        O(holders + accounts^2): banker mode trades speed for deadlock freedom.
        """
        if account is None:
            # Needs nothing more once granted, so it can finish first and give it all back.
            return True
        work = pool.available - request
        need = account.maximum - account.held(pool.zero) - request
        if not need or need <= work:
            # It could finish first and give back more than it took, after which the order
            # that made the current state safe (an invariant) still works: no search needed.
            return True
        return self._finishable(pool, work, account, request)

    def _finishable(
        self, pool: MemoryPool, work: Quantity, account: Account | None, request: Quantity
    ) -> bool:
        """The full safety test: can every account finish, ``account`` holding ``request``
        more, starting from ``work`` units?"""
        for holder in pool.holders or ():
            if _account_of(holder) is None:
                work = work + holder.units
        needs = []
        for each in self.accounts:
            held = each.held(pool.zero)
            if each is account:
                held = held + request
            needs.append((each.maximum - held, held))
        return finishable(work, needs)

    # -- the accounts' own operations, run through MemoryPool.policy_call ----------------------

    def open_account(self, pool: MemoryPool, account: Account, woken: list[Waiter]) -> None:
        """Open ``account`` (made, not yet open, by the face that owns it, so that an
        exception at any point leaves it either unopened or owned). Always safe: an account
        holding nothing can finish last, when everything else has returned."""
        if pool.closed:
            raise ManagerClosed("the manager is closed")
        assert pool.capacity is not None
        maximum = account.maximum
        if not maximum <= pool.capacity:
            raise ExceedsCapacity(
                f"a claim of {pool.form.render(maximum)!r} can never be met: "
                f"the capacity is {pool.form.render_all(pool.capacity)!r}"
            )
        account.open = True
        self.accounts[account] = None

    def close_account(self, pool: MemoryPool, account: Account, woken: list[Waiter]) -> None:
        """Refuse the account's queued requests, return what it holds, forget it. Idempotent.

        The grant pass refuses the queued requests of closed accounts, so marking the account
        closed first makes any later step, and any pass an exception interrupts, safe."""
        if not account.open:
            self.accounts.pop(account, None)
            return
        tickets = list(account.tickets)
        account.open = False
        self.accounts.pop(account, None)
        for ticket in tickets:
            pool.give_back(ticket, woken)
        account.tickets = []
        if pool.queue:
            # Its declared need no longer counts: requests it made unsafe may be safe now.
            self.grant_waiters(pool, woken)

    def account_held(self, pool: MemoryPool, account: Account) -> Quantity:
        return account.held(pool.zero)


def finishable(work: Quantity, accounts: Iterable[tuple[Quantity, Quantity]]) -> bool:
    """Whether every account, given as ``(still needed, held)``, can finish in some order
    starting with ``work`` units available.

    An account that can finish returns what it holds, so the order never matters for the
    answer: finishing one only ever lets more finish. O(n^2) comparisons for n accounts.
    """
    remaining = list(accounts)
    while remaining:
        waiting = []
        for needed, held in remaining:
            # A zero need fits even a shrink's debt; `<=` compares only nonzero components.
            if not needed or needed <= work:
                work = work + held
            else:
                waiting.append((needed, held))
        if len(waiting) == len(remaining):
            return False
        remaining = waiting
    return True
