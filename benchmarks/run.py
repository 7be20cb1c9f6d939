"""Benchmarks: allotment against the standard library, in one run, on this machine.

    python benchmarks/run.py                 # full run, prints the report
    python benchmarks/run.py --write docs/benchmarks.md
    python benchmarks/run.py --quick         # seconds, for a smoke test
    python benchmarks/run.py --only release  # one section (or several, comma-separated)
    python3.13 benchmarks/run.py --only uncontended,release --write docs/benchmarks.md
                                             # those sections on another Python, written
                                             # into that Python's own section of the page

Every figure is a median over several repeats, and every comparison is a ratio measured in
the same process, with the implementations interleaved so that drift hits them equally.
Nothing here is asserted: performance is reported, not tested.
"""

from __future__ import annotations

import argparse
import os
import platform
import queue
import statistics
import sys
import sysconfig
import threading
import time
import timeit
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import allotment
from common import MARKER, quiet_gc, replace_figures

Factory = Callable[[int], Callable[[], AbstractContextManager[Any]]]
"""Given a capacity, returns a callable whose result is entered once per operation."""


def _threading_semaphore(capacity: int) -> Callable[[], AbstractContextManager[Any]]:
    semaphore = threading.Semaphore(capacity)
    return lambda: semaphore


def _allotment_semaphore(capacity: int) -> Callable[[], AbstractContextManager[Any]]:
    semaphore = allotment.Semaphore(capacity)
    return lambda: semaphore


def _manager(capacity: int) -> Callable[[], AbstractContextManager[Any]]:
    pool = allotment.ResourceManager(capacity)
    return lambda: pool.acquire(1)


IMPLEMENTATIONS: dict[str, Factory] = {
    "threading.Semaphore": _threading_semaphore,
    "allotment.Semaphore": _allotment_semaphore,
    "ResourceManager.acquire(1)": _manager,
}


def _median_ns(
    cases: Mapping[str, Callable[[], object]], repeats: int, number: int
) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in cases}
    with quiet_gc():
        for _ in range(repeats):
            for name, function in cases.items():  # interleaved
                samples[name].append(timeit.timeit(function, number=number) / number * 1e9)
    return {name: statistics.median(values) for name, values in samples.items()}


# -- 1. uncontended cost ------------------------------------------------------------------


THREADING_ROW = "`with threading.Semaphore()`"
SEMAPHORE_ROW = "`with allotment.Semaphore()`"
LEASE_ROW = "`with pool.acquire(1)` (default: no site)"
NAMED_ROW = '`with node.acquire({"gpu": 1, "ram_gb": 8})`'


def uncontended(repeats: int, number: int) -> list[tuple[str, float, float]]:
    """Nanoseconds per ``with x: pass`` on one thread; ratio to threading.Semaphore.
    Each row's label is Markdown."""
    plain = threading.Semaphore()
    fair = allotment.Semaphore()
    bounded = allotment.BoundedSemaphore()
    pool = allotment.ResourceManager(1)
    pool_sites = allotment.ResourceManager(1, capture_sites=True)
    node = allotment.ResourceManager({"gpu": 4, "ram_gb": 64})

    def with_threading() -> None:
        with plain:
            pass

    def with_semaphore() -> None:
        with fair:
            pass

    def with_bounded() -> None:
        with bounded:
            pass

    def with_pool() -> None:
        with pool.acquire(1):
            pass

    def with_pool_sites() -> None:
        with pool_sites.acquire(1):
            pass

    def with_node() -> None:
        with node.acquire({"gpu": 1, "ram_gb": 8}):
            pass

    cases = {
        THREADING_ROW: with_threading,
        SEMAPHORE_ROW: with_semaphore,
        "`with allotment.BoundedSemaphore()`": with_bounded,
        LEASE_ROW: with_pool,
        "`with pool.acquire(1), capture_sites=True`": with_pool_sites,
        NAMED_ROW: with_node,
    }
    medians = _median_ns(cases, repeats, number)
    base = medians[THREADING_ROW]
    return [(name, value, value / base) for name, value in medians.items()]


# -- 2. what a release that wakes a waiter costs the releasing thread ------------------------


SETTLE_SECONDS = 0.0002
"""How long the main thread sleeps, giving up the GIL, before checking that the helper
threads are asleep again."""


def _thread_state(thread: threading.Thread) -> str | None:
    """The kernel's scheduling state of ``thread`` ("S" while it sleeps in a blocking call,
    "R" while it runs or waits for a CPU); None where /proc cannot tell (not Linux)."""
    try:
        with open(f"/proc/self/task/{thread.native_id}/stat", encoding="ascii") as file:
            text = file.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2]  # the state follows the "(command name)" field


