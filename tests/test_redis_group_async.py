"""``acquire_all_async`` of parts on one Redis server in one round trip (``redis/_group.py``)
on the task's loop, its cancellation at each await point, a group's synchronous release on a
loop's thread, and the bound on a group call when the server cannot be reached."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest

import allotment
from aio_support import run, until
from allotment.redis import RedisBackend, _backend
from redis_support import RedisServer, counting_round_trips
from support import wait_until


def _counting_async(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The operations of the round trips made on loops' clients, in order."""
    ran: list[str] = []
    original = RedisBackend.run_script_async

    async def counted(
        self: RedisBackend, script: str, keys: Sequence[str], args: Sequence[object], name: str
    ) -> Any:
        ran.append(str(args[0]))
        return await original(self, script, keys, args, name)

    monkeypatch.setattr(RedisBackend, "run_script_async", counted)
    return ran


def _available(backend: RedisBackend, name: str) -> int:
    return int(backend.client.hget(f"allotment:{{{name}}}:cfg", "avail") or -1)


@pytest.fixture
def parts(redis_backend: RedisBackend) -> tuple[Any, Any, Any]:
    """Two managers and a limiter on one backend (a unit of rate a minute: a rate spent and
    not refunded shows)."""
    pool = allotment.ResourceManager(2, name="g-pool", backend=redis_backend, rank=1)
    other = allotment.ResourceManager(2, name="g-other", backend=redis_backend, rank=2)
    api = allotment.RateLimiter(1, per=60, name="g-api", backend=redis_backend)
    return pool, other, api


def _all_back(backend: RedisBackend, api: Any) -> bool:
    """Everything given back: every unit on the server, no lease held or release pending
    here, the rate refunded."""
    return (
        _available(backend, "g-pool") == 2
        and _available(backend, "g-other") == 2
        and not backend._held
        and not backend._retries
        and not backend._reclaims
        and api.statistics().available == 1
    )


