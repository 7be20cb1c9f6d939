"""What the processes of the LocalBackend tests run (importable by a spawned child)."""

from __future__ import annotations

import json
import random
import threading
import time
from multiprocessing.synchronize import Event

import allotment

__all__ = ["churn", "hammer", "hold_forever"]


def _now() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # one clock for every process


def hold_forever(path: str, name: str, capacity: int, amount: int, held: Event) -> None:
    """Take ``amount`` and hold it until killed."""
    backend = allotment.LocalBackend(path)
    pool = allotment.ResourceManager(capacity, name=name, backend=backend)
    lease = pool.acquire(amount)
    assert lease.fencing_token is not None
    held.set()
    threading.Event().wait()


def churn(path: str, name: str, capacity: int, seed: int, started: Event) -> None:
    """Acquire, try and release random amounts forever (until killed), from two threads."""
    backend = allotment.LocalBackend(path)
    pool = allotment.ResourceManager(capacity, name=name, backend=backend)

    def work(index: int) -> None:
        chooser = random.Random(seed * 10 + index)
        while True:
            amount = chooser.randint(1, capacity)
            if chooser.random() < 0.3:
                lease = pool.try_acquire(amount)
                if lease is not None:
                    lease.release()
                continue
            try:
                lease = pool.acquire(amount, timeout=chooser.choice([0.001, 0.01, 1.0]))
            except allotment.AcquireTimeout:
                continue
            if chooser.random() < 0.3 and amount > 1:
                lease.release(1)
            lease.release()

    for index in range(2):
        threading.Thread(target=work, args=(index,), daemon=True).start()
    started.set()
    threading.Event().wait()


def hammer(path: str, name: str, capacity: int, log: str, shape: tuple[int, int, int]) -> None:
    """``shape`` is (threads, rounds, seed): each thread takes random amounts ``rounds``
    times; every hold is logged as (start, end, units, token), measured inside the hold."""
    threads, rounds, seed = shape
    backend = allotment.LocalBackend(path)
    pool = allotment.ResourceManager(capacity, name=name, backend=backend)
    holds: list[tuple[int, int, int, int | None]] = []
    errors: list[str] = []

    def work(index: int) -> None:
        chooser = random.Random(seed * 100 + index)
        try:
            for _ in range(rounds):
                amount = chooser.randint(1, capacity)
                with pool.acquire(amount, timeout=60) as lease:
                    start = _now()
                    time.sleep(chooser.random() / 2000)
                    holds.append((start, _now(), amount, lease.fencing_token))
        except Exception as error:  # reported to the parent
            errors.append(repr(error))

    workers = [threading.Thread(target=work, args=(index,)) for index in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    backend.close()
    with open(log, "w", encoding="utf-8") as file:
        json.dump({"holds": holds, "errors": errors}, file)