def _settle(threads: Sequence[threading.Thread], ready: Callable[[], bool]) -> None:
    """Return once ``ready()`` holds and every thread in ``threads`` is asleep, so that the
    timed call that follows wakes a thread that is really sleeping and races with none.

    The main thread first sleeps (releasing the GIL), so that a helper on its way back to
    its blocking call gets there; a helper that has released the GIL but not yet blocked is
    "R" in /proc, one blocked in its acquire is "S". Where /proc is missing, the sleep alone
    has to do."""
    deadline = time.monotonic() + 10.0
    while True:
        time.sleep(SETTLE_SECONDS)
        if ready() and all(_thread_state(thread) in ("S", None) for thread in threads):
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the waiting threads did not settle within 10 seconds")


def _timed(call: Callable[[], object]) -> int:
    started = time.perf_counter_ns()
    call()
    return time.perf_counter_ns() - started


@dataclass
class _LockWake:
    """``len(locks)`` threading.Locks, each held by the main thread while one other thread
    sleeps in its ``acquire()``; they are released in turn. The woken thread passes its lock
    back through ``woken`` (a Lock has no owner: whoever takes the token may release it) and
    goes straight back to sleep in ``acquire()``; the main thread never waits on a lock.

    As many sleepers as the manager has waiters, woken in turn: each timed release wakes a
    thread that has slept as long as the manager's head waiter, which matters because the
    longer a thread slept the likelier the scheduler lets it preempt the thread waking it,
    which then pays for two context switches inside its timed call."""

    locks: list[threading.Lock]
    woken: queue.SimpleQueue[bool]
    stop: threading.Event
    threads: list[threading.Thread]
    turn: int = 0

    @classmethod
    def start(cls, sleepers: int) -> _LockWake:
        locks = [threading.Lock() for _ in range(sleepers)]
        woken: queue.SimpleQueue[bool] = queue.SimpleQueue()
        stop = threading.Event()

        def sleeper(lock: threading.Lock) -> None:
            while True:
                lock.acquire()
                if stop.is_set():
                    lock.release()
                    return
                woken.put(True)

        threads = [threading.Thread(target=sleeper, args=(lock,), daemon=True) for lock in locks]
        for lock, thread in zip(locks, threads, strict=True):
            lock.acquire()
            thread.start()
        return cls(locks, woken, stop, threads)

    def release(self, threads: Sequence[threading.Thread]) -> int:
        """Nanoseconds of one ``lock.release()`` that wakes the thread sleeping on it."""
        lock = self.locks[self.turn]
        self.turn = (self.turn + 1) % len(self.locks)
        _settle(threads, lambda: True)
        elapsed = _timed(lock.release)
        self.woken.get(timeout=10)  # the lock is the main thread's again
        return elapsed

    def close(self) -> None:
        self.stop.set()
        for lock in self.locks:
            lock.release()
        for thread in self.threads:
            thread.join()


@dataclass
class _LeaseHandoff:
    """A ResourceManager(1) whose unit the main thread holds through ``lease`` while
    ``waiters`` threads sleep in ``acquire(1)``. The woken head waiter puts the lease it was
    granted on ``granted`` and queues again at the tail, so the queue keeps its length; the
    main thread takes the lease from there and never waits in the manager itself."""

    pool: allotment.ResourceManager[int]
    lease: allotment.Lease[int]
    granted: queue.SimpleQueue[allotment.Lease[int]]
    stop: threading.Event
    threads: list[threading.Thread]

    @classmethod
    def start(cls, waiters: int) -> _LeaseHandoff:
        pool = allotment.ResourceManager(1)
        granted: queue.SimpleQueue[allotment.Lease[int]] = queue.SimpleQueue()
        stop = threading.Event()

        def waiter() -> None:
            while True:
                lease = pool.acquire(1)
                if stop.is_set():
                    lease.release()
                    return
                granted.put(lease)

        lease = pool.acquire(1)
        threads = [threading.Thread(target=waiter, daemon=True) for _ in range(waiters)]
        for thread in threads:
            thread.start()
        return cls(pool, lease, granted, stop, threads)

    def queued(self) -> bool:
        return len(self.pool.statistics().waiters) == len(self.threads)

    def release(self, threads: Sequence[threading.Thread]) -> int:
        """Nanoseconds of one ``lease.release()`` that grants the unit to the head waiter and
        wakes it."""
        _settle(threads, self.queued)
        elapsed = _timed(self.lease.release)
        self.lease = self.granted.get(timeout=10)
        return elapsed

    def close(self) -> None:
        self.stop.set()
        self.lease.release()  # each waiter in turn takes the unit, sees stop, gives it back
        for thread in self.threads:
            thread.join()


def _lock_alone(lock: threading.Lock) -> int:
    lock.acquire()
    return _timed(lock.release)


def _lease_alone(pool: allotment.ResourceManager[int]) -> int:
    return _timed(pool.acquire(1).release)


