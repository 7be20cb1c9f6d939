"""LocalPool: a manager's units in a state file shared by the processes of one host.

The queue, the holders and the hand-off live in the file (see ``_layout``); this process
keeps only its own tickets. The rules of the in-memory pool hold across processes:

- **Strict FIFO, hand-off.** A request is granted on arrival only if nobody is queued and
  it fits. Whoever makes units available (a release, a withdrawal, a resize, a reclaim of a
  dead process's records) grants the head of the queue in the same section, records the
  grant (its fencing token included) in the file, and after the section rings the granted
  waiters' doorbells (or, for this backend's own waiters, wakes them). The waiter never
  competes: its doorbell thread reads the grant from the file.
- **The file is authoritative.** A ring is only a wake-up; a waiter whose deadline passes
  withdraws in a section that keeps a grant that arrived (an arrived grant beats an expired
  deadline).
- **One release path, by record id.** ``release(ticket, None)`` releases a holder, or
  withdraws a queued request, whichever the file has: a caller interrupted anywhere leaves
  as if it had never asked.
- **Nothing is lost to a death.** A record whose backend is dead (its liveness file is
  lockable) is reclaimed by whoever notices first: a request that cannot be granted checks
  the backends ahead of it, and a waiting backend's doorbell thread watches them (pidfd).
- **Fencing tokens** come from a counter in the file, written in the same copy as the
  grant: strictly increasing per name, whoever crashes when.

Between sections (with the file's mutex free), for the file's current state:
``available == capacity - sum(units of GRANTED records)`` element-wise; QUEUED records each
fit the capacity and the head of the queue does not fit ``available`` (hand-off is eager);
a record of this backend that is GRANTED or REFUSED has its ticket settled, or is being
settled by the thread that changed it, right after its section. Local ticket fields
change only under the file's mutex, after the file was written (write first, then plain
stores).
"""

from __future__ import annotations

import functools
import itertools
import logging
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar, cast

import attrs

from .._core import (
    FINISHED,
    GRANTED,
    PENDING,
    REFUSED,
    Form,
    NamedForm,
    Quantity,
    Snapshot,
    Ticket,
    TicketView,
    Units,
    Waiter,
    task_of,
)
from .._errors import (
    BackendConflict,
    BackendLimitExceeded,
    BackendUnavailable,
    ExceedsCapacity,
    ManagerClosed,
    ReentrantCall,
    ReleaseExceedsHeld,
    UnsupportedByBackend,
)
from . import _layout
from ._layout import QUEUED, Record, State
from ._state_file import StateFile, defer, first_token, inside, run_deferred

if TYPE_CHECKING:
    from .._core import MemoryPool
    from ._backend import LocalBackend

__all__ = ["LocalPool", "fits", "grant_queue"]

logger = logging.getLogger("allotment.local")
_R = TypeVar("_R")
_record_ids = itertools.count(1)


def fits(wanted: Sequence[int], have: Sequence[int]) -> bool:
    """Element-wise, counting only the resources asked for (as ``Units.__le__``)."""
    # A loop, not all() of a generator: this runs in every section, and the generator costs.
    for want, got in zip(wanted, have, strict=True):  # noqa: SIM110
        if want and want > got:
            return False
    return True


def grant_queue(state: State) -> list[Record]:
    """Grant the head of the queue while it fits: the one hand-off rule, for every change
    that makes units available. Returns the records granted."""
    for record in state.records:
        if record.kind == QUEUED:
            break
    else:
        return []  # nobody waits (the common case: no sort, no list)
    queue = sorted((record for record in state.records if record.kind == QUEUED), key=_seq)
    granted = []
    for record in queue:
        if not fits(record.units, state.available):
            break
        state.available = [
            got - want for got, want in zip(state.available, record.units, strict=True)
        ]
        record.kind = _layout.GRANTED
        record.token = state.next_token
        state.next_token += 1
        granted.append(record)
    return granted


def find(state: State, rid: int, me: Identity) -> int:
    """The index of this backend's record ``rid``, or -1."""
    for index, record in enumerate(state.records):
        if record.rid == rid and record.pid == me[0] and record.nonce == me[1]:
            return index
    return -1


