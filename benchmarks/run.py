"""Benchmarks: allotment against the standard library, in one run, on this machine.

    python benchmarks/run.py                 # full run, prints the report
    python benchmarks/run.py --write docs/benchmarks.md
    python benchmarks/run.py --quick         # seconds, for a smoke test

Every figure is a median over several repeats, and every comparison is a ratio measured in
the same process, with the implementations interleaved so that drift hits them equally.
Nothing here is asserted: performance is reported, not tested.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import queue
import statistics
import sys
import threading
import time
import timeit
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import allotment

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


@contextmanager
def _quiet_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# -- 1. uncontended cost ------------------------------------------------------------------


def uncontended(repeats: int, number: int) -> list[tuple[str, float, float]]:
    """Nanoseconds per ``with x: pass`` on one thread; ratio to threading.Semaphore."""
    plain = threading.Semaphore()
    fair = allotment.Semaphore()
    bounded = allotment.BoundedSemaphore()
    pool = allotment.ResourceManager(1)
    pool_no_sites = allotment.ResourceManager(1, capture_sites=False)
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

    def with_pool_no_sites() -> None:
        with pool_no_sites.acquire(1):
            pass

    def with_node() -> None:
        with node.acquire({"gpu": 1, "ram_gb": 8}):
            pass

    cases = {
        "with threading.Semaphore()": with_threading,
        "with allotment.Semaphore()": with_semaphore,
        "with allotment.BoundedSemaphore()": with_bounded,
        "with pool.acquire(1)": with_pool,
        "with pool.acquire(1), capture_sites=False": with_pool_no_sites,
        'with node.acquire({"gpu": 1, "ram_gb": 8})': with_node,
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    with _quiet_gc():
        for _ in range(repeats):
            for name, function in cases.items():  # interleaved
                samples[name].append(timeit.timeit(function, number=number) / number * 1e9)
    base = statistics.median(samples["with threading.Semaphore()"])
    return [
        (name, statistics.median(values), statistics.median(values) / base)
        for name, values in samples.items()
    ]


# -- 2. hand-off cost against queue length --------------------------------------------------


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
    with _quiet_gc():
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


# -- 3. fairness and 4. throughput under contention ----------------------------------------


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


# -- 5. several managers, the lock-order checker, banker mode --------------------------------


def _median_ns(
    cases: dict[str, Callable[[], object]], repeats: int, number: int
) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in cases}
    with _quiet_gc():
        for _ in range(repeats):
            for name, function in cases.items():  # interleaved
                samples[name].append(timeit.timeit(function, number=number) / number * 1e9)
    return {name: statistics.median(values) for name, values in samples.items()}


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


# -- the report ------------------------------------------------------------------------------


def report(quick: bool) -> str:
    repeats = 3 if quick else 9
    number = 20_000 if quick else 200_000
    seconds = 0.2 if quick else 3.0
    small, large = (10, 100) if quick else (10, 1000)
    releases = 200 if quick else 2000
    lines = [
        "# Benchmarks",
        "",
        "Produced by `python benchmarks/run.py --write docs/benchmarks.md`"
        + (" (quick mode)" if quick else "")
        + f" on {time.strftime('%Y-%m-%d')}, Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} cores. Medians of {repeats} repeats; the "
        "implementations are interleaved within each repeat. Timings on a shared 2-core "
        "machine move by about 10% from run to run: read the ratios, not the digits.",
        "",
        "## Uncontended cost",
        "",
        "One thread, `with x: pass`, nanoseconds per operation.",
        "",
        "| operation | ns | ratio to threading.Semaphore |",
        "| --- | ---: | ---: |",
    ]
    ratios: dict[str, float] = {}
    for name, nanoseconds, ratio in uncontended(repeats, number):
        lines.append(f"| `{name}` | {nanoseconds:.0f} | {ratio:.2f} |")
        ratios[name] = ratio
    lines += [
        "",
        "## Hand-off cost against queue length",
        "",
        "A release that hands its unit to the head of a queue of waiting threads, which stays "
        f"that long throughout; median of {releases} releases per repeat.",
        "",
        "| threads queued | ns per release |",
        "| ---: | ---: |",
    ]
    # Interleaved repeats: one run of each moves by tens of percent on a shared machine.
    pairs = [
        (handoff_cost(small, releases), handoff_cost(large, releases))
        for _ in range(1 if quick else 5)
    ]
    few = statistics.median(pair[0] for pair in pairs)
    many = statistics.median(pair[1] for pair in pairs)
    ratios_per_repeat = sorted(pair[1] / pair[0] for pair in pairs)
    lines += [
        f"| {small} | {few:.0f} |",
        f"| {large} | {many:.0f} |",
        "",
        f"Ratio {large} / {small}: **{many / few:.2f}** (medians of {len(pairs)} interleaved "
        f"repeats; the ratio within single repeats ranged from {ratios_per_repeat[0]:.2f} to "
        f"{ratios_per_repeat[-1]:.2f}).",
        "",
        "## Fairness",
        "",
        f"64 threads on capacity 1, counted for {seconds:g} s after a warm-up; how many more "
        "acquisitions the busiest thread completed than the least busy one (1.0 is perfectly "
        "even).",
        "",
        "| implementation | busiest / least busy (median) | lowest, highest | "
        "total acquisitions per second |",
        "| --- | ---: | ---: | ---: |",
    ]
    worst_fairness: dict[str, float] = {}
    for name, ratio, lowest, highest, rate in fairness(64, seconds, 1 if quick else 5):
        lines.append(f"| {name} | {ratio:.2f} | {lowest:.2f}, {highest:.2f} | {rate:,.0f} |")
        worst_fairness[name] = highest
    for threads in (8, 64):
        lines += [
            "",
            f"## Contended throughput, {threads} threads on capacity 2",
            "",
            "| implementation | operations per second | ratio to threading.Semaphore |",
            "| --- | ---: | ---: |",
        ]
        for name, rate, ratio in throughput(threads, 2, seconds, 1 if quick else 3):
            lines.append(f"| {name} | {rate:,.0f} | {ratio:.2f} |")
    lines += [
        "",
        "Strict FIFO hand-off costs throughput under contention: every release gives the unit "
        "to a thread that is asleep, so each operation waits for the operating system to wake "
        "it, while `threading.Semaphore` lets the releasing thread, which is already running, "
        "take the unit straight back (which is also why it is unfair).",
    ]
    lines += [
        "",
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
    for k, semaphores, nested, together in several_managers(repeats, number // 4):
        lines.append(
            f"| {k} | {semaphores:.0f} | {nested:.0f} | {together:.0f} | {together / nested:.2f} |"
        )
    lines += [
        "",
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
    for label, off, on, ratio in checker_overhead(repeats, number // 4):
        lines.append(f"| {label} | {off:.0f} | {on:.0f} | {ratio:.2f} |")
    lines += [
        "",
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
    for others, plain, small_claim, whole in banker_cost(repeats, number // 4):
        lines.append(
            f"| {others} | {plain:.0f} | {small_claim:.0f} | {small_claim / plain:.1f} | "
            f"{whole:.0f} | {whole / plain:.1f} |"
        )
    lines.append("")
    summary = [
        "## Targets",
        "",
        "| target | measured | met |",
        "| --- | ---: | :---: |",
        _target(
            "uncontended `with pool.acquire(1)` no slower than `with threading.Semaphore()`",
            ratios["with pool.acquire(1)"],
            1.0,
        ),
        _target(
            "uncontended `allotment.Semaphore` at most 0.8 times `threading.Semaphore`",
            ratios["with allotment.Semaphore()"],
            0.8,
        ),
        _target(f"hand-off with {large} queued at most 2 times with {small}", many / few, 2.0),
        _target(
            "64 threads, capacity 1: busiest at most 1.5 times the least busy "
            "(ResourceManager, worst repeat)",
            worst_fairness["ResourceManager.acquire(1)"],
            1.5,
        ),
        "",
        "A lease does work `threading.Semaphore` does not: it records the acquiring thread, the "
        "grant time and (unless `capture_sites=False`) the calling line, and registers a weak "
        "reference for statistics and leak detection. The [design page](design.md) breaks "
        "that cost down.",
        "",
    ]
    intro_end = lines.index("## Uncontended cost")
    return "\n".join(lines[:intro_end] + summary + lines[intro_end:])


def _target(what: str, measured: float, limit: float) -> str:
    return f"| {what} | {measured:.2f} | {'yes' if measured <= limit else '**no**'} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few seconds, for smoke tests")
    parser.add_argument("--write", metavar="PATH", help="also write the report to PATH")
    arguments = parser.parse_args()
    text = report(arguments.quick)
    print(text)
    if arguments.write:
        with open(arguments.write, "w", encoding="utf-8") as file:
            file.write(text)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
