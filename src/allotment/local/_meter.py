"""LocalMeter: a rate limiter's state in a file shared by the processes of one host.

The decision rules are those of the Redis backend's scripts, run here in a section of the
limit's file (``flock``, two checksummed copies, as a manager's): one section per decision.
The clock is the host's ``CLOCK_MONOTONIC`` in nanoseconds, the same in every process, so
there is no skew by construction (a reboot resets the directory, and with it the clock's
origin). A request that must wait is *reserved*: the section records it at the time it will
be allowed (GCRA: the theoretical arrival time moves on; a window: an entry is logged at
that time), and the caller sleeps here until then. Reservations are served in the order
the file records them: FIFO across every process.

Nothing is spent on failure: a waiter interrupted undoes its reservation, exactly when
nothing was recorded after it on that limit; otherwise it stays spent, which can only make
the limit stricter, never looser.

``_lock`` guards the local queue (tickets sleeping until their reserved time) and the
counters; it is never held across a section.
"""

from __future__ import annotations

import collections
import fcntl
import logging
import mmap
import os
import threading
import weakref
from collections.abc import Callable
from typing import TypeVar

import attrs

from .._backend import OnUnavailable
from .._clock import SYSTEM_CLOCK
from .._core import (
    FINISHED,
    GRANTED,
    PENDING,
    Entry,
    MeterSnapshot,
    RateTicket,
    SectionLock,
    Waiter,
    WaitingView,
    new_section_lock,
    task_of,
)
from .._errors import BackendConflict, BackendUnavailable, ReentrantCall
from ._directory import Directory
from ._layout import (
    CorruptState,
    check_words_header,
    read_words,
    words_file_size,
    words_header,
    write_words,
)
from ._state_file import _corrupt, _here, _reentered, check_linked, closed_error

__all__ = ["GCRA", "WINDOW", "LocalMeter", "MeterFile", "RuleLimits"]

_R = TypeVar("_R")

GCRA = 100
WINDOW = 101
GCRA_WORDS = 3  # interval_ns, burst, tat
WINDOW_ENTRIES = 4096
"""Entries a window's log can hold (its units in the last window, and reservations ahead)."""
WINDOW_WORDS = 4 + 3 * WINDOW_ENTRIES  # limit, window_ns, seq, count, (at, seq, units)...

logger = logging.getLogger("allotment.local")

_now_ns = SYSTEM_CLOCK.now_ns  # CLOCK_MONOTONIC: the same in every process of the host


@attrs.frozen
class RuleLimits:
    """What the faces read of a meter's rule: the largest cost it can allow."""

    largest: int


