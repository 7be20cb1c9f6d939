"""Statistics: frozen snapshots of a manager that answer "who holds what, who waits, why?"."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic

import attrs

from ._core import Amount, Form, Snapshot, describe_site

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "ClaimInfo",
    "HolderInfo",
    "ManagerStatistics",
    "RateStatistics",
    "RateWaiterInfo",
    "WaiterInfo",
    "statistics_from",
]


@attrs.frozen
class HolderInfo(Generic[Amount]):
    """One outstanding lease."""

    amounts: Amount
    """What the lease holds now (after any partial releases)."""
    thread_name: str
    """The name of the thread that acquired the lease (not necessarily the one releasing it)."""
    thread_id: int | None
    """That thread's ``threading.get_ident()``."""
    age: float
    """Seconds since the lease was granted."""
    site: str | None
    """Where it was acquired (``"file.py:42 in function"``), or ``None`` if not recorded."""
    task_name: str | None = None
    """The name of the asyncio task that acquired the lease, or ``None`` for a thread (then
    ``thread_name`` is the thread; for a task it is the thread running the task's loop)."""


@attrs.frozen
class WaiterInfo(Generic[Amount]):
    """One queued request."""

    requested: Amount
    """What the request asks for."""
    thread_name: str
    """The name of the waiting thread."""
    thread_id: int | None
    """That thread's ``threading.get_ident()``."""
    waited: float
    """Seconds spent in the queue so far."""
    site: str | None
    """Where the request was made, or ``None`` if not recorded."""
    task_name: str | None = None
    """The name of the asyncio task that waits, or ``None`` for a thread (then
    ``thread_name`` is the thread; for a task it is the thread running the task's loop)."""


@attrs.frozen
class ClaimInfo(Generic[Amount]):
    """One open declared claim (banker mode)."""

    maximum: Amount
    """The most the claim may hold at once."""
    held: Amount
    """What its leases hold now."""
    thread_name: str
    """The name of the thread that declared it."""
    thread_id: int | None
    """That thread's ``threading.get_ident()``."""
    site: str | None
    """Where it was declared, or ``None`` if not recorded."""


@attrs.frozen
class ManagerStatistics(Generic[Amount]):
    """A consistent picture of a manager, taken in one critical section.

    ``capacity``, ``available`` and ``in_use`` are ints for a manager built from an int, and
    dicts listing every resource for a manager of named resources. ``in_use`` may exceed
    ``capacity`` after a shrink, until enough leases return; ``available`` is then zero.
    ``str()`` of a snapshot is a readable report.
    """

    name: str
    capacity: Amount
    available: Amount
    in_use: Amount
    holders: tuple[HolderInfo[Amount], ...]
    """One record per outstanding lease, oldest grant first."""
    waiters: tuple[WaiterInfo[Amount], ...]
    """One record per queued request, in queue order: the first is served next."""
    closed: bool
    claims: tuple[ClaimInfo[Amount], ...] = ()
    """Banker mode: one record per open declared claim, oldest first."""
    other_holders: int = 0
    """A manager with a backend: leases held by other processes (counted in ``in_use``;
    ``holders`` lists this process's only)."""
    other_waiters: int = 0
    """A manager with a backend: requests other processes have queued (``waiters`` lists
    this process's only)."""

    def __str__(self) -> str:
        state = " (closed)" if self.closed else ""
        elsewhere = " (and {} in other processes)"
        lines = [
            f"{self.name}{state}: capacity {self.capacity!r}, in use {self.in_use!r}, "
            f"available {self.available!r}",
            f"  {len(self.holders)} holder(s)"
            + (elsewhere.format(self.other_holders) if self.other_holders else "")
            + ":",
        ]
        for holder in self.holders:
            lines.append(
                f"    {holder.amounts!r} held {holder.age:.3f} s by {_owner(holder)}"
                + (f", acquired at {holder.site}" if holder.site else "")
            )
        lines.append(
            f"  {len(self.waiters)} waiter(s)"
            + (elsewhere.format(self.other_waiters) if self.other_waiters else "")
            + ", next served first:"
        )
        for position, waiter in enumerate(self.waiters, 1):
            lines.append(
                f"    {position}. {waiter.requested!r} waiting {waiter.waited:.3f} s: "
                f"{_owner(waiter)}" + (f", at {waiter.site}" if waiter.site else "")
            )
        if self.claims:
            lines.append(f"  {len(self.claims)} declared claim(s):")
        for claim in self.claims:
            lines.append(
                f"    holds {claim.held!r} of at most {claim.maximum!r}: {claim.thread_name}"
                + (f", declared at {claim.site}" if claim.site else "")
            )
        return "\n".join(lines)


