"""What the processes of the multi-process Redis tests run (importable by a spawned child)."""

from __future__ import annotations

import json
import random
import threading
import time
from multiprocessing.synchronize import Event

import redis

import allotment
from allotment.redis import RedisBackend

__all__ = ["hammer", "hold_forever", "queue_forever", "soak", "take_rate_with_a_skewed_clock"]


def _backend(path: str, lease_ttl: float = 30.0) -> RedisBackend:
    return RedisBackend(redis.Redis(unix_socket_path=path), lease_ttl=lease_ttl)


def _now() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # one clock for every process


def hammer(path: str, name: str, capacity: int, log: str, *, shape: tuple[int, int, int]) -> None:
    """``shape`` is (threads, rounds, seed): each thread takes random amounts ``rounds``
    times; every hold is logged as (start, end, units, token), measured inside the hold, for
    an overlap detector."""
    threads, rounds, seed = shape
    backend = _backend(path)
    pool = allotment.ResourceManager({"gpu": capacity}, name=name, backend=backend)
    holds: list[tuple[int, int, int, int | None]] = []
    errors: list[BaseException] = []

    def work(index: int) -> None:
        chooser = random.Random(seed * 100 + index)
        try:
            for _ in range(rounds):
                units = chooser.randint(1, capacity)
                with pool.acquire({"gpu": units}, timeout=60) as lease:
                    start = _now()
                    time.sleep(chooser.random() * 0.002)
                    end = _now()
                    holds.append((start, end, units, lease.fencing_token))
        except BaseException as error:
            errors.append(error)

    workers = [threading.Thread(target=work, args=(index,)) for index in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    backend.close()
    with open(log, "w") as file:
        json.dump({"holds": holds, "errors": [repr(error) for error in errors]}, file)


def soak(path: str, log: str, *, shape: tuple[int, int, int]) -> None:
    """A new user's program, all defaults: ``shape`` is (threads, rounds, seed); each thread
    takes a unit of the shared cap of 3 and one of a 50/s limit with ``acquire_all``, holds it
    20-80 ms, and logs the hold (start, end, 1, token) and when the rate was granted."""
    threads, rounds, seed = shape
    backend = RedisBackend(redis.Redis(unix_socket_path=path))
    cap = allotment.ResourceManager(3, name="soak:cap", backend=backend)
    api = allotment.RateLimiter(50, per=1, name="soak:api", backend=backend)
    holds: list[tuple[int, int, int, int | None]] = []
    errors: list[str] = []

    def work(index: int) -> None:
        chooser = random.Random(seed * 100 + index)
        for _ in range(rounds):
            try:
                with allotment.acquire_all([(cap, 1), (api, 1)], timeout=60) as group:
                    start = _now()
                    if group[0].released or group[0].fencing_token is None:
                        errors.append(f"a lease granted released: {group[0]!r}")
                    time.sleep(chooser.uniform(0.02, 0.08))
                    end = _now()
                    holds.append((start, end, 1, group[0].fencing_token))
            except BaseException as error:  # the test reports every one
                errors.append(repr(error))

    workers = [threading.Thread(target=work, args=(index,)) for index in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    backend.close()
    with open(log, "w") as file:
        json.dump({"holds": holds, "errors": errors}, file)


def hold_forever(path: str, name: str, capacity: int, lease_ttl: float, ready: Event) -> None:
    """Take everything, say so, and hold it until killed."""
    backend = _backend(path, lease_ttl)
    pool = allotment.ResourceManager(capacity, name=name, backend=backend)
    lease = pool.acquire(capacity)
    ready.set()
    time.sleep(3600)
    lease.release()


def queue_forever(path: str, name: str, capacity: int) -> None:
    """Queue for everything (a holder elsewhere has it) and wait until killed."""
    backend = _backend(path)
    pool = allotment.ResourceManager(capacity, name=name, backend=backend)
    pool.acquire(capacity)
    time.sleep(3600)


def take_rate_with_a_skewed_clock(
    path: str, name: str, skew: float, seconds: float, log: str
) -> None:
    """Take from a shared rate limit as fast as allowed, in a process whose wall clock is
    ``skew`` seconds off (every wall-clock reading of this process is shifted)."""
    real_time, real_time_ns = time.time, time.time_ns
    time.time = lambda: real_time() + skew
    time.time_ns = lambda: real_time_ns() + int(skew * 1e9)
    backend = _backend(path)
    limiter = allotment.RateLimiter(100, per=1, burst=10, name=name, backend=backend)
    taken = []
    end = _now() + int(seconds * 1e9)
    while _now() < end:
        if limiter.try_acquire():
            taken.append(_now())
        else:
            time.sleep(0.001)
    backend.close()
    with open(log, "w") as file:
        json.dump(taken, file)
