"""RedisPool: a manager's units kept in Redis, behind the same ``Pool`` interface as memory.

The queue, the holders and the hand-off live in Redis (``_scripts.MANAGER``); this process
keeps only its own tickets. The rules of the in-memory pool hold across processes:

- **Strict FIFO, hand-off.** A request is granted on arrival only if nobody is queued and it
  fits; whoever makes units available (a release, a resize, an expiry noticed by any call)
  grants the head of the queue inside the same script, records the grant (holder, fencing
  token, expiry) and pushes ``id|token`` to the waiter's process. The waiter never competes.
- **The grant is authoritative in Redis.** The push is only a wake-up: if it is lost (the
  keeper's connection dropped as it popped, the server restarted), the keeper's once-a-second
  poll finds the grant in the holders table. A waiter whose deadline passes withdraws with a
  script that keeps a grant that arrived (an arrived grant beats an expired deadline).
- **One release path, by id.** ``release(ticket, None)`` releases a holder, or withdraws a
  queued request, whichever the server has: so a caller interrupted mid-round-trip (it cannot
  know whether its ``enter`` ran) always leaves as if it had never asked.
- **Nothing granted is lost.** Every holder has an expiry, renewed by its process's keeper;
  a holder that dies (SIGKILL) returns its units when the expiry passes, and a release that
  cannot reach the server is retried by the keeper.

Local state of a ticket (``state``, ``units``, its record) changes under the backend's lock,
never held across a round trip. An arrival registers locally, then asks the server (so a
grant pushed before the reply finds its ticket); a release asks the server, then marks the
ticket released (so a release cut short in between is repeated, not lost). The server's
answers are applied idempotently, whether they come by reply, by push or by poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from .._core import (
    FINISHED,
    GRANTED,
    PENDING,
    REFUSED,
    Form,
    NamedForm,
    Quantity,
    SectionLock,
    Snapshot,
    Ticket,
    TicketView,
    Units,
    Waiter,
    new_section_lock,
    task_of,
)
from .._errors import (
    BackendConflict,
    BackendUnavailable,
    ExceedsCapacity,
    LeaseLost,
    ManagerClosed,
    ReentrantCall,
    ReleaseExceedsHeld,
    UnsupportedByBackend,
)
from ._backend import RedisBackend, ScriptRefusal, as_call, describe_capacity
from ._backend import monotonic as backend_now

if TYPE_CHECKING:
    from .._core import MemoryPool

__all__ = ["RedisPool"]

logger = logging.getLogger("allotment.redis")
_R = TypeVar("_R")
_TURN_POLL = 0.001
"""How often a task asks again for a lease's turn held by another partial release."""


@attrs.define(eq=False)
class _Record:
    """What this process knows of one ticket in Redis."""

    rid: str
    token: int | None = None
    """Set once granted: the grant's fencing token."""
    lost: bool = False
    sent: bool = False
    """A full release was sent (its answer may not have arrived)."""
    done: bool = False
    """The full release is done (or handed to the keeper): nothing is left to give back."""
    queued: bool = False
    """The server queued it (what statistics show as waiting)."""
    releases: int = 0
    """Partial releases sent: each has its own id, counting up; the server remembers the
    last one it applied."""
    pending: tuple[str, Quantity] | None = None
    """A partial release sent whose answer did not arrive: retried, with the same id, before
    anything else is released (so it is never applied twice)."""
    turn: SectionLock = attrs.field(factory=new_section_lock)
    """Held by the one partial release of this lease in flight (a thread's, or a task's):
    ``releases`` and ``pending`` change only under it, so two partial releases at once are
    sent one after the other, each with its own id, and each gives back its own units."""


def _encode(units: Quantity) -> str:
    counts = units.counts if isinstance(units, Units) else (units,)
    return ",".join(map(str, counts))


