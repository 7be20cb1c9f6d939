"""Taking several managers at once: in rank order, all or nothing, under one deadline.

Deadlock needs a cycle of threads each holding one manager and waiting for another. If every
thread takes managers in one global order, a waiting thread holds only managers ranked below
the one it waits for, so a chain of waiting threads climbs in rank and never closes. So
``acquire_all`` sorts the requests by rank, merges requests to the same manager into one
atomic request (taking a manager twice in a row could wait on itself), and takes them one
manager at a time. Anything that goes wrong on the way (a timeout, a closed manager, an
exception injected while waiting) gives back what was taken, last first.

Rate limiters come last, after every manager was granted: rate is spent where the work
starts, and only when everything else is held, so a group that times out on a manager has
spent no rate. Before spending any, each limiter forecasts when it could allow its cost; if
one is past the deadline, the group fails at once. Otherwise the limiters are waited for
latest first, so the others are then usually allowed at once, and an error on the way
refunds what was spent.
"""

from __future__ import annotations

import contextlib
import enum
import operator
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Literal, Protocol, TypeVar, cast, overload

import attrs

from . import _events
from ._acquisition import Acquisition, start_acquisition
from ._clock import SYSTEM_CLOCK, Clock, deadline_after
from ._core import (
    MemoryPool,
    Meter,
    Quantity,
    RateMeter,
    RateTicket,
    Site,
    Spent,
    Ticket,
    caller_site,
    ticks_of,
)
from ._errors import AcquireTimeout, ExceedsBurst, ExceedsCapacity, LeaseReleased
from ._lease import Lease
from ._limiters import (
    LimiterParts,
    RateGrant,
    _Limiter,
    is_limiter,
    limiter_parts,
    rate_ticket,
    validate_cost,
)
from ._lock_order import OrderNode, check_order, note_held
from ._manager import (
    ManagerParts,
    ResourceManager,
    parts_of,
    records_sites,
    take,
    take_async,
    timeout_summary,
)
from ._observed_group import observed_part
from ._waiters import (
    TASK,
    THREAD,
    Steps,
    Waiting,
    await_rate,
    new_thread_waiter,
    run_blocking,
    run_in_task,
    seconds_of,
)

__all__ = [
    "LeaseGroup",
    "Request",
    "acquire_all",
    "acquire_all_async",
    "taken_of",
    "try_acquire_all",
    "validate_parts",
]

Request = (
    tuple["ResourceManager[int]", int]
    | tuple["ResourceManager[Mapping[str, int]]", Mapping[str, int]]
    | tuple["_Limiter", int]
)
"""``(manager, amount)`` or ``(limiter, cost)``: an int for a manager of one resource, a
mapping of resource names for a manager of named ones (the type parameter of
``ResourceManager`` says which), an int cost for a rate limiter (``RateLimiter`` or
``WindowLimiter``, whose private base is named here). The runtime checks the same
(and the names, and the signs) before anything is taken."""

RateSpent = tuple[RateMeter, RateTicket] | tuple[Meter, Spent]
"""A limiter's part of a group: its granted (or queued) ticket, or what the one-pass path
spent on an in-memory meter without one (see ``Meter.take_undoable``)."""

_current_thread = threading.current_thread
_INFINITY = float("inf")
_Item = TypeVar("_Item")
_Result = TypeVar("_Result", bound="LeaseGroup | None")


