"""The observed face of declared claims: a claim's acquisitions reported as a manager's.

A claim (banker mode, :mod:`._declared`) takes through the same ``take`` as a manager's
helpers; while someone observes, each acquisition is wrapped here and reported after the
pool call returns, never under the lock: ``granted`` (with ``requested`` before it, timed
as it asked, if it had to queue), or how it ended with nothing. Its lease is an
:class:`~allotment._observed.ObservedLease`, which reports its releases; closing the claim
reports what the close gave back for each lease it still held.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from ._clock import SYSTEM_CLOCK
from ._core import Ticket
from ._events import EventOwner, current_owner, handing, new_request_id, now_ns
from ._lease import Lease
from ._observed import (
    ObservedLease,
    report_failure,
    report_grant,
    report_refused_try,
    report_requested,
)

if TYPE_CHECKING:
    from ._manager import ResourceManager

__all__ = ["report_close", "take_reported", "take_reported_async"]


def take_reported(
    manager: ResourceManager[Any],
    lease: ObservedLease[Any],
    taking: Callable[[], bool],
    *,
    waits: bool = True,
) -> bool:
    """``taking()`` (a claim's ``take`` of ``lease``'s ticket), reported; with ``waits``
    false (``try_acquire``) finding no room is a refusal, else a timeout."""
    ticket = lease.ticket_of()
    owner, request, asked_ns = current_owner(), new_request_id(), now_ns()
    token = handing.set(request)  # a withdrawal hands units on for this request
    try:
        granted = taking()
    except BaseException as error:
        _report_end(manager, lease, ticket, owner, request, asked_ns, error, granted=False)
        raise
    finally:
        handing.reset(token)
    if granted or waits:
        _report_end(manager, lease, ticket, owner, request, asked_ns, None, granted=granted)
    else:
        report_refused_try(manager, owner, ticket)
    return granted


async def take_reported_async(
    manager: ResourceManager[Any], lease: ObservedLease[Any], taking: Awaitable[bool]
) -> bool:
    """:func:`take_reported` for a task."""
    ticket = lease.ticket_of()
    owner, request, asked_ns = current_owner(), new_request_id(), now_ns()
    token = handing.set(request)
    try:
        granted = await taking
    except BaseException as error:
        _report_end(manager, lease, ticket, owner, request, asked_ns, error, granted=False)
        raise
    finally:
        handing.reset(token)
    _report_end(manager, lease, ticket, owner, request, asked_ns, None, granted=granted)
    return granted


def _report_end(  # noqa: PLR0917 - private, its callers' own arguments
    manager: ResourceManager[Any],
    lease: ObservedLease[Any],
    ticket: Ticket,
    owner: EventOwner,
    request: int,
    asked_ns: int,
    error: BaseException | None,
    *,
    granted: bool,
) -> None:
    asked = ticket.since
    if hasattr(ticket, "waiter"):  # it queued: its wait began as it asked
        report_requested(manager, owner, ticket, request, asked_ns)
    if granted:
        clock = manager.clock
        now = clock.now()
        report_grant(
            lease, ticket, owner, request, now - asked, None if clock is SYSTEM_CLOCK else now
        )
    else:
        report_failure(manager, owner, ticket, request, asked, error)


def report_close(leases: Sequence[Lease[Any]], closing: Callable[[], None]) -> None:
    """``closing()`` (a claim's close, which gives back what its leases hold), reporting
    each observed lease's release."""
    began_ns = now_ns()
    held = [lease for lease in leases if isinstance(lease, ObservedLease) and not lease.released]
    closing()
    for lease in held:
        lease.report_given_back(began_ns)