RELEASE_KINDS = (
    "`lock.release()`, one thread asleep in its `acquire()` ({waiters} such locks, in turn)",
    "`lease.release()`, {waiters} threads asleep in `acquire(1)`",
    "`lock.release()`, nobody waiting",
    "`lease.release()`, nobody waiting",
)


@dataclass(frozen=True)
class ReleaseFigures:
    """For each of RELEASE_KINDS: the median over the repeats of each repeat's median, and of
    each repeat's 10th percentile (nanoseconds)."""

    medians: list[float]
    fastest: list[float]
    ratios: list[float]  # lease / lock wake-up, each repeat's medians
    checked: bool  # /proc confirmed the helper threads asleep before each timed call

    @property
    def ratio(self) -> float:
        """The lease's hand-off over the lock's wake-up, median against median."""
        return self.medians[1] / self.medians[0]


def placement_cpus() -> tuple[int, int] | None:
    """Two CPUs this process may run on, to fix where the waker and the woken threads run;
    ``None`` where the system cannot pin threads (not Linux) or has a single CPU."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


def _pin(native_id: int, cpu: int) -> None:
    os.sched_setaffinity(native_id, {cpu})


def release_cost(
    waiters: int, releases: int, repeats: int, placement: tuple[int, int] | None = None
) -> ReleaseFigures:
    """Time each of RELEASE_KINDS ``releases`` times per repeat, the kinds alternating.

    With ``placement``, the main thread runs on its first CPU and every helper thread on its
    second for the whole measurement, on both sides: each wake-up then crosses to another
    CPU, wherever the kernel would have put the woken thread."""
    lock_wake = _LockWake.start(waiters)
    handoff = _LeaseHandoff.start(waiters)
    helpers = [*lock_wake.threads, *handoff.threads]
    allowed = os.sched_getaffinity(0) if placement is not None else None
    if placement is not None:
        for thread in helpers:
            assert thread.native_id is not None
            _pin(thread.native_id, placement[1])
        _pin(0, placement[0])
    spare_lock = threading.Lock()
    spare_pool = allotment.ResourceManager(1)
    kinds: tuple[Callable[[], int], ...] = (
        lambda: lock_wake.release(helpers),
        lambda: handoff.release(helpers),
        lambda: _lock_alone(spare_lock),
        lambda: _lease_alone(spare_pool),
    )
    medians: list[list[float]] = [[] for _ in kinds]
    fastest: list[list[float]] = [[] for _ in kinds]
    try:
        with quiet_gc():
            for _ in range(repeats):
                samples: list[list[int]] = [[] for _ in kinds]
                for index in range(releases):
                    order = range(len(kinds))
                    for kind in order if index % 2 == 0 else reversed(order):  # alternate
                        samples[kind].append(kinds[kind]())
                for kind, values in enumerate(samples):
                    medians[kind].append(statistics.median(values))
                    fastest[kind].append(statistics.quantiles(values, n=10)[0])
    finally:
        handoff.close()
        lock_wake.close()
        if allowed is not None:
            os.sched_setaffinity(0, allowed)
    return ReleaseFigures(
        [statistics.median(values) for values in medians],
        [statistics.median(values) for values in fastest],
        [lease / lock for lock, lease in zip(medians[0], medians[1], strict=True)],
        _thread_state(threading.current_thread()) is not None,
    )


# -- 3. hand-off cost against queue length --------------------------------------------------


def handoff_cost(queued: int, releases: int) -> float:
    """Median nanoseconds of a release that hands the unit to the head of a queue of
    ``queued`` waiting threads (the queue stays that long throughout)."""
    pool = allotment.ResourceManager(1)
    granted: queue.SimpleQueue[allotment.Lease[int] | None] = queue.SimpleQueue()
    stop = threading.Event()

    def waiter() -> None:
        while not stop.is_set():
            lease = pool.acquire(1)
            granted.put(lease)
        granted.put(None)

    first = pool.acquire(1)
    threads = [threading.Thread(target=waiter, daemon=True) for _ in range(queued)]
    for thread in threads:
        thread.start()
    while len(pool.statistics().waiters) < queued:
        time.sleep(0.001)
    durations = []
    lease = first
    with quiet_gc():
        for _ in range(releases):
            started = time.perf_counter_ns()
            lease.release()
            durations.append(time.perf_counter_ns() - started)
            next_lease = granted.get()
            assert next_lease is not None
            lease = next_lease
            # Keep the queue full: wait until the previous holder has queued again.
            while len(pool.statistics().waiters) < queued - 1:
                time.sleep(0)
    stop.set()
    lease.release()
    finished = 0
    while finished < queued:
        item = granted.get()
        if item is None:
            finished += 1
        else:
            item.release()
    for thread in threads:
        thread.join()
    return statistics.median(durations)


# -- 4. fairness and 5. throughput under contention ----------------------------------------


def contend(factory: Factory, threads: int, capacity: int, seconds: float) -> list[int]:
    """Each thread enters and leaves as fast as it can; returns each one's count over
    ``seconds``, measured after a warm-up so that every thread is already in the contest
    (while threads are still starting, the first ones run alone and uncontended)."""
    make = factory(capacity)
    counts = [0] * threads
    barrier = threading.Barrier(threads + 1)
    stop = threading.Event()

    def run(index: int) -> None:
        barrier.wait()
        while not stop.is_set():
            with make():
                counts[index] += 1

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    time.sleep(max(seconds / 4, 0.1))
    before = list(counts)
    time.sleep(seconds)
    after = list(counts)
    stop.set()
    for worker in workers:
        worker.join()
    return [end - start for start, end in zip(before, after, strict=True)]


def fairness(
    threads: int, seconds: float, repeats: int
) -> list[tuple[str, float, float, float, float]]:
    """Busiest / least busy thread's acquisitions on capacity 1: median, lowest and highest
    ratio over the repeats, and the median total rate."""
    ratios: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    totals: dict[str, list[int]] = {name: [] for name in IMPLEMENTATIONS}
    for _ in range(repeats):
        for name, factory in IMPLEMENTATIONS.items():
            counts = contend(factory, threads, 1, seconds)
            ratios[name].append(max(counts) / max(min(counts), 1))
            totals[name].append(sum(counts))
    return [
        (
            name,
            statistics.median(ratios[name]),
            min(ratios[name]),
            max(ratios[name]),
            statistics.median(totals[name]) / seconds,
        )
        for name in IMPLEMENTATIONS
    ]


def throughput(
    threads: int, capacity: int, seconds: float, repeats: int
) -> list[tuple[str, float, float]]:
    """Total operations per second; ratio to threading.Semaphore (median of repeats)."""
    rates: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    for _ in range(repeats):
        for name, factory in IMPLEMENTATIONS.items():
            rates[name].append(sum(contend(factory, threads, capacity, seconds)) / seconds)
    base = statistics.median(rates["threading.Semaphore"])
    return [
        (name, statistics.median(values), statistics.median(values) / base)
        for name, values in rates.items()
    ]


# -- 6. several managers, the lock-order checker, banker mode --------------------------------


def several_managers(repeats: int, number: int) -> list[tuple[int, float, float, float]]:
    """For k managers: ns for k nested threading.Semaphore acquires, k nested
    ``ResourceManager.acquire`` calls, and one ``acquire_all`` over the k managers."""
    rows = []
    for k in (1, 2, 4, 8):
        semaphores = [threading.Semaphore() for _ in range(k)]
        managers = [allotment.ResourceManager(1) for _ in range(k)]
        # Written in reverse rank order: acquire_all sorts them.
        requests = [(manager, 1) for manager in reversed(managers)]

        def nested_semaphores(semaphores: list[threading.Semaphore] = semaphores) -> None:
            for semaphore in semaphores:
                semaphore.acquire()
            for semaphore in reversed(semaphores):
                semaphore.release()

        def nested_managers(managers: list[Any] = managers) -> None:
            leases = [manager.acquire(1) for manager in managers]
            for lease in reversed(leases):
                lease.release()

        def together(requests: list[Any] = requests) -> None:
            with allotment.acquire_all(requests):
                pass

        medians = _median_ns(
            {"semaphores": nested_semaphores, "nested": nested_managers, "all": together},
            repeats,
            number // k,
        )
        rows.append((k, medians["semaphores"], medians["nested"], medians["all"]))
    return rows


def checker_overhead(repeats: int, number: int) -> list[tuple[str, float, float, float]]:
    """ns per operation with the lock-order policy off, and with it on ("raise")."""
    rows = []
    for label, build in (
        ("`with a.acquire(1)`, nothing else held", _single),
        ("`with a.acquire(1), b.acquire(1)`", _pair),
        ("`with acquire_all([(a, 1), (b, 1)])`", _pair_together),
    ):
        medians = _median_ns({"off": build("off"), "raise": build("raise")}, repeats, number)
        rows.append((label, medians["off"], medians["raise"], medians["raise"] / medians["off"]))
    return rows


def _single(policy: allotment.LockOrderPolicy) -> Callable[[], None]:
    a = allotment.ResourceManager(1, lock_order=policy)

    def run() -> None:
        with a.acquire(1):
            pass

    return run


def _pair(policy: allotment.LockOrderPolicy) -> Callable[[], None]:
    a = allotment.ResourceManager(1, lock_order=policy)
    b = allotment.ResourceManager(1, lock_order=policy)

    def run() -> None:
        with a.acquire(1), b.acquire(1):
            pass

    return run


def _pair_together(policy: allotment.LockOrderPolicy) -> Callable[[], None]:
    a = allotment.ResourceManager(1, lock_order=policy)
    b = allotment.ResourceManager(1, lock_order=policy)

    def run() -> None:
        with allotment.acquire_all([(a, 1), (b, 1)]):
            pass

    return run


def banker_cost(repeats: int, number: int) -> list[tuple[int, float, float, float]]:
    """ns for ``with claim.acquire(1)`` in banker mode while n other claims each hold a unit,
    against ``with pool.acquire(1)`` on an ordinary manager. Two claims acquire: a small one
    (its maximum fits what is available, so one comparison proves the grant safe) and one
    declaring the whole capacity (the full safety test runs over every open claim)."""
    rows = []
    for others in (0, 10, 100):
        plain = allotment.ResourceManager(others + 2)
        banker = allotment.ResourceManager(others + 2, banker=True)
        claims = [banker.claim(1) for _ in range(others)]
        held = [claim.acquire(1) for claim in claims]
        small = banker.claim(2)
        whole = banker.claim(others + 2)

        def ordinary(plain: Any = plain) -> None:
            with plain.acquire(1):
                pass

        def quick(small: Any = small) -> None:
            with small.acquire(1):
                pass

        def full(whole: Any = whole) -> None:
            with whole.acquire(1):
                pass

        medians = _median_ns(
            {"plain": ordinary, "quick": quick, "full": full},
            repeats,
            max(number // (others + 1), 200),
        )
        rows.append((others, medians["plain"], medians["quick"], medians["full"]))
        del held
        for claim in [*claims, small, whole]:
            claim.close()
    return rows


# -- targets -------------------------------------------------------------------------------


ANY_VERSION = (3, 0)
"""The key of a limit that holds on every Python version."""

LIMITS: dict[str, dict[tuple[int, int], float]] = {
    "lease": {(3, 11): 1.0, (3, 13): 1.15},
    "named": {(3, 11): 1.6},
    "semaphore": {ANY_VERSION: 0.8},
    "release": {ANY_VERSION: 2.0},
    "handoff": {ANY_VERSION: 2.0},
    "fairness": {ANY_VERSION: 1.5},
}
"""Each target's upper limit, keyed by the Python version it was set for: the one place where
a target depends on the running Python. A version without a limit of its own takes the
nearest earlier version's (3.12 takes 3.11's), one older than them all the earliest."""


def limit_for(target: str, version: tuple[int, int]) -> tuple[float, tuple[int, int]]:
    """The limit of ``target`` on Python ``version``, and the version it was set for."""
    limits = LIMITS[target]
    set_for = max((known for known in limits if known <= version), default=min(limits))
    return limits[set_for], set_for


@dataclass(frozen=True)
class Measured:
    """One target's figure from this run."""

    target: str  # a key of LIMITS
    what: str  # Markdown
    value: float

    def row(self, version: tuple[int, int]) -> str:
        limit, set_for = limit_for(self.target, version)
        when = "any" if set_for == ANY_VERSION else f"{set_for[0]}.{set_for[1]}"
        met = "yes" if self.value <= limit else "**no**"
        return f"| {self.what} | {self.value:.2f} | {limit:.2f} | {when} | {met} |"


