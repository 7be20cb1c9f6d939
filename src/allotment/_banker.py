"""The banker's algorithm: the bookkeeping and safety test behind declared claims.

A manager in banker mode knows, for each open *account* (a declared claim), the most it may
ever hold at once. A grant is *safe* when, after it, there is still an order in which every
account could be given the rest of its maximum and finish: each in turn needs no more than what
is available plus what the accounts before it gave back. Granting only safe requests means
declared users can never deadlock, even when each holds units while asking for more.

Requests made without a claim count as accounts whose maximum is what they ask for: they need
nothing more once granted, so they never make a state unsafe.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import attrs

from ._amounts import Quantity
from ._claims import GRANTED, PENDING, Claim, Site

__all__ = ["Account", "account_of", "finishable"]


@attrs.define(eq=False)
class Account:
    """One declared claim's bookkeeping; guarded by its allocator's lock.

    ``claims`` are the requests made through the account that are pending or granted, in the
    order they were made; released ones are pruned as the account is read. ``thread`` and
    ``site`` say who declared it, for statistics.
    """

    maximum: Quantity
    thread: threading.Thread
    site: Site | None
    claims: list[Claim] = attrs.field(factory=list)
    open: bool = True

    def held(self, zero: Quantity) -> Quantity:
        """What the account's granted claims hold now."""
        return self._total(zero, include_pending=False)

    def reserved(self, zero: Quantity) -> Quantity:
        """What it holds plus what it has asked for and still waits for."""
        return self._total(zero, include_pending=True)

    def _total(self, zero: Quantity, *, include_pending: bool) -> Quantity:
        total = zero
        finished = False
        for claim in self.claims:
            state = claim._state
            if state is GRANTED or (include_pending and state is PENDING):
                total = total + claim._units
            elif state is not PENDING:
                finished = True
        if finished:
            # Runs on every safety test, so it rebuilds the list only when there is garbage.
            self.claims = [claim for claim in self.claims if claim._state in (GRANTED, PENDING)]
        return total


def account_of(claim: Claim) -> Account | None:
    """The account ``claim`` was made through, or ``None`` for an ordinary request."""
    account: Account | None = getattr(claim, "_account", None)
    return account


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