@attrs.define(eq=False)
class LeaseGroup(Sequence[Lease[Any]]):
    """What :func:`acquire_all` granted: ``group[i]`` is the lease for the i-th request that
    named a manager (requests naming rate limiters are skipped in that count; what they were
    allowed is in :attr:`rates`).

    A context manager: leaving the block releases every lease, in the reverse of the order
    they were taken, also when the block raises. Each lease also stays releasable on its own.
    Rate is not given back: the work it paid for ran.
    """

    _leases: tuple[Lease[Any], ...]
    _taken: tuple[Lease[Any], ...]
    """The same leases in the order they were granted."""
    _grants: tuple[RateSpent, ...] = ()
    """The limiters' grants, for :meth:`refund`."""
    rates: tuple[RateGrant, ...] = ()
    """What each rate limiter allowed, one per limiter named, in the order first named."""
    _together: GroupRelease | None = None
    """Releases the leases in one round trip (a backend's, see ``redis/_group.py``)."""

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
        return all(lease.released for lease in self._taken)

    def release(self) -> None:
        """Release every lease still held, the last taken first. Idempotent."""
        together = self._together
        if together is None:
            _undo_all(self._taken, _release)  # each lease's own: an observed one reports
            return
        try:
            together.release(self._taken)
        finally:  # whatever it left (or could not send from here), each lease's own release
            _undo_all(self._taken, _release)

    def refund(self) -> bool:
        """Give the limiters' rate back, for work that never started (a guard whose call
        was interrupted before it began). Exact for each limiter that granted nothing since;
        ``True`` if every one was refunded. Idempotent."""
        refunded = True
        for grant in reversed(self._grants):
            refunded = _give_back_rate(grant) and refunded
        return refunded

    def __enter__(self) -> LeaseGroup:
        taken = self._taken
        # The last lease held: not all are released (the common case, read in one step).
        if taken and taken[-1].released and self.released:
            raise LeaseReleased("these leases were already released and hold nothing")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._together is None:  # release(), without its frame: every group's exit
            _undo_all(self._taken, _release)
        else:
            self.release()

    async def __aenter__(self) -> LeaseGroup:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.release_async()

    def exits_async(self) -> bool:
        """Whether leaving an ``async with`` makes a backend's round trips (awaited)."""
        return any(lease.exits_async() for lease in self._taken)

    async def release_async(self) -> None:
        """:meth:`release` for an asyncio task: a backend's round trips run on the loop
        without blocking it. Every lease is released, even if releasing one raises."""
        error: BaseException | None = None
        together = self._together
        if together is not None:
            try:
                await together.release_async(self._taken)
            except BaseException as raised:  # the rest below; report the first failure
                error = raised
        for lease in reversed(self._taken):
            try:
                await lease.release_async()
            except BaseException as raised:  # keep going; report the first failure
                error = error or raised
        if error is not None:
            raise error

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
    if not _events.observers:
        group = _at_once(requests, timeout, quietly=False)
        # No call and no taken jump between (on 3.10 a taken jump is a check point): one
        # there would drop the group on its way back.
        if group is not _FALL_BACK:
            return group  # type: ignore[return-value]  # never None when not quiet
    plan = _plan(requests)
    deadline = deadline_after(plan.clock, timeout)
    site = caller_site(1)
    if plan.checked and timeout != 0:  # only an acquisition that can wait can deadlock
        check_order(plan.checked, site, stacklevel=2)  # the warning points at our caller
    taking = _take_all(plan, timeout != 0, deadline, timeout, site, waiting=THREAD, quietly=False)
    if _events.observers:
        return run_blocking(_observed(taking, plan))
    return run_blocking(taking)


def acquire_all_async(
    requests: Iterable[Request], timeout: float | None = None
) -> Acquisition[LeaseGroup]:
    """:func:`acquire_all` for asyncio tasks: ``group = await acquire_all_async(...)``, or
    ``async with acquire_all_async(...) as group:``, which releases on exit.

    The same order, the same all-or-nothing rule and the same single deadline; each wait is
    in the same queue as threads, on the task's loop. A cancellation gives back whatever was
    taken (and refunds rate spent on the way), then propagates. Requests are checked here,
    before anything is awaited.
    """
    plan = _plan(requests)
    deadline = deadline_after(plan.clock, timeout)
    site = caller_site(1)
    if plan.checked and timeout != 0:  # only an acquisition that can wait can deadlock
        check_order(plan.checked, site, stacklevel=2)  # the warning points at our caller
    taking = _take_all(plan, timeout != 0, deadline, timeout, site, waiting=TASK, quietly=False)
    if _events.observers:
        taking = _observed(taking, plan)
    else:
        for in_task in task_paths:  # parts on one backend: one round trip first, if it can
            acquisition = in_task(requests, taking)
            if acquisition is not None:
                return acquisition  # type: ignore[no-any-return]
    return start_acquisition(_take_all_in_task, taking)


async def _take_all_in_task(
    taking: Steps[LeaseGroup], acquisition: Acquisition[LeaseGroup]
) -> LeaseGroup:
    group = await run_in_task(taking)
    acquisition.held = group
    return group


