"""The observed face of ``acquire_all``: each part of a group reported, after it is taken.

``acquire_all`` (and its async and ``try_`` forms, and the guards built on them) takes its
managers one at a time inside :func:`~allotment._multi._take_all`, whose exception paths
are delicate. So nothing is reported from inside it: while someone observes, its steps are
wrapped by :func:`observe_group`, which reports once they have ended, outside every pool's
section:

- on success, for each part (each request naming a manager), ``requested`` (when its
  manager's turn began) and ``granted`` (when the group is returned: the part is usable
  from then on). Its lease is an :class:`~allotment._observed.ObservedLease`, which reports
  each release;
- on success, for each rate limiter, ``rate_allowed`` with the group's total cost for it
  and its wait: from the group's start to its return, on the limiter's clock (a group's
  requests are all asked at its start, and its rates are taken last);
- on a timeout waiting on a manager, ``requested`` and ``timed_out`` for each part to that
  manager. The parts already taken were given back before the group returned anything,
  unreported: they were never usable, so no hold shows for them.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any, TypeVar

from ._clock import SYSTEM_CLOCK, Clock
from ._core import Pool, Ticket
from ._errors import AcquireTimeout, ExceedsCapacity, ManagerClosed
from ._events import EventOwner, current_owner, emit, new_request_id, now_ns
from ._observed import ObservedLease, _capacity, manager_record, rate_record
from ._waiters import Steps

if TYPE_CHECKING:
    from ._manager import ResourceManager
    from ._multi import LeaseGroup, _Plan, _Step

__all__ = ["observe_group", "observed_part"]

_Result = TypeVar("_Result", bound="LeaseGroup | None")


_parts: contextvars.ContextVar[list[Ticket] | None] = contextvars.ContextVar(
    "allotment_group_parts", default=None
)
"""The tickets of the group this thread or task is taking, in the order their leases were
made: each manager's first (its merged total), then, once it is granted, its other parts."""


def observed_part(ticket: Ticket, pool: Pool, manager: ResourceManager[Any]) -> ObservedLease[Any]:
    """A part's lease while someone observes, noted for :func:`observe_group`."""
    lease: ObservedLease[Any] = ObservedLease(ticket, pool, manager)
    parts = _parts.get()
    if parts is not None:
        parts.append(ticket)
    return lease


def observe_group(taking: Steps[_Result], plan: _Plan) -> Steps[_Result]:
    """``taking``, reported (see the module's docstring)."""
    owner = current_owner()  # in the steps' own thread or task
    began = [(step.of.clock.now(), now_ns()) for step in plan.steps]
    rates_asked = [rate.of.clock.now() for rate in plan.rates]
    parts: list[Ticket] = []
    token = _parts.set(parts)
    try:
        group = yield from taking
    except AcquireTimeout as error:
        _report_timeout(plan, error, began, owner)
        raise
    except BaseException as error:
        _report_failure(plan, parts, error, began, owner)
        raise
    finally:
        _parts.reset(token)
    if group is not None:
        _report_grants(group, owner)
        _report_rates(group, plan, rates_asked, owner)
    return group


def _failed_step(plan: _Plan, parts: list[Ticket]) -> int | None:
    """The position of the step that was being taken when the group failed, read from the
    tickets made: a step's first ticket is made as its turn begins, its others once it is
    granted. ``None`` if no step was being taken (the failure came between two, or, as far
    as can be told, while the group's rates were taken after its last manager)."""
    first = 0  # where the step's first ticket is in ``parts``
    for position, step in enumerate(plan.steps):
        if first >= len(parts):
            return None
        if len(parts) > first + 1:  # its others, or the next step's first: granted
            first += len(step.parts)
            continue
        if len(step.parts) == 1 and position == len(plan.steps) - 1 and plan.rates:
            return None
        return position
    return None


def _report_failure(
    plan: _Plan,
    parts: list[Ticket],
    error: BaseException,
    began: list[tuple[float, int]],
    owner: EventOwner,
) -> None:
    """Report the parts to the manager being taken when the group failed as a request that
    ends with nothing, as :func:`~allotment._observed.report_failure` does for one."""
    position = _failed_step(plan, parts)
    if position is None:
        return
    if isinstance(error, (ManagerClosed, ExceedsCapacity)):
        kind, reason = "refused", type(error).__name__
    else:
        kind, reason = "cancelled", type(error).__name__
    _report_ended(plan.steps[position], began[position], owner, kind, reason)


def _asked_ns(asked: float, clock: Clock) -> int:
    return round(asked * 1e9) if clock is SYSTEM_CLOCK else now_ns()


def _report_grants(group: LeaseGroup, owner: EventOwner) -> None:
    from ._multi import taken_of

    for lease in taken_of(group):
        if not isinstance(lease, ObservedLease) or lease.granted is not None:
            continue  # made while nobody observed; or reported already
        ticket = lease.ticket_of()
        manager = lease.manager
        clock = manager.clock
        pool = lease.pool_of()
        form = pool.form
        request = new_request_id()
        units = form.render(ticket.units)
        capacity = _capacity(pool)
        asked = ticket.since
        emit(
            manager_record(
                "requested", manager.name, _asked_ns(asked, clock), owner, units, request,
                None, None, None, None, capacity,
            )
        )  # fmt: skip
        now = clock.now()
        record = manager_record(
            "granted", manager.name, now_ns(), owner, units, request, now - asked, None,
            None, None, capacity,
        )  # fmt: skip
        lease.grant(record, None if clock is SYSTEM_CLOCK else now)
        emit(record)


def _report_rates(
    group: LeaseGroup, plan: _Plan, rates_asked: list[float], owner: EventOwner
) -> None:
    """Report what each rate limiter of ``group`` allowed: ``rate_allowed``, its cost the
    group's total for it, its wait since the group began (``rates_asked``, one per limiter
    of ``plan``, on its clock)."""
    asked = {
        id(rate.limiter): (rate.of.clock, at)
        for rate, at in zip(plan.rates, rates_asked, strict=True)
    }
    for grant in group.rates:
        clock, at = asked[id(grant.limiter)]
        wait = clock.now() - at
        emit(rate_record("rate_allowed", grant.limiter.name, owner, grant.cost, wait, None))


def _report_timeout(
    plan: _Plan, error: AcquireTimeout, began: list[tuple[float, int]], owner: EventOwner
) -> None:
    for step, asked in zip(plan.steps, began, strict=True):
        if step.manager is error.manager:
            _report_ended(step, asked, owner, "timed_out", None)


def _report_ended(
    step: _Step, began: tuple[float, int], owner: EventOwner, kind: str, reason: str | None
) -> None:
    """Report each part of ``step`` as ``requested``, then ending with nothing (``kind``)."""
    asked, asked_ns = began
    pool, form, clock = step.of.pool, step.of.form, step.of.clock
    capacity = _capacity(pool)
    for _, units in step.parts:
        request = new_request_id()
        amount: Any = form.render(units)
        emit(
            manager_record(
                "requested", step.of.name, asked_ns, owner, amount, request, None,
                None, None, None, capacity,
            )
        )  # fmt: skip
        emit(
            manager_record(
                kind, step.of.name, now_ns(), owner, amount, request,
                clock.now() - asked, None, None, None, capacity, reason,
            )
        )  # fmt: skip