def _check_room(records: list[Record], name: str, adding: int = 1) -> None:
    """Refuse new records the file has no room for, before anything changes."""
    if len(records) + adding > _layout.MAX_RECORDS:
        raise BackendLimitExceeded(
            f"{name!r} has {len(records)} holders and waiters across the processes of this "
            f"LocalBackend, the most its state file holds ({_layout.MAX_RECORDS}); nothing "
            "was changed"
        )


def _seq(record: Record) -> int:
    return record.seq


Identity = tuple[int, int]
"""A backend in some process: ``(pid, nonce)``."""


def settle_waiting(file: StateFile, state: State, me: Identity, woken: list[Waiter]) -> None:
    """Under ``file.mutex``, with ``state`` as the file has it: settle this backend's queued
    tickets that the file granted or refused (plain stores), adding their waiters to
    ``woken``. Idempotent, so that it can run again after an exception cut it short: a
    waiter is added before its ticket is settled, and its entry dropped only after."""
    waiting = file.waiting
    for record in state.records:
        if record.kind == QUEUED or (record.pid, record.nonce) != me:
            continue
        entry = waiting.get(record.rid)
        if entry is None:
            continue
        pool, ticket = entry
        woken.append(ticket.waiter)
        pool._apply(ticket, record)
        del waiting[record.rid]


def hand_off(
    file: StateFile,
    backend: LocalBackend,
    change: Callable[[State | None], tuple[_R, State | None]],
    then: Callable[[_R], None] | None = None,
    *,
    rings: set[Identity],
    grants: bool = False,
    gives_back: bool = False,
) -> _R:
    """A section that may grant: it settles this backend's waiters from the file, then wakes
    them and rings the doorbells of the other backends in ``rings`` (which ``change``
    fills), as part of the section (see ``StateFile.section``): no exception can leave a
    written grant's waiter asleep. Never under a lock that another process waits for."""
    me = backend.me()
    woken: list[Waiter] = []

    def settle_here(state: State) -> None:
        if file.waiting:
            settle_waiting(file, state, me, woken)

    def wake() -> None:
        for waiter in woken:
            waiter.wake()
        for identity in rings:
            if identity != me:
                backend.ring(*identity)

    result = file.section(
        change, then, grants=grants, gives_back=gives_back, settle=settle_here, wake=wake
    )
    run_deferred()
    return result


def settle(file: StateFile, backend: LocalBackend) -> None:
    """Settle this backend's waiters on ``file`` from what it holds (after a ring). Checked
    as a granting section is (a removed file refuses them, see ``StateFile.unusable``)."""
    hand_off(file, backend, lambda current: (None, None), rings=set(), grants=True)


def reap(file: StateFile, backend: LocalBackend, dead: set[Identity]) -> None:
    """Reclaim every record of the ``dead`` backends in ``file``, and hand off."""
    removed: list[Record] = []
    rings: set[Identity] = set()

    def change(current: State | None) -> tuple[State | None, State | None]:
        if current is None:
            return None, None
        state = current
        kept = []
        for record in state.records:
            if (record.pid, record.nonce) not in dead:
                kept.append(record)
                continue
            removed.append(record)
            if record.kind == _layout.GRANTED:
                state.available = [
                    a + u for a, u in zip(state.available, record.units, strict=True)
                ]
        if not removed:
            return state, None
        state.records = kept
        for record in grant_queue(state):
            rings.add((record.pid, record.nonce))
        return state, state

    hand_off(file, backend, change, rings=rings, gives_back=True)
    for identity in sorted({(r.pid, r.nonce) for r in removed}):
        held = [r for r in removed if (r.pid, r.nonce) == identity]
        logger.warning(
            "reclaimed %d holder(s) and %d waiter(s) on %r of process %d, which is gone",
            sum(1 for r in held if r.kind == _layout.GRANTED),
            sum(1 for r in held if r.kind != _layout.GRANTED),
            file.name,
            identity[0],
        )


def _pairs(records: weakref.WeakKeyDictionary[Ticket, _Mine]) -> list[tuple[Ticket, _Mine]]:
    """The live entries of ``records``, copied by one C call on its own dict (atomic under
    the GIL, and under the dict's lock without it): iterating the weak dictionary in
    Python can meet a weak reference's callback, run on whichever thread drops a ticket,
    deleting an entry, which raises "dictionary changed size during iteration"."""
    data: dict[weakref.ref[Ticket], _Mine] = records.data  # type: ignore[attr-defined]
    pairs = list(data.items())
    return [(ticket, mine) for ref, mine in pairs if (ticket := ref()) is not None]


