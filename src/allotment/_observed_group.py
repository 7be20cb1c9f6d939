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
- on a timeout waiting on a manager, ``requested`` and ``timed_out`` for each part to that
  manager. The parts already taken were given back before the group returned anything,
  unreported: they were never usable, so no hold shows for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from ._clock import SYSTEM_CLOCK, Clock
from ._errors import AcquireTimeout
from ._events import EventOwner, current_owner, emit, new_request_id, now_ns
from ._observed import ObservedLease, _capacity, manager_record
from ._waiters import Steps

if TYPE_CHECKING:
    from ._multi import LeaseGroup, _Plan

__all__ = ["observe_group"]

_Result = TypeVar("_Result", bound="LeaseGroup | None")


def observe_group(taking: Steps[_Result], plan: _Plan) -> Steps[_Result]:
    """``taking``, reported (see the module's docstring)."""
    owner = current_owner()  # in the steps' own thread or task
    began = [(step.of.clock.now(), now_ns()) for step in plan.steps]
    try:
        group = yield from taking
    except AcquireTimeout as error:
        _report_timeout(plan, error, began, owner)
        raise
    if group is not None:
        _report_grants(group, owner)
    return group


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


def _report_timeout(
    plan: _Plan, error: AcquireTimeout, began: list[tuple[float, int]], owner: EventOwner
) -> None:
    for step, (asked, asked_ns) in zip(plan.steps, began, strict=True):
        if step.manager is not error.manager:
            continue
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
                    "timed_out", step.of.name, now_ns(), owner, amount, request,
                    clock.now() - asked, None, None, None, capacity,
                )
            )  # fmt: skip
