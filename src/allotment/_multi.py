"""Taking several managers at once: in rank order, all or nothing, under one deadline.

Deadlock needs a cycle of threads each holding one manager and waiting for another. If every
thread takes managers in one global order, a waiting thread holds only managers ranked below
the one it waits for, so a chain of waiting threads climbs in rank and never closes. So
``acquire_all`` sorts the requests by rank, merges requests to the same manager into one
atomic request (taking a manager twice in a row could wait on itself), and takes them one
manager at a time. Anything that goes wrong on the way (a timeout, a closed manager, an
exception injected while waiting) gives back what was taken, last first.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Literal, overload

import attrs

from ._clock import SYSTEM_CLOCK, Clock, deadline_after
from ._core import Quantity, Site, Ticket, caller_site
from ._errors import AcquireTimeout, ExceedsCapacity, LeaseReleased
from ._lease import Lease
from ._lock_order import check_order, note_held
from ._manager import (
    ManagerParts,
    ResourceManager,
    parts_of,
    records_sites,
    take,
    timeout_summary,
)

__all__ = ["LeaseGroup", "acquire_all", "try_acquire_all"]

Request = tuple[ResourceManager[Any], Any]

_current_thread = threading.current_thread


@attrs.define(eq=False)
class LeaseGroup(Sequence[Lease[Any]]):
    """The leases :func:`acquire_all` granted: ``group[i]`` is the lease for the i-th request.

    A context manager: leaving the block releases every lease, in the reverse of the order
    they were taken, also when the block raises. Each lease also stays releasable on its own.
    """

    _leases: tuple[Lease[Any], ...]
    _taken: tuple[Lease[Any], ...]
    """The same leases in the order they were granted."""

    @overload
    def __getitem__(self, index: int) -> Lease[Any]: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Lease[Any], ...]: ...

    def __getitem__(self, index: int | slice) -> Lease[Any] | tuple[Lease[Any], ...]:
        return self._leases[index]

    def __len__(self) -> int:
        return len(self._leases)

    def __iter__(self) -> Iterator[Lease[Any]]:
        return iter(self._leases)

    @property
    def released(self) -> bool:
        """``True`` once every lease holds nothing."""
        return all(lease.released for lease in self._leases)

    def release(self) -> None:
        """Release every lease still held, the last taken first. Idempotent."""
        _release_all(self._taken)

    def __enter__(self) -> LeaseGroup:
        for lease in self._leases:
            if not lease.released:
                return self
        if self._leases:
            raise LeaseReleased("these leases were already released and hold nothing")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<allotment.LeaseGroup of {len(self._leases)}: {list(self._leases)!r}>"


def acquire_all(requests: Iterable[Request], timeout: float | None = None) -> LeaseGroup:
    """Take every ``(manager, amount)`` request, or nothing; return their leases.

    The managers are taken in rank order (see :class:`ResourceManager`), whatever order the
    requests are written in, and requests to the same manager are merged into one atomic
    request; so any number of threads can call this with any overlapping sets of managers
    without deadlocking each other. All requests share one deadline: ``timeout`` seconds in
    total (``None``: no limit; ``0``: never wait).

    All or nothing: on a timeout (:class:`AcquireTimeout`, whose ``manager`` is the one it was
    waiting on), a closed manager, or any exception while waiting, whatever was already taken
    is released, last first, before the error propagates. Every amount is validated, and
    every merged request checked against its manager's capacity, before anything is taken.
    """
    plan = _plan(requests)
    deadline = deadline_after(_clock_of(plan[0]), timeout)
    return _take_all(plan, timeout != 0, deadline, timeout, caller_site(1), quietly=False)


def try_acquire_all(requests: Iterable[Request]) -> LeaseGroup | None:
    """Like :func:`acquire_all`, but never waits: return ``None``, holding nothing, if any
    request cannot be granted at once."""
    return _take_all(_plan(requests), False, None, 0, caller_site(1), quietly=True)


@attrs.define
class _Step:
    """What to take from one manager: the merged ``total`` and each request's ``parts``."""

    manager: ResourceManager[Any]
    of: ManagerParts
    total: Quantity
    parts: list[tuple[int, Quantity]]
    """``(request index, units)`` for each request to this manager, in request order."""


def _rank_of(step: _Step) -> tuple[int, int]:
    return step.of.node.order_key


def _clock_of(planned: list[_Step]) -> Clock:
    """The clock of the deadline: the first manager's (every manager measures its own
    waits, but one deadline needs one clock)."""
    return planned[0].of.clock if planned else SYSTEM_CLOCK