# -- the report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """How long each section measures: seconds in quick mode, minutes otherwise."""

    quick: bool
    repeats: int
    number: int
    seconds: float
    small: int
    large: int
    releases: int
    release_repeats: int
    handoff_repeats: int
    fairness_repeats: int
    throughput_repeats: int
    waiters: int = 3

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:
            return cls(True, 3, 20_000, 0.2, 10, 100, 200, 3, 1, 1, 1)
        return cls(False, 9, 200_000, 3.0, 10, 1000, 2000, 5, 5, 5, 3)


Part = tuple[list[str], list[Measured]]
"""A section of the page (Markdown lines) and the targets it measured."""


def uncontended_part(settings: Settings) -> Part:
    lines = [
        "## Uncontended cost",
        "",
        "One thread, `with x: pass`, nanoseconds per operation. A manager records the "
        "acquisition site only when asked (`capture_sites=True`), under `-X dev` or while "
        "tracemalloc traces.",
        "",
        "| operation | ns | ratio to threading.Semaphore |",
        "| --- | ---: | ---: |",
    ]
    ratios: dict[str, float] = {}
    for label, nanoseconds, ratio in uncontended(settings.repeats, settings.number):
        lines.append(f"| {label} | {nanoseconds:.0f} | {ratio:.2f} |")
        ratios[label] = ratio
    if sys.flags.dev_mode or tracemalloc.is_tracing():
        lines += [
            "",
            "**This run records sites by default** (`-X dev` or tracemalloc is on): the "
            "default row does not show the default cost.",
        ]
    lines += [
        "",
        "A lease does work `threading.Semaphore` does not: it records the acquiring thread, "
        "the grant time and (when asked) the calling line, keeps a ticket in the holder table "
        "for statistics while the lease object stays collectable for leak detection, and tests "
        "for re-entry. The [design page](design.md) lists that cost.",
    ]
    versus = " / `with threading.Semaphore()`, uncontended"
    return lines, [
        Measured("lease", LEASE_ROW + versus, ratios[LEASE_ROW]),
        Measured("named", NAMED_ROW + versus, ratios[NAMED_ROW]),
        Measured("semaphore", SEMAPHORE_ROW + versus, ratios[SEMAPHORE_ROW]),
    ]


