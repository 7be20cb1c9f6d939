"""``acquire_all`` of parts on one Redis server in one round trip (``redis/_group.py``): the
group script against a reference, the fall-back that keeps FIFO and the callers' outcomes,
and the release of a group in one round trip."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import hypothesis.strategies as st
import pytest
import redis
from hypothesis import example, given, settings

import allotment
from allotment.redis import RedisBackend, _scripts
from allotment.redis import _pool as redis_pool
from redis_support import RedisServer, counting_round_trips
from test_redis_scripts import START, on_test_clock


@pytest.fixture(scope="module")
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis_server.module_client() as client:
        yield client


def _manager(script: Any, name: str, capacity: int, *args: object) -> Any:
    keys = [f"t:{{{name}}}:{part}" for part in ("cfg", "holders", "hexp", "queue", "wants", "wexp")]
    head = ("-", str(capacity), "10000000", "5000000", "60000")
    return script(keys=[*keys, "t:wake"], args=[args[0], *head, *args[1:]])


def _manager_part(name: str, capacity: int, rid: str, units: int) -> tuple[list[str], list[str]]:
    keys = [f"t:{{{name}}}:{part}" for part in ("cfg", "holders", "hexp", "queue", "wants", "wexp")]
    head = ["-", str(capacity), "10000000", "5000000", "60000"]
    return [*keys, "t:wake"], ["enter", *head, rid, str(units), "0"]


def _state(client: redis.Redis) -> dict[Any, Any]:
    """Every key's value (the test clock aside), to see that a refusal wrote nothing."""
    return {key: client.dump(key) for key in sorted(client.keys("*")) if key != b"test:now"}


_EACH_ONE_REFUSES = [  # the others would grant: the refusal must come before any write
    {"held": 2, "units": 1, "spent": 4},  # the manager is free, the GCRA refuses
    {"held": 0, "units": 1, "window_spent": 4},  # the window refuses last
    {"held": 0, "units": 1, "queued": 2},  # someone is queued (and got the units)
    {"held": 3, "units": 2},  # the manager refuses first
]


def _case(**changes: int) -> dict[str, int]:
    base = {
        "capacity": 3, "held": 0, "queued": 0, "units": 1, "burst": 2, "spent": 0, "cost": 1,
        "window_limit": 2, "window_spent": 0, "window_cost": 1,
    }  # fmt: skip
    return base | changes


def _with_examples(test: Any) -> Any:
    for case in _EACH_ONE_REFUSES:
        test = example(**_case(**case))(test)
    return test