@attrs.define(eq=False)
class _Mine:
    """What this process knows of one of its tickets."""

    rid: int
    token: int | None = None
    done: bool = False
    queued: bool = False
    partial: tuple[Quantity, list[int]] | None = None
    """A partial release written whose local bookkeeping was cut short: the part, and the
    record's units it left in the file."""


@attrs.define(eq=False)
class LocalPool:
    """One manager's units in a state file. See the module docstring for the rules."""

    form: Form[object]
    _backend: LocalBackend
    name: str
    _declared: Quantity
    _now: Callable[[], float]
    _file: StateFile
    _records: weakref.WeakKeyDictionary[Ticket, _Mine] = attrs.field(
        init=False, factory=weakref.WeakKeyDictionary
    )
    _live: dict[Ticket, None] = attrs.field(init=False, factory=dict)
    """The tickets that hold or ask, kept strongly: a leaked lease in a reference cycle is
    collected with its ticket's weak references cleared first, and its finalizer must still
    find the ticket's record to give the units back."""
    closed: bool = attrs.field(init=False, default=False)
    _last: tuple[Quantity, Quantity, int, int] = attrs.field(init=False)
    zero: Quantity = attrs.field(init=False)
    _names_hash: int = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.zero = self.form.zero()
        self._last = (self._declared, self._declared, 0, 0)
        names = self.form.names if isinstance(self.form, NamedForm) else None
        self._names_hash = _layout.names_hash(names)
        self._file.section(self._declare)

    # -- conversions ---------------------------------------------------------------------------

    def _counts(self, units: Quantity) -> list[int]:
        return list(units.counts) if isinstance(units, Units) else [cast(int, units)]

    def _quantity(self, counts: Sequence[int]) -> Quantity:
        return Units(tuple(counts)) if isinstance(self.form, NamedForm) else counts[0]

    def _me(self) -> Identity:
        return self._backend.me()

    # -- sections ------------------------------------------------------------------------------

    def _declare(self, state: State | None) -> tuple[None, State | None]:
        declared = self._counts(self._declared)
        if state is None:
            fresh = State(
                0,
                self._names_hash,
                first_token(),
                1,
                0,
                declared,
                list(declared),
                list(declared),
                [],
            )
            self._seen(fresh)
            return None, fresh
        if state.names_hash != self._names_hash or state.declared != declared:
            resized = ""
            if state.capacity != state.declared:
                resized = f" (resized to {self._describe(state.capacity, state)})"
            raise BackendConflict(
                f"{self.name!r} already exists in this LocalBackend, declared with "
                f"{self._describe(state.declared, state)}{resized}; this process declared "
                f"{self._describe(declared, None)}. Declare the same (use resize() to change "
                "the capacity for everyone), or use another name"
            )
        self._seen(state)
        return None, None

    def _describe(self, counts: Sequence[int], state: State | None) -> str:
        if state is not None and state.names_hash != self._names_hash:
            return "other resource names"
        if isinstance(self.form, NamedForm):
            return f"resources {dict(zip(self.form.names, counts, strict=True))!r}"
        return f"capacity {counts[0]}"

    def _seen(self, state: State) -> None:
        """Keep the figures the lock-free properties show (plain stores)."""
        holders = waiters = 0
        for record in state.records:
            if record.kind == _layout.GRANTED:
                holders += 1
            elif record.kind == QUEUED:
                waiters += 1
        self._last = (
            self._quantity(state.capacity),
            self._quantity(state.available),
            holders,
            waiters,
        )

    def _state(self, state: State | None) -> State:
        if state is None:  # removed from outside after this face declared it
            declared = self._counts(self._declared)
            return State(
                0,
                self._names_hash,
                first_token(),
                1,
                0,
                declared,
                list(declared),
                list(declared),
                [],
            )
        return state

    def _apply(self, ticket: Ticket, record: Record) -> bool:
        """The file granted or refused ``ticket``: settle it here. ``True`` if it changed."""
        if ticket.state is not PENDING:
            return False
        mine = self._records.get(ticket)
        if mine is None:
            return False
        if record.kind == _layout.GRANTED:
            mine.token = record.token
            ticket.since = self._now()
            ticket.state = GRANTED
            return True
        self._refuse_locked(ticket)
        return True

    def refuse_with(self, ticket: Ticket, error: BackendUnavailable | UnsupportedByBackend) -> None:
        """Under the file's mutex: the file cannot be used (damaged, removed, or its backend
        closed); ``ticket``, queued, is refused with the error a new call gets. Its record
        stays in the file, which nobody trusts any more (a closed backend's is reclaimed by
        the close)."""
        if ticket.state is not PENDING:
            return
        mine = self._records.get(ticket)
        if mine is not None:
            mine.done = True
        self._live.pop(ticket, None)
        ticket.error = type(error)(str(error))
        ticket.state = REFUSED

    def _refuse_locked(self, ticket: Ticket) -> None:
        ticket.error = ExceedsCapacity(
            f"a request for {self.form.render(ticket.units)!r} can never be granted: the "
            f"capacity is {self.form.render_all(self._last[0])!r}"
        )
        ticket.state = REFUSED

    # -- arrival, wait, withdrawal, release --------------------------------------------------

    def enter(self, ticket: Ticket, waiter: Callable[[], Waiter] | None) -> bool:
        """Grant ``ticket`` now (``True``), or queue it in the file with a local waiter that
        the doorbell thread wakes (``False``), or neither (a try that does not fit)."""
        if self.closed:
            raise ManagerClosed("the manager is closed")
        file = self._file
        if inside():
            raise ReentrantCall("cannot acquire from inside this manager's bookkeeping")
        wanted = self._counts(ticket.units)
        made = None if waiter is None else waiter()
        mine = _Mine(next(_record_ids))
        me = self._me()

        def change(current: State | None) -> tuple[tuple[int, set[Identity]], State | None]:
            # Under the mutex, as every write to ``_records`` (a snapshot copying it under
            # the mutex then sees no change of size: seen on 3.13t before).
            self._records[ticket] = mine
            state = self._state(current)
            if not fits(wanted, state.capacity):
                raise ExceedsCapacity(
                    f"a request for {self.form.render(ticket.units)!r} can never be granted: "
                    f"the capacity is {self.form.render_all(self._quantity(state.capacity))!r}"
                )
            records = state.records
            queued = False
            for record in records:
                if record.kind == QUEUED:
                    queued = True
                    break
            if not queued and fits(wanted, state.available):
                _check_room(records, self.name)
                token = state.next_token
                state.next_token += 1
                state.available = [
                    got - want for got, want in zip(state.available, wanted, strict=True)
                ]
                records.append(Record(_layout.GRANTED, *me, mine.rid, 0, token, wanted))
                self._live[ticket] = None  # under the mutex, before the write
                self._seen(state)
                return (token, set()), state
            others = {(r.pid, r.nonce) for r in records} - {me}
            if made is None:
                self._seen(state)
                return (0, others), None
            _check_room(records, self.name)
            seq = state.next_seq
            state.next_seq += 1
            records.append(Record(QUEUED, *me, mine.rid, seq, 0, wanted))
            self._live[ticket] = None
            ticket.waiter = made  # before the write: a settle by another thread wakes it
            self._seen(state)
            return (-1, others), state

        def then(result: tuple[int, set[Identity]]) -> None:
            token = result[0]
            if token > 0 and ticket.state is PENDING:
                mine.token = token
                ticket.state = GRANTED
            elif token < 0:
                mine.queued = True
                file.waiting[mine.rid] = (self, ticket)

        token, others = file.section(change, then, grants=True)
        run_deferred()
        backend = self._backend
        if token > 0:
            return ticket.state is GRANTED
        if token == 0:  # a try that does not fit: a dead holder is no reason to refuse it
            if backend.reap_dead(backend.unwatched(others)):
                return self.enter(ticket, None)
            return False
        backend.start_bell()
        backend.watch(others)
        backend.reap_dead(backend.unwatched(others))
        # A grant may have been written between the section and the listing above (rung
        # before this backend knew the ticket): look once more.
        settle(file, backend)
        return False

    def withdraw(self, ticket: Ticket) -> bool:
        """The deadline passed: leave the queue unless a grant arrived, which is kept."""
        if ticket.state is REFUSED:
            raise ticket.error
        mine = self._records.get(ticket)
        if mine is None or ticket.state is not PENDING:
            return ticket.state is GRANTED
        me = self._me()
        rings: set[Identity] = set()
        outcome: list[int] = []

        def change(current: State | None) -> tuple[State | None, State | None]:
            if current is None:
                return None, None
            state = current
            index = find(state, mine.rid, me)
            if index < 0:
                return state, None
            record = state.records[index]
            if record.kind == _layout.GRANTED:
                outcome.append(record.token)  # kept: the grant beats the deadline
                return state, None
            outcome.append(-1 if record.kind == _layout.REFUSED else 0)
            del state.records[index]
            for granted in grant_queue(state):
                rings.add((granted.pid, granted.nonce))
            self._seen(state)
            return state, state

        file = self._file

        def settled() -> None:
            if ticket.state is PENDING:
                if outcome and outcome[0] > 0:
                    mine.token = outcome[0]
                    ticket.since = self._now()
                    ticket.state = GRANTED
                elif outcome and outcome[0] < 0:
                    self._refuse_locked(ticket)
                else:
                    mine.done = True
                    self._live.pop(ticket, None)
                    ticket.state = FINISHED
            file.waiting.pop(mine.rid, None)

        hand_off(file, self._backend, change, lambda _: settled(), rings=rings, gives_back=True)
        if ticket.state is REFUSED:
            raise ticket.error
        return ticket.state is GRANTED

    def release(self, ticket: Ticket, part: Quantity | None) -> None:
        """The one release path: give back ``part`` (or everything), or withdraw a queued
        ticket. Safe to repeat after an exception cut it short anywhere."""
        if inside():  # a finalizer or signal handler inside our bookkeeping
            if part is not None:
                raise ReentrantCall("cannot partially release a lease from inside its bookkeeping")
            defer(lambda: self.release(ticket, None))
            return
        state = ticket.state
        if part is not None and (state is not GRANTED or not part <= ticket.units):
            held = ticket.units if state is GRANTED else self.zero
            raise ReleaseExceedsHeld(
                f"cannot release {self.form.render(part)!r}: "
                f"the lease holds {self.form.render(held)!r}"
            )
        mine = self._records.get(ticket)
        if mine is None or mine.done:
            return
        if (
            part is not None
            and mine.partial is not None
            and self._repeat_partial(ticket, mine, part)
        ):
            return
        if part is not None and part != ticket.units:
            self._remove(ticket, mine, part)
            return
        self._remove(ticket, mine, None)

    def _repeat_partial(self, ticket: Ticket, mine: _Mine, part: Quantity) -> bool:
        """A partial release whose bookkeeping was cut short: settle it from the file.
        ``True`` if ``part`` is that release (the caller's retry)."""
        pending = mine.partial
        assert pending is not None
        pending_part, left = pending
        units = self._file.section(
            lambda state: (self._units_of(state, mine.rid), None), gives_back=True
        )

        def settled() -> None:
            if units == left:
                ticket.units = self._quantity(left)
            mine.partial = None

        self._file.bookkeep(settled)
        return units == left and pending_part == part

    def _units_of(self, state: State | None, rid: int) -> list[int] | None:
        if state is None:
            return None
        me = self._me()
        for record in state.records:
            if record.rid == rid and (record.pid, record.nonce) == me:
                return record.units
        return None

    def _remove(self, ticket: Ticket, mine: _Mine, part: Quantity | None) -> None:
        """Release ``part`` of the holder (or all of it), or withdraw the queued request,
        whichever the file has for this ticket; then hand off."""
        me = self._me()
        released = None if part is None else self._counts(part)
        found: list[tuple[int, int]] = []
        rings: set[Identity] = set()

        def change(current: State | None) -> tuple[State | None, State | None]:
            if current is None:
                return None, None
            state = current
            index = find(state, mine.rid, me)
            if index < 0:
                return None, None
            record = state.records[index]
            found.append((record.kind, record.token))
            giving = record.units if released is None else released
            if record.kind == _layout.GRANTED:
                state.available = [a + g for a, g in zip(state.available, giving, strict=True)]
            if released is None or record.kind != _layout.GRANTED:
                del state.records[index]
            else:
                record.units = [u - g for u, g in zip(record.units, released, strict=True)]
                assert part is not None
                mine.partial = (part, list(record.units))
            for granted in grant_queue(state):
                rings.add((granted.pid, granted.nonce))
            self._seen(state)
            return state, state

        def then(state: State | None) -> None:
            if found and found[0][0] == _layout.GRANTED and ticket.state is PENDING:
                # Withdrawing, a grant had arrived: kept by a timeout (see ``withdraw``),
                # released by any other path (the caller gives up).
                mine.token = found[0][1]
                ticket.state = GRANTED
                ticket.since = self._now()
            if part is None:
                if ticket.state is GRANTED:
                    ticket.units = self.zero
                if ticket.state is not REFUSED:
                    ticket.state = FINISHED
                self._live.pop(ticket, None)
                mine.done = True  # last: until then, a repeated release does all this again
            elif mine.partial is not None:
                ticket.units = self._quantity(mine.partial[1])
                mine.partial = None
            file.waiting.pop(mine.rid, None)

        file = self._file
        hand_off(file, self._backend, change, then, rings=rings, gives_back=True)

    def reclaim(self, ticket: Ticket, notice: Callable[[], None]) -> None:
        """A leaked lease (from its finalizer): released at once, then the notice; from
        inside this file's section, after it."""
        if inside():

            def later() -> None:
                self.release(ticket, None)
                notice()

            defer(later)
            return
        self.release(ticket, None)
        notice()

    def disown(self, ticket: Ticket) -> None:
        """In a forked child: ``ticket`` is the parent's; this process never releases it."""
        mine = self._records.get(ticket)
        if mine is not None:
            mine.done = True
            self._live.pop(ticket, None)
        ticket.state = FINISHED

    # -- the rest of the Pool interface --------------------------------------------------------

    @property
    def capacity(self) -> Quantity:
        return self._last[0]

    @property
    def available(self) -> Quantity:
        return self._last[1]

    @property
    def holding(self) -> int:
        return self._last[2]

    @property
    def waiting(self) -> int:
        return self._last[3]

    def split(self, ticket: Ticket, parts: Sequence[Ticket]) -> None:
        """Move units from the granted ``ticket`` to ``parts``, which become holders with its
        fencing token, in one section."""
        mine = self._records.get(ticket)
        if mine is None or ticket.state is not GRANTED:
            return
        me = self._me()
        part_mines = [_Mine(next(_record_ids), token=mine.token) for _ in parts]

        def register() -> None:  # under the mutex, as every write to ``_records``
            for part, part_mine in zip(parts, part_mines, strict=True):
                self._records[part] = part_mine
            self._live.update(dict.fromkeys(parts))

        self._file.bookkeep(register)

        def change(current: State | None) -> tuple[bool, State | None]:
            if current is None:
                return False, None
            for record in current.records:
                if record.rid == mine.rid and (record.pid, record.nonce) == me:
                    break
            else:
                return False, None
            _check_room(current.records, self.name, len(parts))
            for part, part_mine in zip(parts, part_mines, strict=True):
                counts = self._counts(part.units)
                record.units = [u - c for u, c in zip(record.units, counts, strict=True)]
                current.records.append(
                    Record(_layout.GRANTED, me[0], me[1], part_mine.rid, 0, record.token, counts)
                )
            self._seen(current)
            return True, current

        if not self._file.section(change):
            return

        def granted() -> None:
            remaining = ticket.units
            for part in parts:
                remaining = remaining - part.units
                part.since = ticket.since
                part.state = GRANTED
            ticket.units = remaining

        self._file.bookkeep(granted)
        run_deferred()

    def resize(self, new_capacity: Callable[[Quantity], Quantity]) -> None:
        """Change the capacity for every process, computed from the current one in the
        section (if it raises, nothing changes); queued requests it makes impossible are
        refused (their owners read the refusal), and growing grants at once."""
        if self.closed:
            raise ManagerClosed("the manager is closed")
        rings: set[Identity] = set()

        def change(current: State | None) -> tuple[State, State]:
            state = self._state(current)
            capacity = self._counts(new_capacity(self._quantity(state.capacity)))
            state.available = [
                a + new - old
                for a, new, old in zip(state.available, capacity, state.capacity, strict=True)
            ]
            state.capacity = capacity
            state.resizes += 1
            for record in state.records:
                if record.kind == QUEUED and not fits(record.units, capacity):
                    record.kind = _layout.REFUSED
                    rings.add((record.pid, record.nonce))
            for granted in grant_queue(state):
                rings.add((granted.pid, granted.nonce))
            self._seen(state)
            return state, state

        hand_off(self._file, self._backend, change, rings=rings, grants=True)

    def close(self) -> None:
        """Close this process's face of the manager: its queued requests are refused with
        :class:`ManagerClosed` (and leave the queue in the file), and so are later ones.
        Other processes are not affected."""
        self.closed = True
        mine = self._file.bookkeep(
            lambda: [ticket for pool, ticket in self._file.waiting.values() if pool is self]
        )
        for ticket in mine:
            record = self._records.get(ticket)
            if record is None or ticket.state is not PENDING:
                continue
            self._remove(ticket, record, None)
            self._file.bookkeep(functools.partial(_refuse_closed, ticket))
            ticket.waiter.wake()

    def fits_capacity(self, units: Quantity) -> bool:
        if units <= self._last[0]:
            return True
        capacity = self._file.section(lambda state: (self._state(state).capacity, None))
        return fits(self._counts(units), capacity)

    def snapshot(self) -> Snapshot:
        """The whole manager's capacity and availability; this process's holders and
        waiters (other processes' are counted)."""
        if inside():
            raise ReentrantCall("cannot look at a manager from inside its bookkeeping")
        self._backend.reap_dead(self._backend.unwatched(self._file.section(self._others)))
        state = self._file.section(lambda current: (self._state(current), None))
        self._seen(state)
        mine = self._file.bookkeep(lambda: _pairs(self._records))
        holders = tuple(_view(t) for t, _ in mine if t.state is GRANTED)
        waiters = tuple(_view(t) for t, m in mine if t.state is PENDING and m.queued)
        capacity, available, holding, waiting = self._last
        me = self._me()
        ours = sum(1 for record in state.records if (record.pid, record.nonce) == me)
        ours_holding = sum(
            1
            for record in state.records
            if (record.pid, record.nonce) == me and record.kind == _layout.GRANTED
        )
        return Snapshot(
            capacity,
            available,
            holders,
            waiters,
            self.closed,
            self._now(),
            other_holders=max(0, holding - ours_holding),
            other_waiters=max(0, waiting - (ours - ours_holding)),
        )

    def _others(self, state: State | None) -> tuple[set[tuple[int, int]], None]:
        if state is None:
            return set(), None
        me = self._me()
        return {(r.pid, r.nonce) for r in state.records} - {me}, None

    def try_snapshot(self, timeout: float) -> Snapshot | None:
        if inside() or self._file.closed:  # a closed backend has nothing to show
            return None
        return self.snapshot()

    def fencing_token(self, ticket: Ticket) -> int | None:
        mine = self._records.get(ticket)
        return None if mine is None else mine.token

    def lost(self, ticket: Ticket) -> bool:
        return False

    # -- what this backend cannot do -----------------------------------------------------------

    def take(self, units: Quantity, receipt: list[Quantity]) -> bool:
        raise UnsupportedByBackend("a LocalBackend pool has no semaphore facade")

    def give(self, units: Quantity, limit: Quantity | None) -> bool:
        raise UnsupportedByBackend("a LocalBackend pool has no semaphore facade")

    def reclaim_with(
        self, operation: Callable[[MemoryPool, list[Waiter]], None], notice: Callable[[], None]
    ) -> None:
        raise UnsupportedByBackend("banker mode is not available on a LocalBackend")

    def policy_call(self, operation: Callable[[MemoryPool, list[Waiter]], _R]) -> _R:
        raise UnsupportedByBackend("banker mode is not available on a LocalBackend")


def _refuse_closed(ticket: Ticket) -> None:
    if ticket.state is not REFUSED:  # a grant that arrived was released above
        ticket.error = ManagerClosed("the manager was closed while waiting")
        ticket.state = REFUSED


def _view(ticket: Ticket) -> TicketView:
    return TicketView(ticket.units, ticket.since, ticket.thread, ticket.site, task_of(ticket))
