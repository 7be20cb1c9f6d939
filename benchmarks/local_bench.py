"""Benchmarks: allotment's LocalBackend (limits shared by the processes of one host).

    python benchmarks/local_bench.py            # full run (about two minutes)
    python benchmarks/local_bench.py --quick    # seconds, for a smoke test

Five measurements, in a fresh temporary directory. *Uncontended*: ``with pool.acquire(1):
pass`` and ``pool.try_acquire(1).release()`` in one process, median over repeats (each is
two sections of the state file: ``flock``, decode, write, unlock). *Hand-off*: two
processes (started with ``spawn``) loop on a manager of capacity one, each holding it for
0.2 ms; the time from one's release to the other's grant, read on the system-wide
monotonic clock; the baseline is the bare mechanism, the same loop on a raw ``flock``
(counted only where the lock changed process). *Floor*: the same loop on two skeletons of
a push hand-off through a shared file (two words under ``flock``, a grant in the
releaser's section, a datagram ring), one with the waiting thread polling its own
doorbell, one through a doorbell thread and a lock (today's shape): the least such a
design costs in Python, next to the raw ``flock`` of the same run. *Reclaim*: a process
holding 4 of 4 units is SIGKILLed; the time until a waiter of another process, queued
behind it, is granted. *Rate*: eight processes share a ``RateLimiter``; allowed/ideal over
the run, and the early calls: those the ``flock`` section allowed earlier than an exact GCRA
(no slack) over the allowed times would, plus those that returned before their allowed
time. (A GCRA over the times *read on return* is shown too, for information only: it carries
a late reading forward as debt, which at full rate is never paid off, so it counts a call
whenever an earlier reading was later than this one by more than its slack: lateness, not
earliness.) Nothing here is asserted: the figures are reported, not tested.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import itertools
import mmap
import multiprocessing
import os
import select
import signal
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from typing import Any

import attrs

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


def _skeleton_loop(path: str, rounds: int, ready: Any, go: Any, out: Any) -> None:
    """The least a push hand-off through a state file can do in Python, for the floor:
    capacity one, the state two words (holder pid, waiter pid) in an ``mmap``ed file
    changed under ``flock``; the releaser grants the waiter in its section and rings it
    after; the waiting thread polls its OWN doorbell (a datagram socket: no doorbell
    thread, no lock between threads) and reads its grant in a section of its own. No
    checksum, no records, no manager or lease layers: what the LocalBackend adds beyond
    this is its layers and its shape; what this adds beyond raw ``flock`` is the cost of
    any design that grants in a section of a shared file and rings after it."""
    _skeleton(path, rounds, ready, go, out, via_thread=False)


def _skeleton_thread_loop(path: str, rounds: int, ready: Any, go: Any, out: Any) -> None:
    """:func:`_skeleton_loop` in today's shape: a doorbell thread polls the socket, reads
    the grant in its section and releases a lock that the waiting thread sleeps on."""
    _skeleton(path, rounds, ready, go, out, via_thread=True)


def _skeleton(path: str, rounds: int, ready: Any, go: Any, out: Any, *, via_thread: bool) -> None:
    me = os.getpid()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, 16)
    words = mmap.mmap(fd, 16)
    bell = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    directory = os.path.dirname(path)
    bell.bind(os.path.join(directory, f"{me}.sock"))
    bell.setblocking(False)
    ringer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    poller = select.poll()
    poller.register(bell.fileno(), select.POLLIN)
    asleep = threading.Lock()

    def granted_to_me() -> bool:
        poller.poll(60_000)
        with contextlib.suppress(BlockingIOError):
            while bell.recv(64):
                pass
        fcntl.flock(fd, fcntl.LOCK_EX)
        holder, _ = struct.unpack_from("qq", words)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return bool(holder == me)

    stopping = threading.Event()

    def doorbell_thread() -> None:
        while not stopping.is_set():
            if granted_to_me() and asleep.locked():
                asleep.release()

    thread = threading.Thread(target=doorbell_thread, daemon=True)
    if via_thread:
        thread.start()
    log: list[tuple[int, int]] = []
    ready.set()
    go.wait()
    for _ in range(rounds):
        fcntl.flock(fd, fcntl.LOCK_EX)
        holder, waiter = struct.unpack_from("qq", words)
        if holder == 0:
            struct.pack_into("qq", words, 0, me, waiter)
            fcntl.flock(fd, fcntl.LOCK_UN)
        elif via_thread:
            asleep.acquire()
            struct.pack_into("qq", words, 0, holder, me)
            fcntl.flock(fd, fcntl.LOCK_UN)
            asleep.acquire()  # released by the doorbell thread
            asleep.release()
        else:
            struct.pack_into("qq", words, 0, holder, me)
            fcntl.flock(fd, fcntl.LOCK_UN)
            while not granted_to_me():
                pass
        granted = _now()
        _hold_for(200_000)
        released = _now()
        fcntl.flock(fd, fcntl.LOCK_EX)
        _, waiter = struct.unpack_from("qq", words)
        struct.pack_into("qq", words, 0, waiter, 0)  # hand-off: the waiter, or nobody
        fcntl.flock(fd, fcntl.LOCK_UN)
        if waiter:
            with contextlib.suppress(OSError):
                ringer.sendto(b"!", socket.MSG_DONTWAIT, os.path.join(directory, f"{waiter}.sock"))
        log.append((granted, released))
    time.sleep(0.5)  # the other may still wait for its last grant from this one
    if via_thread:
        stopping.set()
        ringer.sendto(b".", os.path.join(directory, f"{me}.sock"))
        thread.join(60)
    for closing in (bell, ringer, words):
        closing.close()
    os.close(fd)
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


def _hold_everything(path: str, held: Any) -> None:
    backend = allotment.LocalBackend(path)
    pool = allotment.ResourceManager(4, name="reclaim", backend=backend)
    lease = pool.acquire(4)
    held.set()
    time.sleep(3600)  # until SIGKILLed
    lease.release()


def _wait_for_everything(path: str, queued: Any, out: Any) -> None:
    backend = allotment.LocalBackend(path)
    pool = allotment.ResourceManager(4, name="reclaim", backend=backend)
    queued.set()
    with pool.acquire(4, timeout=60):
        out.put(_now())
    backend.close()


def _reclaims(path: str, rounds: int) -> list[float]:
    """Milliseconds from SIGKILL of a process holding 4 of 4 to the grant, in another
    process, of a waiter queued behind it (woken by its doorbell thread's pidfd)."""
    context = multiprocessing.get_context("spawn")
    latencies = []
    for _ in range(rounds):
        held, queued, out = context.Event(), context.Event(), context.Queue()
        holder = context.Process(target=_hold_everything, args=(path, held))
        holder.start()
        held.wait(60)
        waiter = context.Process(target=_wait_for_everything, args=(path, queued, out))
        waiter.start()
        queued.wait(60)
        time.sleep(0.3)  # queued in the file (the event is set just before the acquire)
        killed = _now()
        os.kill(holder.pid or 0, signal.SIGKILL)
        granted = out.get(timeout=60)
        latencies.append((granted - killed) / 1e6)
        holder.join(60)
        waiter.join(60)
    return latencies


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _rate_worker(path: str, rate: int, seconds: float, go: Any, out: Any) -> None:
    from allotment.local import _backend, _meter

    decided: list[tuple[int, int]] = []  # (now, allowed at) of each take, inside the section
    rule = _meter.gcra_take

    def recorded(
        words: list[int] | None, settings: tuple[int, int], now: int, op: str, args: Any
    ) -> Any:
        answer = rule(words, settings, now, op, args)
        if op == "take" and answer[0][0] >= 0:
            decided.append((now, now + answer[0][1]))
        elif op == "undo" and answer[0][0]:
            decided.append((now, -1))  # a reservation given back (a timeout)
        return answer

    _backend.gcra_take = recorded  # type: ignore[attr-defined]  # this process only
    backend = allotment.LocalBackend(path)
    api = allotment.RateLimiter(rate, per=1, burst=1, name="api", backend=backend)
    go.wait()
    end = time.monotonic() + seconds
    calls = []
    while time.monotonic() < end:
        api.acquire(timeout=5)
        returned = _now()
        calls.append((decided[-1][0], decided[-1][1], returned))
    backend.close()
    out.put((calls, sum(1 for _, at in decided if at < 0)))


@attrs.frozen
class RateFigures:
    ratio: float
    calls: int
    most: int
    """Most calls returned in any 1 s."""
    most_allowed: int
    """Most allowed times (decided in the section) in any 1 s."""
    early: int
    """The early calls: ``early_by_section + returned_before_allowed``."""
    early_by_readings: int
    """Informational, not an early count: calls a GCRA (1 ms slack) over the times read on
    return flags. It carries a late reading forward as debt, never cleared at full rate, so
    call k is flagged whenever the largest lateness before it exceeds its own by the slack."""
    early_by_section: int
    """Allowed times (decided inside the ``flock`` section) earlier than the GCRA allows,
    with no slack at all: the limiter's own error."""
    returned_before_allowed: int
    """Calls that returned before the time the section allowed them."""
    late_readings: int
    """Calls read on return more than the slack after their allowed time."""
    latest_reading_ms: float
    undone: int


def _gcra_early(times: list[int], interval: int, slack: int) -> int:
    """As benchmarks/rate.py counts them (burst 1): a GCRA run over sorted times."""
    tat, early = -(10**30), 0
    for at in times:
        tat = max(tat, at) + interval
        if tat - at > interval + slack:
            early += 1
    return early


def _most_in_a_second(times: list[int]) -> int:
    most, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= 1_000_000_000:
            start += 1
        most = max(most, end - start + 1)
    return most


def _rate(path: str, processes: int, rate: int, seconds: float) -> RateFigures:
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
    results = [out.get(timeout=120) for _ in children]
    for child in children:
        child.join(60)
    records = sorted(call for calls, _ in results for call in calls)
    returned = sorted(call[2] for call in records)
    allowed = sorted(call[1] for call in records)
    interval = -(-1_000_000_000 // rate)  # as the backend rounds it: up, never looser
    span = returned[-1] - returned[0]
    ideal = span / interval + 1  # burst 1: one at the start, then one per interval
    lateness = [back - at for _, at, back in records]
    early_by_section = _gcra_early(allowed, interval, 0)
    returned_before_allowed = sum(1 for late in lateness if late < 0)
    return RateFigures(
        ratio=len(returned) / ideal,
        calls=len(returned),
        most=_most_in_a_second(returned),
        most_allowed=_most_in_a_second(allowed),
        early=early_by_section + returned_before_allowed,
        early_by_readings=_gcra_early(returned, interval, TOLERANCE_NS),
        early_by_section=early_by_section,
        returned_before_allowed=returned_before_allowed,
        late_readings=sum(1 for late in lateness if late > TOLERANCE_NS),
        latest_reading_ms=max(lateness) / 1e6,
        undone=sum(undone for _, undone in results),
    )


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
        skeletons = []
        for number, loop in enumerate((_skeleton_loop, _skeleton_thread_loop)):
            skeleton = os.path.join(scratch, f"skeleton{number}")
            os.mkdir(skeleton)
            skeletons.append(_handoffs(loop, os.path.join(skeleton, "state"), rounds))
        floor_handoff, thread_handoff = skeletons
        reclaim = _reclaims(limits, 3 if quick else 15)
        rate = 200 if quick else 500
        figures = _rate(limits, 8, rate, 2.0 if quick else 5.0)
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print("| measurement | figure |")
    print("|---|---|")
    print(f"| uncontended `with pool.acquire(1): pass` | {acquire:.1f} us |")
    print(f"| uncontended `try_acquire(1)` + `release()` | {trying:.1f} us |")
    for label, values in (
        ("LocalBackend", pool_handoff),
        ("raw flock", raw_handoff),
        ("skeleton, the waiting thread polls its own doorbell", floor_handoff),
        ("skeleton, through a doorbell thread and a lock", thread_handoff),
    ):
        print(
            f"| cross-process hand-off, {label} (n={len(values)}) | p50 "
            f"{_percentile(values, 0.5):.0f} us, p99 {_percentile(values, 0.99):.0f} us |"
        )
    p50 = _percentile(pool_handoff, 0.5) / _percentile(raw_handoff, 0.5)
    print(f"| hand-off p50, LocalBackend / raw flock | {p50:.2f}x |")
    for label, values in (("own doorbell", floor_handoff), ("doorbell thread", thread_handoff)):
        ratio = _percentile(values, 0.5) / _percentile(raw_handoff, 0.5)
        print(f"| hand-off p50, skeleton ({label}) / raw flock | {ratio:.2f}x |")
    print(
        f"| SIGKILLed holder of 4 of 4 to a waiter's grant in another process "
        f"(n={len(reclaim)}) | p50 {_percentile(reclaim, 0.5):.2f} ms, max "
        f"{max(reclaim):.2f} ms |"
    )
    rows = (
        (f"allowed / ideal ({figures.calls} calls)", f"{figures.ratio:.4f}"),
        (f"most calls allowed in any 1 s (bound {rate + 1})", f"{figures.most_allowed}"),
        (f"most calls returned in any 1 s (bound {rate + 1})", f"{figures.most}"),
        ("early calls (the two rows below, summed)", f"{figures.early}"),
        (
            "- allowed earlier than the GCRA allows (decided in the `flock` section, no slack)",
            f"{figures.early_by_section}",
        ),
        ("- returned before their allowed time", f"{figures.returned_before_allowed}"),
        (
            "informational, not early calls: flagged by a GCRA over the times read on return "
            "(1 ms slack; a late reading is carried forward as debt)",
            f"{figures.early_by_readings}",
        ),
        (
            "returns read more than 1 ms after their allowed time",
            f"{figures.late_readings} (latest {figures.latest_reading_ms:.1f} ms)",
        ),
        ("reservations given back", f"{figures.undone}"),
    )
    for label, value in rows:
        print(f"| rate, 8 processes: {label} | {value} |")


if __name__ == "__main__":
    main()
