"""``acquire_all`` of parts on one Redis server in one round trip, and their release in one.

When every part of an ``acquire_all`` (two or more managers and limiters) lives on one
:class:`RedisBackend`, one script (``_scripts.GROUP``) tries them all: it reads every part
first and writes nothing unless each can be granted now (a manager: nobody queued, the units
available; a limiter: the cost allowed now), then runs each part's own operation in rank
order. Any other answer falls back to the general path of ``_multi.py``, which queues in
FIFO order and words every error: the script took no place in a queue and spent no rate, so
the fall-back decides as if this had not run. The round trips are one to take and one to
release, instead of one per part (and a forecast per limiter).

The pool and meter adopt what the script granted through their ``group_*`` hooks: the same
records, keeper renewals and fencing tokens as a grant of their own ``enter``/``take``.

Exceptions: every lease is listed in the group's ``taken`` and every rate ticket in
``spent`` before the script is sent, so an exception anywhere gives back whatever the server
made of them (a lease by its id; a rate only once its token arrived: a take whose answer was
lost stays spent, which is stricter, never looser). An unreachable server falls back too:
the general path then does what ``on_unavailable`` says.

The keys of different names carry different hash tags (``{name}``): a Redis Cluster would
refuse a script across them; the backend takes only single-node clients (standalone Redis or
Valkey: cluster and Sentinel clients are refused when the backend is made).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Sequence
from typing import Any, Literal, cast

import attrs

from .. import _multi
from .._acquisition import Acquisition, start_acquisition
from .._core import RateTicket, Ticket
from .._errors import BackendUnavailable
from .._lease import Lease, ticket_and_pool
from .._limiters import RateGrant, is_limiter, limiter_parts
from .._manager import ResourceManager, parts_of, records_sites
from .._multi import _FALL_BACK, LeaseGroup, _Outcome, _release_all, _withdraw_rates
from .._waiters import Steps, run_in_task
from ._backend import RedisBackend
from ._meter import RedisMeter
from ._pool import RedisPool, _retrieve

__all__ = ["GroupRelease"]

logger = logging.getLogger("allotment.redis")

_current_thread = threading.current_thread
_running_loop = asyncio._get_running_loop  # the C accessor: no exception when there is none
_Releasing = tuple[
    RedisBackend, list[tuple[RedisPool, Ticket, Any, bool]], list[str], tuple[object, ...]
]
"""What a group's release sends: the backend, each part, the keys and the arguments."""
_Part = tuple[tuple[int, int], int, Any, Any, int]
"""``(rank key, request index, manager or limiter, pool or meter, amount)``."""


def _parts(  # noqa: PLR0911 - each refusal is its own reason
    requests: Sequence[Any],
) -> tuple[RedisBackend, list[_Part], list[_Part]] | None:
    """The requests as managers (in rank order) and limiters on one backend, or ``None``
    if this path cannot take them; no user code runs and nothing changes."""
    backend: RedisBackend | None = None
    managers: list[_Part] = []
    limiters: list[_Part] = []
    seen: set[int] = set()
    for index, request in enumerate(requests):
        if type(request) is not tuple or len(request) != 2:
            return None
        target, units = request
        if type(units) is not int or units <= 0 or id(target) in seen:
            return None
        seen.add(id(target))
        if type(target) is ResourceManager:
            of = parts_of(target)
            pool = of.pool
            if (
                type(pool) is not RedisPool
                or not of.scalar
                or of.node.policy is not None
                or records_sites(of)
                or pool.closed
                or not units <= pool.capacity  # type: ignore[operator]
            ):
                return None
            part_backend = pool.backend
            managers.append((of.node.order_key, index, target, pool, units))
        elif is_limiter(target):
            limits = limiter_parts(target)
            meter = limits.meter
            if type(meter) is not RedisMeter or units > limits.largest:
                return None
            part_backend = meter.backend
            limiters.append(((0, 0), index, target, meter, units))
        else:
            return None
        if backend is None:
            backend = part_backend
        elif part_backend is not backend:
            return None
    if backend is None or len(managers) + len(limiters) < 2 or backend.in_section():
        return None
    managers.sort(key=lambda part: part[:2])
    return backend, managers, limiters


@attrs.define
class _Batch:
    """The group script's keys and arguments, built part after part."""

    layout: list[str] = attrs.Factory(list)
    keys: list[str] = attrs.Factory(list)
    arguments: list[object] = attrs.Factory(list)

    def add(self, kind: str, keys: Sequence[str], arguments: Sequence[object]) -> None:
        self.layout.append(f"{kind}:{len(keys)}:{len(arguments)}")
        self.keys.extend(keys)
        self.arguments.extend(arguments)

    def words(self, operation: str) -> tuple[object, ...]:
        return (operation, ",".join(self.layout), *self.arguments)


