"""ResourceManager: weighted, fair, lease-based allocation of one or several resources."""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
import threading
import tracemalloc
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

import attrs

from . import _events
from ._acquisition import Acquisition, start_acquisition
from ._backend import Backend, check_backend_name
from ._clock import SYSTEM_CLOCK, Clock, deadline_after
from ._core import (
    PENDING,
    Amount,
    BankerPolicy,
    FaceTicket,
    Fairness,
    Form,
    MemoryPool,
    Pool,
    Quantity,
    ScalarForm,
    Site,
    Ticket,
    Waiter,
    caller_site,
    fairness_policy,
    form_for,
)
from ._errors import AcquireTimeout, UnsupportedByBackend
from ._events import (
    EventOwner,
    emit,
    handing,
    new_request_id,
    now_ns,
    owner_of,
    thread_owner,
    thread_owners,
)
from ._lease import Lease
from ._lock_order import LockOrderPolicy, OrderNode, check_order, new_node, note_held, parse_policy
from ._observed import (
    ObservedLease,
    new_observed_task_waiter,
    new_observed_thread_waiter,
    report_failure,
    report_grant,
    report_refused_try,
    report_requested,
    report_resized,
)
from ._registry import register
from ._statistics import ManagerStatistics, statistics_from
from ._waiters import await_grant, await_grant_async, new_task_waiter, new_thread_waiter

if TYPE_CHECKING:
    from ._declared import DeclaredClaim

__all__ = [
    "ManagerParts",
    "ResourceManager",
    "parts_of",
    "record_site",
    "records_sites",
    "statistics_within",
    "take",
    "take_async",
    "take_or_none",
    "timeout_summary",
]

logger = logging.getLogger("allotment")

_getframe = sys._getframe
_P = ParamSpec("_P")
_T = TypeVar("_T")
_current_thread = threading.current_thread
_new_object = object.__new__
_current_task = asyncio.current_task
_is_tracing = tracemalloc.is_tracing
_serial_numbers = itertools.count(1)

# When to record the acquisition site (a frame object per call: the costliest diagnostic).
_NEVER, _ALWAYS, _WHILE_TRACING = 0, 1, 2


def _site_rule(capture_sites: object) -> int:
    if capture_sites is None:
        # Python's convention for expensive diagnostics: on in development mode, or while
        # tracemalloc traces (checked per acquisition, as tracing can start at any time).
        return _ALWAYS if sys.flags.dev_mode else _WHILE_TRACING
    if type(capture_sites) is not bool:
        raise TypeError(f"capture_sites must be True, False or None, not {capture_sites!r}")
    return _ALWAYS if capture_sites else _NEVER


@attrs.frozen
class ManagerParts:
    """What the other faces of this package (``acquire_all``, declared claims, the wait
    graph) use of a manager: its pool and its settings, never its private fields."""

    name: str
    serial: int
    pool: Pool
    form: Form[Any]
    scalar: bool
    node: OrderNode
    clock: Clock
    site_rule: int
    banker: BankerPolicy | None


def records_sites(parts: ManagerParts) -> bool:
    """Whether this manager records acquisition sites now."""
    rule = parts.site_rule
    return rule == _ALWAYS or (rule == _WHILE_TRACING and _is_tracing())


def record_site(parts: ManagerParts, depth: int) -> Site | None:
    """The site ``depth`` frames above the caller, if this manager records sites now."""
    return caller_site(depth + 1) if records_sites(parts) else None


def take(
    parts: ManagerParts, ticket: Ticket, lease: Lease[Any], blocking: bool, deadline: float | None
) -> bool:
    """Have ``ticket`` (``lease``'s) granted: at once, or by waiting until ``deadline`` if
    ``blocking``. Returns whether it was granted; on any exception it holds nothing."""
    pool = parts.pool
    try:
        granted = pool.enter(ticket, new_thread_waiter if blocking else None) or (
            blocking and await_grant(pool, ticket, parts.clock, deadline)
        )
        if granted and parts.node.policy is not None:
            note_held(lease, parts.node, ticket.site)
    except BaseException:
        # Interrupted anywhere, even as the grant arrived: leave as if we had never asked.
        pool.release(ticket, None)
        raise
    return granted


