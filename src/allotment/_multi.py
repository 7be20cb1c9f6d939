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

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, overload

import attrs

from ._amounts import Quantity
from ._claims import Site, caller_site, deadline_after
from ._errors import AcquireTimeout, ExceedsCapacity, LeaseReleased
from ._lease import Lease
from ._lock_order import check_order, note_held
from ._manager import ResourceManager

__all__ = ["LeaseGroup", "acquire_all", "try_acquire_all"]

Request = tuple[ResourceManager[Any], Any]

_current_thread = threading.current_thread
_monotonic = time.monotonic


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
    deadline = deadline_after(timeout)
    group = _take_all(plan, timeout != 0, deadline, timeout, caller_site(1), quietly=False)
    assert group is not None
    return group


def try_acquire_all(requests: Iterable[Request]) -> LeaseGroup | None:
    """Like :func:`acquire_all`, but never waits: return ``None``, holding nothing, if any
    request cannot be granted at once."""
    return _take_all(_plan(requests), False, None, 0, caller_site(1), quietly=True)


@attrs.define
class _Step:
    """What to take from one manager: the merged ``total`` and each request's ``parts``."""

    manager: ResourceManager[Any]
    total: Quantity
    parts: list[tuple[int, Quantity]]
    """``(request index, units)`` for each request to this manager, in request order."""


def _rank_of(step: _Step) -> tuple[int, int]:
    return step.manager._order_key


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
        if type(amount) is int and amount > 0 and manager._scalar:
            units: Quantity = amount
        else:
            units = manager._form.parse(amount, f"amount of request {index}")
        step = steps.get(id(manager))
        if step is None:
            steps[id(manager)] = _Step(manager, units, [(index, units)])
        else:
            step.total = step.total + units
            step.parts.append((index, units))
        count = index + 1
    plan = sorted(steps.values(), key=_rank_of)
    for step in plan:
        capacity = step.manager._allocator._capacity
        assert capacity is not None
        if not step.total <= capacity:
            form = step.manager._form
            raise ExceedsCapacity(
                f"the requests to {step.manager.name!r} add up to "
                f"{form.render(step.total)!r}, which can never be granted: its capacity is "
                f"{form.render_all(capacity)!r}"
            )
    return plan, count


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
        if step.manager._order_policy is not None:
            checked = blocking  # only an acquisition that can wait can deadlock
    if checked:
        check_order([step.manager for step in plan], site, stacklevel=3)
    leases: list[Lease[Any]] = [None] * count  # type: ignore[list-item]  # all filled below
    taken: list[Lease[Any]] = []
    thread, now = _current_thread(), _monotonic()
    try:
        for position, step in enumerate(plan):
            manager = step.manager
            lease_site = site if manager._capture_sites else None
            # One lease takes the merged total, then hands each other request its part.
            first = Lease(step.total, thread, lease_site, now, manager)
            taken.append(first)
            if not manager._allocator.take(step.total, first, blocking, deadline):
                if not quietly:
                    raise _timeout(manager, position, plan, timeout)
                _release_all(taken)
                return None
            parts = step.parts
            leases[parts[0][0]] = first
            if len(parts) > 1:
                others = [Lease(units, thread, lease_site, now, manager) for _, units in parts[1:]]
                taken.extend(others)
                manager._allocator.split(first, others)
                for (index, _), lease in zip(parts[1:], others, strict=True):
                    leases[index] = lease
            if manager._order_policy is not None:
                for lease in taken[len(taken) - len(parts) :]:
                    note_held(lease)
    except BaseException:
        _release_all(taken)
        raise
    return LeaseGroup(tuple(leases), tuple(taken))


def _release_all(leases: Sequence[Lease[Any]]) -> None:
    """Release every lease, last first, even if releasing one raises (then re-raise)."""
    error: BaseException | None = None
    for lease in reversed(leases):
        try:
            lease.manager._allocator.release(lease, None)
        except BaseException as raised:  # keep releasing; report the first failure
            error = error or raised
    if error is not None:
        raise error


def _timeout(
    manager: ResourceManager[Any], position: int, plan: list[_Step], timeout: float | None
) -> AcquireTimeout:
    amount = manager._form.render(plan[position].total)
    before = [earlier.manager.name for earlier in plan[:position]]
    released = f"; released what it had taken from {', '.join(map(repr, before))}" if before else ""
    error = AcquireTimeout(
        f"acquire_all timed out after {timeout} s waiting for {amount!r} from "
        f"{manager.name!r}{released}; {manager._waiting_summary()}"
    )
    error.manager = manager
    return error
