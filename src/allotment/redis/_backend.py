"""RedisBackend: the connection, the scripts, and the one keeper thread of a process.

The keeper is the only thread that waits on Redis for others. It pops this process's wake-up
list (the grant scripts push ``id|token`` there for each waiter they grant), hands each grant
to the local ticket and wakes its waiter (a thread's lock or a task's future: the same
waiters as in memory); every second it asks the server about every local waiter whose
``enter`` the server confirmed (the polling backstop, which also keeps the waiters' records
alive), and every third of ``lease_ttl`` it
renews every local lease in one round trip per manager. Releases that could not reach the
server are retried here, and so are leases reclaimed by a finalizer that ran inside this
process's bookkeeping (a finalizer elsewhere releases at once: redis-py's locks are
re-entrant, so its round trip cannot deadlock the thread it interrupted).

``_lock`` guards the local tables (``_waiting``, ``_heard``, ``_held``, ``_retries``) and the
local state of Redis tickets; it is held only for dictionary work, never across a round trip.
Every section, here and in the pools and meters, is written out in the shape of "Releasing"
in ``_core._section_lock`` (on 3.10 a ``with`` block's exit can be skipped by a signal
handler that raises as an exception leaves the body).

Invariants of the tables, between operations:

- ``_waiting`` has every local ticket that may be granted by a push: registered before its
  ``enter`` is sent, so a push that overtakes the reply finds it.
- ``_heard`` (a subset of ``_waiting``'s ids) has the waiters the server is known to have
  queued, each with when this process last heard so: the reply to its ``enter``, then each
  ``status`` that found it queued. Only these are polled, and the ids polled are read before
  the ``status`` is sent, so an answer "unknown id" is about an ``enter`` that had already
  run: the server really lost it. An ``enter`` in flight is never judged. A waiter leaves
  ``_heard`` before its withdrawal (its deadline passed) is sent, and the keeper refuses a
  waiter only if it is still there, in the refusal's own section: a ``status`` answered
  after a withdrawal ran never turns the caller's timeout into a "dropped" request.
- A waiter not heard of for ``waiter_ttl`` is one the server has dropped too (nothing else
  renews its record), or cannot be reached about: the keeper refuses it with
  :class:`BackendUnavailable`, so no wait outlives a dead server by more than that.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fractions
import functools
import itertools
import logging
import math
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from .._backend import OnUnavailable, valid_on_unavailable
from .._clock import SYSTEM_CLOCK, Clock, nanoseconds_of
from .._core import (
    Form,
    Pool,
    Quantity,
    RateMeter,
    SectionLock,
    Ticket,
    new_section_lock,
    report_unraisable,
)
from .._errors import BackendConflict, BackendUnavailable, ReentrantCall
from . import _scripts
from ._loops import LoopClients

if TYPE_CHECKING:
    from ._meter import RedisMeter
    from ._pool import RedisPool

__all__ = ["RedisBackend"]

logger = logging.getLogger("allotment.redis")

_SLICE = 0.5
"""The longest the keeper blocks in one BLPOP: how late it notices a stop or new work."""
_BACKSTOP = 1.0
"""How often the keeper asks about every local waiter: a lost wake-up costs at most this."""

_NOW_NS = nanoseconds_of(SYSTEM_CLOCK)
_monotonic = SYSTEM_CLOCK.now
monotonic = _monotonic
"""The clock of the keeper's schedules and of when a waiter was last heard of."""

_CONNECTION_KEYS = (
    "path", "host", "port", "db", "username", "password", "credential_provider",
    "client_name", "ssl_keyfile", "ssl_certfile", "ssl_cert_reqs", "ssl_ca_certs",
    "ssl_ca_data", "ssl_ca_path", "ssl_check_hostname", "ssl_password", "ssl_min_version",
    "ssl_ciphers",
)  # fmt: skip
_SYNC_CLASSES = {
    "UnixDomainSocketConnection": redis.UnixDomainSocketConnection,
    "Connection": redis.Connection,
    "SSLConnection": redis.SSLConnection,
}