async def take_async(
    parts: ManagerParts, ticket: Ticket, lease: Lease[Any], deadline: float | None
) -> bool:
    """:func:`take` for the running task, which waits on the same queue as threads do.
    Returns whether it was granted; on any exception (a cancellation included) it holds
    nothing, and a grant that reached it is handed on."""
    pool = parts.pool
    try:
        granted = await _enter_in_task(pool, ticket, new_task_waiter) or await await_grant_async(
            pool, ticket, parts.clock, deadline
        )
        if granted and parts.node.policy is not None:
            note_held(lease, parts.node, ticket.site)
    except BaseException:
        await _release_in_task(pool, ticket)
        raise
    return granted


async def _enter_in_task(pool: Pool, ticket: Ticket, waiter: Callable[[], Waiter] | None) -> bool:
    """``pool.enter`` for a task: a pool kept elsewhere (Redis) makes its round trip on the
    task's loop without blocking it."""
    enter_async = getattr(pool, "enter_async", None)
    if enter_async is None:
        return pool.enter(ticket, waiter)
    return bool(await enter_async(ticket, waiter))


async def _release_in_task(pool: Pool, ticket: Ticket) -> None:
    """``pool.release(ticket, None)`` for a task (see :func:`_enter_in_task`)."""
    release_async = getattr(pool, "release_async", None)
    if release_async is None:
        pool.release(ticket, None)
    else:
        await release_async(ticket, None)


def take_or_none(parts: ManagerParts, ticket: Ticket, lease: Lease[Amount]) -> Lease[Amount] | None:
    """``lease`` if its ticket is granted without waiting, else ``None``; on any exception,
    even one that lands as the lease is returned, it holds nothing."""
    try:
        if take(parts, ticket, lease, False, None):
            return lease
    except BaseException:
        parts.pool.release(ticket, None)
        raise
    return None


def timeout_summary(parts: ManagerParts) -> str:
    """What an ``AcquireTimeout`` message says of the manager: O(1), read without the lock."""
    pool = parts.pool
    capacity = pool.capacity
    assert capacity is not None
    in_use = parts.form.render_all(capacity - pool.available)
    return f"{pool.holding} lease(s) hold {in_use!r} and {pool.waiting} request(s) are queued"