def test_acquire_all_async_is_one_round_trip_to_take_and_one_to_release(
    redis_backend: RedisBackend,
    parts: tuple[Any, Any, Any],
    blocking_calls: list[object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both forms, on the loop's client, with rising fencing tokens and renewed leases."""
    pool, other, api = parts
    fast = allotment.RateLimiter(1000, per=1, name="g-fast", backend=redis_backend)
    ran = _counting_async(monkeypatch)
    tokens: list[tuple[int, int]] = []

    async def main() -> None:
        for _ in range(3):
            async with allotment.acquire_all_async([(other, 2), (pool, 1), (fast, 1)]) as group:
                first, second = group
                assert (first.amounts, second.amounts) == (2, 1)  # in the requests' order
                assert group.rates[0].cost == 1
                assert len(redis_backend._held) == 2  # the keeper renews both
                assert first.fencing_token is not None
                assert second.fencing_token is not None
                tokens.append((first.fencing_token, second.fencing_token))
            assert group.released
        group = await allotment.acquire_all_async([(pool, 2), (other, 1)])
        await group.release_async()

    run(main)
    assert ran == ["take-all", "release-all"] * 4
    for index in (0, 1):
        column = [pair[index] for pair in tokens]
        assert column == sorted(column)
        assert len(set(column)) == 3
    assert _all_back(redis_backend, api)


def test_a_part_that_cannot_be_granted_now_takes_the_general_path_all_or_nothing(
    redis_backend: RedisBackend, parts: tuple[Any, Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The script writes nothing unless every part can be granted: a full manager, or a
    limiter with no rate left, leaves the others untouched, and the general path decides
    (a timeout here)."""
    pool, other, api = parts
    ran = _counting_async(monkeypatch)
    holder = other.acquire(2)

    async def main() -> None:
        with pytest.raises(allotment.AcquireTimeout) as raised:
            await allotment.acquire_all_async([(pool, 1), (other, 1), (api, 1)], timeout=0.05)
        assert raised.value.manager is other

    run(main)
    assert ran[0] == "take-all"
    assert "release-all" not in ran
    holder.release()
    assert api.try_acquire(1)  # the rate was never spent; now it is

    async def no_rate() -> None:
        with pytest.raises(allotment.AcquireTimeout):
            await allotment.acquire_all_async([(pool, 1), (other, 1), (api, 1)], timeout=0.05)

    run(no_rate)
    assert _available(redis_backend, "g-pool") == 2
    assert _available(redis_backend, "g-other") == 2
    assert not redis_backend._held


def test_a_queue_ahead_is_kept_first(redis_backend: RedisBackend, redis_client: Any) -> None:
    """A group that fits while someone is queued is not granted ahead of them: the script
    refuses it, and the general path queues the task behind, granted after."""
    pool = allotment.ResourceManager(3, name="afifo", backend=redis_backend, rank=1)
    other = allotment.ResourceManager(3, name="afifo-other", backend=redis_backend, rank=2)
    holder = pool.acquire(2)
    order: list[str] = []

    def first() -> None:
        with pool.acquire(2, timeout=30):
            order.append("first")

    waiter = threading.Thread(target=first)
    waiter.start()

    async def main() -> None:
        await until(lambda: redis_client.llen("allotment:{afifo}:queue") == 1, "first queued")
        task = asyncio.create_task(group())
        await until(lambda: redis_client.llen("allotment:{afifo}:queue") == 2, "group queued")
        assert order == []
        holder.release()  # from the loop's thread: a task sends it
        await task

    async def group() -> None:
        async with allotment.acquire_all_async([(pool, 1), (other, 1)], timeout=30):
            order.append("group")

    try:
        run(main)
    finally:
        holder.release()
        waiter.join(30)
    assert order == ["first", "group"]


def _holding_the_take(
    monkeypatch: pytest.MonkeyPatch, go: asyncio.Event | None
) -> tuple[list[tuple[Sequence[str], Sequence[object]]], list[bool]]:
    """The take-all held in flight until ``go`` is set (``sent``: its keys and arguments;
    ``cut``: the round trip itself was cancelled before it went out)."""
    sent: list[tuple[Sequence[str], Sequence[object]]] = []
    cut: list[bool] = []
    original = RedisBackend.run_script_async

    async def held(
        self: RedisBackend, script: str, keys: Sequence[str], args: Sequence[object], name: str
    ) -> Any:
        if args[0] == "take-all" and not sent:
            sent.append((keys, args))
            try:
                await (go or asyncio.Event()).wait()
            except asyncio.CancelledError:
                cut.append(True)
                raise
        return await original(self, script, keys, args, name)

    monkeypatch.setattr(RedisBackend, "run_script_async", held)
    return sent, cut


@pytest.mark.parametrize("grants", [True, False], ids=["would-grant", "would-refuse"])
def test_a_task_cancelled_while_its_take_is_in_flight_leaks_nothing(
    redis_backend: RedisBackend,
    parts: tuple[Any, Any, Any],
    monkeypatch: pytest.MonkeyPatch,
    *,
    grants: bool,
) -> None:
    """Cancelled after the take-all went out: the take may still grant on the server, so
    its answer is awaited (not by the cancelled task) and whatever it granted is given
    back, the rate refunded. A release by id sent at the cancellation, on another
    connection, could reach the server before the take (here: the take runs only after
    the cancellation was handled, as a slow network would deliver it)."""
    pool, other, api = parts
    holder = None if grants else other.acquire(2)

    async def main() -> None:
        go = asyncio.Event()
        sent, cut = _holding_the_take(monkeypatch, go)
        task = asyncio.create_task(allotment.acquire_all_async([(pool, 1), (other, 1), (api, 1)]))
        await until(lambda: bool(sent), "the take is in flight")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        if cut:  # the take was abandoned: the server runs it all the same, later
            await until(lambda: not _backend._on_loops, "what the cancellation sent, done")
            keys, args = sent[0]
            redis_backend.client.evalsha(redis_backend.group_script.sha, len(keys), *keys, *args)  # type: ignore[arg-type]
        go.set()
        await until(lambda: _available(redis_backend, "g-pool") == 2, "the pool back")
        await until(lambda: not _backend._on_loops, "what it sent, done")

    run(main)
    if holder is not None:
        holder.release()
    wait_until(lambda: _all_back(redis_backend, api), "everything given back")


def test_a_task_cancelled_as_its_reply_arrives_gives_everything_back(
    redis_backend: RedisBackend, parts: tuple[Any, Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grant arrived, and the task was cancelled before it resumed: the grant is given
    back (one release-all, from a thread: the loop may be shutting down), the rate
    refunded, no lease left to the garbage collector."""
    pool, other, api = parts
    victim: list[asyncio.Task[Any]] = []
    original = RedisBackend.run_script_async
    ran: list[str] = []

    async def cancelled_on_arrival(
        self: RedisBackend, script: str, keys: Sequence[str], args: Sequence[object], name: str
    ) -> Any:
        ran.append(str(args[0]))
        reply = await original(self, script, keys, args, name)
        if args[0] == "take-all":
            victim[0].cancel()
        return reply

    monkeypatch.setattr(RedisBackend, "run_script_async", cancelled_on_arrival)

    async def main() -> None:
        task = asyncio.create_task(allotment.acquire_all_async([(pool, 1), (other, 1), (api, 1)]))
        victim.append(task)
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: _available(redis_backend, "g-other") == 2, "given back")

    run(main)
    wait_until(lambda: _all_back(redis_backend, api), "everything given back")
    assert ran == ["take-all"]


def test_a_loop_that_ends_with_a_take_in_flight_leaks_nothing(
    redis_backend: RedisBackend, parts: tuple[Any, Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``asyncio.run`` returning cancels every task, the take's own round trip too: it may
    still run on the server (here it does, after), and the keeper releases its ids (held
    back here until the take ran)."""
    pool, other, api = parts
    sent, cut = _holding_the_take(monkeypatch, None)
    ran = threading.Event()
    retry = RedisBackend._retry_releases

    def after_the_take(self: RedisBackend, now: float) -> None:
        if ran.is_set():
            retry(self, now)

    monkeypatch.setattr(RedisBackend, "_retry_releases", after_the_take)

    async def main() -> None:
        task = asyncio.create_task(allotment.acquire_all_async([(pool, 1), (other, 1)]))
        await until(lambda: bool(sent), "the take is in flight")
        assert not task.done()

    run(main)
    assert cut == [True]
    keys, args = sent[0]
    reply = redis_backend.client.evalsha(redis_backend.group_script.sha, len(keys), *keys, *args)  # type: ignore[arg-type]
    assert int(reply[0]) == 1  # granted to nobody
    assert _available(redis_backend, "g-pool") == 1
    ran.set()
    wait_until(lambda: _all_back(redis_backend, api), "everything given back")


@pytest.mark.parametrize("after", range(12))
def test_a_cancellation_at_each_await_point(
    redis_backend: RedisBackend, parts: tuple[Any, Any, Any], after: int
) -> None:
    """Cancelled after ``after`` turns of the loop (every await point of the take, the
    fall-back and the release, as the sweep goes on): whatever the outcome, nothing is
    left held and the rate is spent only by a group that was granted and used."""
    pool, other, api = parts
    outcome: list[str] = []

    async def use() -> None:
        async with allotment.acquire_all_async([(pool, 1), (other, 1), (api, 1)]) as group:
            outcome.append("granted")
            assert group.refund()

    async def main() -> None:
        task = asyncio.create_task(use())
        for _ in range(after):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            outcome.append("cancelled")
        # A take in flight goes on after its caller's cancellation: its answer is applied,
        # and what it granted given back whole, rate included, once it arrives. Here the loop
        # waits for it (a loop that ends first cuts the round trip short, and then the rate
        # may stay spent, stricter: the loop-ending test covers that).
        await until(lambda: len(asyncio.all_tasks()) == 1, "the take's round trip is done")

    run(main)
    assert outcome in (["cancelled"], ["granted"], ["granted", "cancelled"])
    wait_until(lambda: _all_back(redis_backend, api), "everything given back")


def test_a_sync_group_release_in_a_task_is_one_round_trip_on_the_loop(
    redis_backend: RedisBackend,
    parts: tuple[Any, Any, Any],
    blocking_calls: list[object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``group.release()`` (and a plain ``with``) in a task: released here at once, one
    release-all task on the loop's client (not one per lease), nothing blocking."""
    pool, other, api = parts
    ran = _counting_async(monkeypatch)

    async def main() -> None:
        group = await allotment.acquire_all_async([(pool, 1), (other, 2)])
        group.release()
        assert group.released
        group.release()  # idempotent: nothing more sent
        await until(lambda: _available(redis_backend, "g-other") == 2, "its reply applied")
        with await allotment.acquire_all_async([(pool, 2), (other, 1)]):
            pass
        await until(lambda: _available(redis_backend, "g-pool") == 2, "back again")

    run(main)
    assert ran == ["take-all", "release-all"] * 2
    assert _all_back(redis_backend, api)


def test_a_group_released_as_its_loop_ends_still_reaches_the_server(
    redis_backend: RedisBackend, parts: tuple[Any, Any, Any]
) -> None:
    """The release task is cancelled before it starts (the loop shuts down): a thread
    sends it instead, as a repeat (no ``LeaseLost`` for what the task may have sent)."""
    pool, other, api = parts

    async def main() -> None:
        group = await allotment.acquire_all_async([(pool, 1), (other, 1)])
        group.release()  # main returns at once: the task is cancelled before it runs

    run(main)
    wait_until(lambda: _all_back(redis_backend, api), "released from a thread")


@pytest.mark.parametrize("failure", ["stalled", "killed"])
def test_an_unreachable_server_ends_the_group_call_after_one_round_trip(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """Stalled (SIGSTOP: a reply never comes, each round trip waits ``timeout``) or killed:
    the group call raises ``BackendUnavailable`` naming ``acquire_all`` after its one
    script, instead of waiting out a second round trip on the general path; threads and
    tasks alike. After the server is back, the keeper released what the script may have
    taken, and new groups are granted with higher fencing tokens."""
    client = server.client()
    backend = RedisBackend(client, timeout=0.2)
    try:
        pool = allotment.ResourceManager(2, name="dead", backend=backend, rank=1)
        other = allotment.ResourceManager(2, name="dead-other", backend=backend, rank=2)
        with allotment.acquire_all([(pool, 1), (other, 1)]) as group:
            before = group[0].fencing_token
        assert before is not None
        ran = counting_round_trips(monkeypatch)
        ran_async = _counting_async(monkeypatch)
        server.pause() if failure == "stalled" else server.kill()
        with pytest.raises(allotment.BackendUnavailable, match=r"^acquire_all on 'dead'"):
            allotment.acquire_all([(pool, 1), (other, 1)])
        assert ran == ["take-all"]

        async def main() -> None:
            with pytest.raises(allotment.BackendUnavailable, match=r"^acquire_all on 'dead'"):
                await allotment.acquire_all_async([(pool, 1), (other, 1)])

        run(main)
        assert ran_async == ["take-all"]
        monkeypatch.undo()
        server.resume() if failure == "stalled" else server.start()
        wait_until(lambda: not backend._retries, "the keeper released what the takes did")
        with allotment.acquire_all([(pool, 2), (other, 2)], timeout=30) as group:
            assert group[0].fencing_token > before  # type: ignore[operator]
    finally:
        backend.close()


def test_only_allowing_limiters_are_granted_by_an_unreachable_server(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Limiters alone, each ``on_unavailable="allow"``: granted, after the one script."""
    backend = RedisBackend(server.client(), timeout=0.2)
    try:
        api = allotment.RateLimiter(10, per=1, name="api", backend=backend, on_unavailable="allow")
        db = allotment.RateLimiter(10, per=1, name="db", backend=backend, on_unavailable="allow")
        strict = allotment.RateLimiter(10, per=1, name="strict", backend=backend)
        ran = counting_round_trips(monkeypatch)
        server.pause()
        group = allotment.acquire_all([(api, 1), (db, 2)])
        assert [grant.cost for grant in group.rates] == [1, 2]
        assert ran == ["take-all"]
        with pytest.raises(allotment.BackendUnavailable):
            allotment.acquire_all([(api, 1), (strict, 1)])
        assert ran == ["take-all"] * 2

        async def main() -> None:
            group = await allotment.acquire_all_async([(api, 1), (db, 1)])
            assert [grant.cost for grant in group.rates] == [1, 1]

        run(main)
    finally:
        server.resume()
        backend.close()
