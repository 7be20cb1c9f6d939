"""The Lua scripts against the Python reference: the same random operation sequences, run on
both, on a clock the test holds (the scripts' ``TIME`` is replaced by a key the test sets).

The GCRA script must decide as :class:`Gcra` does (grants, plans, undo), the window script as
:class:`SlidingWindow` does, and the manager script as :class:`MemoryPool` (strict FIFO,
hand-off, withdrawal, partial release, resize, expiry of holders); every grant sequence must
also keep its limit's bound, checked directly."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterator
from typing import Any

import hypothesis.strategies as st
import pytest
import redis
from hypothesis import given, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from allotment._core import (
    GRANTED,
    PENDING,
    FifoPolicy,
    Gcra,
    MemoryPool,
    NamedForm,
    SlidingWindow,
    Ticket,
    Units,
)
from allotment.redis import _scripts
from redis_support import RedisServer

_SERVER_TIME = """local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end"""
_TEST_TIME = """local function now_us()
  return tonumber(redis.call('GET', 'test:now'))
end"""
START = 1_800_000_000_000_000  # a server clock in 2027, in microseconds: near the real scale


def on_test_clock(script: str) -> str:
    assert _SERVER_TIME in script, "the scripts' clock function changed: update this test"
    return script.replace(_SERVER_TIME, _TEST_TIME)


@pytest.fixture(scope="module")
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """One client for the module: each example empties the server first."""
    with redis_server.module_client() as client:
        yield client


def _bound_holds(grants: list[tuple[int, int]], interval: int, burst: int) -> None:
    """GCRA's bound, checked over every interval between two grants."""
    grants = sorted(grants)
    for i, (start, _) in enumerate(grants):
        units = 0
        for at, cost in grants[i:]:
            units += cost
            assert units * interval <= burst * interval + (at - start), (start, at, units)


@settings(max_examples=60)
@given(
    interval=st.integers(1, 5_000_000),
    burst=st.integers(1, 8),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["take", "reserve", "undo", "charge"]),
            st.integers(1, 8),
            st.integers(0, 3_000_000),
        ),
        max_size=40,
    ),
)
def test_gcra_script_decides_as_the_reference(
    client: redis.Redis, interval: int, burst: int, steps: list[tuple[str, int, int]]
) -> None:
    client.flushall()
    script = client.register_script(on_test_clock(_scripts.GCRA))
    now = START
    reference = Gcra(interval, burst, now)
    head: list[Any] = ["take", f"{interval},{burst}", interval, burst]
    grants: list[tuple[int, int]] = []
    last_token: tuple[Any, ...] | None = None
    for operation, drawn, elapsed in steps:
        now += elapsed
        client.set("test:now", now)
        cost = min(drawn, burst)
        if operation in ("take", "reserve"):
            longest = 0 if operation == "take" else -1
            code, wait, before, after = script(keys=["gcra"], args=[*head, cost, longest])
            due = reference.plan(now, [(cost, None, False)])[0]
            if operation == "take" and due > now:
                assert code == -1
                assert int(wait) == due - now
                continue
            assert int(wait) == due - now
            assert code == (1 if due == now else 0)
            token = reference.record(due, cost)
            assert int(after) == reference.tat
            grants.append((due, cost))
            last_token = (before, after, token, due, cost)
        elif operation == "undo" and last_token is not None:
            before, after, token, due, undone_cost = last_token
            undone = script(keys=["gcra"], args=["undo", *head[1:], before, after])
            assert bool(undone) == reference.undo(token)
            if undone:
                grants.remove((due, undone_cost))
            last_token = None
        elif operation == "charge":
            script(keys=["gcra"], args=["charge", *head[1:], cost])
            reference.record(now, cost)
            last_token = None
    _bound_holds(list(grants), interval, burst)


def _window_holds(grants: list[tuple[int, int]], limit: int, window: int) -> None:
    grants = sorted(grants)
    for i, (start, _) in enumerate(grants):
        inside = sum(cost for at, cost in grants[i:] if at - start < window)
        assert inside <= limit, (start, inside)