@attrs.define(eq=False, init=False, repr=False)
class ResourceManager(Generic[Amount]):
    """A pool of units of one resource, or of several named resources, shared by threads.

    Build it from an int for one resource, or from a mapping for several::

        pool = ResourceManager(5)
        node = ResourceManager({"gpu": 4, "ram_gb": 64})

    Amounts then take the same form: ``pool.acquire(2)``, ``node.acquire({"gpu": 1})``.

    Guarantees:

    - **Fair.** Requests are granted strictly in arrival order. A request that cannot be granted
      at once waits in a queue, and no later request, however small, is granted before it; so a
      large request is never starved. :meth:`try_acquire` never overtakes a queued request.
    - **Atomic.** A request for several resources is granted all at once or not at all; a
      waiting request holds nothing.
    - **Exact.** Units are taken and returned only through :class:`Lease` objects, each of which
      gives back exactly what it holds, once. A request that times out or whose wait is
      interrupted by an exception (``KeyboardInterrupt`` included) leaves no trace.
    - **Validated.** Bad amounts raise before anything changes (see :mod:`allotment` errors).

    All methods are thread-safe. The manager's lock is held only for bookkeeping, never while
    a thread waits.

    Every manager has a *rank*, which orders it among all managers: by ``rank`` (default 0),
    then by creation. :func:`allotment.acquire_all` takes several managers in that order, and
    the lock-order checker (``lock_order=``) reports code that does otherwise.
    """

    _name: str
    _form: Form[Amount]
    _scalar: bool
    _pool: Pool
    _memory_pool: MemoryPool | None
    """``_pool`` if it is a :class:`MemoryPool` (``acquire`` then makes one-object leases)."""
    _node: OrderNode
    _clock: Clock
    _now: Callable[[], float]
    _site_rule: int
    _parts: ManagerParts

    @overload
    def __init__(
        self: ResourceManager[int],
        capacity: int,
        *,
        name: str | None = None,
        rank: int = 0,
        lock_order: LockOrderPolicy | None = None,
        banker: bool = False,
        capture_sites: bool | None = None,
        clock: Clock | None = None,
        backend: Backend | None = None,
        fairness: Fairness = "strict",
        fairness_bound: float | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self: ResourceManager[Mapping[str, int]],
        capacity: Mapping[str, int],
        *,
        name: str | None = None,
        rank: int = 0,
        lock_order: LockOrderPolicy | None = None,
        banker: bool = False,
        capture_sites: bool | None = None,
        clock: Clock | None = None,
        backend: Backend | None = None,
        fairness: Fairness = "strict",
        fairness_bound: float | None = None,
    ) -> None: ...

    def __init__(
        self,
        capacity: int | Mapping[str, int],
        *,
        name: str | None = None,
        rank: int = 0,
        lock_order: LockOrderPolicy | None = None,
        banker: bool = False,
        capture_sites: bool | None = None,
        clock: Clock | None = None,
        backend: Backend | None = None,
        fairness: Fairness = "strict",
        fairness_bound: float | None = None,
    ) -> None:
        """Create a manager with ``capacity`` units (an int, or a mapping name -> int).

        ``name`` appears in reprs, statistics and messages. ``rank`` places the manager in
        the global acquisition order (lower first; equal ranks go by creation order).
        ``lock_order`` is this manager's lock-order policy, ``"raise"``, ``"warn"`` or
        ``"off"``; ``None`` follows :func:`allotment.set_lock_order_policy`. ``banker=True``
        enables declared claims (:meth:`claim`), whose grants never lead to a deadlock.

        ``capture_sites`` records the file and line of each ``acquire`` call for statistics,
        leak warnings and lock-order reports. It is the costliest diagnostic (a frame object
        per call), so by default (``None``) sites are recorded only under Python's
        development mode (``-X dev``) or while :mod:`tracemalloc` traces, as CPython does for
        its own costly diagnostics; ``True`` always records them, ``False`` never. The
        acquiring thread and the age of every lease are always recorded.

        ``clock`` measures every timeout of this manager (default: the system's monotonic
        clock); tests pass an :class:`allotment.testing.ManualClock`.

        ``backend`` keeps the manager's state elsewhere, shared by every process that names
        it (``allotment.redis.RedisBackend``): ``name`` is then required, and banker mode is
        refused (:class:`UnsupportedByBackend`). Its leases carry a ``fencing_token``.

        ``fairness="strict"`` (the default) is strict FIFO with hand-off, as above.
        ``fairness="bounded"`` trades it for throughput under contention, as Go's
        ``sync.Mutex`` does: a request that did not wait (a thread that releases and asks
        again) may take free units ahead of the queue while its head has waited less than
        ``fairness_bound`` seconds (default 0.001); past that, strict hand-off until the
        queue catches up. Nobody waits much longer than the bound plus one hold, and a large
        request is never starved; :meth:`try_acquire` may overtake the queue within the same
        bound. Not with ``banker=True`` nor a ``backend`` (``ValueError``,
        :class:`UnsupportedByBackend`).
        """
        form = form_for(capacity)
        initial = form.parse_capacity(capacity, None)
        if type(rank) is not int:
            raise TypeError(f"rank must be an int, not {type(rank).__name__} ({rank!r})")
        if lock_order is not None:
            parse_policy(lock_order)
        if type(banker) is not bool:
            raise TypeError(f"banker must be True or False, not {banker!r}")
        fair = fairness_policy(fairness, fairness_bound)
        if banker and fairness != "strict":
            raise ValueError("banker mode grants in its own order: it takes fairness='strict'")
        if backend is not None and fairness != "strict":
            raise UnsupportedByBackend("fairness='bounded' needs an in-memory manager")
        site_rule = _site_rule(capture_sites)
        clock = SYSTEM_CLOCK if clock is None else clock
        serial = next(_serial_numbers)
        self._name = name if name is not None else f"ResourceManager-{serial}"
        self._form = form  # type: ignore[assignment]
        self._scalar = isinstance(form, ScalarForm)
        policy = BankerPolicy() if banker else fair
        if backend is None:
            self._pool = MemoryPool(form, initial, initial, policy, clock.now, holders={})
        else:
            if banker:
                raise UnsupportedByBackend("banker mode needs an in-memory manager")
            name = check_backend_name(name, backend, "ResourceManager")
            self._pool = backend.manager_pool(name, form, initial, clock)
        pool = self._pool
        self._memory_pool = pool if type(pool) is MemoryPool else None
        self._node = new_node(serial, self._name, rank, lock_order)
        self._clock = clock
        self._now = clock.now
        self._site_rule = site_rule
        self._parts = ManagerParts(
            name=self._name,
            serial=serial,
            pool=self._pool,
            form=form,
            scalar=self._scalar,
            node=self._node,
            clock=clock,
            site_rule=site_rule,
            banker=policy if isinstance(policy, BankerPolicy) else None,
        )
        register(self, serial)
        logger.debug("created %r", self)

    # -- taking ---------------------------------------------------------------------------

    def acquire(self, amount: Amount, timeout: float | None = None) -> Lease[Amount]:
        """Take ``amount`` units, waiting in line until they are granted; return the lease.

        Blocks until the request reaches the head of the queue and fits, or until ``timeout``
        seconds pass (``None``: no limit). ``timeout=0`` never waits. On timeout it raises
        :class:`AcquireTimeout` (a ``TimeoutError``) and holds nothing. A grant that arrives
        as the deadline passes is kept.

        Raises :class:`ManagerClosed` if the manager is or gets closed,
        :class:`ExceedsCapacity` if ``amount`` is more than the capacity (at once, or when a
        shrink makes a queued request impossible), :class:`InvalidAmount` or
        :class:`InvalidAmountType` for malformed amounts, before anything changes, and
        :class:`ReentrantCall` from a finalizer or signal handler that interrupted this
        manager's own bookkeeping on this thread.
        """
        if type(amount) is int and amount > 0 and self._scalar:
            request: Quantity = amount  # the common case, without a call
        else:
            request = self._form.parse(amount)
        deadline = None if timeout is None else deadline_after(self._clock, timeout)
        rule = self._site_rule
        if rule and (rule == _ALWAYS or _is_tracing()):
            # caller_site(1), inlined: a call costs a tenth of an uncontended acquire.
            frame = _getframe(1)
            site: Site | None = (frame.f_code, frame.f_lasti)
        else:
            site = None
        node = self._node
        if node.policy is not None and timeout != 0:
            # Only an acquisition that can wait can deadlock; every granted one counts as held.
            check_order((node,), site or caller_site(1), stacklevel=2)
        if _events.observers:
            # The observed acquire, written out here: a call and its checks cost a sixth of
            # what observing may add. The same pool calls, reported after each returns.
            pool = self._pool
            ticket = Ticket(request, _current_thread(), site, self._now())
            observed: ObservedLease[Amount] = ObservedLease(ticket, pool, self)
            request_id = new_request_id()
            try:
                owner = thread_owners.owner  # thread_owner(), inlined: its cache
            except AttributeError:
                owner = thread_owner()
            try:
                if pool.enter(ticket, new_observed_thread_waiter if timeout != 0 else None):
                    if node.policy is not None:
                        note_held(observed, node, site)
                    if self._scalar:
                        units: object = request
                        capacity: object = pool.capacity
                    else:
                        units = self._form.render(request)
                        capacity = self._form.render_all(pool.capacity)  # type: ignore[arg-type]
                    record = (
                        "granted", self._name, now_ns(), owner, units, request_id, 0.0, None,
                        None, None, capacity, None, False, None,
                    )  # fmt: skip
                    observed.granted = record
                    if self._clock is not SYSTEM_CLOCK:
                        observed.granted_at = ticket.since
                    solo = _events.solo
                    if solo is not None and not _events.deferred:  # one recorder: emit, inlined
                        solo[0](record)
                        solo[1]()
                    else:
                        emit(record)
                    return observed
            except BaseException as error:
                pool.release(ticket, None)
                report_failure(self, owner, ticket, request_id, ticket.since, error)
                raise
            if timeout == 0:
                report_failure(self, owner, ticket, request_id, ticket.since, None)
                raise self._timeout_error(amount, timeout)
            return self._wait_observed(
                observed, ticket, owner, request_id, amount, timeout, deadline
            )
        pool = self._pool
        memory = self._memory_pool
        # The lease exists before the grant: if anything interrupts us after the grant, the
        # handler below (or, failing that, the lease's collection) returns the units.
        if memory is not None:
            # The one-object lease (its ticket is a FaceTicket: see Lease.__exit__), built
            # by hand: every field is set before the ticket reaches the pool.
            lease: Lease[Amount] = _new_object(Lease)
            lease._pool = memory
            lease._manager = self
            ticket = FaceTicket(lease, memory.face_died)
            ticket.units = request
            ticket.thread = _current_thread()
            ticket.site = site
            ticket.since = self._now()
            ticket.state = PENDING
            ticket.face = ticket  # type: ignore[assignment]  # its own watch
            lease._ticket = ticket
        else:
            ticket = Ticket(request, _current_thread(), site, self._now())
            lease = Lease(ticket, pool, self)
        try:
            if pool.enter(ticket, new_thread_waiter if timeout != 0 else None) or (
                timeout != 0 and await_grant(pool, ticket, self._clock, deadline)
            ):
                if node.policy is not None:
                    note_held(lease, node, site)
                return lease
        except BaseException:
            pool.release(ticket, None)
            raise
        if memory is not None:
            # Never granted: both go now, the ticket first, so the lease dies unwatched.
            lease._ticket = memory.spent
            del ticket
        raise self._timeout_error(amount, timeout)

    def _wait_observed(  # noqa: PLR0917 - private, called in one place
        self,
        lease: ObservedLease[Amount],
        ticket: Ticket,
        owner: EventOwner,
        request_id: int,
        amount: Amount,
        timeout: float | None,
        deadline: float | None,
    ) -> Lease[Amount]:
        """The queued part of an observed :meth:`acquire`: reported as ``requested``, then
        how it ended."""
        pool = self._pool
        asked = ticket.since
        token = handing.set(request_id)  # a withdrawal hands units on for this request
        try:
            report_requested(self, owner, ticket, request_id, _asked_ns(asked, self._clock))
            granted = await_grant(pool, ticket, self._clock, deadline)
            if granted and self._node.policy is not None:
                note_held(lease, self._node, ticket.site)
        except BaseException as error:
            pool.release(ticket, None)
            report_failure(self, owner, ticket, request_id, asked, error)
            raise
        finally:
            handing.reset(token)
        if granted:
            now = self._now()
            report_grant(
                lease,
                ticket,
                owner,
                request_id,
                now - asked,
                None if self._clock is SYSTEM_CLOCK else now,
            )
            return lease
        report_failure(self, owner, ticket, request_id, asked, None)
        raise self._timeout_error(amount, timeout)

    def try_acquire(self, amount: Amount) -> Lease[Amount] | None:
        """Take ``amount`` units if that is possible without waiting, else return ``None``.

        Fails while any other request is queued, even one that ``amount`` would fit beside:
        it never overtakes. Raises like :meth:`acquire` for closed managers and bad amounts.
        Never reported by the lock-order checker, since it cannot wait; the lease it returns
        counts as held for later acquisitions.
        """
        request = self._form.parse(amount)
        site = record_site(self._parts, 1)
        ticket = Ticket(request, _current_thread(), site, self._clock.now())
        if _events.observers:
            return self._try_acquire_observed(ticket)
        lease: Lease[Amount] = Lease(ticket, self._pool, self)
        return take_or_none(self._parts, ticket, lease)

    def _try_acquire_observed(self, ticket: Ticket) -> Lease[Amount] | None:
        owner = owner_of(ticket.thread, None)
        request_id = new_request_id()
        lease: ObservedLease[Amount] = ObservedLease(ticket, self._pool, self)
        try:
            granted = take_or_none(self._parts, ticket, lease)
        except BaseException as error:
            report_failure(self, owner, ticket, request_id, ticket.since, error)
            raise
        if granted is None:
            report_refused_try(self, owner, ticket)
            return None
        clock_time = None if self._clock is SYSTEM_CLOCK else ticket.since
        report_grant(lease, ticket, owner, request_id, 0.0, clock_time)
        return lease

    def acquire_async(
        self, amount: Amount, timeout: float | None = None
    ) -> Acquisition[Lease[Amount]]:
        """:meth:`acquire` for asyncio tasks: ``lease = await pool.acquire_async(2)``, or
        ``async with pool.acquire_async(2) as lease:``, which releases on exit.

        Tasks wait in the same queue as threads, in one arrival order, and get the same
        :class:`Lease`. The waiting task sleeps on its loop (it never blocks it), and is
        woken through its loop by whichever thread or task grants it. A cancellation
        (``task.cancel()``, ``asyncio.timeout``, ``wait_for``, a failing TaskGroup sibling)
        leaves the queue as if the task had never asked, hands on a grant that reached it as
        it was cancelled, and propagates unchanged. ``timeout`` works as for :meth:`acquire`;
        amounts and the timeout are checked here, before anything is awaited.
        """
        # acquire's prologue, written out here too: a call costs a tenth of this path.
        if type(amount) is int and amount > 0 and self._scalar:
            request: Quantity = amount
        else:
            request = self._form.parse(amount)
        deadline = None if timeout is None else deadline_after(self._clock, timeout)
        rule = self._site_rule
        if rule and (rule == _ALWAYS or _is_tracing()):
            frame = _getframe(1)
            site: Site | None = (frame.f_code, frame.f_lasti)
        else:
            site = None
        node = self._node
        if node.policy is not None and timeout != 0:
            check_order((node,), site or caller_site(1), stacklevel=2)
        return start_acquisition(self._acquire_async, request, site, amount, timeout, deadline)

    async def _acquire_async(  # noqa: PLR0917 - private, called in one place
        self,
        request: Quantity,
        site: Site | None,
        amount: Amount,
        timeout: float | None,
        deadline: float | None,
        acquisition: Acquisition[Lease[Amount]],
    ) -> Lease[Amount]:
        task = _current_task()
        if task is None:
            raise RuntimeError("acquire_async must be awaited in an asyncio task")
        ticket = Ticket(request, _current_thread(), site, self._now())
        ticket.task = task
        if _events.observers:
            return await self._acquire_async_observed(
                ticket, amount, timeout, deadline, acquisition
            )
        pool = self._pool
        lease: Lease[Amount] = Lease(ticket, pool, self)
        try:
            # take_async, written out: granted at once is the common case, with no await
            # (in memory; a pool kept elsewhere awaits its round trip).
            waiter = new_task_waiter if timeout != 0 else None
            enter_async = getattr(pool, "enter_async", None)
            if enter_async is None:
                entered = pool.enter(ticket, waiter)
            else:
                entered = await enter_async(ticket, waiter)
            if entered or (
                timeout != 0 and await await_grant_async(pool, ticket, self._clock, deadline)
            ):
                if self._node.policy is not None:
                    note_held(lease, self._node, site)
                acquisition.held = lease
                return lease
        except BaseException:  # a cancellation too, even one landing as the lease is returned
            await _release_in_task(pool, ticket)
            raise
        raise self._timeout_error(amount, timeout)

    async def _acquire_async_observed(
        self,
        ticket: Ticket,
        amount: Amount,
        timeout: float | None,
        deadline: float | None,
        acquisition: Acquisition[Lease[Amount]],
    ) -> Lease[Amount]:
        """:meth:`_acquire_async` while someone observes: the observed :meth:`acquire` for a
        task."""
        asked = ticket.since
        request_id = new_request_id()
        owner = owner_of(ticket.thread, ticket.task)
        pool = self._pool
        lease: ObservedLease[Amount] = ObservedLease(ticket, pool, self)
        queued = False
        token = handing.set(request_id)
        try:
            waiter = new_observed_task_waiter if timeout != 0 else None
            granted = await _enter_in_task(pool, ticket, waiter)  # never blocks the loop
            if not granted and timeout != 0:
                queued = True
                report_requested(self, owner, ticket, request_id, _asked_ns(asked, self._clock))
                granted = await await_grant_async(pool, ticket, self._clock, deadline)
            if granted and self._node.policy is not None:
                note_held(lease, self._node, ticket.site)
        except BaseException as error:
            await _release_in_task(pool, ticket)
            report_failure(self, owner, ticket, request_id, asked, error)
            raise
        finally:
            handing.reset(token)
        if granted:
            now = self._now()
            report_grant(
                lease,
                ticket,
                owner,
                request_id,
                now - asked if queued else 0.0,
                None if self._clock is SYSTEM_CLOCK else now,
            )
            acquisition.held = lease
            return lease
        report_failure(self, owner, ticket, request_id, asked, None)
        raise self._timeout_error(amount, timeout)

    def guard(
        self, amount: Amount, *, timeout: float | None = None
    ) -> Callable[[Callable[_P, _T]], Callable[_P, _T]]:
        """A decorator: every call of the function holds ``amount`` while it runs (waiting
        up to ``timeout`` for it), and gives it back however the call ends. On an
        ``async def`` it stays a coroutine function and acquires with
        :meth:`acquire_async`. See :func:`allotment.guard`, which also combines managers
        and rate limiters."""
        from ._guard import guard

        return guard((self, amount), timeout=timeout)

    def _timeout_error(self, amount: object, timeout: float | None) -> AcquireTimeout:
        error = AcquireTimeout(
            f"{self._name!r} did not grant {amount!r} within {timeout} s; "
            f"{timeout_summary(self._parts)}"
        )
        error.manager = self
        return error

    def claim(self, maximum: Amount) -> DeclaredClaim[Amount]:
        """Declare that the caller will hold at most ``maximum`` at once; return the claim
        to acquire through (banker mode only).

        Acquisitions through declared claims are granted only when they leave the manager in
        a *safe* state, one from which every open claim can still get its maximum and finish,
        so declared users never deadlock, even when they acquire a little at a time. Use it
        as a context manager: leaving it releases whatever the claim still holds::

            with node.claim({"gpu": 3}) as claim:
                first = claim.acquire({"gpu": 1})
                more = claim.acquire({"gpu": 2})

        Raises :class:`BankerModeRequired` unless the manager was created with
        ``banker=True``, :class:`ExceedsCapacity` for a maximum above the capacity,
        :class:`ManagerClosed` once closed, and the usual errors for a malformed amount.
        """
        from ._declared import open_claim  # the face above the manager

        return open_claim(self, maximum, record_site(self._parts, 1))

    # -- changing -------------------------------------------------------------------------

    def resize(self, capacity: Amount) -> None:
        """Set a new capacity: an int, or a mapping of the resources to change.

        Growing grants queued requests at once. Shrinking below what is in use takes effect as
        leases return: returned units pay off the difference before any request is served.
        Queued requests larger than the new capacity are refused with
        :class:`ExceedsCapacity`. Raises :class:`ManagerClosed` once closed.
        """
        form = self._form
        self._pool.resize(lambda current: form.parse_capacity(capacity, current))
        if _events.observers:
            report_resized(self, owner_of(_current_thread(), None))
        logger.debug("resized %r", self)

    def close(self) -> None:
        """Refuse every queued request and every later one with :class:`ManagerClosed`.

        Leases already granted stay valid and can still be released. Idempotent.
        """
        self._pool.close()
        logger.debug("closed %r", self)

    def __enter__(self) -> ResourceManager[Amount]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- looking ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The name given at creation, or an automatic ``ResourceManager-N``."""
        return self._name

    @property
    def rank(self) -> int:
        """The rank given at creation (default 0). Managers are ordered by rank, then by
        creation."""
        return self._node.rank

    @property
    def lock_order(self) -> LockOrderPolicy:
        """The lock-order policy in force for this manager."""
        policy = self._node.policy
        return "off" if policy is None else policy

    @property
    def banker(self) -> bool:
        """Whether the manager runs in banker mode (declared claims)."""
        return self._parts.banker is not None

    @property
    def clock(self) -> Clock:
        """The clock that measures this manager's timeouts and ages."""
        return self._clock

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._pool.closed

    def statistics(self) -> ManagerStatistics[Amount]:
        """A frozen snapshot of capacity, use, holders and waiters, taken under the lock."""
        return statistics_from(self._name, self._form, self._pool.snapshot())

    def __repr__(self) -> str:
        # Plain reads, never the lock: a debugger or a signal handler may call this on a
        # thread that is inside the manager's bookkeeping.
        pool = self._pool
        capacity = pool.capacity
        assert capacity is not None
        state = " closed" if pool.closed else ""
        form = self._form
        return (
            f"<allotment.ResourceManager {self._name!r}{state}: "
            f"capacity={form.render_all(capacity)!r} "
            f"in_use={form.render_all(capacity - pool.available)!r} waiting={pool.waiting}>"
        )


def _asked_ns(asked: float, clock: Clock) -> int:
    """When a request asked, on the events' timeline: the ticket's own reading on the
    system clock (the same clock in nanoseconds), else now."""
    return round(asked * 1e9) if clock is SYSTEM_CLOCK else now_ns()


def parts_of(manager: ResourceManager[Any]) -> ManagerParts:
    """The pool and settings of ``manager``, for the other faces of this package."""
    return manager._parts


def statistics_within(
    manager: ResourceManager[Any], timeout: float
) -> ManagerStatistics[Any] | None:
    """``manager.statistics()``, or ``None`` if its lock is not free within ``timeout``
    seconds or is held by this very thread (a signal handler that interrupted it)."""
    snapshot = manager._pool.try_snapshot(timeout)
    if snapshot is None:
        return None
    return statistics_from(manager._name, manager._form, snapshot)
