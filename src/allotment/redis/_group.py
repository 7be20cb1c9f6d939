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
import threading
from collections.abc import Sequence
from typing import Any, Literal

import attrs

from .. import _multi
from .._core import RateTicket, Ticket
from .._errors import BackendUnavailable
from .._lease import Lease
from .._limiters import RateGrant, is_limiter, limiter_parts
from .._manager import ResourceManager, parts_of, records_sites
from .._multi import _FALL_BACK, LeaseGroup, _Outcome, _release_all, _withdraw_rates
from ._backend import RedisBackend
from ._meter import RedisMeter
from ._pool import RedisPool, _retrieve

__all__ = ["GroupRelease"]

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
            part_backend = meter._backend
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


def take_at_once(
    requests: Sequence[Any], timeout: float | None, *, quietly: bool
) -> LeaseGroup | Literal[_Outcome.FALL_BACK] | None:
    """Every part on one backend, granted now in one round trip; ``_FALL_BACK`` (holding
    nothing, having spent nothing) otherwise. ``timeout`` and ``quietly`` change nothing
    here: a part that cannot be granted now is the general path's to wait for or refuse."""
    found = _parts(requests)
    if found is None:
        return _FALL_BACK
    backend, managers, limiters = found
    leases: list[Lease[Any] | None] = [None] * len(requests)
    taken: list[Lease[Any]] = []
    spent: list[tuple[RedisMeter, RateTicket]] = []
    records: list[Any] = []
    thread = _current_thread()
    batch = _Batch()
    try:
        for _, index, manager, pool, units in managers:
            ticket = Ticket(units, thread, None, parts_of(manager).clock.now())
            lease = Lease(ticket, pool, manager)
            taken.append(lease)  # before its record exists: from here, released on any error
            record, part_keys, part_arguments = pool.group_try(ticket)
            records.append((pool, ticket, record))
            leases[index] = lease
            batch.add("m", part_keys, part_arguments)
        for _, _, limiter, meter, cost in limiters:
            rate = RateTicket(cost, thread, None, limiter_parts(limiter).clock.now())
            spent.append((meter, rate))
            kind, part_keys, part_arguments = meter.group_try(cost)
            batch.add(kind, part_keys, part_arguments)
        try:
            reply = backend.run_script(
                backend.group_script,
                batch.keys,
                batch.words("take-all"),
                managers[0][3].name if managers else limiters[0][3].name,
            )
        except BackendUnavailable as error:
            for pool, ticket, record in records:
                pool.group_unsure(ticket, record, error)
            _withdraw_rates(spent)
            backend.settle()
            return _FALL_BACK
        if int(reply[0]) != 1:
            for pool, ticket, record in records:
                pool.group_not_taken(ticket, record)
            _withdraw_rates(spent)  # nothing was taken: nothing to undo on the server
            backend.settle()
            return _FALL_BACK
        answers = iter(reply[1:])
        for (pool, ticket, record), answer in zip(records, answers, strict=False):
            pool.group_granted(ticket, record, int(answer[1]))
        for (meter, rate), answer in zip(spent, answers, strict=False):
            meter.group_granted(rate, answer)
        grants = tuple(RateGrant(limiter, cost) for _, _, limiter, _, cost in limiters)
        # Releases deferred while this thread was inside the bookkeeping; here, not in a
        # ``finally``: a call between making the group and returning it would drop it.
        backend.settle()
        return LeaseGroup(
            tuple(lease for lease in leases if lease is not None),
            tuple(taken),
            tuple(spent),
            grants,
            _RELEASE if len(taken) > 1 else None,
        )
    except BaseException:
        try:
            _withdraw_rates(spent)  # the work never started: its rate is refunded
        finally:
            _release_all(taken)  # each release settles
        raise


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


class GroupRelease:
    """A group's leases on one Redis backend released in one round trip (the group
    script's ``release-all``: each a full release by id, as :meth:`RedisPool.release`)."""

    def release(self, leases: Sequence[Lease[Any]]) -> None:
        """Release every lease still held in one round trip. On a thread that runs an
        event loop, or inside the bookkeeping, nothing here: each lease's own release then
        runs as ``RedisPool.release`` does there (no blocking round trip)."""
        releasing = _releasing(leases)
        if releasing is None:
            return
        backend, parts, keys, arguments = releasing
        try:
            try:
                codes = backend.run_script(backend.group_script, keys, arguments, parts[0][0].name)
            except BackendUnavailable as error:
                for pool, ticket, record, _ in parts:
                    pool.group_release_later(ticket, record, error)
                return
            _released(parts, codes)
        finally:
            backend.settle()

    async def release_async(self, leases: Sequence[Lease[Any]]) -> None:
        """:meth:`release` for a task, on its loop's own client; a cancellation does not
        stop it (the release goes on, and the cancellation propagates)."""
        task = asyncio.ensure_future(self._release_async(leases))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_retrieve)
            raise

    async def _release_async(self, leases: Sequence[Lease[Any]]) -> None:
        releasing = _releasing(leases, on_loop=True)
        if releasing is None:
            return
        backend, parts, keys, arguments = releasing
        try:
            try:
                codes = await backend.run_script_async("group", keys, arguments, parts[0][0].name)
            except BackendUnavailable as error:
                for pool, ticket, record, _ in parts:
                    pool.group_release_later(ticket, record, error)
                return
            _released(parts, codes)
        finally:
            backend.settle()


def _releasing(leases: Sequence[Lease[Any]], *, on_loop: bool = False) -> _Releasing | None:
    """What a group's release sends (its leases last taken first), or ``None`` to leave it
    to each lease's own release."""
    first: RedisPool = leases[0]._pool  # type: ignore[assignment]
    backend = first.backend
    if backend.in_section() or (not on_loop and _running_loop() is not None):
        return None
    parts: list[tuple[RedisPool, Ticket, Any, bool]] = []
    batch = _Batch()
    for lease in reversed(leases):
        pool: RedisPool = lease._pool
        ticket = lease._ticket
        releasing = pool.group_release(ticket)
        if releasing is None:
            continue
        record, repeated, part_keys, part_arguments = releasing
        parts.append((pool, ticket, record, repeated))
        batch.add("m", part_keys, part_arguments)
    if not parts:
        return None
    return backend, parts, batch.keys, batch.words("release-all")


def _released(parts: list[tuple[RedisPool, Ticket, Any, bool]], codes: Sequence[Any]) -> None:
    """Apply each part's answer; raise the first ``LeaseLost`` once all are applied."""
    error: BaseException | None = None
    for (pool, ticket, record, repeated), code in zip(parts, codes, strict=True):
        try:
            pool.group_released(ticket, record, int(code), repeated)
        except BaseException as raised:  # keep going; report the first failure
            error = error or raised
    if error is not None:
        raise error


_RELEASE = GroupRelease()
_multi.backend_paths.append(take_at_once)
