"""Benchmarks: allotment's LocalBackend (limits shared by the processes of one host).

    python benchmarks/local_bench.py            # full run (about half a minute)
    python benchmarks/local_bench.py --quick    # seconds, for a smoke test

Three measurements, in a fresh temporary directory. *Uncontended*: ``with pool.acquire(1):
pass`` and ``pool.try_acquire(1).release()`` in one process, median over repeats (each is
two sections of the state file: ``flock``, decode, write, unlock). *Hand-off*: two
processes (started with ``spawn``) loop on a manager of capacity one, each holding it for
0.2 ms; the time from one's release to the other's grant, read on the system-wide
monotonic clock; the baseline is the bare mechanism, the same loop on a raw ``flock``
(counted only where the lock changed process). *Rate*: eight processes share a
``RateLimiter``; allowed/ideal over the run, and the calls that came earlier than the
limit allows. Nothing here is asserted: the figures are reported, not tested.
"""

from __future__ import annotations

import argparse
import fcntl
import itertools
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import allotment

TOLERANCE_NS = 1_000_000
_now = time.monotonic_ns  # CLOCK_MONOTONIC: one clock for every process of the host


def _hold_for(ns: int) -> None:
    end = _now() + ns
    while _now() < end:
        pass


def _pool_loop(path: str, rounds: int, ready: Any, go: Any, out: Any) -> None:
    backend = allotment.LocalBackend(path)
    pool = allotment.ResourceManager(1, name="handoff", backend=backend)
    log: list[tuple[int, int]] = []
    ready.set()
    go.wait()
    for _ in range(rounds):
        with pool.acquire(1):
            granted = _now()
            _hold_for(200_000)
            released = _now()
        log.append((granted, released))
    backend.close()
    out.put((os.getpid(), log))


def _flock_loop(path: str, rounds: int, ready: Any, go: Any, out: Any) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    log: list[tuple[int, int]] = []
    ready.set()
    go.wait()
    for _ in range(rounds):
        fcntl.flock(fd, fcntl.LOCK_EX)
        granted = _now()
        _hold_for(200_000)
        released = _now()
        fcntl.flock(fd, fcntl.LOCK_UN)
        log.append((granted, released))
        _hold_for(20_000)  # a moment for the other to be woken, as the pool's loop has
    out.put((os.getpid(), log))


def _handoffs(loop: Any, path: str, rounds: int) -> list[float]:
    """Microseconds from a release to the other process's grant."""
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    out = context.Queue()
    readies = [context.Event() for _ in range(2)]
    children = [
        context.Process(target=loop, args=(path, rounds, ready, go, out)) for ready in readies
    ]
    for child in children:
        child.start()
    for ready in readies:
        ready.wait(60)
    go.set()
    logs = [out.get(timeout=120) for _ in children]
    for child in children:
        child.join(60)
    events = sorted((granted, released, pid) for pid, log in logs for granted, released in log)
    return [
        (after[0] - before[1]) / 1000
        for before, after in itertools.pairwise(events)
        if before[2] != after[2]
    ]


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _rate_worker(path: str, rate: int, seconds: float, go: Any, out: Any) -> None:
    backend = allotment.LocalBackend(path)
    api = allotment.RateLimiter(rate, per=1, burst=1, name="api", backend=backend)
    go.wait()
    end = time.monotonic() + seconds
    calls = []
    while time.monotonic() < end:
        api.acquire(timeout=5)
        calls.append(_now())
    backend.close()
    out.put(calls)


def _rate(path: str, processes: int, rate: int, seconds: float) -> tuple[float, int, int, int]:
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    out = context.Queue()
    children = [
        context.Process(target=_rate_worker, args=(path, rate, seconds, go, out))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    time.sleep(1.0)  # every child made its limiter (spawn imports take a while)
    go.set()
    calls = sorted(call for _ in children for call in out.get(timeout=120))
    for child in children:
        child.join(60)
    interval = 1_000_000_000 // rate
    span = calls[-1] - calls[0]
    ideal = span / interval + 1  # burst 1: one at the start, then one per interval
    # As benchmarks/rate.py counts them: a GCRA run over the grant times, with its 1 ms
    # tolerance (a time is read after the call returns, late by up to a scheduling delay).
    tat, early = -(10**30), 0
    for call in calls:
        tat = max(tat, call) + interval
        if tat - call > interval + TOLERANCE_NS:
            early += 1
    # The bound itself, which a late reading cannot fake: at most rate + burst in any second.
    most, start = 0, 0
    for end, call in enumerate(calls):
        while call - calls[start] >= 1_000_000_000:
            start += 1
        most = max(most, end - start + 1)
    return len(calls) / ideal, early, len(calls), most


def _uncontended(path: str, rounds: int, repeats: int) -> tuple[float, float]:
    backend = allotment.LocalBackend(path)
    pool = allotment.ResourceManager(4, name="uncontended", backend=backend)
    acquire, trying = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(rounds):
            with pool.acquire(1):
                pass
        acquire.append((time.perf_counter() - start) / rounds * 1e6)
        start = time.perf_counter()
        for _ in range(rounds):
            lease = pool.try_acquire(1)
            assert lease is not None
            lease.release()
        trying.append((time.perf_counter() - start) / rounds * 1e6)
    backend.close()
    return statistics.median(acquire), statistics.median(trying)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="seconds, for a smoke test")
    options = parser.parse_args()
    quick = options.quick
    with tempfile.TemporaryDirectory() as scratch:
        limits = os.path.join(scratch, "limits")
        acquire, trying = _uncontended(limits, 500 if quick else 5000, 3 if quick else 7)
        rounds = 50 if quick else 1000
        pool_handoff = _handoffs(_pool_loop, limits, rounds)
        raw_handoff = _handoffs(_flock_loop, os.path.join(scratch, "raw.lock"), rounds)
        rate = 200 if quick else 500
        ratio, early, calls, most = _rate(limits, 8, rate, 2.0 if quick else 5.0)
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print("| measurement | figure |")
    print("|---|---|")
    print(f"| uncontended `with pool.acquire(1): pass` | {acquire:.1f} us |")
    print(f"| uncontended `try_acquire(1)` + `release()` | {trying:.1f} us |")
    for label, values in (("LocalBackend", pool_handoff), ("raw flock", raw_handoff)):
        print(
            f"| cross-process hand-off, {label} (n={len(values)}) | p50 "
            f"{_percentile(values, 0.5):.0f} us, p99 {_percentile(values, 0.99):.0f} us |"
        )
    p50 = _percentile(pool_handoff, 0.5) / _percentile(raw_handoff, 0.5)
    print(f"| hand-off p50, LocalBackend / raw flock | {p50:.2f}x |")
    print(f"| rate, 8 processes: allowed / ideal ({calls} calls) | {ratio:.4f} |")
    print(f"| rate, 8 processes: calls earlier than the GCRA allows (1 ms slack) | {early} |")
    print(f"| rate, 8 processes: most calls in any 1 s (bound {rate + 1}) | {most} |")


if __name__ == "__main__":
    main()