def try_acquire_all(requests: Iterable[Request]) -> LeaseGroup | None:
    """Like :func:`acquire_all`, but never waits: return ``None``, holding nothing, if any
    request cannot be granted at once."""
    if not _events.observers:
        group = _at_once(requests, 0, quietly=True)
        if group is not _FALL_BACK:  # as in acquire_all
            return group
    plan = _plan(requests)
    taking = _take_all(plan, False, None, 0, caller_site(1), waiting=THREAD, quietly=True)
    if _events.observers:
        return run_blocking(_observed(taking, plan))
    return run_blocking(taking)


_SECONDS = (int, float)
_FastPart = tuple[int, int, int, ManagerParts, "ResourceManager[Any]", int]
"""``(rank, serial, request index, parts, manager, units)`` of one manager request."""
_FastRate = tuple[Any, LimiterParts, int, int]
"""``(limiter, parts, cost, request index)``."""


class _Outcome(enum.Enum):
    FALL_BACK = "fall back"


_FALL_BACK: Final = _Outcome.FALL_BACK
"""What the one-pass path answers when the general path must decide."""


class GroupRelease(Protocol):
    """A backend's release of a group's leases together (fewer round trips)."""

    def release(self, leases: Sequence[Lease[Any]]) -> None: ...

    async def release_async(self, leases: Sequence[Lease[Any]]) -> None: ...


backend_paths: list[Any] = []
"""One-pass paths of backends (``redis/_group.py`` adds its own when imported): each takes
``(requests, timeout, quietly=...)`` and answers as :func:`_at_once`, ``_FALL_BACK`` to let
the next (or the general path) decide."""
task_paths: list[Any] = []
"""The same for ``acquire_all_async``: each takes ``(requests, steps)`` (``steps``: the
general path's, to run if the backend cannot grant every part at once) and returns the
acquisition, or ``None`` to leave the requests to the next (or to the general path)."""


def _at_once(
    requests: Iterable[Request], timeout: float | None, *, quietly: bool
) -> LeaseGroup | Literal[_Outcome.FALL_BACK] | None:
    """The common case in one pass, with no plan: distinct managers of one resource in this
    process, each able to grant now, and at most one limiter in this process.

    Returns ``_FALL_BACK``, holding nothing and having spent nothing, for anything else (another
    kind of request, one that would fail validation, a backend, a checked lock order,
    recorded sites, a manager that cannot grant at once): the general path then decides as
    if this had not run (parts all on one backend are offered first to that backend's own
    one-pass path, in ``backend_paths``, which answers the same way). A manager that could
    not grant was only asked without queueing, so no place in a queue is taken or lost.
    Otherwise the outcome is the general path's: the
    managers are taken in rank order, then the limiter (waiting for it if ``timeout``
    allows, as the general path would); ``None`` if ``quietly`` and the limiter refuses.
    On any exception everything taken is given back and the rate refunded.
    """
    kind = type(requests)
    if (kind is not list and kind is not tuple) or not (
        timeout is None or (type(timeout) in _SECONDS and 0 <= timeout < _INFINITY)
    ):
        return _FALL_BACK  # an iterator is read once, by the general path; odd timeouts too
    listed: Sequence[Any] = requests  # type: ignore[assignment]
    found = _fast_parts(listed)
    if found is None:
        for at_once in backend_paths:  # parts on one backend, decided in one round trip
            group: LeaseGroup | Literal[_Outcome.FALL_BACK] | None
            group = at_once(listed, timeout, quietly=quietly)
            if group is not _FALL_BACK:
                return group
        return _FALL_BACK
    parts, rate = found
    return _take_at_once(parts, rate, len(listed), timeout, quietly=quietly)