def release_part(settings: Settings) -> Part:
    waiters, releases = settings.waiters, settings.releases
    figures = release_cost(waiters, releases, settings.release_repeats)
    asleep = " (its state in `/proc` is S)" if figures.checked else " (after a short sleep)"
    lines = [
        "## Release cost with waiters",
        "",
        "What a release costs the releasing thread when it has to wake a sleeping one. "
        "Baseline: a `threading.Lock` held by the main thread while one other thread sleeps in "
        "its `acquire()`; timed, the main thread's `lock.release()`, which wakes it. "
        f"allotment: a `ResourceManager(1)` whose unit the main thread holds while {waiters} "
        "threads sleep in `acquire(1)`; timed, `lease.release()`, which grants the unit to the "
        "head waiter and wakes it. Only the call is timed (`perf_counter_ns` either side).",
        "",
        "A woken thread passes what it got (the lock, the new lease) back to the main thread "
        "through a `queue.SimpleQueue` and goes back to sleep, so the queue keeps its length "
        "and the main thread never waits on a lock or in the manager, whose own wake-up would "
        "land in the next timing. Before each timed call the main thread waits until every "
        f"helper thread is asleep{asleep}, so that the call wakes a thread that is really "
        "sleeping and contends with none. The baseline has as many locks as the manager has "
        "waiters, one sleeper each, released in turn, so that on both sides as many threads "
        "sleep and each timed call wakes one that slept as long. A wake-up's cost depends on "
        "the scheduler (it may, for one, let the woken thread preempt the waker within its "
        "timed call): the samples of both sides cluster around two values, and the median "
        "moves with the share of the slower one; the 10th percentile is less affected. "
        f"The kinds alternate, {releases} of each per repeat; the median of each repeat, then "
        f"the median over {settings.release_repeats} repeats. The same calls with nobody "
        "waiting show what the wake-up adds.",
        "",
        *_release_table(figures, waiters),
    ]
    what = (
        f"`lease.release()` handing off to one of {waiters} sleeping waiters / "
        "`lock.release()` waking a sleeping thread"
    )
    measured = [Measured("release", what + ", where the kernel puts them", figures.ratio)]
    placement = placement_cpus()
    if placement is None:
        return lines, measured
    pinned = release_cost(waiters, releases, settings.release_repeats, placement)
    lines += [
        "",
        "### The same, with the waker and the woken on fixed, different CPUs",
        "",
        "Where the kernel puts a woken thread, and whether it lets it preempt the waker, "
        "decides most of a wake-up's cost on this machine (a virtual machine). In one "
        "experiment on 3.11, the woken thread ran on the waker's own CPU about 95% of the "
        "time on both sides; there the manager's hand-off took a median 14.3 µs against the "
        "bare lock's 4.6 µs, and the manager's wake-up alone (one `Lock.release()` on the "
        "waiter's handle) 8.4 µs against 3.5 µs, which fits the woken waiter preempting the "
        "waker inside the timed call more often than a bare sleeper does. Here the main "
        f"thread runs on CPU {placement[0]} and every helper thread on CPU {placement[1]} "
        "(`os.sched_setaffinity`), on both sides, so every timed wake-up crosses to the "
        "other CPU (the interrupt to it makes the bare lock's wake-up about three times "
        "dearer) and none can preempt the waker, as in a program whose waiters sleep while "
        "another core works. Everything else is as above.",
        "",
        *_release_table(pinned, waiters),
    ]
    measured.append(Measured("release", what + ", on fixed, different CPUs", pinned.ratio))
    return lines, measured