@attrs.define(eq=False)
class RedisPool:
    """One manager's units in Redis. See the module docstring for the rules."""

    form: Form[object]
    _backend: RedisBackend
    name: str
    _declared: Quantity
    _now: Callable[[], float]
    _keys: tuple[str, ...] = attrs.field(init=False)
    _head: tuple[str, ...] = attrs.field(init=False)
    _records: weakref.WeakKeyDictionary[Ticket, _Record] = attrs.field(
        init=False, factory=weakref.WeakKeyDictionary
    )
    closed: bool = attrs.field(init=False, default=False)
    _last: tuple[Quantity, Quantity, int, int] = attrs.field(init=False)
    """The last figures read (capacity, available, holders, waiters): what the lock-free
    properties show if the server cannot be asked."""
    zero: Quantity = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        backend = self._backend
        base = f"{backend.prefix}:{{{self.name}}}"
        self._keys = tuple(
            f"{base}:{part}" for part in ("cfg", "holders", "hexp", "queue", "wants", "wexp")
        )
        names = ",".join(self.form.names) if isinstance(self.form, NamedForm) else "-"
        key_ttl_ms = int(max(4 * backend.lease_ttl, 4 * backend.waiter_ttl, 60.0) * 1000)
        self._head = (
            names,
            _encode(self._declared),
            str(int(backend.lease_ttl * 1_000_000)),
            str(int(backend.waiter_ttl * 1_000_000)),
            str(key_ttl_ms),
        )
        self.zero = self.form.zero()
        self._last = (self._declared, self._declared, 0, 0)
        self._read("making the manager")  # declares it, or refuses a conflicting declaration

    # -- round trips -------------------------------------------------------------------------

    def _call(self, operation: str, *args: object) -> Any:
        backend = self._backend
        try:
            return backend.run_script(
                backend.manager_script,
                (*self._keys, backend.wake_key),
                (operation, *self._head, *args),
                self.name,
            )
        except BackendConflict as conflict:
            raise self._conflict(conflict) from None

    async def _call_async(self, operation: str, *args: object) -> Any:
        """:meth:`_call` for a task, on its loop's own client: the loop never blocks."""
        backend = self._backend
        try:
            return await backend.run_script_async(
                "manager",
                (*self._keys, backend.wake_key),
                (operation, *self._head, *args),
                self.name,
            )
        except BackendConflict as conflict:
            raise self._conflict(conflict) from None

    def _conflict(self, conflict: BackendConflict) -> BackendConflict:
        """The script's conflict (made, or at any later call: the keys expired, another
        declaration came), in the user's terms."""
        names, declared, capacity = str(conflict).split("=")
        resized = ""
        if capacity != declared:
            resized = f" (resized to {describe_capacity(names, capacity)})"
        return BackendConflict(
            f"{self.name!r} already exists in Redis, declared with "
            f"{describe_capacity(names, declared)}{resized}; this process declared "
            f"{describe_capacity(*self._head[:2])}. Declare the same (use resize() to "
            "change the capacity for everyone), or use another name"
        )

    def _decode(self, text: bytes | str) -> Quantity:
        counts = tuple(
            int(part) for part in (text.decode() if isinstance(text, bytes) else text).split(",")
        )
        return Units(counts) if isinstance(self.form, NamedForm) else counts[0]

    def _read(self, call: str) -> tuple[Quantity, Quantity, int, int, int]:
        """The server's figures, read for the user's ``call`` (what an error names)."""
        try:
            reply = self._call("snapshot")
        except BackendUnavailable as error:
            raise as_call(error, "snapshot", call, self.name) from error.__cause__
        return self._figures(reply)

    def _figures(self, reply: Any) -> tuple[Quantity, Quantity, int, int, int]:
        capacity, available, version, holders, waiters = reply
        figures = (self._decode(capacity), self._decode(available), int(holders), int(waiters))
        self._last = figures
        return (*figures, int(version))

    # -- lock-free figures: the last ones read, never a round trip (repr must not block) ---

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

    def _refresh(self) -> None:
        """Read the figures again for a message, if the server answers."""
        with contextlib.suppress(BackendUnavailable):
            self._read("statistics")

    async def _refresh_async(self) -> None:
        with contextlib.suppress(BackendUnavailable):
            self._figures(await self._call_async("snapshot"))

    # -- arrival, wait, withdrawal, release -------------------------------------------------

    def enter(self, ticket: Ticket, waiter: Callable[[], Waiter] | None) -> bool:
        try:
            return self._enter(ticket, waiter)
        finally:
            self._backend.settle()  # releases deferred while this thread was inside

    def _enter(self, ticket: Ticket, waiter: Callable[[], Waiter] | None) -> bool:
        """Grant ``ticket`` now (``True``) or queue it in Redis with a local waiter, which
        the keeper wakes when a push or a poll brings its grant (``False``)."""
        record, waits = self._register(ticket, waiter)
        try:
            reply = self._call("enter", record.rid, _encode(ticket.units), 1 if waits else 0)
        except ScriptRefusal as refusal:
            raise self._enter_refused(ticket, record, refusal) from None
        return self._entered(ticket, record, reply)

    async def enter_async(self, ticket: Ticket, waiter: Callable[[], Waiter] | None) -> bool:
        """:meth:`enter` for a task: the round trip on its loop's own client."""
        try:
            record, waits = self._register(ticket, waiter)
            try:
                reply = await self._call_async(
                    "enter", record.rid, _encode(ticket.units), 1 if waits else 0
                )
            except ScriptRefusal as refusal:
                raise self._enter_refused(ticket, record, refusal) from None
            except asyncio.CancelledError:
                # The enter may still run on the server: redis-py drops the connection, and
                # the caller's release goes out on another, which may arrive first. The
                # keeper releases the id again a poll later, so the server forgets it.
                self._backend.retry_release(self, record.rid)
                raise
            return self._entered(ticket, record, reply)
        finally:
            self._backend.settle()

    def _register(
        self, ticket: Ticket, waiter: Callable[[], Waiter] | None
    ) -> tuple[_Record, bool]:
        """Before ``enter`` is sent: the ticket's record, and (if it may wait) its waiter,
        which a push can find from now on (a poll only once the server confirms it)."""
        if self.closed:
            raise ManagerClosed("the manager is closed")
        backend = self._backend
        record = _Record(backend.new_id())
        made = None if waiter is None else waiter()
        lock = backend.section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            self._records[ticket] = record
            if made is not None:
                ticket.waiter = made
                backend.expect_waiter(record.rid, self, ticket)
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        if made is not None:
            backend.start_keeper()
        return record, made is not None

    def _enter_refused(self, ticket: Ticket, record: _Record, refusal: ScriptRefusal) -> Exception:
        self._forget(record)
        capacity = self._decode(str(refusal).split(" ", 1)[1])
        return ExceedsCapacity(
            f"a request for {self.form.render(ticket.units)!r} can never be granted: "
            f"the capacity is {self.form.render_all(capacity)!r}"
        )

    def _entered(self, ticket: Ticket, record: _Record, reply: Any) -> bool:
        """The server's answer to ``enter``: granted, queued, or neither (a try)."""
        code, token = reply
        if code == 1:
            self.granted(ticket, record.rid, int(token), wake=False)
            # Not granted only if a close() refused it meanwhile: the waiter raises that.
            return ticket.state is GRANTED
        if code == -1:
            self._forget(record)
        else:
            record.queued = True
            lock = self._backend.section()
            try:  # see "Releasing" in ``_core._section_lock``
                lock.acquire()
                self._backend.confirm_waiter(record.rid)  # pollable only now: see the backend
            finally:
                try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                    lock.release()
                except RuntimeError:
                    pass  # not taken: the exception came while waiting for the lock
        return False

    def _forget(self, record: _Record) -> None:
        lock = self._backend.section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            self._backend.forget(record.rid)
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock

    def granted(self, ticket: Ticket, rid: str, token: int, *, wake: bool) -> None:
        """The server granted ``ticket`` (by reply, push or poll): idempotent."""
        record = self._records.get(ticket)
        backend = self._backend
        now = self._now()
        lock = backend.section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            if record is None or record.rid != rid or record.done:
                return
            if ticket.state is PENDING:
                record.token = token
                ticket.since = now
                ticket.state = GRANTED
            elif ticket.state is not GRANTED:
                return
            backend.hold(rid, self, ticket)  # again, if a first delivery was cut short
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        backend.start_keeper(wake=False)  # which renews the lease on its timer
        if wake:
            ticket.waiter.wake()

    def refused(self, ticket: Ticket, rid: str, capacity: str) -> None:
        """A resize made the queued ``ticket`` impossible (the server took it off)."""
        self._refuse(
            ticket,
            rid,
            ExceedsCapacity(
                f"a request for {self.form.render(ticket.units)!r} can never be granted: "
                f"the capacity is {self.form.render_all(self._decode(capacity))!r}"
            ),
        )

    def _refuse(
        self, ticket: Ticket, rid: str, error: BaseException, *, judged: bool = False
    ) -> None:
        """Idempotent: a refusal cut short is completed by the next (the keeper's poll).

        ``judged``: the keeper's verdict on a waiter it polls (dropped by the server, or not
        heard of for ``waiter_ttl``), applied only if the waiter is still polled: one whose
        withdrawal was sent meanwhile (its deadline passed) is no longer the keeper's to
        judge, as the server's "unknown id" may be that very withdrawal's doing. Checked in
        the same section as the refusal, so a withdrawal cannot slip in between."""
        backend = self._backend
        lock = backend.section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            if ticket.state is PENDING:
                if judged and not backend.polled(rid):
                    return
                ticket.error = error
                ticket.state = REFUSED
            elif ticket.state is not REFUSED:
                return
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        # Forgotten only once woken: until then the keeper's poll finds it and refuses again.
        ticket.waiter.wake()
        lock = backend.section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            backend.forget(rid)
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock

    def withdraw(self, ticket: Ticket) -> bool:
        try:
            return self._withdraw(ticket)
        finally:
            self._backend.settle()  # releases deferred while this thread was inside

    def _withdraw(self, ticket: Ticket) -> bool:
        """The deadline passed: leave the queue unless a grant arrived, which is kept."""
        record = self._withdrawing(ticket)
        if record is None:
            return ticket.state is GRANTED
        code, token = self._call("withdraw", record.rid, "")
        if not self._withdrawn(ticket, record, code, token):
            self._refresh()  # the figures the timeout's message shows
        return ticket.state is GRANTED

    async def withdraw_async(self, ticket: Ticket) -> bool:
        """:meth:`withdraw` for a task: the round trips on its loop's own client."""
        try:
            record = self._withdrawing(ticket)
            if record is None:
                return ticket.state is GRANTED
            code, token = await self._call_async("withdraw", record.rid, "")
            if not self._withdrawn(ticket, record, code, token):
                await self._refresh_async()
            return ticket.state is GRANTED
        finally:
            self._backend.settle()

    def _withdrawing(self, ticket: Ticket) -> _Record | None:
        """The record to withdraw, or ``None`` if there is nothing to ask the server."""
        if ticket.state is REFUSED:
            raise ticket.error
        record = self._records.get(ticket)
        if record is None or ticket.state is not PENDING:
            return None
        lock = self._backend.section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            # No longer the keeper's to judge: once the withdrawal runs, the server no longer
            # knows the id, and a poll answered after it must not call that a drop. A grant
            # that arrives meanwhile (by push, or in the withdrawal's answer) is still kept.
            self._backend.unpoll(record.rid)
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        return record

    def _withdrawn(self, ticket: Ticket, record: _Record, code: int, token: Any) -> bool:
        """The server's answer to ``withdraw``: ``True`` if a grant had arrived (kept)."""
        if code == 1:
            self.granted(ticket, record.rid, int(token), wake=False)
            return True
        lock = self._backend.section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            self._backend.forget(record.rid)
            if ticket.state is PENDING:
                ticket.state = FINISHED
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        if ticket.state is REFUSED:
            raise ticket.error
        return ticket.state is GRANTED

    def release(self, ticket: Ticket, part: Quantity | None) -> None:
        try:
            if _running_loop() is not None and not self._backend.in_section():
                self._release_on_loop(ticket, part)
            else:
                self._release(ticket, part)
        finally:
            self._backend.settle()  # releases deferred while this thread was inside

    def _release_on_loop(self, ticket: Ticket, part: Quantity | None) -> None:
        """A synchronous release on a thread that runs an event loop (``lease.release()``
        in a task, a with-block's exit, an HTTP client's callback): checked here (bad input
        raises now), then sent as a task on the loop's own client, so the loop never
        blocks. A full release is released here at once; the units reach others when the
        round trip does. Its outcome (``LeaseLost``) is logged: ``await
        lease.release_async()`` is the form that raises it."""
        record = self._releasing(ticket, part)
        if record is None:
            return
        what = f"release on {self.name!r}"
        backend = self._backend
        if part is not None and part != ticket.units:
            backend.on_loop(
                self._release_part_async(ticket, record, part),
                functools.partial(self._release_part, ticket, record, part),
                what,
            )
            return
        repeated = self._sending_release(record)
        lock = backend.section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            ticket.state = FINISHED
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        backend.on_loop(
            self._release_full_async(ticket, record, repeated),
            functools.partial(self._release_full, ticket, record, repeated),
            what,
        )

    def _release(self, ticket: Ticket, part: Quantity | None) -> None:
        """The one release path: give back ``part`` (or everything), or withdraw a queued
        ticket. A full release that cannot reach the server is retried by the keeper (the
        lease's TTL returns the units in any case). Raises :class:`LeaseLost` for a lease
        that had expired.

        Safe to repeat after an exception cut it short anywhere: the record says whether the
        server confirmed it, and the script releases by id, whatever is left."""
        backend = self._backend
        if backend.in_section():  # a finalizer or signal handler inside our bookkeeping
            if part is not None:
                raise ReentrantCall("cannot partially release a lease from inside its bookkeeping")
            backend.reclaim(self, ticket, _nothing)
            return
        record = self._releasing(ticket, part)
        if record is None:
            return
        if part is not None and part != ticket.units:
            self._release_part(ticket, record, part)
            return
        self._release_full(ticket, record, self._sending_release(record))

    def _release_full(self, ticket: Ticket, record: _Record, repeated: bool) -> None:
        try:
            code, _ = self._call("release", record.rid, "")
        except BackendUnavailable as error:
            self._release_later(ticket, record, error)
            return
        self._released(ticket, record, code, repeated)

    async def release_async(self, ticket: Ticket, part: Quantity | None = None) -> None:
        """:meth:`release` for a task, on its loop's own client. A cancellation does not
        stop it: the release goes on, and the cancellation propagates."""
        task = asyncio.ensure_future(self._release_async(ticket, part))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_retrieve)
            raise
        finally:
            self._backend.settle()

    async def _release_async(self, ticket: Ticket, part: Quantity | None) -> None:
        record = self._releasing(ticket, part)
        if record is None:
            return
        if part is not None and part != ticket.units:
            await self._release_part_async(ticket, record, part)
            return
        await self._release_full_async(ticket, record, self._sending_release(record))

    async def _release_full_async(self, ticket: Ticket, record: _Record, repeated: bool) -> None:
        try:
            code, _ = await self._call_async("release", record.rid, "")
        except BackendUnavailable as error:
            self._release_later(ticket, record, error)
            return
        self._released(ticket, record, code, repeated)

    def _releasing(self, ticket: Ticket, part: Quantity | None) -> _Record | None:
        """Checks before a release: the record to release, or ``None`` if nothing is left."""
        state = ticket.state
        if part is not None and (state is not GRANTED or not part <= ticket.units):
            held = ticket.units if state is GRANTED else self.zero
            raise ReleaseExceedsHeld(
                f"cannot release {self.form.render(part)!r}: "
                f"the lease holds {self.form.render(held)!r}"
            )
        record = self._records.get(ticket)
        if record is None or record.done:
            return None
        return record

    def _sending_release(self, record: _Record) -> bool:
        """Before a full release is sent: whether one was sent already (cut short).

        The keeper stops renewing it and delivering to it; the server releases it; then
        this process sees it released. Cut short after the server's release, the ticket
        still looks held here until the release is repeated (a with-block's exit does, and
        so does the lease's finalizer); cut short before, the lease's TTL is the backstop."""
        lock = self._backend.section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            self._backend.forget(record.rid)
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        repeated = record.sent
        record.sent = True
        return repeated

    def _release_later(self, ticket: Ticket, record: _Record, error: BackendUnavailable) -> None:
        self._finish(ticket, record)
        logger.warning("releasing %s on %r later: %s", record.rid, self.name, error)
        self._backend.retry_release(self, record.rid)

    def _released(self, ticket: Ticket, record: _Record, code: int, repeated: bool) -> None:
        self._finish(ticket, record)
        # Not found: the lease had expired, unless an interrupted release of ours did it.
        if record.token is not None and ((code == -1 and not repeated) or record.lost):
            record.lost = True
            raise LeaseLost(self._lost_message())

    def _finish(self, ticket: Ticket, record: _Record) -> None:
        lock = self._backend.section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            ticket.state = FINISHED
            if record.token is not None:
                ticket.units = self.zero
            record.done = True
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock

    def _release_part(self, ticket: Ticket, record: _Record, part: Quantity) -> None:
        """A partial release, with an id the server remembers: one whose answer was lost
        (``BackendUnavailable``) stays pending, and the next release of this lease sends it
        again first, with the same id, so the server applies it exactly once. A retry of
        the same amount is that release; another amount is released after it. One at a
        time per lease (its record's turn): another thread's waits for it."""
        turn = record.turn
        try:  # see "Releasing" in ``_core._section_lock``
            turn.acquire()
            self._release_part_in_turn(ticket, record, part)
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                turn.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock

    def _release_part_in_turn(self, ticket: Ticket, record: _Record, part: Quantity) -> None:
        pending = record.pending
        if pending is not None:
            release_id, pending_part = pending
            self._part_done(
                ticket, record, release_id, pending_part,
                self._call("release", record.rid, _encode(pending_part), release_id),
            )  # fmt: skip
            if not self._after_pending(ticket, pending_part, part):
                return
        if not self._still_partial(ticket, record, part):
            self._release(ticket, None)
            return
        release_id = self._next_part(record, part)
        reply = self._call("release", record.rid, _encode(part), release_id)
        self._part_done(ticket, record, release_id, part, reply)

    async def _release_part_async(self, ticket: Ticket, record: _Record, part: Quantity) -> None:
        """:meth:`_release_part` for a task: it waits for the lease's turn without blocking
        its loop (the turn is held only across one round trip, bounded by ``timeout``)."""
        turn = record.turn
        while True:
            if not turn._is_owned():  # owned: another task on this thread has the turn
                try:  # see "Releasing" in ``_core._section_lock``
                    if turn.acquire(blocking=False):
                        await self._release_part_in_turn_async(ticket, record, part)
                        return
                finally:
                    try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                        turn.release()
                    except RuntimeError:
                        pass  # not taken: another thread has the turn
            await asyncio.sleep(_TURN_POLL)

    async def _release_part_in_turn_async(
        self, ticket: Ticket, record: _Record, part: Quantity
    ) -> None:
        pending = record.pending
        if pending is not None:
            release_id, pending_part = pending
            self._part_done(
                ticket, record, release_id, pending_part,
                await self._call_async("release", record.rid, _encode(pending_part), release_id),
            )  # fmt: skip
            if not self._after_pending(ticket, pending_part, part):
                return
        if not self._still_partial(ticket, record, part):
            await self._release_async(ticket, None)
            return
        release_id = self._next_part(record, part)
        reply = await self._call_async("release", record.rid, _encode(part), release_id)
        self._part_done(ticket, record, release_id, part, reply)

    def _still_partial(self, ticket: Ticket, record: _Record, part: Quantity) -> bool:
        """In the turn, checked again (another release may have come first): ``part`` is
        less than the lease holds; ``False`` if it is all of it (a full release)."""
        if record.done or ticket.state is not GRANTED or not part <= ticket.units:
            held = ticket.units if ticket.state is GRANTED and not record.done else self.zero
            raise ReleaseExceedsHeld(
                f"cannot release {self.form.render(part)!r}: "
                f"the lease holds {self.form.render(held)!r}"
            )
        return part != ticket.units

    def _after_pending(self, ticket: Ticket, pending_part: Quantity, part: Quantity) -> bool:
        """The pending release is done: whether ``part`` is still to be released."""
        if pending_part == part:
            return False  # the caller's retry of the release that raised
        if not part <= ticket.units:
            raise ReleaseExceedsHeld(
                f"cannot release {self.form.render(part)!r}: "
                f"the lease holds {self.form.render(ticket.units)!r}"
            )
        return True

    def _next_part(self, record: _Record, part: Quantity) -> str:
        record.releases += 1
        release_id = str(record.releases)
        record.pending = (release_id, part)
        return release_id

    def _part_done(
        self, ticket: Ticket, record: _Record, release_id: str, part: Quantity, reply: Any
    ) -> None:
        code, _ = reply
        if code == -1 or record.lost:
            record.lost = True
            raise LeaseLost(self._lost_message())
        lock = self._backend.section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            if record.pending is not None and record.pending[0] == release_id:
                record.pending = None
                ticket.units = ticket.units - part
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock

    def _lost_message(self) -> str:
        return (
            f"this lease on {self.name!r} expired before it could be renewed: its units may "
            "have been granted to others meanwhile"
        )

    def disown(self, ticket: Ticket) -> None:
        """In a forked child: ``ticket`` is the parent's; this process never releases it."""
        record = self._records.get(ticket)
        if record is not None:
            record.done = True
        ticket.state = FINISHED

    def release_by_id(self, rid: str) -> None:
        """The keeper's retry of a release the server did not confirm."""
        self._call("release", rid, "")

    def release_quietly(self, ticket: Ticket) -> None:
        """A reclaim from a finalizer, done by the keeper: release, never raise."""
        with contextlib.suppress(LeaseLost):  # the notice that follows reports the leak
            self.release(ticket, None)

    def reclaim(self, ticket: Ticket, notice: Callable[[], None]) -> None:
        """A leaked lease (from its finalizer): released at once, as in memory, then the
        notice; from inside this process's bookkeeping, on a thread that runs an event loop
        (no blocking round trip there, and no task made from a finalizer), or if the server
        cannot be reached, the keeper does both instead (redis-py's locks are re-entrant, so
        the round trip cannot deadlock on this thread)."""
        backend = self._backend
        if not backend.in_section() and _running_loop() is None:
            try:
                self.release(ticket, None)
            except LeaseLost:
                pass
            except Exception:  # a finalizer must not raise: the keeper retries
                backend.reclaim(self, ticket, notice)
                backend.start_keeper()
                return
            notice()
            return
        backend.reclaim(self, ticket, notice)
        if not backend.in_section():
            backend.start_keeper()  # on a loop's thread: nothing else may settle soon

    # -- the keeper's side ------------------------------------------------------------------

    def poll(self, rids: Sequence[str]) -> None:
        """The backstop: settle local waiters from the server's records. ``rids`` are
        waiters whose ``enter`` the server confirmed before this was sent: one it does not
        know was really dropped."""
        outcomes = self._call("status", *rids)
        backend = self._backend
        backend.heard_from(
            [rid for rid, outcome in zip(rids, outcomes, strict=True) if int(outcome) == 0],
            backend_now(),
        )
        for rid, outcome in zip(rids, outcomes, strict=True):
            entry = backend.waiting_ticket(rid)
            if entry is None:
                continue
            token = int(outcome)
            if token == 0 and self.closed:  # close() was cut short before withdrawing it
                self._call("release", rid, "")
                token = -1
            if token > 0:
                self.granted(entry[1], rid, token, wake=True)
            elif token < 0 and self.closed:  # close() withdrew it and was cut short
                self._refuse(entry[1], rid, ManagerClosed("the manager was closed while waiting"))
            elif token < 0:
                self._refuse(
                    entry[1],
                    rid,
                    BackendUnavailable(
                        f"acquire on {self.name!r}: the request was dropped by the server (its "
                        "process could not renew it in time, or the server lost its data)"
                    ),
                    judged=True,
                )

    def unreachable(self, ticket: Ticket, rid: str) -> None:
        """The keeper has not heard of this waiter for ``waiter_ttl``: the server cannot be
        reached (or dropped it without a poll noticing). Refused; the caller's release
        withdraws it on the server, or queues that for the keeper."""
        waiter_ttl = self._backend.waiter_ttl
        self._refuse(
            ticket,
            rid,
            BackendUnavailable(
                f"acquire on {self.name!r}: the Redis server could not be reached for "
                f"{waiter_ttl:g} s (waiter_ttl) while the request waited"
            ),
            judged=True,
        )

    def renew(self, rids: Sequence[str]) -> None:
        lost = self._call("renew", *rids)
        if not lost:
            return
        backend = self._backend
        for raw in lost:
            rid = raw.decode()
            entry = backend.drop_held(rid)
            if entry is not None:
                record = self._records.get(entry[1])
                if record is not None:
                    record.lost = True
                logger.warning(
                    "a lease on %r was lost: it expired before it was renewed", self.name
                )

    # -- acquire_all's one round trip (``_group.py``) ------------------------------------------

    @property
    def backend(self) -> RedisBackend:
        return self._backend

    def group_try(self, ticket: Ticket) -> tuple[_Record, tuple[str, ...], tuple[object, ...]]:
        """Before a group's take is sent: ``ticket``'s record, registered (no waiter: a try
        never queues), and this manager's keys and ``enter`` arguments for the group
        script. From here a release of ``ticket`` releases whatever the server made of it."""
        if self.closed:
            raise ManagerClosed("the manager is closed")
        backend = self._backend
        record = _Record(backend.new_id())
        lock = backend.section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            self._records[ticket] = record
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        arguments = ("enter", *self._head, record.rid, _encode(ticket.units), 0)
        return record, (*self._keys, backend.wake_key), arguments

    def group_granted(self, ticket: Ticket, record: _Record, token: int) -> None:
        """The group script granted ``ticket``: held, renewed by the keeper, with its token."""
        self.granted(ticket, record.rid, token, wake=False)

    def group_not_taken(self, ticket: Ticket, record: _Record) -> None:
        """The group script wrote nothing for ``ticket``: finished here, no round trip."""
        lock = self._backend.section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            self._backend.forget(record.rid)
            record.done = True
            if ticket.state is PENDING:
                ticket.state = FINISHED
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock

    def group_unsure(self, ticket: Ticket, record: _Record, error: BackendUnavailable) -> None:
        """The group script's answer did not arrive: whatever it did is released by the
        keeper, by id (as a full release that could not reach the server)."""
        lock = self._backend.section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            self._backend.forget(record.rid)
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        self._release_later(ticket, record, error)

    def group_release(
        self, ticket: Ticket
    ) -> tuple[_Record, bool, tuple[str, ...], tuple[object, ...]] | None:
        """Before a group's release is sent: ``ticket``'s record, whether a release was sent
        already (see :meth:`_sending_release`), and the keys and ``release`` arguments;
        ``None`` if nothing is left to release."""
        record = self._releasing(ticket, None)
        if record is None:
            return None
        repeated = self._sending_release(record)
        backend = self._backend
        return (
            record,
            repeated,
            (*self._keys, backend.wake_key),
            ("release", *self._head, record.rid, ""),
        )

    def group_handed_to_loop(self, ticket: Ticket, record: _Record) -> None:
        """The group's release went out as a task on the loop (a sync release on a loop's
        thread): released here at once, and nothing more for this lease's own release to
        send (the task, or the thread that replaces it, applies the answer)."""
        lock = self._backend.section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            ticket.state = FINISHED
            record.done = True
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock

    def group_released(self, ticket: Ticket, record: _Record, code: int, repeated: bool) -> None:
        """The group script's answer for ``ticket``'s release (``LeaseLost`` if it expired)."""
        self._released(ticket, record, code, repeated)

    def group_release_later(
        self, ticket: Ticket, record: _Record, error: BackendUnavailable
    ) -> None:
        """The group's release did not reach the server: the keeper retries it by id."""
        self._release_later(ticket, record, error)

    # -- the rest of the Pool interface -----------------------------------------------------

    def split(self, ticket: Ticket, parts: Sequence[Ticket]) -> None:
        try:
            self._split(ticket, parts)
        finally:
            self._backend.settle()  # releases deferred while this thread was inside

    def _split(self, ticket: Ticket, parts: Sequence[Ticket]) -> None:
        """Move units from the granted ``ticket`` to ``parts``, which become holders with its
        fencing token. The parts' records exist before the server splits: if an exception
        cuts this short, releasing them releases whatever the server made of them."""
        splitting = self._splitting(ticket, parts)
        if splitting is not None and self._call("split", *splitting[2]):
            self._parted(ticket, parts, *splitting[:2])

    async def split_async(self, ticket: Ticket, parts: Sequence[Ticket]) -> None:
        """:meth:`split` for a task (``acquire_all_async``): on its loop's own client."""
        try:
            splitting = self._splitting(ticket, parts)
            if splitting is not None and await self._call_async("split", *splitting[2]):
                self._parted(ticket, parts, *splitting[:2])
        finally:
            self._backend.settle()

    def _splitting(
        self, ticket: Ticket, parts: Sequence[Ticket]
    ) -> tuple[_Record, list[_Record], list[object]] | None:
        """Before the split is sent: the records of ``ticket`` and of its parts (registered),
        and the split's arguments."""
        record = self._records.get(ticket)
        if record is None or ticket.state is not GRANTED:
            return None
        backend = self._backend
        part_records = [_Record(backend.new_id()) for _ in parts]
        arguments: list[object] = [record.rid]
        for part, part_record in zip(parts, part_records, strict=True):
            arguments += [part_record.rid, _encode(part.units)]
        lock = backend.section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            for part, part_record in zip(parts, part_records, strict=True):
                self._records[part] = part_record
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        return record, part_records, arguments

    def _parted(
        self, ticket: Ticket, parts: Sequence[Ticket], record: _Record, part_records: list[_Record]
    ) -> None:
        """The server split ``ticket``: its parts are holders with its token."""
        backend = self._backend
        lock = backend.section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            remaining = ticket.units
            for part, part_record in zip(parts, part_records, strict=True):
                remaining = remaining - part.units
                part_record.token = record.token
                part.since = ticket.since
                part.state = GRANTED
                backend.hold(part_record.rid, self, part)
            ticket.units = remaining
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock

    def resize(self, new_capacity: Callable[[Quantity], Quantity]) -> None:
        try:
            self._resize(new_capacity)
        finally:
            self._backend.settle()  # releases deferred while this thread was inside

    def _resize(self, new_capacity: Callable[[Quantity], Quantity]) -> None:
        """Change the capacity for every process: computed from the capacity read, and
        written only if no other resize came between (else read and compute again)."""
        if self.closed:
            raise ManagerClosed("the manager is closed")
        for _ in range(100):
            capacity, _, _, _, version = self._read("resize")
            target = new_capacity(capacity)
            done, _, _ = self._call("resize", version, _encode(target))
            if done:
                return
        raise BackendUnavailable(f"could not resize {self.name!r}: it kept changing")

    def close(self) -> None:
        try:
            self._close()
        finally:
            self._backend.settle()  # releases deferred while this thread was inside

    def _close(self) -> None:
        """Close this process's face of the manager: its queued requests are refused with
        :class:`ManagerClosed` (and leave the queue in Redis), and so are later ones. Other
        processes are not affected."""
        self.closed = True
        backend = self._backend
        for rid, ticket in backend.waiting_of(self):
            try:
                self._call("release", rid, "")
            except BackendUnavailable:
                backend.retry_release(self, rid)
            self._refuse(ticket, rid, ManagerClosed("the manager was closed while waiting"))

    def fits_capacity(self, units: Quantity) -> bool:
        """``acquire_all``'s check before taking anything. No round trip if the capacity
        last read allows it: a capacity that shrank meanwhile is refused by ``enter``
        (``ExceedsCapacity``, and the group gives back what it took); one that seems too
        small is read again, as it may have grown."""
        if units <= self._last[0]:
            return True
        return bool(units <= self._read("acquire_all")[0])

    def snapshot(self) -> Snapshot:
        try:
            return self._snapshot()
        finally:
            self._backend.settle()  # releases deferred while this thread was inside

    def _snapshot(self) -> Snapshot:
        """The whole manager's capacity and availability; this process's holders and
        waiters (others' threads are not ours to show)."""
        capacity, available, holding, waiting, _ = self._read("statistics")
        backend = self._backend
        lock = backend.section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            mine = list(self._records.items())
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        holders = tuple(_view(t) for t, _ in mine if t.state is GRANTED)
        waiters = tuple(_view(t) for t, record in mine if t.state is PENDING and record.queued)
        return Snapshot(
            capacity,
            available,
            holders,
            waiters,
            self.closed,
            self._now(),
            # Read just after the server's counts: a local change between shows as a
            # difference of one here, never as a negative count.
            other_holders=max(0, holding - len(holders)),
            other_waiters=max(0, waiting - len(waiters)),
        )

    def try_snapshot(self, timeout: float) -> Snapshot | None:
        if self._backend.in_section():
            return None
        try:
            return self.snapshot()
        except BackendUnavailable:
            return None

    def fencing_token(self, ticket: Ticket) -> int | None:
        record = self._records.get(ticket)
        return None if record is None else record.token

    def lost(self, ticket: Ticket) -> bool:
        record = self._records.get(ticket)
        return record is not None and record.lost

    # -- what this backend cannot do ----------------------------------------------------------

    def take(self, units: Quantity, receipt: list[Quantity]) -> bool:
        raise UnsupportedByBackend("a Redis-backed pool has no semaphore facade")

    def give(self, units: Quantity, limit: Quantity | None) -> bool:
        raise UnsupportedByBackend("a Redis-backed pool has no semaphore facade")

    def reclaim_with(
        self, operation: Callable[[MemoryPool, list[Waiter]], None], notice: Callable[[], None]
    ) -> None:
        raise UnsupportedByBackend("banker mode is not available on Redis")

    def policy_call(self, operation: Callable[[MemoryPool, list[Waiter]], _R]) -> _R:
        raise UnsupportedByBackend("banker mode is not available on Redis")


def _view(ticket: Ticket) -> TicketView:
    return TicketView(ticket.units, ticket.since, ticket.thread, ticket.site, task_of(ticket))


_running_loop = asyncio._get_running_loop  # the C accessor: no exception when there is none


def _nothing() -> None:
    return None


def _retrieve(task: asyncio.Future[None]) -> None:
    """A release that outlived its cancelled caller: its error, if any, was logged or
    handed to the keeper; nothing is left to raise it to."""
    if not task.cancelled() and task.exception() is not None:
        logger.warning("a release on Redis ended with %r", task.exception())
