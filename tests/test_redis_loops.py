"""Tasks' round trips run on their loop's own ``redis.asyncio`` client: a stalled server
stalls only the tasks waiting for it, never the loop; each loop's client has the backend's
connection settings and is closed with its loop."""

from __future__ import annotations

import asyncio
import gc

import pytest
import redis
import redis.asyncio

import allotment
from aio_support import run, until
from allotment.redis import RedisBackend
from redis_support import RedisServer


@pytest.mark.timeout(120)
@pytest.mark.parametrize("passed", ["redis.Redis", "redis.asyncio.Redis"])
def test_a_stalled_server_stalls_only_the_tasks_waiting_for_it(
    server: RedisServer, passed: str
) -> None:
    """While the server is stopped (SIGSTOP), an ``acquire_async``, the exit of an
    ``async with`` and a limiter's ``acquire_async`` each wait for it, and a heartbeat task
    on the same loop goes on beating; once the server runs again, they all complete.
    Whichever client the user passed: the backend's loop client is its own."""
    given: redis.Redis | redis.asyncio.Redis = (
        server.client()
        if passed == "redis.Redis"
        else redis.asyncio.Redis(unix_socket_path=server.path)
    )
    backend = RedisBackend(given, lease_ttl=90, timeout=30)
    try:
        pool = allotment.ResourceManager(3, name="stalled", backend=backend)
        api = allotment.RateLimiter(1000, per=1, name="stalled", backend=backend)

        async def main() -> None:
            beats = 0

            async def heartbeat() -> None:
                nonlocal beats
                while True:
                    beats += 1
                    await asyncio.sleep(0.005)

            async def hold_across_the_stall(inside: asyncio.Event) -> None:
                async with pool.acquire_async(1) as lease:
                    assert lease.fencing_token is not None
                    inside.set()
                    await paused.wait()
                # left while the server is stopped

            async def acquire() -> None:
                lease = await pool.acquire_async(1)
                await lease.release_async()

            beating = asyncio.create_task(heartbeat())
            paused = asyncio.Event()
            inside = asyncio.Event()
            holder = asyncio.create_task(hold_across_the_stall(inside))
            await inside.wait()
            server.pause()
            paused.set()
            stalled = [
                holder,
                asyncio.create_task(acquire()),
                asyncio.create_task(api.acquire_async()),
            ]
            before = beats
            await until(lambda: beats >= before + 40, "the heartbeat beats during the stall")
            assert not any(task.done() for task in stalled)  # they wait for the server
            server.resume()
            await asyncio.wait_for(asyncio.gather(*stalled), 60)
            beating.cancel()
            with pytest.raises(asyncio.CancelledError):
                await beating

        run(main)
        assert pool.statistics().available == 3
    finally:
        server.resume()
        backend.close()


def test_each_loop_has_its_own_client_with_the_backends_settings(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    user_client = redis.Redis(unix_socket_path=redis_server.path, db=3)
    backend = RedisBackend(user_client, timeout=0.75)
    seen: list[object] = []
    try:
        pool = allotment.ResourceManager(1, name="per-loop", backend=backend)

        async def main() -> None:
            async with pool.acquire_async(1):
                made = backend.loop_clients.for_running_loop()
                seen.append(made)
                kwargs = made.client.connection_pool.connection_kwargs
                assert kwargs["db"] == 3
                assert kwargs["path"] == redis_server.path
                assert kwargs["socket_timeout"] == 0.75
                assert made.client.connection_pool.connection_class is (
                    redis.asyncio.UnixDomainSocketConnection
                )

        run(main)
        run(main)
        assert len(seen) == 2
        assert seen[0] is not seen[1]  # one client per loop
        assert backend.loop_clients._clients == {}  # each closed with its loop
        assert redis_client.exists("allotment:{per-loop}:cfg") == 0  # db 0 untouched
    finally:
        backend.close()
        user_client.close()


def test_a_loop_closed_without_shutting_down_leaks_nothing(redis_backend: RedisBackend) -> None:
    pool = allotment.ResourceManager(1, name="closed-loop", backend=redis_backend)

    async def use() -> None:
        async with pool.acquire_async(1):
            pass

    loop = asyncio.new_event_loop()
    loop.run_until_complete(use())
    loop.close()  # no shutdown_asyncgens: the client's closer never ran
    assert len(redis_backend.loop_clients._clients) == 1
    run(use)  # another loop's first use closes the closed loop's client
    assert redis_backend.loop_clients._clients == {}
    del loop
    gc.collect()  # an unclosed socket or transport would warn here (an error)


def test_an_observed_task_makes_its_round_trips_on_its_loop(
    redis_backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an observer installed a task takes the observed path: it must still enter and
    give back through the loop's client, never the blocking one."""
    from allotment.redis._pool import RedisPool

    def blocking(*args: object) -> bool:
        raise AssertionError("a blocking round trip on the loop's thread")

    pool = allotment.ResourceManager(1, name="observed-task", backend=redis_backend)

    async def main() -> None:
        async with pool.acquire_async(1):
            pass
        holder = await pool.acquire_async(1)
        with pytest.raises(allotment.AcquireTimeout):
            await pool.acquire_async(1, timeout=0.05)
        await holder.release_async()

    monkeypatch.setattr(RedisPool, "enter", blocking)
    with allotment.Recorder() as recorder:
        run(main)
    kinds = [event.kind for event in recorder.events]
    assert kinds.count("granted") == 2
    assert "timed_out" in kinds