def _fast_parts(requests: Sequence[Any]) -> tuple[list[_FastPart], _FastRate | None] | None:
    """The requests as fast parts in rank order, or ``None`` if the fast path cannot take
    them; no user code runs and nothing changes."""
    parts: list[_FastPart] = []
    rate: _FastRate | None = None
    for index, request in enumerate(requests):
        if type(request) is not tuple or len(request) != 2:
            return None
        target, units = request
        if type(units) is int and units > 0 and type(target) is ResourceManager:
            of = _manager_parts(target)
            pool = of.pool
            capacity = pool.capacity
            node = of.node
            if (
                not of.scalar
                or type(pool) is not MemoryPool
                or node.policy is not None
                or records_sites(of)
                or capacity is None
                or units > capacity  # type: ignore[operator]
            ):
                return None
            parts.append((node.rank, node.serial, index, of, target, units))
        elif type(units) is int and units > 0 and rate is None and isinstance(target, _Limiter):
            limits = _limiter_parts(target)
            if type(limits.meter) is not Meter or units > limits.largest:
                return None
            rate = (target, limits, units, index)
        else:
            return None  # a second limiter (forecasts order them), or not a request
    parts.sort()  # by rank key (rank, serial), then by the distinct indices: nothing else
    for position in range(1, len(parts)):
        if parts[position - 1][1] == parts[position][1]:
            return None  # a manager named twice: the general path merges the requests
    return parts, rate


def _take_at_once(
    parts: list[_FastPart],
    rate: _FastRate | None,
    count: int,
    timeout: float | None,
    *,
    quietly: bool,
) -> LeaseGroup | Literal[_Outcome.FALL_BACK] | None:
    """Take ``parts`` (in rank order) if each grants now, then ``rate``: see
    :func:`_at_once`."""
    blocking = timeout != 0
    deadline = None
    if rate is not None and blocking and timeout is not None:
        deadline = rate[1].clock.now() + timeout  # the group's one deadline
    leases: list[Lease[Any] | None] = [None] * count
    taken: list[Lease[Any]] = []
    spent: list[RateSpent] = []
    thread = _current_thread()
    try:
        for _, _, index, of, manager, units in parts:
            ticket = Ticket(units, thread, None, of.clock.now())
            lease = Lease(ticket, of.pool, manager)
            taken.append(lease)  # before asking: from here an exception gives it back
            if not of.pool.enter(ticket, None):
                _release_all(taken)
                return _FALL_BACK
            leases[index] = lease
        rates: tuple[RateGrant, ...] = ()
        if rate is not None:
            limiter, limits, cost, rate_index = rate
            meter: Meter = limits.meter  # type: ignore[assignment]  # checked by _fast_parts
            now_spent: Spent = [0, 0, 0]
            spent.append((meter, now_spent))  # before asking, likewise
            # Allowed at once (the common case): no ticket, and an exact undo if need be.
            allowed = meter.take_undoable(now_spent, cost, not blocking)
            if allowed is None or (blocking and not allowed):
                allowed = _rate_waited(meter, limits, cost, deadline, spent, blocking=blocking)
            if not allowed:
                _release_all(taken)
                if quietly:
                    return None
                raise AcquireTimeout(
                    f"acquire_all cannot be granted within {timeout} s: {limits.name!r} "
                    f"cannot allow {cost} unit(s) by then; nothing is held or spent"
                )
            rates = (RateGrant(limiter, cost),)
            del leases[rate_index]  # the limiter's place: a group lists only leases
        return LeaseGroup(tuple(leases), tuple(taken), tuple(spent), rates)  # type: ignore[arg-type]
    except BaseException:
        try:
            _withdraw_rates(spent)  # the work never started: its rate is refunded
        finally:  # an exception as the refund returns still gives the leases back
            _release_all(taken)
        raise


def _rate_waited(
    meter: Meter,
    limits: LimiterParts,
    cost: int,
    deadline: float | None,
    spent: list[RateSpent],
    *,
    blocking: bool,
) -> bool:
    """The one-pass path's limiter was not allowed at once (someone is queued, or the rule
    refused, or it is not a GCRA): ask with a ticket, waiting if ``blocking`` allows, as
    the general path would. ``False`` if refused (by ``deadline``). The ticket takes the
    place of the unspent record in ``spent`` (one store) before it is asked, so an
    exception gives back what it was granted, and :meth:`LeaseGroup.refund` sees only it."""
    clock = limits.clock
    ticket = RateTicket(cost, _current_thread(), None, clock.now())
    spent[-1] = (meter, ticket)
    limit = -1 if deadline is None else ticks_of(deadline, meter.scale)
    entry = meter.enter(ticket, new_thread_waiter if blocking else None, blocking, limit)
    return entry == "granted" or (entry == "queued" and await_rate(meter, ticket, clock, deadline))