def take_at_once(
    requests: Sequence[Any], timeout: float | None, *, quietly: bool
) -> LeaseGroup | Literal[_Outcome.FALL_BACK] | None:
    """Every part on one backend, granted now in one round trip; ``_FALL_BACK`` (holding
    nothing, having spent nothing) otherwise. ``timeout`` and ``quietly`` change nothing
    here: a part that cannot be granted now is the general path's to wait for or refuse.
    An unreachable server ends the call here (see :meth:`_Taking.unreachable`)."""
    found = _parts(requests)
    if found is None:
        return _FALL_BACK
    taking = _Taking(*found, len(requests))
    try:
        taking.prepare(None)
        backend = taking.backend
        batch = taking.batch
        try:
            reply = backend.run_script(
                backend.group_script, batch.keys, batch.words("take-all"), taking.name
            )
        except BackendUnavailable as error:
            return taking.unreachable(error)
        return taking.answered(reply)
    except BaseException:
        taking.give_back()
        raise


def take_in_task(requests: Any, general: Steps[LeaseGroup]) -> Acquisition[LeaseGroup] | None:
    """``acquire_all_async`` of parts on one backend: the acquisition that first asks the
    group script on the task's loop (its own ``redis.asyncio`` client: the loop never
    blocks), then, if the script cannot grant every part now, runs ``general`` (the general
    path's steps, made by the caller). ``None`` if this path cannot take the requests."""
    kind = type(requests)
    if kind is not list and kind is not tuple:
        return None
    found = _parts(requests)
    if found is None:
        return None
    return start_acquisition(_take_in_task, _Taking(*found, len(requests)), general)


async def _take_in_task(
    taking: _Taking, general: Steps[LeaseGroup], acquisition: Acquisition[LeaseGroup]
) -> LeaseGroup:
    found = await _take_async(taking)
    if found is _FALL_BACK:
        group = await run_in_task(general)
    else:
        general.close()  # never started: nothing to undo
        group = found
    acquisition.held = group
    return group


async def _take_async(taking: _Taking) -> LeaseGroup | Literal[_Outcome.FALL_BACK]:
    """:func:`take_at_once` in a task. The script runs in a task of its own (``sending``),
    which a cancellation of this one does not stop: a take in flight may grant, so its
    answer is applied when it arrives and everything it granted is given back then
    (:func:`_abandoned`), instead of releasing by id now, on another connection, which the
    take could overtake."""
    sending: asyncio.Future[Any] | None = None
    try:
        taking.prepare(asyncio.current_task())
        batch = taking.batch
        sending = asyncio.ensure_future(
            taking.backend.run_script_async(
                "group", batch.keys, batch.words("take-all"), taking.name
            )
        )
        try:
            reply = await asyncio.shield(sending)
        except BackendUnavailable as error:
            return taking.unreachable(error)
        return taking.answered(reply)
    except BaseException:
        if sending is None:
            taking.give_back()
        elif sending.done():
            _abandoned(taking, sending)
        else:
            sending.add_done_callback(functools.partial(_abandoned, taking))
        raise


def _abandoned(taking: _Taking, sending: asyncio.Future[Any]) -> None:
    """The group script's outcome for a take whose task did not see it through (cancelled,
    or interrupted applying it): whatever it granted is given back, its rate refunded, by
    a thread of its own. Not by a task: this may run as the loop shuts down (``asyncio.run``
    cancelled the caller), and a task made then may never finish. A take whose own round
    trip was cut short (a loop shutting down cancels it too) may still run on the server:
    the keeper releases its ids, as for a full release that could not reach the server."""
    try:
        if sending.cancelled() or sending.exception() is not None:
            taking.unsure(BackendUnavailable(f"acquire_all on {taking.name!r}: cut short"))
        else:
            threading.Thread(
                target=_give_back_granted,
                args=(taking, sending.result()),
                name="allotment: giving back a cancelled acquire_all",
                daemon=True,
            ).start()
            return
    except BaseException:
        taking.give_back()
        raise
    taking.give_back()  # whatever is left (idempotent)


def _give_back_granted(taking: _Taking, reply: Any) -> None:
    """A thread's: the script's grant applied, then everything given back (one
    release-all) and the rate refunded. An error is logged: nobody waits for this."""
    try:
        try:
            group = taking.answered(reply)
            if group is not _FALL_BACK:
                try:
                    _withdraw_rates(taking.spent)  # the work never started
                finally:
                    group.release()
        finally:
            taking.give_back()  # whatever is left (idempotent)
    except Exception as error:
        logger.warning("giving back a cancelled acquire_all on %r: %r", taking.name, error)