def _plan(requests: Iterable[Request]) -> tuple[list[_Step], int]:
    """Validate and merge the requests and sort them by rank; also return how many there
    are. Raises before anything is taken."""
    steps: dict[int, _Step] = {}
    count = 0
    for index, request in enumerate(requests):
        if not isinstance(request, tuple) or len(request) != 2:
            raise TypeError(f"request {index} must be a (manager, amount) pair, not {request!r}")
        manager, amount = request
        if not isinstance(manager, ResourceManager):
            raise TypeError(f"request {index} names {manager!r}, which is not a ResourceManager")
        of = parts_of(manager)
        if type(amount) is int and amount > 0 and of.scalar:
            units: Quantity = amount
        else:
            units = of.form.parse(amount, f"amount of request {index}")
        step = steps.get(id(manager))
        if step is None:
            steps[id(manager)] = _Step(manager, of, units, [(index, units)])
        else:
            step.total = step.total + units
            step.parts.append((index, units))
        count = index + 1
    plan = sorted(steps.values(), key=_rank_of)
    for step in plan:
        pool = step.of.pool
        if not pool.fits_capacity(step.total):
            # Checked again under each lock as it is taken; this only fails before taking.
            capacity = pool.capacity
            assert capacity is not None
            form = step.of.form
            raise ExceedsCapacity(
                f"the requests to {step.of.name!r} add up to "
                f"{form.render(step.total)!r}, which can never be granted: its capacity is "
                f"{form.render_all(capacity)!r}"
            )
    return plan, count


@overload
def _take_all(
    planned: tuple[list[_Step], int],
    blocking: bool,
    deadline: float | None,
    timeout: float | None,
    site: Site,
    *,
    quietly: Literal[False],
) -> LeaseGroup: ...


@overload
def _take_all(
    planned: tuple[list[_Step], int],
    blocking: bool,
    deadline: float | None,
    timeout: float | None,
    site: Site,
    *,
    quietly: Literal[True],
) -> LeaseGroup | None: ...


def _take_all(
    planned: tuple[list[_Step], int],
    blocking: bool,
    deadline: float | None,
    timeout: float | None,
    site: Site,
    *,
    quietly: bool,
) -> LeaseGroup | None:
    """Take the plan's steps in order; on a refusal return ``None`` if ``quietly``, else
    raise ``AcquireTimeout``. Either way, nothing stays taken."""
    plan, count = planned
    checked = False
    for step in plan:
        if step.of.node.policy is not None:
            checked = blocking  # only an acquisition that can wait can deadlock
    if checked:
        check_order([step.of.node for step in plan], site, stacklevel=3)
    leases: list[Lease[Any]] = [None] * count  # type: ignore[list-item]  # all filled below
    taken: list[Lease[Any]] = []
    thread = _current_thread()
    try:
        for position, step in enumerate(plan):
            of = step.of
            lease_site = site if records_sites(of) else None
            # One ticket takes the merged total, then hands each other request its part.
            first = Ticket(step.total, thread, lease_site, of.clock.now())
            first_lease = Lease(first, of.pool, step.manager)
            taken.append(first_lease)
            # The order was checked above, for all the managers at once.
            if not take(of, first, first_lease, blocking, deadline):
                if not quietly:
                    raise _timeout(step.manager, position, plan, timeout)
                _release_all(taken)
                return None
            parts = step.parts
            leases[parts[0][0]] = first_lease
            if len(parts) > 1:
                others = [Ticket(units, thread, lease_site, first.since) for _, units in parts[1:]]
                other_leases = [Lease(ticket, of.pool, step.manager) for ticket in others]
                taken.extend(other_leases)
                of.pool.split(first, others)
                for (index, _), ticket, lease in zip(parts[1:], others, other_leases, strict=True):
                    leases[index] = lease
                    if of.node.policy is not None:
                        note_held(lease, of.node, ticket.site)
        return LeaseGroup(tuple(leases), tuple(taken))
    except BaseException:
        _release_all(taken)
        raise


def _release_all(leases: Sequence[Lease[Any]]) -> None:
    """Release every lease, last first, even if releasing one raises (then re-raise)."""
    error: BaseException | None = None
    for lease in reversed(leases):
        try:
            lease.release()
        except BaseException as raised:  # keep releasing; report the first failure
            error = error or raised
            # It may have landed before that release did anything: release again (idempotent).
            with contextlib.suppress(BaseException):
                lease.release()
    if error is not None:
        raise error


def _timeout(
    manager: ResourceManager[Any], position: int, plan: list[_Step], timeout: float | None
) -> AcquireTimeout:
    of = plan[position].of
    amount = of.form.render(plan[position].total)
    before = [earlier.of.name for earlier in plan[:position]]
    released = f"; released what it had taken from {', '.join(map(repr, before))}" if before else ""
    error = AcquireTimeout(
        f"acquire_all timed out after {timeout} s waiting for {amount!r} from "
        f"{of.name!r}{released}; {timeout_summary(of)}"
    )
    error.manager = manager
    return error