@settings(max_examples=150, deadline=None)
@_with_examples
@given(
    capacity=st.integers(1, 4),
    held=st.integers(0, 4),
    queued=st.integers(0, 4),
    units=st.integers(1, 4),
    burst=st.integers(1, 4),
    spent=st.integers(0, 4),
    cost=st.integers(1, 4),
    window_limit=st.integers(1, 4),
    window_spent=st.integers(0, 4),
    window_cost=st.integers(1, 4),
)
def test_the_group_script_grants_exactly_when_each_part_would_now(
    client: redis.Redis,
    *,
    capacity: int,
    held: int,
    queued: int,
    units: int,
    burst: int,
    spent: int,
    cost: int,
    window_limit: int,
    window_spent: int,
    window_cost: int,
) -> None:
    """The reference: each part's own rule, asked now without queueing (a manager: nobody
    queued and the units available; a GCRA: ``spent + cost <= burst`` at one instant; a
    window: ``spent + cost <= limit``). Granted: each part changed as its own script would;
    refused: nothing written at all."""
    client.flushall()
    client.set("test:now", START)
    manager = client.register_script(on_test_clock(_scripts.MANAGER))
    gcra = client.register_script(on_test_clock(_scripts.GCRA))
    window = client.register_script(on_test_clock(_scripts.WINDOW))
    group = client.register_script(on_test_clock(_scripts.GROUP))
    held = min(held, capacity)
    if held:
        assert _manager(manager, "m", capacity, "enter", "holder", str(held), "0")[0] == 1
    queue_grew = False
    if queued and queued <= capacity:
        code = _manager(manager, "m", capacity, "enter", "queued", str(queued), "1")[0]
        queue_grew = code == 0
    interval = 1_000_000
    gcra_args = [f"{interval},{burst}", str(interval), str(burst)]
    for _ in range(min(spent, burst)):
        assert gcra(keys=["t:{g}:gcra"], args=["take", *gcra_args, "1", "0"])[0] == 1
    window_args = [f"{window_limit},10000000", str(window_limit), "10000000"]
    wkeys = ["t:{w}:wcfg", "t:{w}:wlog"]
    for _ in range(min(window_spent, window_limit)):
        assert window(keys=wkeys, args=["take", *window_args, "1", "0"])[0] == 1
    cost, window_cost = min(cost, burst), min(window_cost, window_limit)
    available = capacity - held - (queued if not queue_grew and queued <= capacity else 0)
    expected = (
        not queue_grew
        and units <= available
        and min(spent, burst) + cost <= burst
        and min(window_spent, window_limit) + window_cost <= window_limit
    )
    mkeys, margs = _manager_part("m", capacity, "group", units)
    before = _state(client)
    reply = group(
        keys=[*mkeys, "t:{g}:gcra", *wkeys],
        args=[
            "take-all",
            f"m:7:{len(margs)},g:1:6,w:2:6",
            *margs,
            "take",
            *gcra_args,
            str(cost),
            "0",
            "take",
            *window_args,
            str(window_cost),
            "0",
        ],
    )
    if not expected:
        assert reply == [0]
        assert _state(client) == before
        return
    assert reply[0] == 1
    assert reply[1][0] == 1
    assert int(reply[1][1]) > 0
    assert reply[2][0] == 1
    assert reply[3][0] == 1
    snapshot = _manager(manager, "m", capacity, "snapshot")
    assert int(snapshot[1]) == available - units
    # The limits spent exactly the costs: what is left is refused by one unit more.
    left = burst - min(spent, burst) - cost
    assert int(gcra(keys=["t:{g}:gcra"], args=["peek", *gcra_args, "1"])[1]) == left
    window_left = window_limit - min(window_spent, window_limit) - window_cost
    assert int(window(keys=wkeys, args=["peek", *window_args, "1"])[1]) == window_left
    # Released together: the manager's units come back.
    release = group(
        keys=mkeys,
        args=["release-all", "m:7:8", "release", *margs[1:6], "group", ""],
    )
    assert release == [1]
    assert int(_manager(manager, "m", capacity, "snapshot")[1]) == available


def test_a_queue_ahead_is_kept_first(redis_backend: RedisBackend, redis_client: Any) -> None:
    """A group that fits while someone is queued is not granted ahead of them (strict FIFO):
    the script refuses it, and the general path queues it behind, to be granted after."""
    pool = allotment.ResourceManager(3, name="fifo", backend=redis_backend, rank=1)
    other = allotment.ResourceManager(3, name="fifo-other", backend=redis_backend, rank=2)
    holder = pool.acquire(2)
    order: list[str] = []
    first_in = threading.Event()

    def first() -> None:
        with pool.acquire(2, timeout=30):
            order.append("first")
            first_in.set()

    waiter = threading.Thread(target=first)
    waiter.start()
    try:
        while not redis_client.llen("allotment:{fifo}:queue"):
            first_in.wait(0.005)
        assert allotment.try_acquire_all([(pool, 1), (other, 1)]) is None  # 1 unit is free
        grouped = threading.Event()

        def group() -> None:
            with allotment.acquire_all([(pool, 1), (other, 1)], timeout=30):
                order.append("group")
                grouped.set()

        later = threading.Thread(target=group)
        later.start()
        while redis_client.llen("allotment:{fifo}:queue") < 2:
            first_in.wait(0.005)
        assert order == []
        holder.release()
        later.join(30)
        waiter.join(30)
        assert order == ["first", "group"]
    finally:
        holder.release()
        waiter.join(30)