def _positive_seconds(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{what} must be a positive number of seconds, not {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, not {value!r}")
    return float(value)


def _connection_settings(client: object) -> tuple[type[object], dict[str, Any]]:
    """The connection class and settings of the server ``client`` talks to: its address,
    database, credentials, client name and TLS settings."""
    if not isinstance(client, (redis.Redis, redis.asyncio.Redis)):
        raise TypeError(
            "RedisBackend needs a redis.Redis or redis.asyncio.Redis client (a cluster "
            f"client is not supported), not {type(client).__name__}"
        )
    pool = client.connection_pool
    kind = _SYNC_CLASSES.get(pool.connection_class.__name__)
    if kind is None:
        raise TypeError(f"unsupported redis connection class {pool.connection_class!r}")
    settings = {
        key: pool.connection_kwargs[key]
        for key in _CONNECTION_KEYS
        if key in pool.connection_kwargs
    }
    return kind, settings


def _own_client(client: object, timeout: float) -> redis.Redis:
    """A client of our own to the server ``client`` talks to: its address, credentials and
    TLS settings, with bounded timeouts and no retries (redis-py's default retry stalls up
    to a minute on a hung server and replays a script that may have run)."""
    kind, settings = _connection_settings(client)
    connections = redis.ConnectionPool(
        connection_class=kind,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        decode_responses=False,
        protocol=2,
        **settings,
    )
    return redis.Redis(connection_pool=connections)


def unavailable(error: BaseException, what: str) -> BackendUnavailable:
    return BackendUnavailable(f"{what}: the Redis server did not answer: {error}")


_CALLS = {
    "enter": "acquire",
    "withdraw": "acquire (at its timeout)",
    "release": "release",
    "status": "the keeper's check of waiting requests",
    "renew": "the keeper's renewal of leases",
    "split": "acquire_all",
    "take-all": "acquire_all",
    "release-all": "releasing a LeaseGroup",
    "resize": "resize",
    "snapshot": "statistics",
    "take": "acquire",
    "undo": "giving back a grant",
    "charge": "charge",
    "peek": "statistics",
    "declare": "making the limiter",
}
"""What the user called, for each script operation: what errors name. An operation that
serves several calls (``snapshot``, ``peek``) names its most common one here; the others
say theirs (:func:`as_call`)."""


def user_call(operation: object, name: str) -> str:
    """The user's call behind a script operation, on the manager or limiter ``name``."""
    return f"{_CALLS.get(str(operation), str(operation))} on {name!r}"


def as_call(error: BackendUnavailable, operation: str, call: str, name: str) -> BackendUnavailable:
    """``error`` of a round trip of ``operation`` on ``name``, as the error of the user's
    ``call`` (``resize``, ``acquire_all``, ...), which that round trip served."""
    said = user_call(operation, name)
    message = str(error)
    if not message.startswith(said):
        return error
    return BackendUnavailable(user_call(call, name) + message[len(said) :])


@attrs.define(eq=False)
class _Retry:
    """A release the server did not confirm, retried by the keeper until it is, or until the
    lease would have expired anyway."""

    pool: RedisPool
    rid: str
    give_up_at: float


@attrs.define(eq=False, init=False, repr=False)
class RedisBackend:
    """State kept in a Redis server (or Valkey), shared by every process that names it.

    ::

        shared = RedisBackend(redis.Redis(unix_socket_path=path), lease_ttl=30)
        gpus = allotment.ResourceManager({"gpu": 16}, name="cluster:gpus", backend=shared)
        api = allotment.RateLimiter(500, per=60, name="api:openai", backend=shared)

    ``client`` (a ``redis.Redis`` or a ``redis.asyncio.Redis``) says where the server is: the
    backend opens connections of its own with the same address, credentials and TLS
    settings, with ``timeout`` seconds for connecting and for each reply and no retries, so
    a dead or hung server raises :class:`~allotment.BackendUnavailable` within ``timeout``.

    ``lease_ttl``: a lease not renewed for this long expires, and its units return (its
    process is presumed dead); this process renews its leases every third of it. A waiter
    not heard from for ``waiter_ttl`` is dropped from the queue. ``on_unavailable`` is what
    limiters do when the server is unreachable (``"raise"``, ``"allow"``: fail open,
    ``"deny"``: refuse), unless a limiter says otherwise. ``prefix`` starts every key.

    One keeper thread per backend and process wakes local waiters and renews local leases.
    :meth:`close` stops it (leases not released then expire after ``lease_ttl``).
    """

    lease_ttl: float
    waiter_ttl: float
    timeout: float
    on_unavailable: OnUnavailable
    prefix: str
    client: redis.Redis
    """This backend's own connections (bounded timeouts, no retries)."""
    manager_script: Any
    gcra_script: Any
    window_script: Any
    group_script: Any
    """``acquire_all``'s parts on this server in one round trip (``redis/_group.py``)."""
    _group_loaded: bool
    """The group script was loaded (``SCRIPT LOAD``) when the first manager or limiter was
    made: the first ``acquire_all`` then sends its sha, not its source."""
    process: str
    """This process's random id (a forked child gets its own)."""
    wake_key: str
    """This process's wake-up list."""
    _keeper_client: redis.Redis
    loop_clients: LoopClients
    """One ``redis.asyncio`` client per event loop, for the round trips of tasks."""
    _lock: SectionLock
    _waiting: dict[str, tuple[RedisPool, Ticket]]
    _heard: dict[str, float]
    """The waiters the server confirmed it queued, and when this process last heard so."""
    _held: dict[str, tuple[RedisPool, Ticket]]
    _retries: dict[str, _Retry]
    _reclaims: collections.deque[tuple[RedisPool, Ticket, Callable[[], None]]]
    """Releases deferred by a finalizer or signal handler inside the bookkeeping."""
    _draining: SectionLock
    """Held by the thread draining ``_reclaims`` (see :meth:`settle`)."""
    _ids: Iterator[int]
    _closed: bool
    _keeper: threading.Thread | None
    _work: threading.Event
    _starting: SectionLock
    _warned_blocking: set[str]

    def __init__(
        self,
        client: redis.Redis | redis.asyncio.Redis,
        *,
        lease_ttl: float = 30.0,
        waiter_ttl: float = 5.0,
        timeout: float = 1.0,
        on_unavailable: OnUnavailable = "raise",
        prefix: str = "allotment",
    ) -> None:
        self.lease_ttl = _positive_seconds(lease_ttl, "lease_ttl")
        self.waiter_ttl = _positive_seconds(waiter_ttl, "waiter_ttl")
        self.timeout = _positive_seconds(timeout, "timeout")
        if self.waiter_ttl < 3 * _BACKSTOP:
            raise ValueError(
                f"waiter_ttl must be at least {3 * _BACKSTOP} s (it is renewed every {_BACKSTOP} s)"
            )
        if self.lease_ttl < 3 * self.timeout:
            raise ValueError(
                "lease_ttl must be at least three times timeout, to be renewed in time"
            )
        self.on_unavailable = valid_on_unavailable(on_unavailable)
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"prefix must be a non-empty string, not {prefix!r}")
        self.prefix = prefix
        self.client = _own_client(client, self.timeout)
        # The keeper's BLPOP blocks for a slice: its socket must wait that much longer.
        self._keeper_client = _own_client(client, self.timeout + _SLICE)
        self.manager_script = self.client.register_script(_scripts.MANAGER)
        self.gcra_script = self.client.register_script(_scripts.GCRA)
        self.window_script = self.client.register_script(_scripts.WINDOW)
        self.group_script = self.client.register_script(_scripts.GROUP)
        self._group_loaded = False
        kind, settings = _connection_settings(client)
        sources = {
            "manager": _scripts.MANAGER,
            "gcra": _scripts.GCRA,
            "window": _scripts.WINDOW,
            "pause": _scripts.PAUSE,
            "group": _scripts.GROUP,
        }
        self.loop_clients = LoopClients.like(kind, settings, self.timeout, sources)
        self._lock = new_section_lock()
        self._waiting = {}
        self._heard = {}
        self._held = {}
        self._retries = {}
        self._reclaims = collections.deque()
        self._draining = new_section_lock()
        self._ids = itertools.count(1)  # a range iterator repeats ids across free threads
        self._closed = False
        self._keeper = None
        self._work = threading.Event()
        self._warned_blocking = set()
        self._new_process()
        _live_backends.add(self)

    def _new_process(self) -> None:
        self._starting = new_section_lock()
        self.process = secrets.token_hex(8)
        self.wake_key = f"{self.prefix}:wake:{self.process}"

    # -- round trips ---------------------------------------------------------------------------

    def run_script(
        self, script: Any, keys: Sequence[str], args: Sequence[object], name: str
    ) -> Any:
        """One EVALSHA of ``args[0]`` (the operation) on the manager or limit ``name``
        (redis-py loads the script again after a SCRIPT FLUSH or a restart). Script
        refusals become allotment's errors; anything else from Redis becomes
        :class:`BackendUnavailable`."""
        if self._closed:
            raise BackendUnavailable(f"{user_call(args[0], name)}: this RedisBackend was closed")
        if _running_loop() is not None:
            self._blocking_on_loop(args[0], name)
        client = self.client
        words: list[Any] = [*keys, *args]
        try:
            try:
                return client.evalsha(script.sha, len(keys), *words)
            except redis.exceptions.NoScriptError:
                # Flushed, or a restarted server: EVAL loads and runs it in one command, so
                # no other flush can land between loading and running (as it can between
                # redis-py's SCRIPT LOAD and its second EVALSHA). NOSCRIPT ran nothing.
                return client.eval(script.script, len(keys), *words)
        except redis.exceptions.RedisError as error:
            raise _translated(error, args, name) from _cause(error)

    def _blocking_on_loop(self, operation: object, name: str) -> None:
        """A synchronous round trip on a thread that runs an event loop: the loop stops
        until the server answers (up to ``timeout``). Said once per kind of call (a call
        with an async form, or none that could be run for it, such as ``try_acquire``)."""
        call = user_call(operation, name)
        kind = _CALLS.get(str(operation), str(operation))
        if kind in self._warned_blocking:
            return
        self._warned_blocking.add(kind)
        logger.warning(
            "%s made a blocking Redis round trip on an event loop's thread: the loop stops "
            "until the server answers (up to %g s). From a task, use the async form, or "
            'run it with asyncio.to_thread (see docs/redis.md, "From asyncio tasks")',
            call,
            self.timeout,
        )

    async def run_script_async(
        self, script: str, keys: Sequence[str], args: Sequence[object], name: str
    ) -> Any:
        """:meth:`run_script` for a task: on the running loop's own ``redis.asyncio``
        client, so the loop goes on running other tasks while the server answers (or does
        not, for up to ``timeout``). ``script`` is ``"manager"``, ``"gcra"`` or ``"window"``."""
        if self._closed:
            raise BackendUnavailable(f"{user_call(args[0], name)}: this RedisBackend was closed")
        hook = _round_trip_hook
        if hook is not None:
            await hook(args)
        loop_client = self.loop_clients.for_running_loop()
        client, source = loop_client.client, loop_client.scripts[script]
        words: list[Any] = [*keys, *args]
        try:
            try:
                return await client.evalsha(source.sha, len(keys), *words)
            except redis.exceptions.NoScriptError:  # as in run_script: one command
                return await client.eval(source.script, len(keys), *words)
        except redis.exceptions.RedisError as error:
            raise _translated(error, args, name) from _cause(error)

    def on_loop(
        self, work: Coroutine[Any, Any, None], instead: Callable[[], object], what: str
    ) -> None:
        """Run ``work`` (a round trip whose caller needs no answer: a release, a charge, a
        pause) as a task on the running loop, on its own client, instead of blocking the
        loop's thread. Its error, if any, is logged (``what`` says what failed). A task
        cancelled before it is done (a loop shutting down cancels every task, even one not
        started) hands the round trip to a thread of its own: ``instead``, the synchronous
        form, which must be safe to repeat (each is: by id, or never looser)."""
        task = asyncio.get_running_loop().create_task(work)
        _on_loops.add(task)
        task.add_done_callback(functools.partial(_done_on_loop, what, instead))

    def new_id(self) -> str:
        return f"{self.process}:{next(self._ids)}"

    # -- the local tables ----------------------------------------------------------------------

    def section(self) -> SectionLock:
        """The local tables' lock; raises ``ReentrantCall`` on a thread already inside it (a
        signal handler or finalizer that interrupted it)."""
        if self._lock._is_owned():
            raise ReentrantCall(
                "cannot use a Redis-backed manager from inside its own bookkeeping on this "
                "thread (a finalizer or signal handler ran there)"
            )
        return self._lock

    def in_section(self) -> bool:
        return self._lock._is_owned()

    def expect_waiter(self, rid: str, pool: RedisPool, ticket: Ticket) -> None:
        """Lock held: ``ticket`` may be granted by a push from now on."""
        self._waiting[rid] = (pool, ticket)

    def confirm_waiter(self, rid: str) -> None:
        """Lock held: the server answered that it queued ``rid``; poll it from now on (unless
        it was settled meanwhile, by a push or a close)."""
        if rid in self._waiting:
            self._heard[rid] = _monotonic()

    def unpoll(self, rid: str) -> None:
        """Lock held: ``rid``'s withdrawal is about to be sent; the keeper no longer judges
        it (a push may still grant it)."""
        self._heard.pop(rid, None)

    def polled(self, rid: str) -> bool:
        """Lock held: the keeper still judges ``rid`` (confirmed, and not withdrawing)."""
        return rid in self._heard

    def forget(self, rid: str) -> None:
        """Lock held."""
        self._waiting.pop(rid, None)
        self._heard.pop(rid, None)
        self._held.pop(rid, None)

    def hold(self, rid: str, pool: RedisPool, ticket: Ticket) -> None:
        """Lock held: ``ticket`` is granted; renew it from now on."""
        self._waiting.pop(rid, None)
        self._heard.pop(rid, None)
        self._held[rid] = (pool, ticket)

    def waiting_ticket(self, rid: str) -> tuple[RedisPool, Ticket] | None:
        lock = self.section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            return self._waiting.get(rid)
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock

    def heard_from(self, rids: Sequence[str], at: float) -> None:
        """A ``status`` answered at ``at`` that the server still queues ``rids``."""
        lock = self.section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            # No loop in the section (3.13 checks for interrupts on an uncovered back edge,
            # see "Loops in sections" in design.md): C-level set and dict operations.
            heard = self._heard
            heard.update(dict.fromkeys(heard.keys() & set(rids), at))
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock

    def waiting_of(self, pool: RedisPool) -> list[tuple[str, Ticket]]:
        lock = self.section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            return [
                (rid, ticket) for rid, (owner, ticket) in self._waiting.items() if owner is pool
            ]
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock

    def drop_held(self, rid: str) -> tuple[RedisPool, Ticket] | None:
        """The lease was lost: stop renewing it."""
        lock = self.section()
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            return self._held.pop(rid, None)
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock

    def retry_release(self, pool: RedisPool, rid: str) -> None:
        lock = self._lock
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            self._retries[rid] = _Retry(pool, rid, _monotonic() + self.lease_ttl)
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        self.start_keeper()

    def reclaim(self, pool: RedisPool, ticket: Ticket, notice: Callable[[], None]) -> None:
        """From a finalizer or signal handler inside the bookkeeping: no lock, no I/O. The
        interrupted operation's :meth:`settle` (or the keeper's) releases it and gives the
        notice."""
        self._reclaims.append((pool, ticket, notice))

    # -- the keeper ----------------------------------------------------------------------------

    def start_keeper(self, *, wake: bool = True) -> None:
        """Start this process's keeper if it is not running; with ``wake``, wake it for new
        work (a waiter to listen for). A lease needs no wake-up: renewals run on a timer.

        ``_starting`` (not the tables' lock) guards the start: ``Thread.start`` waits for
        the new thread, and the tables' lock is never held while waiting. An ``RLock``, so
        that the release in the ``finally`` is its own test of ownership (see "Releasing" in
        ``_core._section_lock``)."""
        keeper = self._keeper
        starting = self._starting
        # Owned: a finalizer or signal handler that interrupted the start below, which goes on.
        if (keeper is None or not keeper.is_alive()) and not starting._is_owned():
            try:  # see "Releasing" in ``_core._section_lock``
                starting.acquire()
                keeper = self._keeper
                if (keeper is None or not keeper.is_alive()) and not self._closed:
                    keeper = threading.Thread(
                        target=self._keep,
                        name=f"allotment-redis-keeper-{self.process}",
                        daemon=True,
                    )
                    keeper.start()
                    self._keeper = keeper
            finally:
                try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                    starting.release()
                except RuntimeError:
                    pass  # not taken: the exception came while waiting for the lock
        if wake:
            self._work.set()

    def _keep(self) -> None:
        renew_at = _monotonic() + self.lease_ttl / 3
        poll_at = _monotonic() + _BACKSTOP
        backoff = 0.0
        while not self._closed:
            try:
                if backoff:
                    time.sleep(backoff)
                self.settle()
                if self._waiting:
                    popped: Any = self._keeper_client.blpop([self.wake_key], timeout=_SLICE)
                    if popped is not None:
                        self._deliver(popped[1].decode())
                        # Everything else pushed meanwhile, without blocking.
                        rest: Any = self._keeper_client.lpop(self.wake_key, 1000)
                        for message in rest or ():
                            self._deliver(message.decode())
                else:
                    self._work.wait(min(_SLICE, max(0.0, renew_at - _monotonic())))
                    self._work.clear()
                now = _monotonic()
                # Each schedule moves on only once done: a failure is retried after the
                # backoff, not a whole period later (leases must be renewed within their TTL).
                if now >= poll_at:
                    self._poll_waiters()
                    self._retry_releases(now)
                    poll_at = now + _BACKSTOP
                if now >= renew_at:
                    self._renew_leases()
                    renew_at = now + self.lease_ttl / 3
                backoff = 0.0
            except (redis.exceptions.RedisError, BackendUnavailable) as error:
                logger.warning("allotment keeper: the Redis server did not answer: %s", error)
                backoff = min(1.0, max(0.05, backoff * 2))
            except Exception:  # a bug: report it, and keep the leases alive
                logger.exception("allotment keeper: unexpected error")
                backoff = 1.0
            try:
                self._fail_unheard(_monotonic())
            except Exception:  # a bug: report it, and go on keeping
                logger.exception("allotment keeper: unexpected error")

    def _deliver(self, message: str) -> None:
        """A grant (``id|token``) or a refusal (``id|!capacity``) pushed by a script."""
        rid, _, outcome = message.partition("|")
        lock = self._lock
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            entry = self._waiting.get(rid)
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        if entry is None:
            return  # withdrawn meanwhile (its withdrawal found the grant and kept it)
        pool, ticket = entry
        if outcome.startswith("!"):
            pool.refused(ticket, rid, outcome[1:])
        else:
            pool.granted(ticket, rid, int(outcome), wake=True)

    def _by_pool(self, table: dict[str, tuple[RedisPool, Ticket]]) -> dict[RedisPool, list[str]]:
        if not table:
            return {}  # nothing to do: not even the lock, which callers' sections use
        lock = self._lock
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            entries = list(table.items())
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        grouped: dict[RedisPool, list[str]] = {}
        for rid, (pool, _) in entries:
            grouped.setdefault(pool, []).append(rid)
        return grouped

    def _poll_waiters(self) -> None:
        """The backstop: ask about every local waiter the server confirmed (which also
        renews its record). The ids are read before the question is sent: an ``enter``
        confirmed after that is not judged by this answer."""
        if not self._heard:
            return
        lock = self._lock
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            entries = [(rid, self._waiting[rid]) for rid in self._heard if rid in self._waiting]
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        grouped: dict[RedisPool, list[str]] = {}
        for rid, (pool, _) in entries:
            grouped.setdefault(pool, []).append(rid)
        _each_pool(grouped, lambda pool, rids: pool.poll(rids), "polling")

    def _fail_unheard(self, now: float) -> None:
        """Refuse the waiters not heard of for ``waiter_ttl``: the server has dropped them
        (nothing renewed their records), or cannot be reached. Their callers' release
        then withdraws them on the server, or the keeper does once it answers again."""
        if not self._heard:
            return
        lock = self._lock
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            stale = [
                (rid, self._waiting[rid])
                for rid, heard in self._heard.items()
                if now - heard >= self.waiter_ttl and rid in self._waiting
            ]
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        for rid, (pool, ticket) in stale:
            pool.unreachable(ticket, rid)

    def _renew_leases(self) -> None:
        _each_pool(
            self._by_pool(self._held), lambda pool, rids: pool.renew(rids), "renewing leases on"
        )

    def _retry_releases(self, now: float) -> None:
        if not self._retries:
            return
        lock = self._lock
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            retries = list(self._retries.values())
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        for retry in retries:
            if now < retry.give_up_at:
                retry.pool.release_by_id(retry.rid)
            try:  # see "Releasing" in ``_core._section_lock``
                lock.acquire()
                self._retries.pop(retry.rid, None)
            finally:
                try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                    lock.release()
                except RuntimeError:
                    pass  # not taken: the exception came while waiting for the lock

    def settle(self) -> None:
        """After an operation: do the releases a finalizer or signal handler deferred while a
        thread was inside the bookkeeping, so that their units are back before the operation
        returns (as in memory). The keeper settles too, after each round. One thread drains
        at a time, and the others wait for it: a deferred release is done when any of them
        returns. A finalizer that runs during a drain, on the draining thread, releases at
        once itself (outside the bookkeeping) and never drains."""
        draining = self._draining
        # Owned: re-entered on the draining thread (no flag of "draining now" reset in a
        # finally: on 3.10 a signal handler raising at the finally's entry would skip it).
        if not self._reclaims or self._lock._is_owned() or draining._is_owned():
            return
        try:  # see "Releasing" in ``_core._section_lock``
            draining.acquire()
            reclaims = self._reclaims
            while True:
                if not reclaims:
                    break
                pool, ticket, notice = reclaims[0]
                pool.release_quietly(ticket)
                _notify(notice)
                reclaims.popleft()  # last: an empty deque means every notice was given
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                draining.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock

    def close(self) -> None:
        """Stop the keeper. Leases still held are no longer renewed and expire after
        ``lease_ttl``; waiters are dropped after ``waiter_ttl``."""
        self._closed = True
        self._work.set()
        keeper = self._keeper
        if keeper is not None and keeper is not threading.current_thread():
            keeper.join(self.timeout + 2 * _SLICE)
        # The connection pools are this backend's own: close() of a client with a pool
        # passed in leaves the pool's sockets open.
        self.client.connection_pool.disconnect()
        self._keeper_client.connection_pool.disconnect()
        self.loop_clients.close()

    def _after_fork_in_child(self) -> None:
        """The child has none of the parent's threads: its tickets are the parent's (never
        released or renewed from here), and it gets a process id and a keeper of its own."""
        self._lock = new_section_lock()
        for table in (self._waiting, self._held):
            for pool, ticket in table.values():
                pool.disown(ticket)
        self._waiting.clear()
        self._heard.clear()
        self._held.clear()
        self._retries.clear()
        self._reclaims.clear()
        self._draining = new_section_lock()
        self._keeper = None
        self._work = threading.Event()
        self.loop_clients.after_fork_in_child()
        self._new_process()

    # -- what the faces ask for -----------------------------------------------------------------

    def manager_pool(self, name: str, form: Form[Any], capacity: Quantity, clock: Clock) -> Pool:
        """The pool of a manager named ``name`` (declared with ``capacity``)."""
        from ._pool import RedisPool

        pool = RedisPool(form, self, name, capacity, clock.now)
        self._load_group_script()
        return pool

    def _load_group_script(self) -> None:
        """Once, after the first manager or limiter was made (the server answered): load the
        group script, so that the first ``acquire_all`` takes the same path as every later
        one (an ``EVALSHA``). A server that restarts or flushes its scripts later answers
        ``NOSCRIPT``, and :meth:`run_script` sends the source then."""
        if self._group_loaded:
            return
        with contextlib.suppress(redis.exceptions.RedisError):
            self.client.script_load(_scripts.GROUP)
            self._group_loaded = True

    def gcra_meter(
        self,
        name: str,
        interval_ns: fractions.Fraction,
        burst: int,
        key: str | None,
        on_unavailable: OnUnavailable | None,
    ) -> RateMeter:
        """The meter of a GCRA named ``name`` (of one of its keys, for a keyed limiter).
        Each unit's interval is rounded up to a whole microsecond: never looser."""
        from ._meter import gcra_key

        interval_us = math.ceil(interval_ns / 1000)
        meter = self._meter(
            name,
            self.gcra_script,
            gcra_key(self.prefix, name, key),
            (f"{interval_us},{burst}", interval_us, burst),
            burst,
            on_unavailable,
        )
        meter.describe = describe_gcra
        if key is not None:
            meter.forecasting = "retry_after"
        if key is None:
            meter.declare()
            self._load_group_script()
        return meter

    def window_meter(
        self, name: str, limit: int, per: fractions.Fraction, on_unavailable: OnUnavailable | None
    ) -> RateMeter:
        """The meter of a sliding window named ``name``."""
        from ._meter import window_keys

        window_us = math.ceil(per * 1_000_000)
        meter = self._meter(
            name,
            self.window_script,
            window_keys(self.prefix, name),
            (f"{limit},{window_us}", limit, window_us),
            limit,
            on_unavailable,
        )
        meter.describe = describe_window
        meter.declare()
        self._load_group_script()
        return meter

    def _meter(  # noqa: PLR0917 - private, called in two places
        self,
        name: str,
        script: Any,
        keys: tuple[str, ...],
        settings: tuple[object, ...],
        largest: int,
        on_unavailable: OnUnavailable | None,
    ) -> RedisMeter:
        """A meter of ``script`` on ``keys``; ``settings`` are the script's declaration
        arguments, and ``largest`` the most units one request may ask for."""
        from ._meter import RedisMeter, RuleLimits

        return RedisMeter(
            self,
            script,
            keys,
            settings,
            RuleLimits(largest),
            self.on_unavailable if on_unavailable is None else on_unavailable,
            _NOW_NS,
            SYSTEM_CLOCK.now,
            name,
        )

    def __repr__(self) -> str:
        return f"<allotment.redis.RedisBackend prefix={self.prefix!r} lease_ttl={self.lease_ttl:g}>"


def describe_gcra(settings: str) -> str:
    """A GCRA's stored settings (``interval_us,burst``) in the user's terms: ``50 per 1 s,
    burst 50`` (per second, minute or hour, whichever counts whole units)."""
    interval_us, burst = (int(part) for part in settings.split(","))
    for seconds in (1, 60, 3600):
        units = fractions.Fraction(seconds * 1_000_000, interval_us)
        if units.denominator == 1:
            return f"{units} per {seconds} s, burst {burst}"
    return f"1 per {interval_us / 1_000_000:g} s, burst {burst}"


def describe_window(settings: str) -> str:
    """A window's stored settings (``limit,window_us``) in the user's terms: ``50 per 1 s``."""
    limit, window_us = (int(part) for part in settings.split(","))
    return f"{limit} per {window_us / 1_000_000:g} s"


def describe_capacity(names: str, counts: str) -> str:
    """A manager's stored declaration in the user's terms: ``capacity 3``, or
    ``resources {'gpu': 2, 'ram_gb': 64}``."""
    values = [int(part) for part in counts.split(",")]
    if names == "-":
        return f"capacity {values[0]}"
    return f"resources {dict(zip(names.split(','), values, strict=True))!r}"


_running_loop = asyncio._get_running_loop  # the C accessor: no exception when there is none
_on_loops: set[asyncio.Task[None]] = set()
"""Round trips running on loops for a synchronous caller: held until done (a loop holds its
tasks only weakly)."""


def _done_on_loop(what: str, instead: Callable[[], object], task: asyncio.Task[None]) -> None:
    _on_loops.discard(task)
    if task.cancelled():
        threading.Thread(
            target=_run_instead, args=(what, instead), name=f"allotment: {what}", daemon=True
        ).start()
        return
    error = task.exception()
    if error is not None:
        logger.warning("%s on the event loop ended with %r", what, error)


def _run_instead(what: str, instead: Callable[[], object]) -> None:
    try:
        instead()
    except Exception as error:
        logger.warning("%s ended with %r", what, error)


_round_trip_hook: Callable[[Sequence[object]], Any] | None = None
"""Tests only: an async function awaited before each task's round trip (to stall one)."""


def _cause(error: redis.exceptions.RedisError) -> BaseException | None:
    """Refusals and conflicts are the script's answers: no traceback of redis-py's."""
    message = str(error)
    if isinstance(error, redis.exceptions.ResponseError) and "ALLOTMENT_" in message:
        return None
    return error


def _translated(error: redis.exceptions.RedisError, args: Sequence[object], name: str) -> Exception:
    """A refusal of a script (``ALLOTMENT_...``) as allotment's error; anything else from
    Redis as :class:`BackendUnavailable` naming the user's call."""
    message = str(error)
    if isinstance(error, redis.exceptions.ResponseError):
        if "ALLOTMENT_CONFLICT" in message:
            return BackendConflict(
                message.split("ALLOTMENT_CONFLICT ", 1)[1].split(" script:", maxsplit=1)[0]
            )
        if "ALLOTMENT_" in message:
            return ScriptRefusal(message.split("ALLOTMENT_", 1)[1].split(" script:", maxsplit=1)[0])
    return unavailable(error, user_call(args[0], name))


class ScriptRefusal(Exception):
    """Internal: a script refused an operation (``KIND detail``)."""


def _notify(notice: Callable[[], None]) -> None:
    try:
        notice()
    except Exception:  # a leak warning turned into an error, as from __del__
        report_unraisable(notice)


_live_backends: weakref.WeakSet[RedisBackend] = weakref.WeakSet()


def _reinitialise_after_fork() -> None:
    for backend in list(_live_backends):
        backend._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinitialise_after_fork)


def _each_pool(
    grouped: dict[RedisPool, list[str]],
    action: Callable[[RedisPool, list[str]], None],
    doing: str,
) -> None:
    """Run the keeper's ``action`` for each manager. A failure of the server itself ends the
    round (every other manager would wait out the same timeout); a failure of one manager
    alone (a conflicting declaration, a bug) is reported and the others are still served:
    otherwise their waiters would go unpolled and their leases unrenewed."""
    for pool, rids in grouped.items():
        try:
            action(pool, rids)
        except (redis.exceptions.RedisError, BackendUnavailable):
            raise
        except Exception:
            logger.exception("allotment keeper: %s %r failed", doing, pool.name)
