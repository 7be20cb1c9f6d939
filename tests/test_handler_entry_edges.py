"""An exception leaving a lock section outside the core never leaves its lock held.

The same proof as ``tests/test_handler_entry.py``, for the sections of the faces around the
core: the HTTP policy, the keyed limiter's table, the observers' registry, the Redis
backend's tables and loop clients, and the test helpers. On CPython 3.10 the jump to an
exception handler is a check point of the eval breaker (unless the handler starts with
``SETUP_FINALLY``), so a signal made pending by the C call that raised is handled on the way
to the handler, and a signal handler that raises skips a ``with`` block's exit (or a
``finally: lock.release()``): the lock stays held for good. Each section is written in the
shape of "Releasing" in ``_core._section_lock``; these tests make each section's body raise
from C with SIGUSR1 pending and check that another thread can take the lock afterwards, and
that the state the section guards is as it was. 3.11 and newer check nowhere between a raise
and its handler: there the tests pass with any shape.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis.asyncio
from opentelemetry import metrics

import allotment
from allotment import _events, _lock_order
from allotment._core import PENDING, Ticket
from allotment._limiters import limiter_parts
from allotment.http import Grant, Policy
from allotment.otel import Instrumentation
from allotment.redis import RedisBackend
from allotment.redis import _backend as backend_module
from allotment.redis._loops import LoopClient, LoopClients
from allotment.redis._meter import RedisMeter
from allotment.redis._pool import RedisPool, _Record
from allotment.testing import ManualClock
from signal_support import NEEDS_SIGUSR1, interrupted, signal_and_raise

pytestmark = [NEEDS_SIGUSR1, pytest.mark.usefixtures("sigusr1_raises")]


class Trap:
    """A value whose arithmetic and comparisons raise from C with a signal pending."""

    __le__ = __lt__ = __ge__ = __gt__ = signal_and_raise
    __add__ = __radd__ = __sub__ = __rsub__ = __eq__ = signal_and_raise

    def __hash__(self) -> int:
        return 0


class Late(Trap):
    """An instant: adding a duration gives itself; comparing it raises."""

    def __add__(self, *other: object) -> Late:
        return self


class Unhashable:
    """A key whose hash raises from C with a signal pending."""

    __hash__ = signal_and_raise


class Unformattable:
    """A value whose formatting raises from C with a signal pending."""

    __format__ = signal_and_raise


class TrapItems(dict[str, Any]):
    """A table whose ``items()`` raises from C with a signal pending."""

    items = signal_and_raise


def _signal_and_fail() -> Iterator[None]:
    """Ids whose iteration (by a C consumer) makes SIGUSR1 pending and raises ``TypeError``."""
    pid = os.getpid()
    return itertools.starmap(os.kill, [(pid, signal.SIGUSR1), (pid, "x")])


class TrapClock:
    """A clock whose readings are :class:`Late`."""

    def now(self) -> Late:
        return Late()


def _assert_free(lock: Any) -> None:
    """Another thread can take ``lock`` (a plain lock or an ``RLock``) and give it back."""
    taken: list[bool] = []

    def take_and_give_back() -> None:
        taken.append(lock.acquire(timeout=10))
        if taken[0]:
            lock.release()

    other = threading.Thread(target=take_and_give_back)
    other.start()
    other.join()
    assert taken == [True], "the section's lock was left held"


# -- the HTTP policy ---------------------------------------------------------------------------


def _policy() -> Policy:
    return Policy(allotment.RateLimiter(10, per=1, clock=ManualClock()), clock=ManualClock())


def _figures(policy: Policy) -> tuple[object, ...]:
    return (
        policy._requests,
        policy._refused,
        policy._server_refusals,
        policy._pauses,
        policy._paused_seconds,
        policy._until,
        policy._last_reason,
    )


def test_policy_pause_releases_when_the_comparison_raises() -> None:
    policy = _policy()
    before = _figures(policy)
    policy._clock = TrapClock()  # type: ignore[assignment]
    interrupted(lambda: policy.pause(5))
    _assert_free(policy._lock)
    assert _figures(policy) == before


def test_policy_statistics_releases_when_the_arithmetic_raises() -> None:
    policy = _policy()
    policy._clock = TrapClock()  # type: ignore[assignment]
    interrupted(policy.statistics)
    _assert_free(policy._lock)


def _unused(client_request: object) -> Any:
    raise AssertionError("the policy has no key or cost function")  # pragma: no cover


def test_policy_enter_releases_when_the_count_raises() -> None:
    policy = _policy()
    policy._requests = Trap()  # type: ignore[assignment]
    interrupted(lambda: policy.enter(object(), _unused))
    _assert_free(policy._lock)
    assert isinstance(policy._requests, Trap)


def test_policy_refusal_count_releases_when_the_count_raises() -> None:
    policy = _policy()
    policy._refused = Trap()  # type: ignore[assignment]
    interrupted(policy._count_refusal)
    _assert_free(policy._lock)


def test_policy_observe_releases_when_the_count_raises() -> None:
    policy = _policy()
    policy._server_refusals = Trap()  # type: ignore[assignment]
    grant = Grant(None)
    interrupted(lambda: policy.observe(grant, 429, [], None))
    _assert_free(policy._lock)


# -- the keyed limiter's table -----------------------------------------------------------------


def test_keyed_lookup_releases_when_a_key_comparison_raises() -> None:
    limiter = allotment.KeyedRateLimiter(10, per=1, clock=ManualClock())
    assert limiter.try_acquire("a")
    meter = limiter._meters["a"]
    interrupted(lambda: limiter.try_acquire(Trap()))  # "a" == Trap() raises
    _assert_free(limiter._lock)
    assert list(limiter._meters.items()) == [("a", meter)]


def test_keyed_lookup_releases_when_making_a_meter_raises() -> None:
    limiter = allotment.KeyedRateLimiter(10, per=1, clock=ManualClock())
    limiter._make = signal_and_raise
    interrupted(lambda: limiter.try_acquire("a"))
    _assert_free(limiter._lock)
    assert len(limiter) == 0


# -- the observers' registry -------------------------------------------------------------------


class TrapObserver:
    """An observer that compares equal to nothing without raising from C."""

    __eq__ = __ne__ = signal_and_raise

    def __hash__(self) -> int:
        return 0

    def __call__(self, event: object) -> None:
        pass


@pytest.fixture
def installed() -> Iterator[TrapObserver]:
    saved = _events.observers
    _events.observers = ()
    _events._split(())
    observer = TrapObserver()
    _events.add_observer(observer)  # nothing to compare it with yet
    try:
        yield observer
    finally:
        _events.observers = saved
        _events._split(saved)


def test_add_observer_releases_when_a_comparison_raises(installed: TrapObserver) -> None:
    interrupted(lambda: _events.add_observer(TrapObserver()))
    _assert_free(_events._registry_lock)
    assert _events.observers[-1] is installed


def test_remove_observer_releases_when_a_comparison_raises(installed: TrapObserver) -> None:
    interrupted(lambda: _events.remove_observer(TrapObserver()))
    _assert_free(_events._registry_lock)
    assert _events.observers[-1] is installed


# -- the Redis backend's tables ----------------------------------------------------------------


def test_backend_heard_from_releases_when_the_ids_raise(redis_backend: RedisBackend) -> None:
    interrupted(lambda: redis_backend.heard_from(_signal_and_fail(), 0.0))  # type: ignore[arg-type]
    _assert_free(redis_backend._lock)
    assert redis_backend._heard == {}


def test_backend_waiting_ticket_releases_when_the_hash_raises(
    redis_backend: RedisBackend,
) -> None:
    interrupted(lambda: redis_backend.waiting_ticket(Unhashable()))  # type: ignore[arg-type]
    _assert_free(redis_backend._lock)


def test_backend_drop_held_releases_when_the_hash_raises(redis_backend: RedisBackend) -> None:
    redis_backend._held["r"] = (None, None)  # type: ignore[assignment]  # pop hashes then
    interrupted(lambda: redis_backend.drop_held(Unhashable()))  # type: ignore[arg-type]
    _assert_free(redis_backend._lock)
    assert list(redis_backend._held) == ["r"]
    redis_backend._held.clear()


def test_backend_retry_release_releases_when_the_clock_raises(
    redis_backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backend_module, "_monotonic", signal_and_raise)
    interrupted(lambda: redis_backend.retry_release(None, "r"))  # type: ignore[arg-type]
    _assert_free(redis_backend._lock)
    assert (redis_backend._retries, redis_backend._keeper) == ({}, None)


def test_backend_grouping_releases_when_the_table_raises(redis_backend: RedisBackend) -> None:
    table = TrapItems(r=None)
    interrupted(lambda: redis_backend._by_pool(table))
    _assert_free(redis_backend._lock)


def test_backend_failing_unheard_releases_when_the_arithmetic_raises(
    redis_backend: RedisBackend,
) -> None:
    redis_backend._heard["r"] = 0.0
    redis_backend._waiting["r"] = (None, None)  # type: ignore[assignment]
    interrupted(lambda: redis_backend._fail_unheard(Trap()))  # type: ignore[arg-type]
    _assert_free(redis_backend._lock)
    assert list(redis_backend._heard) == ["r"]
    redis_backend._heard.clear()
    redis_backend._waiting.clear()


def test_backend_retrying_releases_releases_when_the_hash_raises(
    redis_backend: RedisBackend,
) -> None:
    retry = backend_module._Retry(None, Unhashable(), -float("inf"))  # type: ignore[arg-type]
    redis_backend._retries["r"] = retry
    interrupted(lambda: redis_backend._retry_releases(0.0))
    _assert_free(redis_backend._lock)
    assert redis_backend._retries == {"r": retry}
    redis_backend._retries.clear()


def test_backend_starting_the_keeper_releases_when_its_name_raises(
    redis_backend: RedisBackend,
) -> None:
    process = redis_backend.process
    redis_backend.process = Unformattable()  # type: ignore[assignment]
    try:
        interrupted(lambda: redis_backend.start_keeper(wake=False))
    finally:
        redis_backend.process = process
    _assert_free(redis_backend._starting)
    assert redis_backend._keeper is None


class TrapPool:
    """A pool whose deferred release raises from C with a signal pending."""

    release_quietly = staticmethod(signal_and_raise)


class GoodPool:
    def release_quietly(self, ticket: object) -> None:
        pass


def test_backend_settling_releases_when_a_deferred_release_raises(
    redis_backend: RedisBackend,
) -> None:
    reclaims: Any = redis_backend._reclaims
    notices: list[None] = []
    reclaims.append((TrapPool(), None, lambda: notices.append(None)))
    interrupted(redis_backend.settle)
    _assert_free(redis_backend._draining)
    assert (len(reclaims), notices) == (1, [])
    reclaims[0] = (GoodPool(), None, lambda: notices.append(None))
    redis_backend.settle()  # the next operation's settle drains it: nothing is lost
    assert (len(reclaims), notices) == (0, [None])


# -- the Redis backend's clients per loop ------------------------------------------------------


def _loop_clients() -> LoopClients:
    return LoopClients(redis.asyncio.Connection, {}, 1.0, {})


def test_loop_clients_forget_releases_when_the_hash_raises() -> None:
    clients = _loop_clients()
    made = LoopClient(Unhashable(), None, {})  # type: ignore[arg-type]
    interrupted(lambda: clients.forget(made))
    _assert_free(clients._lock)


class TrapLoop:
    """A loop found in the table whose ``is_closed`` raises from C with a signal pending."""

    is_closed = staticmethod(signal_and_raise)


def test_loop_clients_lookup_releases_when_a_closed_check_raises() -> None:
    clients = _loop_clients()
    gone = TrapLoop()
    table: Any = clients._clients
    table[gone] = None

    async def look_up() -> None:
        clients.for_running_loop()

    interrupted(lambda: asyncio.run(look_up()))
    _assert_free(clients._lock)
    assert list(table) == [gone]


# -- the Redis pools and meters ----------------------------------------------------------------


def _redis_pool(backend: RedisBackend, name: str) -> RedisPool:
    pool = allotment.ResourceManager(10, name=f"edges:{name}", backend=backend)._pool
    assert isinstance(pool, RedisPool)
    return pool


def _pending(pool: RedisPool, rid: str) -> tuple[Ticket, _Record]:
    ticket = Ticket(1, threading.current_thread(), None, 0.0)
    record = _Record(rid)
    pool._records[ticket] = record
    return ticket, record


def test_redis_snapshot_releases_when_the_table_raises(redis_backend: RedisBackend) -> None:
    pool = _redis_pool(redis_backend, "snapshot")
    records = pool._records
    pool._records = TrapItems()  # type: ignore[assignment]
    try:
        interrupted(pool.snapshot)
    finally:
        pool._records = records
    _assert_free(redis_backend._lock)


def test_redis_grant_releases_when_the_id_comparison_raises(
    redis_backend: RedisBackend,
) -> None:
    pool = _redis_pool(redis_backend, "grant")
    ticket, record = _pending(pool, "r")
    interrupted(lambda: pool.granted(ticket, Trap(), 1, wake=False))  # type: ignore[arg-type]
    _assert_free(redis_backend._lock)
    assert (ticket.state, record.token, redis_backend._held) == (PENDING, None, {})


def test_redis_part_done_releases_when_the_id_comparison_raises(
    redis_backend: RedisBackend,
) -> None:
    pool = _redis_pool(redis_backend, "part-done")
    ticket, record = _pending(pool, "r")
    pending: Any = (Trap(), 1)
    record.pending = pending
    interrupted(lambda: pool._part_done(ticket, record, "x", 1, (1, None)))
    _assert_free(redis_backend._lock)
    assert (record.pending, ticket.units) == (pending, 1)


def test_redis_partial_release_gives_the_turn_back_when_it_raises(
    redis_backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = _redis_pool(redis_backend, "turn")
    ticket, record = _pending(pool, "r")
    monkeypatch.setattr(RedisPool, "_release_part_in_turn", signal_and_raise)
    interrupted(lambda: pool._release_part(ticket, record, 1))
    _assert_free(record.turn)


def test_redis_partial_release_of_a_task_gives_the_turn_back_when_it_raises(
    redis_backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = _redis_pool(redis_backend, "turn-async")
    ticket, record = _pending(pool, "r")

    async def in_turn(*_: object) -> None:
        signal_and_raise()

    monkeypatch.setattr(RedisPool, "_release_part_in_turn_async", in_turn)
    interrupted(lambda: asyncio.run(pool._release_part_async(ticket, record, 1)))
    _assert_free(record.turn)


def _redis_meter(backend: RedisBackend, name: str) -> RedisMeter:
    limiter = allotment.RateLimiter(10, per=1, name=f"edges:{name}", backend=backend)
    meter = limiter_parts(limiter).meter
    assert isinstance(meter, RedisMeter)
    return meter


def test_redis_meter_charge_count_releases_when_the_sum_raises(
    redis_backend: RedisBackend,
) -> None:
    meter = _redis_meter(redis_backend, "charged")
    interrupted(lambda: meter._charged(Trap()))  # type: ignore[arg-type]
    _assert_free(meter._lock)
    assert meter.charged == 0


def test_redis_meter_allowed_count_releases_when_the_sum_raises(
    redis_backend: RedisBackend,
) -> None:
    meter = _redis_meter(redis_backend, "counted")
    interrupted(lambda: meter._count(Trap()))  # type: ignore[arg-type]
    _assert_free(meter._lock)
    assert meter.allowed_units == 0


# -- the manual clock --------------------------------------------------------------------------


def test_manual_clock_advance_releases_when_a_deadline_comparison_raises() -> None:
    clock = ManualClock()
    handle = threading.Lock()
    clock._sleepers[handle] = Trap()  # type: ignore[assignment]
    interrupted(lambda: clock.advance(1))
    _assert_free(clock._lock)
    assert list(clock._sleepers) == [handle]


def test_manual_clock_call_at_releases_when_the_deadline_comparison_raises() -> None:
    clock = ManualClock()
    interrupted(lambda: clock.call_at(Trap(), lambda: None))  # type: ignore[arg-type]
    _assert_free(clock._lock)
    assert clock.sleepers == 0


def test_manual_clock_sleep_releases_when_the_deadline_comparison_raises() -> None:
    clock = ManualClock()
    handle = threading.Lock()
    handle.acquire()
    interrupted(lambda: clock.sleep_until(handle, Trap()))  # type: ignore[arg-type]
    _assert_free(clock._lock)
    assert clock.sleepers == 0


# -- OpenTelemetry -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["requested", "granted"])
def test_instrumentation_releases_when_the_request_hash_raises(kind: str) -> None:
    instrumentation = Instrumentation(metrics.NoOpMeter("edges"), False)
    event = SimpleNamespace(kind=kind, name="m", limiter=False, request=Unhashable())
    interrupted(lambda: instrumentation._pool(event))  # type: ignore[arg-type]
    _assert_free(instrumentation._lock)
    assert instrumentation._queued == set()


# -- the lock-order graph ----------------------------------------------------------------------


def test_lock_order_graph_releases_when_forgetting_raises() -> None:
    graph = _lock_order._graph
    graph._dead.append(Unhashable())  # type: ignore[arg-type]
    interrupted(lambda: _lock_order._add_edges([], None, 1))
    _assert_free(graph.lock)
    assert not graph._dead


# -- re-entry on the owning thread is refused, never run inside the outer section ------------


class Reentering:
    """A clock reading whose comparison calls ``inner`` (a finalizer or signal handler would
    run there), recording what it raised."""

    def __init__(self, inner: Callable[[], object]) -> None:
        self.inner = inner
        self.raised: list[BaseException] = []

    def _reenter(self, *_: object) -> bool:
        try:
            self.inner()
        except BaseException as error:  # recorded for the test to check
            self.raised.append(error)
        return True  # "already paused that long": the outer section ends at once

    __lt__ = __le__ = __gt__ = __ge__ = _reenter

    def __add__(self, other: object) -> Reentering:
        return self


def test_policy_refuses_reentry_inside_its_pause() -> None:
    policy = _policy()
    inner_policy_call = lambda: policy.pause(60)  # noqa: E731
    reading = Reentering(inner_policy_call)

    class Clock:
        def now(self) -> Reentering:
            return reading

    policy._clock = Clock()  # type: ignore[assignment]
    policy._until = 0.0
    policy.pause(5)
    assert len(reading.raised) == 1
    assert isinstance(reading.raised[0], allotment.ReentrantCall)
    _assert_free(policy._lock)


def test_lock_order_check_reentered_on_its_thread_records_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    graph = _lock_order._graph
    outer_forget = _lock_order._OrderGraph.forget_dead
    checks: list[str] = []

    def forget_dead(self: Any) -> None:
        checks.append("inside")
        if len(checks) == 1:
            # A finalizer or signal handler acquiring inside the outer check's section: the
            # nested check must not run on the graph the outer one is changing.
            _lock_order._add_edges([], None, 1)
        outer_forget(self)

    monkeypatch.setattr(_lock_order._OrderGraph, "forget_dead", forget_dead)
    _lock_order._add_edges([], None, 1)
    assert checks == ["inside"]
    _assert_free(graph.lock)