@attrs.define
class _Step:
    """What to take from one manager: the merged ``total`` and each request's ``parts``."""

    manager: ResourceManager[Any]
    of: ManagerParts
    total: Quantity
    parts: list[tuple[int, Quantity]]
    """``(request index, units)`` for each request to this manager, in request order."""


@attrs.define
class _RateStep:
    """What to take from one limiter: the merged ``total`` and each request's index."""

    limiter: Any
    of: LimiterParts
    total: int
    indices: list[int]


@attrs.frozen
class _Plan:
    """Everything the general path needs, decided once before anything is taken: the steps
    in rank order, the limiters, and the one clock the group's deadline is read on."""

    steps: list[_Step]
    rates: list[_RateStep]
    count: int
    clock: Clock
    """The deadline's: the first manager's, else the first limiter's (each measures its own
    waits, but one deadline needs one clock)."""
    checked: list[OrderNode]
    """The managers' order nodes, in rank order, if the lock-order checker watches any of
    them (checked by the public function before a wait); else empty."""


def _rank_of(step: _Step) -> tuple[int, int]:
    return step.of.node.order_key


def validate_parts(requests: Iterable[Request]) -> list[Request]:
    """Check ``requests`` as :func:`acquire_all` would, taking nothing; return them as a
    list (for a guard, which checks once when decorating)."""
    listed = list(requests)
    _plan(listed)
    return listed


def _plan(requests: Iterable[Request]) -> _Plan:
    """Validate and merge the requests and sort the managers by rank; limiters go last, in
    the order they are named. Raises before anything is taken."""
    steps: dict[int, _Step] = {}
    rates: dict[int, _RateStep] = {}
    count = 0
    for index, request in enumerate(requests):
        if not isinstance(request, tuple) or len(request) != 2:
            raise TypeError(
                f"request {index} must be a (manager or limiter, amount) pair, not {request!r}"
            )
        manager: Any
        amount: Any
        manager, amount = request  # any pair: checked below, as for untyped callers
        count = index + 1
        if is_limiter(manager):
            limits = limiter_parts(manager)
            cost = validate_cost(amount, limits.largest, f"cost of request {index}")
            rate = rates.get(id(manager))
            if rate is None:
                rates[id(manager)] = _RateStep(manager, limits, cost, [index])
            else:
                rate.total += cost
                rate.indices.append(index)
                if rate.total > limits.largest:
                    raise ExceedsBurst(
                        f"the requests to {limits.name!r} add up to {rate.total}, which can "
                        f"never be allowed: at most {limits.largest} unit(s) at once"
                    )
            continue
        if not isinstance(manager, ResourceManager):
            raise TypeError(
                f"request {index} names {manager!r}, which is not a ResourceManager or a "
                "rate limiter"
            )
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
    limiters = list(rates.values())
    clock = plan[0].of.clock if plan else limiters[0].of.clock if limiters else SYSTEM_CLOCK
    nodes = [step.of.node for step in plan]
    checked = nodes if any(node.policy is not None for node in nodes) else []
    return _Plan(plan, limiters, count, clock, checked)


@overload
def _take_all(
    planned: _Plan,
    blocking: bool,
    deadline: float | None,
    timeout: float | None,
    site: Site,
    *,
    waiting: Waiting,
    quietly: Literal[False],
) -> Steps[LeaseGroup]: ...


@overload
def _take_all(
    planned: _Plan,
    blocking: bool,
    deadline: float | None,
    timeout: float | None,
    site: Site,
    *,
    waiting: Waiting,
    quietly: Literal[True],
) -> Steps[LeaseGroup | None]: ...


