"""Benchmark: how long an event loop stops while the Redis server stalls, and round trips per
call (issue 18).

    python benchmarks/redis_stall.py            # about ten seconds

Starts a private ``redis-server`` (no persistence, a unix socket in a temporary directory).

*Heartbeat gap*: on one loop, 8 tasks each repeat ``async with manager.acquire_async(1):
await limiter.acquire_async()`` (a manager of 3, a limiter of 1000/s, holds of 2 ms) while a
heartbeat task sleeps 5 ms at a time and records the longest gap between its beats. A
second workload makes the synchronous calls of tasks: ``lease.release()``,
``limiter.charge(1)``, ``acquire_all_async`` of the manager and the limiter then
``group.release()``, and a keyed limiter's ``acquire_async``. Midway,
the server is stopped (SIGSTOP) for 400 ms, then continued. Run once with a ``redis.Redis``
passed to the backend and once with a ``redis.asyncio.Redis``: the backend makes its own
per-loop client either way.

*Round trips*: the scripts run (sync and async counted together) by one uncontended
acquire + release pair of each kind. Nothing here is asserted: the figures are reported.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

import allotment
from allotment.redis import RedisBackend

_SOCKET = "redis.sock"


def _start(directory: str) -> subprocess.Popen[bytes]:
    path = os.path.join(directory, _SOCKET)
    process = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", path, "--unixsocketperm", "700",
         "--save", "", "--appendonly", "no", "--dir", directory, "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(unix_socket_path=path)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    client.close()
    return process


async def _heartbeat_gap(
    backend: RedisBackend, server: subprocess.Popen[bytes], workload: str
) -> float:
    pool = allotment.ResourceManager(3, name=f"stall:cap:{workload}", backend=backend)
    api = allotment.RateLimiter(1000, per=1, name=f"stall:api:{workload}", backend=backend)
    keyed = allotment.KeyedRateLimiter(1000, per=1, name=f"stall:keyed:{workload}", backend=backend)
    stop = asyncio.Event()
    longest = 0.0

    async def heartbeat() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now

    async def work() -> None:
        while not stop.is_set():
            async with pool.acquire_async(1):
                await api.acquire_async()
                await asyncio.sleep(0.002)

    async def sync_calls_in_tasks(index: int) -> None:
        # The calls a task makes without awaiting them (a lease's release, a charge, what
        # an async HTTP client's hooks do), acquire_all_async and a keyed limiter.
        while not stop.is_set():
            lease = await pool.acquire_async(1)
            api.charge(1)
            await asyncio.sleep(0.002)
            lease.release()
            group = await allotment.acquire_all_async([(pool, 1), (api, 1)])
            await keyed.acquire_async(index % 3)
            group.release()

    beating = asyncio.create_task(heartbeat())
    if workload == "async forms":
        workers = [asyncio.create_task(work()) for _ in range(8)]
    else:
        workers = [asyncio.create_task(sync_calls_in_tasks(index)) for index in range(8)]
    await asyncio.sleep(0.5)
    server.send_signal(signal.SIGSTOP)
    await asyncio.sleep(0.4)
    server.send_signal(signal.SIGCONT)
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(beating, *workers)
    return longest


def _count_round_trips() -> tuple[list[int], Any]:
    counted = [0]
    sync_original = RedisBackend.run_script
    async_original = RedisBackend.run_script_async

    def run_script(self: RedisBackend, *args: Any) -> Any:
        counted[0] += 1
        return sync_original(self, *args)

    async def run_script_async(self: RedisBackend, *args: Any) -> Any:
        counted[0] += 1
        return await async_original(self, *args)

    RedisBackend.run_script = run_script  # type: ignore[method-assign, assignment]
    RedisBackend.run_script_async = run_script_async  # type: ignore[method-assign, assignment]

    def restore() -> None:
        RedisBackend.run_script = sync_original  # type: ignore[method-assign]
        RedisBackend.run_script_async = async_original  # type: ignore[method-assign]

    return counted, restore


def _round_trips(backend: RedisBackend) -> list[tuple[str, int]]:
    pool = allotment.ResourceManager(3, name="trips:cap", backend=backend)
    api = allotment.RateLimiter(1000, per=1, name="trips:api", backend=backend)
    counted, restore = _count_round_trips()
    rows: list[tuple[str, int]] = []

    def measure(what: str, call: Any) -> None:
        counted[0] = 0
        call()
        rows.append((what, counted[0]))

    async def in_task(body: Any) -> None:
        await body()

    pool.acquire(1).release()  # connections made and scripts loaded before counting
    try:
        measure("with pool.acquire(1)", lambda: pool.acquire(1).release())
        measure("pool.try_acquire(1), then lease.release()", lambda: _try_pair(pool))
        measure("api.acquire()", api.acquire)
        measure("api.try_acquire()", api.try_acquire)

        async def async_pair() -> None:
            async with pool.acquire_async(1):
                pass

        measure("async with pool.acquire_async(1)", lambda: asyncio.run(in_task(async_pair)))

        def sync_all() -> None:
            with allotment.acquire_all([(pool, 1), (api, 1)]):
                pass

        measure("with acquire_all([(pool, 1), (api, 1)])", sync_all)

        def managers_only() -> None:
            other = allotment.ResourceManager(3, name="trips:other", backend=backend, rank=5)
            counted[0] = 0
            with allotment.acquire_all([(pool, 1), (other, 1)]):
                pass
            rows.append(("with acquire_all([(pool, 1), (other, 1)])", counted[0]))

        managers_only()
        other = allotment.ResourceManager(3, name="trips:other", backend=backend, rank=5)

        def three_parts() -> None:
            with allotment.acquire_all([(pool, 1), (other, 1), (api, 1)]):
                pass

        measure("with acquire_all([(pool, 1), (other, 1), (api, 1)])", three_parts)
        for requests, label in (
            ([(pool, 1), (api, 1)], "async with acquire_all_async([(pool, 1), (api, 1)])"),
            ([(pool, 1), (other, 1)], "async with acquire_all_async([(pool, 1), (other, 1)])"),
        ):

            async def group_async(requests: Any = requests) -> None:
                async with allotment.acquire_all_async(requests):
                    pass

            measure(label, lambda: asyncio.run(in_task(group_async)))
    finally:
        restore()
    return rows


def _try_pair(pool: allotment.ResourceManager[int]) -> None:
    lease = pool.try_acquire(1)
    if lease is None:
        raise RuntimeError("an uncontended try_acquire was refused")
    lease.release()


def main(argv: Sequence[str]) -> None:
    del argv
    with tempfile.TemporaryDirectory() as directory:
        server = _start(directory)
        path = str(Path(directory) / _SOCKET)
        try:
            print(
                "| tasks' calls | client passed | longest heartbeat gap "
                "(5 ms beats, 400 ms SIGSTOP) |"
            )
            print("| --- | --- | --- |")
            for workload in ("async forms", "sync calls in tasks"):
                for kind in ("redis.Redis", "redis.asyncio.Redis"):
                    given: Any = (
                        redis.Redis(unix_socket_path=path)
                        if kind == "redis.Redis"
                        else redis.asyncio.Redis(unix_socket_path=path)
                    )
                    backend = RedisBackend(given, timeout=2.0, lease_ttl=30)
                    try:
                        gap = asyncio.run(_heartbeat_gap(backend, server, workload))
                    finally:
                        backend.close()
                    print(f"| {workload} | `{kind}` | {gap * 1000:.1f} ms |")
            print()
            backend = RedisBackend(redis.Redis(unix_socket_path=path), lease_ttl=30)
            try:
                print("| call (uncontended) | scripts run |")
                print("| --- | --- |")
                for what, trips in _round_trips(backend):
                    print(f"| `{what}` | {trips} |")
            finally:
                backend.close()
        finally:
            server.send_signal(signal.SIGCONT)
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main(sys.argv[1:])