@settings(max_examples=60)
@given(
    limit=st.integers(1, 10),
    window=st.integers(1, 3_000_000),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["take", "take", "reserve", "undo"]),
            st.integers(1, 10),
            st.integers(0, 1_500_000),
        ),
        max_size=40,
    ),
)
def test_window_script_keeps_the_window(
    client: redis.Redis, limit: int, window: int, steps: list[tuple[str, int, int]]
) -> None:
    client.flushall()
    script = client.register_script(on_test_clock(_scripts.WINDOW))
    keys = ["wcfg", "wlog"]
    settings_args: list[Any] = [f"{limit},{window}", limit, window]
    now = START
    reference = SlidingWindow(limit, window)
    reserved_until = now
    grants: list[tuple[int, int, bytes]] = []
    for operation, drawn, elapsed in steps:
        now += elapsed
        client.set("test:now", now)
        cost = min(drawn, limit)
        if operation == "take":
            code, wait, member = script(keys=keys, args=["take", *settings_args, cost, 0])
            if now >= reserved_until:
                # No reservation ahead: the script decides as the reference does, which
                # holds every grant made so far (reservations whose time has come included).
                reference = _replay(limit, window, grants, now)
                admitted = reference.admits(now, cost)
                assert code == (1 if admitted else -1), (now, cost)
                if admitted:
                    reference.record(now, cost)
            if code == 1:
                grants.append((now, cost, member))
        elif operation == "reserve":
            code, wait, member = script(keys=keys, args=["take", *settings_args, cost, -1])
            at = now + int(wait)
            assert code in (0, 1)
            assert at >= max([g[0] for g in grants], default=now)  # FIFO: after every grant
            grants.append((at, cost, member))
            reserved_until = max(reserved_until, at)
            reference = _replay(limit, window, grants, now)
        elif operation == "undo" and grants:
            member = grants[-1][2]
            if script(keys=keys, args=["undo", *settings_args, member]):
                grants.pop()
                reference = _replay(limit, window, grants, now)
        _window_holds([(at, units) for at, units, _ in grants], limit, window)


def _replay(
    limit: int, window: int, grants: list[tuple[int, int, bytes]], now: int
) -> SlidingWindow:
    """A reference holding the grants up to ``now`` (those after are reservations)."""
    reference = SlidingWindow(limit, window)
    for at, cost, _ in sorted(grants):
        if at <= now:
            reference.record(at, cost)
    return reference


class _Bell:
    def wake(self) -> None:
        pass


class ManagerScriptMatchesMemoryPool(RuleBasedStateMachine):
    """Random arrivals, releases, withdrawals, resizes and expiries, on the script and on a
    :class:`MemoryPool`: the same grants, the same queue, the same availability."""

    LEASE_TTL = 10_000_000
    client: redis.Redis  # set by the test

    def __init__(self) -> None:
        super().__init__()
        self.client.flushall()
        self.now = START
        self.client.set("test:now", self.now)
        self.script = self.client.register_script(on_test_clock(_scripts.MANAGER))
        self.ids = itertools.count(1)
        self.tickets: dict[str, Ticket] = {}
        self.woken: collections.Counter[str] = collections.Counter()

    @initialize(capacity=st.tuples(st.integers(0, 6), st.integers(0, 6)))
    def declare(self, capacity: tuple[int, int]) -> None:
        self.declared = ",".join(map(str, capacity))
        self.form = NamedForm(("gpu", "ram"))
        self.pool = MemoryPool(
            self.form, Units(capacity), Units(capacity), FifoPolicy(), lambda: 0.0, holders={}
        )
        self.call("snapshot")

    def call(self, operation: str, *args: Any) -> Any:
        keys = ["cfg", "holders", "hexp", "queue", "wants", "wexp", "wake"]
        head: list[Any] = ["gpu,ram", self.declared, self.LEASE_TTL, 60_000_000, 600_000]
        return self.script(keys=keys, args=[operation, *head, *args])

    @rule(gpu=st.integers(0, 7), ram=st.integers(0, 7), wait=st.booleans())
    def enter(self, gpu: int, ram: int, wait: bool) -> None:
        units = Units((gpu, ram))
        if not units:
            return
        rid = f"t{next(self.ids)}"
        ticket = Ticket(units, None, None, 0.0)  # type: ignore[arg-type]
        capacity = self.pool.capacity
        assert isinstance(capacity, Units)
        if not units <= capacity:
            with pytest.raises(redis.exceptions.ResponseError, match="ALLOTMENT_CAPACITY"):
                self.call("enter", rid, f"{gpu},{ram}", 1 if wait else 0)
            return
        code, _ = self.call("enter", rid, f"{gpu},{ram}", 1 if wait else 0)
        granted = self.pool.enter(ticket, _Bell if wait else None)
        assert code == (1 if granted else (0 if wait else -1))
        if granted or wait:
            self.tickets[rid] = ticket

    def _live(self, state: object) -> list[str]:
        return [rid for rid, ticket in self.tickets.items() if ticket.state is state]

    @precondition(lambda self: any(t.state is GRANTED for t in self.tickets.values()))
    @rule(data=st.data(), partly=st.booleans())
    def release(self, data: st.DataObject, partly: bool) -> None:
        rid = data.draw(st.sampled_from(self._live(GRANTED)))
        ticket = self.tickets[rid]
        units = ticket.units
        assert isinstance(units, Units)
        part = (
            Units(tuple(data.draw(st.integers(0, count)) for count in units.counts))
            if partly
            else None
        )
        if part is not None and (not part or part == units):
            part = None
        self.call("release", rid, "" if part is None else ",".join(map(str, part.counts)))
        self.pool.release(ticket, part)

    @precondition(lambda self: bool(self.pool.queue))
    @rule(data=st.data())
    def withdraw(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(self._live(PENDING)))
        code, _ = self.call("withdraw", rid, "")
        kept = self.pool.withdraw(self.tickets[rid])
        assert code == (1 if kept else 0)

    @rule(gpu=st.integers(0, 7), ram=st.integers(0, 7))
    def resize(self, gpu: int, ram: int) -> None:
        _, _, version = self.call("snapshot")[:3]
        done, _, _ = self.call("resize", version, f"{gpu},{ram}")
        assert done == 1
        self.pool.resize(lambda current: Units((gpu, ram)))

    @rule()
    def leases_expire(self) -> None:
        """Every holder stops renewing: past the TTL the next call returns their units."""
        self.now += self.LEASE_TTL + 1
        self.client.set("test:now", self.now)
        for rid in self._live(GRANTED):
            self.pool.release(self.tickets[rid], None)
        self.call("snapshot")

    @invariant()
    def same_state(self) -> None:
        if not hasattr(self, "pool"):
            return
        capacity, available, _, holders, waiters = self.call("snapshot")
        pool = self.pool
        assert Units(tuple(map(int, capacity.split(b",")))) == pool.capacity
        assert Units(tuple(map(int, available.split(b",")))) == pool.available
        assert int(waiters) == len(pool.queue)
        assert int(holders) == len(pool.holders or ())
        queue = [rid.decode() for rid in self.client.lrange("queue", 0, -1)]  # type: ignore[union-attr]
        assert queue == [rid for rid, t in self.tickets.items() if t in pool.queue]
        stored: dict[bytes, bytes] = self.client.hgetall("holders")  # type: ignore[assignment]
        held = {key.decode(): value.decode().split("|")[1] for key, value in stored.items()}
        assert held == {
            rid: ",".join(map(str, t.units.counts))  # type: ignore[attr-defined]
            for rid, t in self.tickets.items()
            if t.state is GRANTED
        }