@attrs.define(eq=False)
class MeterFile:
    """A limiter's mapped file and the section that changes it (see ``_state_file``)."""

    name: str
    path: str
    kind: int
    words: int
    fd: int
    _map: mmap.mmap
    view: memoryview
    mutex: SectionLock = attrs.field(factory=new_section_lock)
    closed: bool = False
    """Set by the backend's ``close``, which unmaps the file and closes ``fd`` under
    ``mutex`` (they are used only under it): every section is refused from then on but an
    undo, which finds nothing to give back (the limit stays as strict, never looser)."""
    mapped: bool = True
    """Whether ``fd`` and the mapping are still open (guarded by ``mutex``)."""
    faces: weakref.WeakSet[LocalMeter] = attrs.field(factory=weakref.WeakSet)
    """The meters kept in this file (a keyed limiter's keys have a file each), whose
    sleeping waiters the backend's ``close`` wakes."""

    @classmethod
    def open(cls, directory: Directory, path: str, name: str, kind: int, words: int) -> MeterFile:
        fd = directory.open_file(path)
        try:
            size = words_file_size(words)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.fstat(fd).st_size
                if current == 0:
                    os.ftruncate(fd, size)
                    os.pwrite(fd, words_header(kind, words), 0)
                elif current != size:
                    raise _corrupt(name, path, f"its size is {current} bytes, not {size}")
                mapped = mmap.mmap(fd, size)
                view = memoryview(mapped)
                try:
                    check_words_header(view, kind, words)
                except CorruptState as error:
                    view.release()
                    mapped.close()
                    raise _corrupt(name, path, str(error)) from None
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(fd)
            raise
        return cls(name, path, kind, words, fd, mapped, view)

    def section(
        self,
        change: Callable[[list[int] | None], tuple[_R, list[int] | None]],
        *,
        grants: bool = True,
    ) -> _R:
        """As a manager's (``StateFile.section``): re-entry on this thread is refused; on a
        closed file, a section that ``grants`` raises ``closed_error`` and an undo finds an
        empty file (``change(None)``: nothing to give back)."""
        if _here.depth:
            raise _reentered(self.name.replace("\x00", " "))
        with self.mutex:
            _here.depth += 1
            try:
                if self.closed:
                    if grants:
                        raise closed_error(self.name.replace("\x00", " "))
                    return change(None)[0]
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX)
                    if grants:
                        check_linked(self.fd, self.name, self.path)
                    try:
                        current = read_words(self.view, self.words)
                    except CorruptState as error:
                        raise _corrupt(self.name, self.path, str(error)) from None
                    generation, values = (0, None) if current is None else current
                    result, changed = change(values)
                    if changed is not None:
                        write_words(self.view, generation, changed, self.words)
                    return result
                finally:
                    fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                _here.depth -= 1

    def close(self, *, wait: bool = True) -> bool:
        """Refuse every later section (``closed``), unmap the file and close its descriptor,
        under the mutex. Idempotent. ``wait=False``: if another thread holds the mutex, only
        the flag is set (a plain store) and the file is left open (``False``)."""
        mutex = self.mutex
        if mutex._is_owned():  # in a section of this very thread: never unmapped under it
            self.closed = True
            return False
        try:
            if not mutex.acquire(wait):
                self.closed = True
                return False
            _here.depth += 1  # a finalizer's release landing here is deferred
            try:
                self.closed = True
                if self.mapped:
                    self.mapped = False
                    self.view.release()
                    self._map.close()
                    os.close(self.fd)
                return True
            finally:
                _here.depth -= 1
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                mutex.release()
            except RuntimeError:
                pass  # not acquired: busy

    def reopen_in_child(self, directory: Directory) -> None:
        self.mutex = new_section_lock()
        old = self.fd
        fresh = MeterFile.open(directory, self.path, self.name, self.kind, self.words)
        self.fd, self._map, self.view = fresh.fd, fresh._map, fresh.view
        os.close(old)


# -- the rules, on the file's words (``now`` in ns; waits in ns) ----------------------------