@attrs.frozen
class RateWaiterInfo:
    """One caller queued on a rate limiter (or one reservation whose time has not come)."""

    cost: int
    """The units it asks for."""
    thread_name: str
    """The name of the thread that asked."""
    thread_id: int | None
    """That thread's ``threading.get_ident()``."""
    waited: float
    """Seconds since it asked."""
    allowed_in: float
    """Seconds until it is planned to be allowed (``0.0`` if that time has come)."""
    reservation: bool
    """``True`` for a reservation (nobody sleeps on it), ``False`` for a waiting thread or
    task."""
    task_name: str | None = None
    """The name of the asyncio task that waits, or ``None`` for a thread (then
    ``thread_name`` is the thread; for a task it is the thread running the task's loop)."""


@attrs.frozen
class RateStatistics:
    """A consistent picture of a rate limiter, taken in one short critical section.

    For a :class:`~allotment.WindowLimiter`, ``rate`` and ``burst`` are both its ``limit``.
    """

    name: str
    kind: str
    """``"gcra"`` (:class:`~allotment.RateLimiter`) or ``"window"``."""
    rate: float
    per: float
    burst: int
    available: int
    """Units a caller could take now without waiting (``0`` while anyone is queued)."""
    next_allowed: float
    """When one more unit, queued behind everyone, would be allowed (clock seconds)."""
    waiters: tuple[RateWaiterInfo, ...]
    """Queued callers and pending reservations, in the order they will be allowed."""
    allowed: int
    """Requests allowed so far (``allowed_units`` counts their units)."""
    allowed_units: int
    refused: int
    """Requests refused: a ``try_acquire`` that failed, a timeout (at once or later)."""
    waited: int
    """Requests that had to queue (including reservations)."""
    charged: int
    """Units spent through ``charge``."""

    def __str__(self) -> str:
        lines = [
            f"{self.name}: {self.rate:g} per {self.per:g} s, burst {self.burst}; "
            f"available {self.available}, allowed {self.allowed} ({self.allowed_units} units), "
            f"refused {self.refused}, waited {self.waited}, charged {self.charged}",
            f"  {len(self.waiters)} waiter(s), next allowed first:",
        ]
        for position, waiter in enumerate(self.waiters, 1):
            kind = "reservation" if waiter.reservation else _owner(waiter)
            lines.append(
                f"    {position}. {waiter.cost} unit(s), allowed in {waiter.allowed_in:.3f} s, "
                f"waiting {waiter.waited:.3f} s: {kind}"
            )
        return "\n".join(lines)


def statistics_from(name: str, form: Form[Amount], snapshot: Snapshot) -> ManagerStatistics[Amount]:
    """Render a pool snapshot in a manager's public form."""
    assert snapshot.capacity is not None
    capacity = snapshot.capacity
    now = snapshot.taken_at
    return ManagerStatistics(
        name=name,
        capacity=form.render_all(capacity),
        # A negative figure is a shrink's debt, which in_use already shows.
        available=form.render_all(snapshot.available, floor=0),
        in_use=form.render_all(capacity - snapshot.available),
        holders=tuple(
            HolderInfo(
                amounts=form.render(view.units),
                thread_name=view.thread.name,
                thread_id=view.thread.ident,
                age=now - view.since,
                site=describe_site(view.site),
                task_name=_task_name(view.task),
            )
            for view in snapshot.holders
        ),
        waiters=tuple(
            WaiterInfo(
                requested=form.render(view.units),
                thread_name=view.thread.name,
                thread_id=view.thread.ident,
                waited=now - view.since,
                site=describe_site(view.site),
                task_name=_task_name(view.task),
            )
            for view in snapshot.waiters
        ),
        closed=snapshot.closed,
        other_holders=snapshot.other_holders,
        other_waiters=snapshot.other_waiters,
        claims=tuple(
            ClaimInfo(
                maximum=form.render(view.maximum),
                held=form.render(view.held),
                thread_name=view.thread.name,
                thread_id=view.thread.ident,
                site=describe_site(view.site),
            )
            for view in snapshot.accounts
        ),
    )


def _task_name(task: asyncio.Task[Any] | None) -> str | None:
    return None if task is None else task.get_name()


def _owner(info: HolderInfo[Any] | WaiterInfo[Any] | RateWaiterInfo) -> str:
    """``thread T`` or ``task N (thread T)``, for reports."""
    if info.task_name is None:
        return f"thread {info.thread_name}"
    return f"task {info.task_name} (thread {info.thread_name})"