def _release_table(figures: ReleaseFigures, waiters: int) -> list[str]:
    lines = [
        "| release | median ns | ratio to `lock.release()` waking a thread | "
        "10th percentile ns | ratio |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    medians, fastest = figures.medians, figures.fastest
    for kind, median, tenth in zip(RELEASE_KINDS, medians, fastest, strict=True):
        lines.append(
            f"| {kind.format(waiters=waiters)} | {median:.0f} | {median / medians[0]:.2f} | "
            f"{tenth:.0f} | {tenth / fastest[0]:.2f} |"
        )
    return [
        *lines,
        "",
        f"Ratio of the medians: **{figures.ratio:.2f}** (within single repeats it ranged from "
        f"{min(figures.ratios):.2f} to {max(figures.ratios):.2f}).",
    ]


def handoff_part(settings: Settings) -> Part:
    small, large, releases = settings.small, settings.large, settings.releases
    # Interleaved repeats: one run of each moves by tens of percent on a shared machine.
    pairs = [
        (handoff_cost(small, releases), handoff_cost(large, releases))
        for _ in range(settings.handoff_repeats)
    ]
    few = statistics.median(pair[0] for pair in pairs)
    many = statistics.median(pair[1] for pair in pairs)
    ratios_per_repeat = sorted(pair[1] / pair[0] for pair in pairs)
    lines = [
        "## Hand-off cost against queue length",
        "",
        "A release that hands its unit to the head of a queue of waiting threads, which stays "
        f"that long throughout; median of {releases} releases per repeat.",
        "",
        "| threads queued | ns per release |",
        "| ---: | ---: |",
        f"| {small} | {few:.0f} |",
        f"| {large} | {many:.0f} |",
        "",
        f"Ratio {large} / {small}: **{many / few:.2f}** (medians of {len(pairs)} interleaved "
        f"repeats; the ratio within single repeats ranged from {ratios_per_repeat[0]:.2f} to "
        f"{ratios_per_repeat[-1]:.2f}).",
    ]
    what = f"hand-off with {large} queued / with {small} queued"
    return lines, [Measured("handoff", what, many / few)]


def fairness_part(settings: Settings) -> Part:
    lines = [
        "## Fairness",
        "",
        f"64 threads on capacity 1, counted for {settings.seconds:g} s after a warm-up; how "
        "many more acquisitions the busiest thread completed than the least busy one (1.0 is "
        "perfectly even).",
        "",
        "| implementation | busiest / least busy (median) | lowest, highest | "
        "total acquisitions per second |",
        "| --- | ---: | ---: | ---: |",
    ]
    worst: dict[str, float] = {}
    for name, ratio, lowest, highest, rate in fairness(
        64, settings.seconds, settings.fairness_repeats
    ):
        lines.append(f"| {name} | {ratio:.2f} | {lowest:.2f}, {highest:.2f} | {rate:,.0f} |")
        worst[name] = highest
    what = "64 threads, capacity 1: busiest / least busy thread (ResourceManager, worst repeat)"
    return lines, [Measured("fairness", what, worst["ResourceManager.acquire(1)"])]


def throughput_part(settings: Settings) -> Part:
    lines: list[str] = []
    for threads in (8, 64):
        lines += [
            f"## Contended throughput, {threads} threads on capacity 2",
            "",
            "| implementation | operations per second | ratio to threading.Semaphore |",
            "| --- | ---: | ---: |",
        ]
        for name, rate, ratio in throughput(
            threads, 2, settings.seconds, settings.throughput_repeats
        ):
            lines.append(f"| {name} | {rate:,.0f} | {ratio:.2f} |")
        lines.append("")
    lines.append(
        "Strict FIFO hand-off costs throughput under contention: every release gives the unit "
        "to a thread that is asleep, so each operation waits for the operating system to wake "
        "it, while `threading.Semaphore` lets the releasing thread, which is already running, "
        "take the unit straight back (which is also why it is unfair)."
    )
    return lines, []


def several_part(settings: Settings) -> Part:
    lines = [
        "## Several managers: acquire_all against nested acquires",
        "",
        "One thread takes one unit from each of k managers and gives them back, "
        "nanoseconds per round. `acquire_all` is given the managers in reverse rank order, "
        "so it also sorts them.",
        "",
        "| k | nested threading.Semaphore | nested ResourceManager.acquire | acquire_all | "
        "acquire_all / nested |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for k, semaphores, nested, together in several_managers(settings.repeats, settings.number // 4):
        lines.append(
            f"| {k} | {semaphores:.0f} | {nested:.0f} | {together:.0f} | {together / nested:.2f} |"
        )
    return lines, []


def checker_part(settings: Settings) -> Part:
    lines = [
        "## Lock-order checker overhead",
        "",
        'Managers created with `lock_order="off"` (the default) and with '
        '`lock_order="raise"`; one thread, nanoseconds per operation. With the checker on, '
        "every acquisition looks at what the thread holds and each known edge costs a "
        "dictionary lookup; a new edge (here only the first) searches the graph.",
        "",
        "| operation | off | on | on / off |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, off, on, ratio in checker_overhead(settings.repeats, settings.number // 4):
        lines.append(f"| {label} | {off:.0f} | {on:.0f} | {ratio:.2f} |")
    return lines, []


def banker_part(settings: Settings) -> Part:
    lines = [
        "## Banker mode",
        "",
        "`with claim.acquire(1)` on a banker-mode manager while other claims each hold a unit, "
        "against `with pool.acquire(1)` on an ordinary manager; nanoseconds per operation. A "
        "claim whose maximum fits what is available is proved safe by one comparison; a claim "
        "declaring the whole capacity makes every grant run the full safety test over all "
        "open claims.",
        "",
        "| other open claims | ordinary manager | small claim | ratio | whole-capacity claim "
        "| ratio |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for others, plain, small_claim, whole in banker_cost(settings.repeats, settings.number // 4):
        lines.append(
            f"| {others} | {plain:.0f} | {small_claim:.0f} | {small_claim / plain:.1f} | "
            f"{whole:.0f} | {whole / plain:.1f} |"
        )
    return lines, []


SECTIONS: dict[str, Callable[[Settings], Part]] = {
    "uncontended": uncontended_part,
    "release": release_part,
    "handoff": handoff_part,
    "fairness": fairness_part,
    "throughput": throughput_part,
    "several": several_part,
    "checker": checker_part,
    "banker": banker_part,
}
"""Every section of the page, in page order, by the name ``--only`` takes."""


FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def _python() -> str:
    """This Python's version, and whether it runs without the GIL."""
    if not FREE_THREADED:
        return platform.python_version()
    gil = "with the GIL" if sys._is_gil_enabled() else "without the GIL"  # type: ignore[attr-defined]
    return f"{platform.python_version()} free-threaded ({gil})"


def targets_part(measured: Sequence[Measured]) -> list[str]:
    version = (sys.version_info.major, sys.version_info.minor)
    return [
        "## Targets",
        "",
        f"Measured on Python {_python()}. Every figure is a ratio measured "
        "in this run, lower is better; *set for* is the Python version the limit was set for "
        "(a version without a limit of its own takes the nearest earlier one's).",
        "",
        "| target | measured | at most | set for | met |",
        "| --- | ---: | ---: | :---: | :---: |",
        *(figure.row(version) for figure in measured),
    ]


def report(quick: bool, only: Sequence[str] | None = None) -> str:
    """The page: every section, or those named in ``only``, and the targets they measured."""
    settings = Settings.for_mode(quick)
    chosen = [name for name in SECTIONS if only is None or name in only]
    sections: list[list[str]] = []
    measured: list[Measured] = []
    for name in chosen:
        lines, figures = SECTIONS[name](settings)
        sections.append(lines)
        measured += figures
    command = "python benchmarks/run.py" + (
        " --write docs/benchmarks.md" if only is None else f" --only {','.join(chosen)}"
    )
    intro = [
        "# Benchmarks",
        "",
        f"Produced by `{command}`"
        + (" (quick mode)" if quick else "")
        + f" on {time.strftime('%Y-%m-%d')}, Python {_python()}, "
        f"{platform.machine()}, {os.cpu_count()} cores. Medians of {settings.repeats} repeats "
        "unless a section says otherwise; the implementations are interleaved within each "
        "repeat. Timings on a shared 2-core "
        "machine move by about 10% from run to run: read the ratios, not the digits.",
    ]
    if measured:
        sections.insert(0, targets_part(measured))
    return "\n\n".join("\n".join(part) for part in [intro, *sections]) + "\n"


def _sections(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown section {', '.join(unknown) or repr(text)}; choose from {', '.join(SECTIONS)}"
        )
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few seconds, for smoke tests")
    parser.add_argument("--write", metavar="PATH", help="also write the report to PATH")
    parser.add_argument(
        "--only",
        type=_sections,
        metavar="SECTION[,SECTION]",
        help=f"measure only these sections, of: {', '.join(SECTIONS)}",
    )
    arguments = parser.parse_args()
    text = report(arguments.quick, arguments.only)
    print(text, end="")
    if arguments.write and arguments.only is not None:
        write_version_section(arguments.write, text)
    elif arguments.write:
        with open(arguments.write, encoding="utf-8") as file:
            kept = sections_of_other_scripts(file.read())
        with open(arguments.write, "w", encoding="utf-8") as file:
            file.write(text + (f"\n{kept}" if kept else ""))
    sys.stdout.flush()


def write_version_section(path: str, text: str) -> None:
    """Put a partial report (``--only``) into the page's section for this Python version,
    after the sections other scripts own, so that a full ``--write`` keeps it. What the
    section holds after its figures (a comparison written by hand) stays."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}" + ("t" if FREE_THREADED else "")
    heading = f"## Python {version}"
    body = text.split("\n", 2)[2]  # without the page's "# Benchmarks" title
    figures = "\n".join(
        "#" + line if line.startswith("## ") else line for line in body.splitlines()
    )
    with open(path, encoding="utf-8") as file:
        page = file.read()
    with open(path, "w", encoding="utf-8") as file:
        file.write(replace_figures(page, figures, heading, f"run.py on Python {version}"))


def sections_of_other_scripts(page: str) -> str:
    """The end of ``page`` that other scripts write (``rate.py``, ``aio.py``: from the
    heading of the first section holding one of their markers), kept as it is."""
    marker = page.find(MARKER)
    if marker < 0:
        return ""
    heading = page.rfind("\n## ", 0, marker)
    return page[heading + 1 :] if heading >= 0 else ""


if __name__ == "__main__":
    main()