def gcra_take(  # noqa: PLR0911 - one answer per operation, as the Redis script
    words: list[int] | None, settings: tuple[int, int], now: int, op: str, args: tuple[int, ...]
) -> tuple[tuple[int, ...], list[int] | None]:
    interval, burst = settings
    if words is not None and (words[0], words[1]) != settings:
        raise _Conflict(words[0], words[1])
    tat = now if words is None else max(words[2], now)
    tolerance = burst * interval

    def store(new_tat: int) -> list[int]:
        return [interval, burst, new_tat]

    if op == "declare":
        return (1,), None if words is not None else store(0)
    if op == "take":
        cost, longest = args
        allow_at = max(tat + cost * interval - tolerance, now)
        wait = allow_at - now
        if wait == 0 or longest < 0 or wait <= longest:
            after = tat + cost * interval
            return (1 if wait == 0 else 0, wait, tat, after), store(after)
        return (-1, wait, 0, 0), None
    if op == "undo":
        before, after = args
        if words is not None and words[2] == after:
            return (1,), store(before)
        return (0,), None
    if op == "charge":
        return (1,), store(tat + args[0] * interval)
    if op == "pause":
        floor = args[0] + burst * interval - interval
        if floor <= tat:
            return (0,), None
        return (1,), store(floor)
    # peek
    wait = max(0, tat + args[0] * interval - tolerance - now)
    free = max(0, (now + tolerance - tat) // interval)
    return (wait, free), None


def window_take(  # noqa: PLR0911 - one answer per operation, as the Redis script
    words: list[int] | None, settings: tuple[int, int], now: int, op: str, args: tuple[int, ...]
) -> tuple[tuple[int, ...], list[int] | None]:
    limit, window = settings
    if words is not None and (words[0], words[1]) != settings:
        raise _Conflict(words[0], words[1])
    seq = 0 if words is None else words[2]
    entries = (
        [] if words is None else [tuple(words[4 + 3 * i : 7 + 3 * i]) for i in range(words[3])]
    )
    # A unit at t counts in the windows (s - window, s] that hold t: gone once t <= now - window.
    live = [entry for entry in entries if entry[0] > now - window]
    changed = len(live) != len(entries)
    total = sum(entry[2] for entry in live)

    def encode(log: list[tuple[int, ...]], last_seq: int) -> list[int]:
        out = [limit, window, last_seq, len(log)]
        for entry in log:
            out += entry
        return out

    def earliest(cost: int) -> int:
        at = max([now] + [entry[0] for entry in live[-1:]])
        left = total
        for entry in live:
            if left + cost <= limit:
                break
            left -= entry[2]
            at = max(at, entry[0] + window)
        return at

    if op == "declare":
        return (1,), None if words is not None else encode(live, seq)
    if op == "take":
        cost, longest = args
        at = earliest(cost)
        wait = at - now
        if (wait == 0 or longest < 0 or wait <= longest) and len(live) < WINDOW_ENTRIES:
            seq += 1
            live.append((at, seq, cost))
            return (1 if wait == 0 else 0, wait, seq, 0), encode(live, seq)
        return (-1, wait, 0, 0), encode(live, seq) if changed else None
    if op == "undo":
        if live and live[-1][1] == args[0]:
            live.pop()
            return (1,), encode(live, seq)
        return (0,), encode(live, seq) if changed else None
    if op in ("charge", "pause"):
        if op == "charge":
            at, units = max([now] + [entry[0] for entry in live[-1:]]), args[0]
        else:
            at, units = args[0] - window, limit  # a full window logged at hold - window
        seq += 1
        live.append((at, seq, units))
        live.sort()
        return (1,), encode(live[-WINDOW_ENTRIES:], seq)
    # peek
    at = earliest(args[0])
    free = limit - total
    if free < 0 or (live and live[-1][0] > now):
        free = 0
    return (at - now, free), encode(live, seq) if changed else None


class _Conflict(Exception):
    def __init__(self, first: int, second: int) -> None:
        super().__init__(first, second)
        self.stored = (first, second)


Rule = Callable[
    [list[int] | None, tuple[int, int], int, str, tuple[int, ...]],
    tuple[tuple[int, ...], list[int] | None],
]


@attrs.define(eq=False)
class LocalMeter:
    """One rate limit (or one key of a keyed limit) kept in a file of a LocalBackend."""

    _file: MeterFile
    _decide: Rule
    _settings: tuple[int, int]
    rule: RuleLimits
    _describe: Callable[[tuple[int, int]], str]
    name: str
    _now: Callable[[], float]
    policy: OnUnavailable = "raise"
    """What a decision does when the limit's file cannot be used (damaged, removed from
    outside): raise ``BackendUnavailable``, allow, or deny, as on Redis."""
    scale: int = 1
    queue: collections.OrderedDict[RateTicket, None] = attrs.field(
        init=False, factory=collections.OrderedDict
    )
    allowed: int = attrs.field(init=False, default=0)
    allowed_units: int = attrs.field(init=False, default=0)
    refused: int = attrs.field(init=False, default=0)
    waited: int = attrs.field(init=False, default=0)
    charged: int = attrs.field(init=False, default=0)
    _lock: SectionLock = attrs.field(init=False, factory=new_section_lock)

    def _section(self) -> SectionLock:
        """The local queue's and counters' lock; ``ReentrantCall`` on a thread already
        inside it (a signal handler or finalizer that interrupted it), as on Redis."""
        lock = self._lock
        if lock._is_owned():
            raise ReentrantCall(
                f"cannot use the limiter {self.name!r} from inside its own bookkeeping on "
                "this thread (a finalizer or signal handler ran there)"
            )
        return lock

    def _call(self, op: str, *args: int) -> tuple[int, ...]:
        rule, settings = self._decide, self._settings
        try:
            return self._file.section(
                lambda words: rule(words, settings, _now_ns(), op, args), grants=op != "undo"
            )
        except _Conflict as conflict:
            raise BackendConflict(
                f"{self.name!r} exists in this LocalBackend as "
                f"{self._describe(conflict.stored)}; this process declared "
                f"{self._describe(settings)}. Declare the same limit, or use another name"
            ) from None

    def declare(self) -> None:
        """Record this process's settings (or refuse a conflicting declaration)."""
        self._call("declare")

    def after_fork_in_child(self) -> None:
        self._lock = new_section_lock()
        me = threading.current_thread()
        for ticket in list(self.queue):
            if ticket.thread is not me:
                ticket.state = FINISHED
                del self.queue[ticket]

    def _count(self, cost: int) -> None:
        with self._section():
            self.allowed += 1
            self.allowed_units += cost

    def take_now(self, cost: int, count_refusal: bool) -> bool | None:
        """Spend ``cost`` if it is allowed now (one section); never queues."""
        try:
            code = self._call("take", cost, 0)[0]
        except BackendUnavailable:
            if self.policy == "allow":
                return True
            if self.policy == "deny" and count_refusal:
                self.count_refusal()
                return False
            raise
        if code == 1:
            self._count(cost)
            return True
        if count_refusal:
            with self._section():
                self.refused += 1
        return False

    def wake_closed(self) -> None:
        """The backend was closed: wake every thread or task sleeping here until its time,
        whose ``poll`` then raises the error a new call gets (its reservation stays spent:
        stricter, never looser)."""
        with self._section():
            sleepers = [ticket.sleeper for ticket in self.queue if ticket.sleeper is not None]
        for sleeper in sleepers:
            sleeper.wake()

    def enter(
        self, ticket: RateTicket, sleeper: Callable[[], Waiter] | None, wait: bool, deadline: int
    ) -> Entry:
        """Grant ``ticket`` now; or reserve its place and queue it here until its time
        (``"queued"``); or refuse it, spending nothing."""
        longest = 0 if not wait else (-1 if deadline < 0 else max(0, deadline - _now_ns()))
        try:
            code, wait_ns, first, second = self._call("take", ticket.cost, longest)
        except BackendUnavailable:
            if self.policy != "allow":
                raise  # no grant and no wait can be promised without the file
            ticket.state = GRANTED  # recorded nowhere, as on Redis
            return "granted"
        ticket.token = (first, second)
        if code == 1:
            ticket.state = GRANTED
            self._count(ticket.cost)
            return "granted"
        due = _now_ns() + wait_ns
        ticket.due = due
        if code == -1:
            with self._section():
                self.refused += 1
            return "refused"
        made = None if sleeper is None else sleeper()
        ticket.sleeper = made
        if made is None:
            ticket.promised = due
        with self._section():
            self.queue[ticket] = None
            self.waited += 1
            closed = self._file.closed  # after the queue: a close either sees it or is seen
        if closed and made is not None:
            made.wake()  # its poll raises
        return "queued"

    def forecast(self, cost: int) -> int:
        try:
            wait_ns, _ = self._call("peek", cost)
        except BackendUnavailable:
            if self.policy == "allow":
                return _now_ns()
            raise
        return _now_ns() + wait_ns

    def count_refusal(self) -> None:
        with self._section():
            self.refused += 1

    def poll(self, ticket: RateTicket, sleeper: Callable[[], Waiter]) -> int | None:
        """The sleeper woke: granted once its reserved time has come, else sleep again."""
        if ticket.state is GRANTED:
            return None
        if ticket.state is not PENDING:
            raise ValueError("this ticket is no longer queued")
        if self._file.closed:  # the backend was closed (it woke this sleeper)
            raise closed_error(self.name)
        if _now_ns() >= ticket.due:
            self._grant(ticket)
            return None
        ticket.sleeper = sleeper()
        return ticket.due

    def _grant(self, ticket: RateTicket) -> None:
        with self._section():
            if ticket.state is not PENDING:
                return
            self.queue.pop(ticket, None)
            ticket.state = GRANTED
            self.allowed += 1
            self.allowed_units += ticket.cost

    def withdraw(self, ticket: RateTicket) -> bool:
        """The deadline passed: keep the grant if its time has come, else give it back."""
        if ticket.state is PENDING and _now_ns() >= ticket.due:
            self._grant(ticket)
        if ticket.state is GRANTED:
            return True
        self.release(ticket)
        return False

    def release(self, ticket: RateTicket) -> bool:
        """Interrupted: undo the reservation or grant, exactly if nothing was recorded after
        it. ``True`` if this gave something back."""
        with self._section():
            state = ticket.state
            if state is not PENDING and state is not GRANTED:
                return False
            ticket.state = FINISHED
            self.queue.pop(ticket, None)
            if state is GRANTED:
                self.allowed -= 1
                self.allowed_units -= ticket.cost
        return self._undo(ticket)

    def _undo(self, ticket: RateTicket) -> bool:
        token = ticket.token
        if not isinstance(token, tuple):
            return False
        first, second = token
        args = (first,) if self._decide is window_take else (first, second)
        return bool(self._call("undo", *args)[0])

    def cancel(self, ticket: RateTicket) -> bool:
        """A reservation given back before its time: ``True`` if refunded exactly."""
        if ticket.state is not PENDING or ticket.promised <= _now_ns():
            return False
        with self._section():
            if ticket.state is not PENDING:
                return False
            ticket.state = FINISHED
            self.queue.pop(ticket, None)
        return self._undo(ticket)

    def charge(self, cost: int) -> None:
        """Spend ``cost`` now, allowed or not."""
        try:
            self._call("charge", cost)
        except BackendUnavailable:
            if self.policy == "raise":
                raise
            logger.warning(
                "a charge of %d on %r was dropped: its file cannot be used", cost, self.name
            )
            return
        with self._section():
            self.charged += cost

    def retire_if_idle(self) -> bool:
        return not self.queue

    def pause_until(self, until: int) -> None:
        """Nothing allowed before ``until`` (the host's clock), in every process; local
        waiters move back to it, keeping their order."""
        if until <= _now_ns():
            return
        self._call("pause", until)
        with self._section():
            for ticket in self.queue:
                ticket.due = max(ticket.due, until)

    def snapshot(self) -> MeterSnapshot:
        now = _now_ns()
        wait_ns, free = self._call("peek", 1)
        with self._section():
            waiting = tuple(
                WaitingView(t.cost, t.thread, t.since, t.due, t.sleeper is None, task_of(t))
                for t in self.queue
            )
            figures = (self.allowed, self.allowed_units, self.refused, self.waited, self.charged)
        return MeterSnapshot(
            now=now,
            available=int(free),
            next_free=now + int(wait_ns),
            waiting=waiting,
            allowed=figures[0],
            allowed_units=figures[1],
            refused=figures[2],
            waited=figures[3],
            charged=figures[4],
            taken_at=self._now(),
        )
