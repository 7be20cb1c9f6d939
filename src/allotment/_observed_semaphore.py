"""The observed paths of :class:`~allotment.Semaphore` and :class:`~allotment.BoundedSemaphore`.

A semaphore checks :data:`allotment._events.observers` once, on entry to ``acquire``,
``release`` and ``__exit__``; while it is empty nothing here runs. Otherwise it makes the
same pool calls as its plain path and reports around them, after they return (never under
its pool's lock), with the manager's kinds: ``granted`` (with the wait), ``requested`` for
an acquisition that queues, ``timed_out``, ``cancelled``, ``refused`` (``blocking=False``
with no permit: ``WouldWait``) and ``released``.

A semaphore's permits are not tied to who took them: any thread may release. So that a
trace can still show holds, each observed grant is remembered in :class:`Grants`, and a
release is paired with the releasing thread's own latest grant (a ``with`` block's), else
with the oldest grant of any thread (a consumer releasing what a producer took); its
``released`` event then carries that grant's request, owner and hold. A release that finds
no grant to pair (permits added beyond those taken, or taken while nobody observed) is
reported with request ``0``, the releasing thread as owner and no hold.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from typing import TYPE_CHECKING, Any

import attrs

from ._clock import SYSTEM_CLOCK, Clock
from ._core import MemoryPool, Ticket
from ._events import (
    Record,
    current_owner,
    emit,
    handing,
    new_request_id,
    now_ns,
)
from ._observed import new_observed_thread_waiter
from ._waiters import await_grant

if TYPE_CHECKING:
    from ._semaphore import Semaphore

__all__ = ["Grants", "acquire_observed", "release_observed"]

_get_ident = threading.get_ident
_current_thread = threading.current_thread

KEPT_PER_THREAD = 4096
"""The most unreleased grants remembered per thread (the oldest are forgotten beyond it:
permits taken while observed and given back while not, or never)."""

Entry = tuple[Record, "float | None"]
"""A grant's record and the semaphore's clock then (``None`` for the system clock)."""


@attrs.define(eq=False)
class Grants:
    """One semaphore's observed grants not yet paired with a release, per thread ident.

    No lock: each thread appends to, and pops from the end of, its own deque only; another
    thread may ``popleft`` from it. Each of these is one atomic call (under the GIL, or the
    deque's own lock on free-threaded builds), so each grant is paired at most once, and a
    signal handler or finalizer that releases in the middle of its thread's own pairing
    cannot deadlock on it.
    """

    by_thread: dict[int, collections.deque[Entry]] = attrs.field(factory=dict)

    def add(self, entry: Entry) -> None:
        ident = _get_ident()
        held = self.by_thread.get(ident)
        if held is None:
            held = self.by_thread.setdefault(ident, collections.deque(maxlen=KEPT_PER_THREAD))
        held.append(entry)

    def take(self, count: int) -> list[Entry]:
        """Up to ``count`` grants to pair with a release by the calling thread: its own
        latest first, then the oldest of the other threads'."""
        taken: list[Entry] = []
        own = self.by_thread.get(_get_ident())
        while own and len(taken) < count:
            try:
                taken.append(own.pop())
            except IndexError:  # another thread's release took the last one
                break
        while len(taken) < count:
            oldest = self._oldest_elsewhere()
            if oldest is None:
                break
            try:
                taken.append(oldest.popleft())
            except IndexError:
                continue  # taken meanwhile: look again
        return taken

    def _oldest_elsewhere(self) -> collections.deque[Entry] | None:
        best: collections.deque[Entry] | None = None
        best_t = 0
        for held in self.by_thread.copy().values():  # copy(): one atomic call
            try:
                first_t: int = held[0][0][2]
            except IndexError:
                continue
            if best is None or first_t < best_t:
                best, best_t = held, first_t
        return best

    def put_back(self, entries: list[Entry]) -> None:
        """Return grants taken for a release that did not happen (a bounded semaphore's
        release too many)."""
        for entry in reversed(entries):
            self.add(entry)


def _capacity(semaphore: Semaphore) -> int | None:
    return _parts(semaphore)[2]


def _parts(semaphore: Semaphore) -> tuple[MemoryPool, Clock, int | None, Grants]:
    from ._semaphore import parts_of  # at call time: _semaphore imports this module

    return parts_of(semaphore)


def _record(  # noqa: PLR0917 - positional, as the records are
    kind: str,
    semaphore: Semaphore,
    t_ns: int,
    owner: Any,
    amount: int,
    request: int,
    wait: float | None = None,
    hold: float | None = None,
    remaining: int | None = None,
    handed_by: int | None = None,
    reason: str | None = None,
) -> Record:
    return (
        kind,
        semaphore.name,
        t_ns,
        owner,
        amount,
        request,
        wait,
        hold,
        remaining,
        handed_by,
        _capacity(semaphore),
        None,
        False,
        reason,
    )


def _failure(error: BaseException | None) -> tuple[str, str | None]:
    if error is None or isinstance(error, TimeoutError):
        return "timed_out", None
    return "cancelled", type(error).__name__


def acquire_observed(
    semaphore: Semaphore, blocking: bool, timed: bool, deadline: float | None
) -> bool:
    """``Semaphore.acquire`` while someone observes (its arguments already checked):
    ``timed`` says whether a timeout was given (a try that finds no permit is then
    ``timed_out``, else ``refused``)."""
    pool, clock, _limit, _grants = _parts(semaphore)
    owner = current_owner()
    request = new_request_id()
    asked_ns = now_ns()
    receipt: list[Any] = []
    try:
        if pool.take(1, receipt):
            _report_grant(semaphore, owner, request, asked_ns, 0.0, None)
            return True
    except BaseException as error:
        if receipt:  # taken, but the permit never reached this frame's return
            pool.give(1, None)
        kind, reason = _failure(error)
        emit(_record(kind, semaphore, now_ns(), owner, 1, request, 0.0, reason=reason))
        raise
    if not blocking:
        kind, reason = ("timed_out", None) if timed else ("refused", "WouldWait")
        emit(_record(kind, semaphore, now_ns(), owner, 1, request, 0.0, reason=reason))
        return False
    asked = clock.now()
    ticket = Ticket(1, _current_thread(), None, asked)
    token = handing.set(request)  # a withdrawal hands permits on for this request
    try:
        granted = pool.enter(ticket, new_observed_thread_waiter)
        if not granted:
            emit(_record("requested", semaphore, asked_ns, owner, 1, request))
            granted = await_grant(pool, ticket, clock, deadline)
    except BaseException as error:
        # Interrupted anywhere, even as the permit arrived: hand it on.
        pool.release(ticket, None)
        kind, reason = _failure(error)
        emit(
            _record(
                kind, semaphore, now_ns(), owner, 1, request, clock.now() - asked, reason=reason
            )
        )
        raise
    finally:
        handing.reset(token)
    if not granted:
        emit(_record("timed_out", semaphore, now_ns(), owner, 1, request, clock.now() - asked))
        return False
    # No waiter at all if the enter granted at once (a permit freed since the take above).
    handed_by = getattr(getattr(ticket, "waiter", None), "handed_by", None)
    try:
        _report_grant(semaphore, owner, request, now_ns(), clock.now() - asked, handed_by)
    except BaseException:
        pool.release(ticket, None)
        raise
    return True


def _report_grant(  # noqa: PLR0917 - private, its callers' own arguments
    semaphore: Semaphore,
    owner: Any,
    request: int,
    t_ns: int,
    wait: float,
    handed_by: int | None,
) -> None:
    """Remember and report a grant. On an exception (an observer's interrupt) the caller
    gives the permit back; the grant is then forgotten, so that no release pairs with it."""
    record = _record("granted", semaphore, t_ns, owner, 1, request, wait, handed_by=handed_by)
    _pool, clock, _limit, grants = _parts(semaphore)
    entry: Entry = (record, None if clock is SYSTEM_CLOCK else clock.now())
    grants.add(entry)
    try:
        emit(record)
    except BaseException:
        _forget(grants, entry)
        raise


def _forget(grants: Grants, entry: Entry) -> None:
    held = grants.by_thread.get(_get_ident())
    if held is not None:
        with contextlib.suppress(ValueError):  # already paired by another thread's release
            held.remove(entry)


def release_observed(semaphore: Semaphore, count: int, receipt: list[bool | None]) -> bool:
    """``Semaphore.release(count)`` while someone observes; whether the permits were given
    (``False``: a bounded semaphore's release too many, nothing changed). ``receipt[0]`` is
    set as the give decides: a caller interrupted before that (its ``__exit__``) gives
    again. Reported as one ``released`` per grant it pairs with, and one for the rest
    (request ``0``). An exception before the give leaves the grants it took unpaired:
    events may then miss a hold, never a permit."""
    pool, _clock, limit, grants = _parts(semaphore)
    began_ns = now_ns()
    paired = grants.take(count)
    token = None
    try:
        token = handing.set(paired[0][0][5] if paired else None)
        given = pool.give(count, limit, receipt)
    finally:
        if token is not None:
            handing.reset(token)
    if not given:
        grants.put_back(paired)
        return False
    _report_released(semaphore, paired, count, began_ns)
    return True


def _report_released(semaphore: Semaphore, paired: list[Entry], count: int, began_ns: int) -> None:
    clock = _parts(semaphore)[1]
    records: list[Record] = []
    for record, granted_at in paired:
        hold = (began_ns - record[2]) / 1e9 if granted_at is None else clock.now() - granted_at
        records.append(
            _record("released", semaphore, began_ns, record[3], 1, record[5], None, hold, 0)
        )
    rest = count - len(paired)
    if rest:
        records.append(
            _record("released", semaphore, began_ns, current_owner(), rest, 0, None, None, 0)
        )
    for record in records:
        emit(record)