@attrs.define(eq=False)
class _Taking:
    """One group's take, from its first ticket to the script's answer.

    Every lease is listed in ``taken`` before its record exists, and every rate ticket in
    ``spent`` before the script is sent: from there an exception anywhere gives back
    whatever the server made of them (:meth:`give_back`, idempotent)."""

    backend: RedisBackend
    managers: list[_Part]
    limiters: list[_Part]
    count: int
    leases: list[Lease[Any] | None] = attrs.field(init=False)
    taken: list[Lease[Any]] = attrs.Factory(list)
    spent: list[tuple[RedisMeter, RateTicket]] = attrs.Factory(list)
    records: list[tuple[RedisPool, Ticket, Any]] = attrs.Factory(list)
    batch: _Batch = attrs.Factory(_Batch)
    handed: bool = False
    """The leases' ids went to the keeper's release retry (:meth:`unsure`)."""

    def __attrs_post_init__(self) -> None:
        self.leases = [None] * self.count

    @property
    def name(self) -> str:
        """The first part's name, for errors."""
        return str(self.managers[0][3].name if self.managers else self.limiters[0][3].name)

    def prepare(self, task: asyncio.Task[Any] | None) -> None:
        """Each part's ticket, record and share of the script's keys and arguments."""
        thread = _current_thread()
        for _, index, manager, pool, units in self.managers:
            ticket = Ticket(units, thread, None, parts_of(manager).clock.now())
            if task is not None:
                ticket.task = task
            lease = Lease(ticket, pool, manager)
            self.taken.append(lease)  # before its record exists: from here, released on any error
            record, part_keys, part_arguments = pool.group_try(ticket)
            self.records.append((pool, ticket, record))
            self.leases[index] = lease
            self.batch.add("m", part_keys, part_arguments)
        for _, _, limiter, meter, cost in self.limiters:
            rate = RateTicket(cost, thread, None, limiter_parts(limiter).clock.now())
            self.spent.append((meter, rate))
            kind, part_keys, part_arguments = meter.group_try(cost)
            self.batch.add(kind, part_keys, part_arguments)

    def answered(self, reply: Any) -> LeaseGroup | Literal[_Outcome.FALL_BACK]:
        """The script's answer: every part granted (the group), or nothing written."""
        backend = self.backend
        if int(reply[0]) != 1:
            for pool, ticket, record in self.records:
                pool.group_not_taken(ticket, record)
            _withdraw_rates(self.spent)  # nothing was taken: nothing to undo on the server
            backend.settle()
            return _FALL_BACK
        answers = iter(reply[1:])
        for (pool, ticket, record), answer in zip(self.records, answers, strict=False):
            pool.group_granted(ticket, record, int(answer[1]))
        for (meter, rate), answer in zip(self.spent, answers, strict=False):
            meter.group_granted(rate, answer)
        grants = self._grants()
        # Releases deferred while this thread was inside the bookkeeping; here, not in a
        # ``finally``: a call between making the group and returning it would drop it.
        backend.settle()
        return LeaseGroup(
            tuple(lease for lease in self.leases if lease is not None),
            tuple(self.taken),
            tuple(self.spent),
            grants,
            _RELEASE if len(self.taken) > 1 else None,
        )

    def unreachable(self, error: BackendUnavailable) -> LeaseGroup:
        """The script's answer did not come (the server is dead, hung or cut off): the call
        ends now, within one round trip's ``timeout``, as each part alone would end there
        (not after a second wait on the general path). A manager raises the script's error
        (its message names ``acquire_all``); so does a limiter, unless every part is a
        limiter whose ``on_unavailable`` is ``"allow"``: then each is granted, recorded
        nowhere. Whatever the script may have done is released by the keeper, by id."""
        self.unsure(error)
        meters = [meter for meter, _ in self.spent]
        if self.managers or not all(meter.allows_unreachable for meter in meters):
            raise error
        for meter, rate in self.spent:
            meter.group_unreachable(rate)
        grants = self._grants()
        self.backend.settle()
        return LeaseGroup((), (), tuple(self.spent), grants, None)

    def unsure(self, error: BackendUnavailable) -> None:
        """The script may or may not have run: each lease's id goes to the keeper's release
        retry (a take whose answer was lost stays spent: stricter, never looser)."""
        if self.handed:
            return
        self.handed = True
        for pool, ticket, record in self.records:
            pool.group_unsure(ticket, record, error)

    def _grants(self) -> tuple[RateGrant, ...]:
        return tuple(RateGrant(limiter, cost) for _, _, limiter, _, cost in self.limiters)

    def give_back(self) -> None:
        """Everything taken or spent, given back (idempotent: each release is by id)."""
        try:
            _withdraw_rates(self.spent)  # the work never started: its rate is refunded
        finally:
            try:
                _release_all(self.taken)  # each release settles
            finally:
                self.backend.settle()