def test_fencing_tokens_rise_and_leases_are_renewed(
    redis_backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = allotment.ResourceManager(3, name="tokens", backend=redis_backend, rank=1)
    other = allotment.ResourceManager(3, name="tokens-other", backend=redis_backend, rank=2)
    api = allotment.RateLimiter(1000, per=1, name="tokens", backend=redis_backend)
    ran = counting_round_trips(monkeypatch)
    tokens: list[int] = []
    for _ in range(3):
        with allotment.acquire_all([(other, 2), (pool, 1), (api, 3)]) as group:
            first, second = group
            assert (first.amounts, second.amounts) == (2, 1)  # in the requests' order
            assert group.rates[0].cost == 3
            tokens.append(first.fencing_token)  # type: ignore[arg-type]
            tokens.append(second.fencing_token)  # type: ignore[arg-type]
            held = redis_backend._held
            assert len(held) == 2  # the keeper renews both
        assert group.released
        assert not redis_backend._held
    assert ran == ["take-all", "release-all"] * 3
    assert tokens[::2] == sorted(tokens[::2])
    assert len(set(tokens[::2])) == 3
    assert tokens[1::2] == sorted(tokens[1::2])
    assert len(set(tokens[1::2])) == 3
    assert pool.statistics().available == 3
    assert other.statistics().available == 3


def test_a_refund_is_exact(redis_backend: RedisBackend) -> None:
    pool = allotment.ResourceManager(1, name="refund", backend=redis_backend)
    api = allotment.RateLimiter(1, per=60, name="refund", backend=redis_backend)
    group = allotment.acquire_all([(pool, 1), (api, 1)])
    assert group.refund()
    group.release()
    with allotment.acquire_all([(pool, 1), (api, 1)], timeout=0):
        pass  # the unit of rate was given back: allowed again at once


def test_an_exception_after_the_reply_gives_everything_back(
    redis_backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = allotment.ResourceManager(2, name="cut", backend=redis_backend, rank=1)
    other = allotment.ResourceManager(2, name="cut-other", backend=redis_backend, rank=2)
    calls = 0
    original = redis_pool.RedisPool.group_granted

    def granted(self: Any, ticket: Any, record: Any, token: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt  # the second part's grant, as a signal would
        original(self, ticket, record, token)

    monkeypatch.setattr(redis_pool.RedisPool, "group_granted", granted)
    with pytest.raises(KeyboardInterrupt):
        allotment.acquire_all([(pool, 1), (other, 2)])
    monkeypatch.undo()
    assert pool.statistics().available == 2
    assert other.statistics().available == 2
    assert not redis_backend._held


def test_an_unreachable_server_keeps_on_unavailable(server: RedisServer) -> None:
    """The group falls back: each limiter's ``on_unavailable`` decides as before."""
    backend = RedisBackend(server.client(), timeout=0.2)
    try:
        api = allotment.RateLimiter(10, per=1, name="api", backend=backend, on_unavailable="allow")
        db = allotment.RateLimiter(10, per=1, name="db", backend=backend, on_unavailable="allow")
        pool = allotment.ResourceManager(2, name="dead", backend=backend)
        server.kill()
        group = allotment.acquire_all([(api, 1), (db, 1)])
        assert [grant.cost for grant in group.rates] == [1, 1]
        with pytest.raises(allotment.BackendUnavailable):
            allotment.acquire_all([(pool, 1), (api, 1)])
    finally:
        backend.close()


def test_release_async_is_one_round_trip(
    redis_backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = allotment.ResourceManager(2, name="later", backend=redis_backend, rank=1)
    other = allotment.ResourceManager(2, name="later-other", backend=redis_backend, rank=2)
    group = allotment.acquire_all([(pool, 1), (other, 1)])
    ran: list[str] = []
    original = RedisBackend.run_script_async

    async def run(
        self: RedisBackend, script: str, keys: Sequence[str], args: Sequence[object], name: str
    ) -> Any:
        ran.append(str(args[0]))
        return await original(self, script, keys, args, name)

    monkeypatch.setattr(RedisBackend, "run_script_async", run)
    asyncio.run(group.release_async())
    assert ran == ["release-all"]
    assert group.released
    assert pool.statistics().available == 2
    assert other.statistics().available == 2


def test_a_timeout_is_the_general_paths(redis_backend: RedisBackend) -> None:
    pool = allotment.ResourceManager(1, name="full", backend=redis_backend, rank=1)
    other = allotment.ResourceManager(1, name="full-other", backend=redis_backend, rank=2)
    with other.acquire(1), pytest.raises(allotment.AcquireTimeout) as raised:
        allotment.acquire_all([(pool, 1), (other, 1)], timeout=0.05)
    assert raised.value.manager is other
    assert pool.statistics().available == 1
    assert other.statistics().available == 1


def test_a_lost_lease_is_reported_and_the_others_released(
    redis_backend: RedisBackend, redis_client: Any
) -> None:
    pool = allotment.ResourceManager(2, name="lost", backend=redis_backend, rank=1)
    other = allotment.ResourceManager(2, name="lost-other", backend=redis_backend, rank=2)
    group = allotment.acquire_all([(pool, 1), (other, 1)])
    redis_client.delete("allotment:{lost}:holders")  # as if its lease had expired
    with pytest.raises(allotment.LeaseLost):
        group.release()
    assert group.released
    assert other.statistics().available == 2
    group.release()  # idempotent: nothing more to send, nothing raised