def _take_all(
    planned: _Plan,
    blocking: bool,
    deadline: float | None,
    timeout: float | None,
    site: Site,
    *,
    waiting: Waiting,
    quietly: bool,
) -> Steps[LeaseGroup | None]:
    """Take the plan's steps in order, waiting as ``waiting`` says; on a refusal return
    ``None`` if ``quietly``, else raise ``AcquireTimeout``. Either way, nothing stays taken."""
    plan, count = planned.steps, planned.count
    leases: list[Lease[Any] | None] = [None] * count
    taken: list[Lease[Any]] = []
    rates: tuple[tuple[RateMeter, RateTicket], ...] = ()
    thread = _current_thread()
    try:
        for position, step in enumerate(plan):
            of = step.of
            lease_site = site if records_sites(of) else None
            # One ticket takes the merged total, then hands each other request its part.
            first = Ticket(step.total, thread, lease_site, of.clock.now())
            first_lease = _new_lease(first, of, step.manager, waiting)
            taken.append(first_lease)
            # The order was checked by the caller, for all the managers at once.
            if blocking and waiting.in_task:
                granted = yield from take_async(of, first, first_lease, deadline).__await__()
            else:
                granted = take(of, first, first_lease, blocking, deadline)
            if not granted:
                # Given back before raising: the handler below only repeats it, so an
                # exception landing in the handler loses nothing.
                _release_all(taken)
                if not quietly:
                    raise _timeout(step.manager, position, plan, timeout)
                return None
            leases[step.parts[0][0]] = first_lease
            # Last in the loop's body, and a plain call: on 3.12 and 3.13 a body that ends
            # with an ``if`` gets a copy of the loop's back edge outside the try's handler.
            yield from _split(step, first, waiting, leases, taken)
        if planned.rates:
            granted_rates = yield from _take_rates(
                planned, blocking, deadline, timeout, waiting, quietly=quietly
            )
            if not isinstance(granted_rates, tuple):
                _release_all(taken)  # before raising, as above
                if granted_rates is None:
                    return None
                raise granted_rates
            rates = granted_rates
        return LeaseGroup(
            tuple(lease for lease in leases if lease is not None),
            tuple(taken),
            rates,
            tuple(RateGrant(step.limiter, step.total) for step in planned.rates),
        )
    except BaseException:
        try:
            _withdraw_rates(rates)  # the work never started: its rate is refunded
        finally:  # an exception as the refund returns still gives the leases back
            _release_all(taken)
        raise


def _split(
    step: _Step,
    first: Ticket,
    waiting: Waiting,
    leases: list[Lease[Any] | None],
    taken: list[Lease[Any]],
) -> Steps[None]:
    """Hand each other request to the same manager its part of what the first one took:
    a lease of its own (appended to ``taken`` before the pool moves any units to it). A
    task awaits a backend's round trip (``split_async``) instead of blocking its loop."""
    parts = step.parts
    if len(parts) == 1:
        return
    of = step.of
    others = [Ticket(units, first.thread, first.site, first.since) for _, units in parts[1:]]
    other_leases = [_new_lease(ticket, of, step.manager, waiting) for ticket in others]
    taken.extend(other_leases)
    split_async = getattr(of.pool, "split_async", None) if waiting.in_task else None
    if split_async is None:
        of.pool.split(first, others)
    else:
        yield from split_async(first, others).__await__()
    for (index, _), ticket, lease in zip(parts[1:], others, other_leases, strict=True):
        leases[index] = lease
        if of.node.policy is not None:
            note_held(lease, of.node, ticket.site)


def _take_rates(
    planned: _Plan,
    blocking: bool,
    deadline: float | None,
    timeout: float | None,
    waiting: Waiting,
    *,
    quietly: bool,
) -> Steps[tuple[tuple[RateMeter, RateTicket], ...] | AcquireTimeout | None]:
    """Spend every limiter's cost, or none. ``None`` (if ``quietly``) or an
    ``AcquireTimeout`` to raise when one cannot be allowed by ``deadline``, with whatever
    was granted given back.

    First a forecast: the time each limiter would allow its cost, if asked now. If any is
    after the deadline, fail at once, having spent nothing. Otherwise wait for them latest
    first, so the others are usually allowed at once after it and no rate is spent long
    before the work starts. The deadline is on the group's clock; each limiter measures
    what is left of it on its own."""
    clock_of_deadline = planned.clock
    left = None if deadline is None else deadline - clock_of_deadline.now()
    forecasts = []
    for step in planned.rates:
        meter, clock = step.of.meter, step.of.clock
        forecast_async = getattr(meter, "forecast_async", None) if waiting.in_task else None
        if forecast_async is None:
            allowed_at = meter.forecast(step.total)
        else:  # a backend's round trip, awaited: the loop never blocks on it
            allowed_at = yield from forecast_async(step.total).__await__()
        now = clock.now()
        wait = seconds_of(allowed_at, meter.scale) - now
        if (not blocking and allowed_at > ticks_of(now, meter.scale)) or (
            left is not None and allowed_at > ticks_of(now + left, meter.scale)
        ):
            meter.count_refusal()
            return _rates_refused([], step, timeout, quietly=quietly)
        forecasts.append((wait, step))
    forecasts.sort(key=lambda pair: -pair[0])
    granted: list[tuple[RateMeter, RateTicket]] = []
    try:
        for _, step in forecasts:
            meter = step.of.meter
            if not blocking:
                patience: float | None = 0
            elif deadline is None:
                patience = None
            else:
                patience = max(0.0, deadline - clock_of_deadline.now())
            try:
                ticket = yield from rate_ticket(step.of, meter, step.total, patience, waiting)
            except AcquireTimeout:
                return _rates_refused(granted, step, timeout, quietly=quietly)
            granted.append((meter, ticket))
        return tuple(granted)
    except BaseException:
        _withdraw_rates(granted)
        raise