def test_manager_script_matches_the_memory_pool(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ManagerScriptMatchesMemoryPool, "client", client, raising=False)
    ManagerScriptMatchesMemoryPool.TestCase.settings = settings(
        max_examples=60, stateful_step_count=30
    )
    ManagerScriptMatchesMemoryPool.TestCase().runTest()


def _manager_call(script: Any, operation: str, *args: object, ttl: int = 10_000_000) -> Any:
    keys = ["cfg", "holders", "hexp", "queue", "wants", "wexp", "wake"]
    return script(keys=keys, args=[operation, "-", "2", ttl, 60_000_000, 600_000, *args])


def test_a_refusal_after_an_expiry_keeps_the_expired_units(client: redis.Redis) -> None:
    """The expiry is noticed by a call that is then refused: the units it returned stay."""
    client.flushall()
    client.set("test:now", START)
    script = client.register_script(on_test_clock(_scripts.MANAGER))
    assert _manager_call(script, "enter", "a", "2", 0)[0] == 1
    client.set("test:now", START + 10_000_001)  # a's lease has expired
    with pytest.raises(redis.exceptions.ResponseError, match="ALLOTMENT_CAPACITY"):
        _manager_call(script, "enter", "b", "3", 0)
    _, available, _, holders, _ = _manager_call(script, "snapshot")
    assert (available, holders) == (b"2", 0)


def test_a_handed_off_grant_gets_its_waiters_own_ttl(client: redis.Redis) -> None:
    """Processes may run with different lease TTLs: a grant handed to a waiter lasts for the
    waiter's TTL, not the releasing process's."""
    client.flushall()
    client.set("test:now", START)
    script = client.register_script(on_test_clock(_scripts.MANAGER))
    assert _manager_call(script, "enter", "short", "2", 0, ttl=1_000_000)[0] == 1
    assert _manager_call(script, "enter", "long", "2", 1, ttl=100_000_000)[0] == 0
    _manager_call(script, "release", "short", "", ttl=1_000_000)
    client.set("test:now", START + 50_000_000)
    assert _manager_call(script, "snapshot")[3] == 1  # "long" still holds