class GroupRelease:
    """A group's leases on one Redis backend released in one round trip (the group
    script's ``release-all``: each a full release by id, as :meth:`RedisPool.release`)."""

    def release(self, leases: Sequence[Lease[Any]]) -> None:
        """Release every lease still held in one round trip. On a thread that runs an
        event loop, that round trip goes out as one task on the loop's own client (the loop
        never blocks; the leases are released here at once, as a single lease's release is
        there). Inside the bookkeeping, nothing here: each lease's own release defers."""
        releasing = _releasing(leases)
        if releasing is None:
            return
        backend, parts, _, _ = releasing
        if _running_loop() is not None:
            backend.on_loop(
                self._release_async(releasing),
                functools.partial(_send_again, releasing),
                f"releasing a LeaseGroup on {parts[0][0].name!r}",
            )
            # Last: an exception before here leaves each lease's own release to send it.
            for pool, ticket, record, _ in parts:
                pool.group_handed_to_loop(ticket, record)
            return
        try:
            _send(releasing, again=False)
        finally:
            backend.settle()

    async def release_async(self, leases: Sequence[Lease[Any]]) -> None:
        """:meth:`release` for a task, on its loop's own client; a cancellation does not
        stop it (the release goes on, and the cancellation propagates)."""
        releasing = _releasing(leases)
        if releasing is None:
            return
        task = asyncio.ensure_future(self._release_async(releasing))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_retrieve)
            raise

    async def _release_async(self, releasing: _Releasing) -> None:
        backend, parts, keys, arguments = releasing
        try:
            try:
                codes = await backend.run_script_async("group", keys, arguments, parts[0][0].name)
            except BackendUnavailable as error:
                for pool, ticket, record, _ in parts:
                    pool.group_release_later(ticket, record, error)
                return
            _released(parts, codes, again=False)
        finally:
            backend.settle()


def _send(releasing: _Releasing, *, again: bool) -> None:
    """The release-all round trip, blocking this thread."""
    backend, parts, keys, arguments = releasing
    try:
        codes = backend.run_script(backend.group_script, keys, arguments, parts[0][0].name)
    except BackendUnavailable as error:
        for pool, ticket, record, _ in parts:
            pool.group_release_later(ticket, record, error)
        return
    _released(parts, codes, again=again)


def _send_again(releasing: _Releasing) -> None:
    """A loop's release task cancelled (a loop shutting down cancels every task): sent
    from a thread instead, as a repeat (the task may have sent it: a lease it released
    is then not reported lost)."""
    try:
        _send(releasing, again=True)
    finally:
        releasing[0].settle()


def _releasing(leases: Sequence[Lease[Any]]) -> _Releasing | None:
    """What a group's release sends (its leases last taken first), or ``None`` to leave it
    to each lease's own release."""
    first = cast(RedisPool, ticket_and_pool(leases[0])[1])
    backend = first.backend
    if backend.in_section():
        return None
    parts: list[tuple[RedisPool, Ticket, Any, bool]] = []
    batch = _Batch()
    for lease in reversed(leases):
        ticket, any_pool = ticket_and_pool(lease)
        pool = cast(RedisPool, any_pool)
        releasing = pool.group_release(ticket)
        if releasing is None:
            continue
        record, repeated, part_keys, part_arguments = releasing
        parts.append((pool, ticket, record, repeated))
        batch.add("m", part_keys, part_arguments)
    if not parts:
        return None
    return backend, parts, batch.keys, batch.words("release-all")


def _released(
    parts: list[tuple[RedisPool, Ticket, Any, bool]], codes: Sequence[Any], *, again: bool
) -> None:
    """Apply each part's answer; raise the first ``LeaseLost`` once all are applied."""
    error: BaseException | None = None
    for (pool, ticket, record, repeated), code in zip(parts, codes, strict=True):
        try:
            pool.group_released(ticket, record, int(code), repeated or again)
        except BaseException as raised:  # keep going; report the first failure
            error = error or raised
    if error is not None:
        raise error


_RELEASE = GroupRelease()
_multi.backend_paths.append(take_at_once)
_multi.task_paths.append(take_in_task)