def _withdraw_rates(entered: Sequence[RateSpent]) -> None:
    """Withdraw or refund every limiter's ticket, last first (see :func:`_undo_all`)."""
    _undo_all(entered, _give_back_rate)


def _give_back_rate(grant: RateSpent) -> bool:
    """Withdraw a limiter's ticket or refund its grant (exactly, if nothing was granted
    after it), or what the one-pass path spent without a ticket; ``True`` if given back.
    Idempotent."""
    meter, spent = grant
    if isinstance(spent, list):
        return cast("Meter", meter).give_back(spent)  # only a Meter's grant is a list
    return meter.release(spent)


def _rates_refused(
    entered: list[tuple[RateMeter, RateTicket]],
    step: _RateStep | None,
    timeout: float | None,
    *,
    quietly: bool,
) -> AcquireTimeout | None:
    """Refund what ``entered`` was granted; the error to raise (``None`` if ``quietly``),
    raised by the caller once it gave back what else it took."""
    _withdraw_rates(entered)  # granted ones are refunded (exactly, unless others came after)
    if quietly:
        return None
    if step is None:
        why = "the limiters did not all allow their costs in time"
    else:
        why = f"{step.of.name!r} cannot allow {step.total} unit(s) by then"
    return AcquireTimeout(
        f"acquire_all cannot be granted within {timeout} s: {why}; nothing is held or spent"
    )


def _new_lease(
    ticket: Ticket, of: ManagerParts, manager: ResourceManager[Any], waiting: Waiting
) -> Lease[Any]:
    """A part's lease, its ticket marked as the waiting task's first (a thread's needs
    nothing): observed while someone observes (it reports its releases once its grant is
    reported, see ``_observed_group.py``; until then it is a plain lease)."""
    waiting.adopt(ticket)
    if _events.observers:
        return observed_part(ticket, of.pool, manager)
    return Lease(ticket, of.pool, manager)


def _observed(taking: Steps[_Result], plan: _Plan) -> Steps[_Result]:
    from ._observed_group import observe_group

    return observe_group(taking, plan)


def taken_of(group: LeaseGroup) -> tuple[Lease[Any], ...]:
    """A group's leases in the order they were granted (for its observed face)."""
    return group._taken


_manager_parts: Callable[[ResourceManager[Any]], ManagerParts] = operator.attrgetter("_parts")
"""``parts_of(manager)`` with no Python frame (the one-pass path's scan of the requests)."""
_limiter_parts: Callable[[_Limiter], LimiterParts] = operator.attrgetter("_parts")
"""``limiter_parts(limiter)``, likewise."""
_release: Callable[[Lease[Any]], object] = operator.methodcaller("release")
"""``lease.release()``, the lease's own (an observed one reports), with no Python frame."""


def _release_all(leases: Sequence[Lease[Any]]) -> None:
    """Release every lease, last first (see :func:`_undo_all`)."""
    _undo_all(leases, Lease.release)


def _undo_all(items: Sequence[_Item], undo: Callable[[_Item], object]) -> None:
    """``undo`` every item, last first, even if undoing one raises (then re-raise the first).
    ``undo`` is idempotent: one that an exception may have cut short at its first line is
    done again."""
    error: BaseException | None = None
    for item in reversed(items):
        try:
            undo(item)
        except BaseException as raised:  # keep going; report the first failure
            error = error or raised
            with contextlib.suppress(BaseException):
                undo(item)
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
