"""Benchmarks: allotment's asyncio support against asyncio's and anyio's primitives, in one run.

    python benchmarks/aio.py                 # full run (about a minute), prints the report
    python benchmarks/aio.py --quick         # seconds, for a smoke test
    python benchmarks/aio.py --write docs/benchmarks.md   # also update the page

anyio is optional (the ``bench`` dependency group installs it); without it, its rows are left
out with a note, so the script runs with allotment alone.

Three measurements. *Cost*: nanoseconds per uncontended ``async with`` on one task, batches
inside one running loop, the subjects interleaved, medians over repeats. *Contention*: 64 tasks
on a capacity of one, each acquiring, yielding once inside, and releasing, for a fixed time:
acquisitions per second, and fairness as the most over the fewest acquisitions of one task.
*Hand-off*: a worker thread holds the unit while a task waits for it; the thread notes the
time and releases; the task notes when it resumes. The baseline is the bare mechanism, a
thread resolving a future the task awaits with ``call_soon_threadsafe``. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import importlib.metadata
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import allotment

SECTION = "## asyncio"
BEGIN = "<!-- written by benchmarks/aio.py --write: from here -->"
END = "<!-- to here: benchmarks/aio.py -->"

Enter = Callable[[], Any]
"""Returns what ``async with`` enters, once per operation."""


def _subjects(capacity: int) -> tuple[dict[str, Enter], list[str]]:
    """Each subject's ``async with`` target, and the notes on what is missing."""
    semaphore = asyncio.Semaphore(capacity)
    pool = allotment.ResourceManager(capacity)
    subjects: dict[str, Enter] = {
        "asyncio.Semaphore": lambda: semaphore,
        "allotment `pool.acquire_async(1)`": lambda: pool.acquire_async(1),
    }
    notes = []
    try:
        anyio: Any = importlib.import_module("anyio")  # optional: typed as Any either way
    except ImportError:
        notes.append("anyio is not installed: its rows are left out")
        return subjects, notes
    default = anyio.Semaphore(capacity)
    subjects["anyio.Semaphore"] = lambda: default
    try:
        fast = anyio.Semaphore(capacity, fast_acquire=True)
    except TypeError:
        notes.append("this anyio has no `fast_acquire`: that row is left out")
    else:
        subjects["anyio.Semaphore(fast_acquire=True)"] = lambda: fast
    limiter = anyio.CapacityLimiter(capacity)
    subjects["anyio.CapacityLimiter"] = lambda: limiter
    return subjects, notes


@contextlib.contextmanager
def _quiet_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# -- 1. uncontended cost -----------------------------------------------------------------------


async def _batch(enter: Enter, number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        async with enter():
            pass
    return (time.perf_counter() - start) / number * 1e9


async def uncontended(repeats: int, number: int) -> tuple[dict[str, float], list[str]]:
    subjects, notes = _subjects(1)
    samples: dict[str, list[float]] = {name: [] for name in subjects}
    with _quiet_gc():
        for _ in range(repeats):
            for name, enter in subjects.items():  # interleaved
                samples[name].append(await _batch(enter, number))
    return {name: statistics.median(values) for name, values in samples.items()}, notes


# -- 2. contended throughput and fairness ----------------------------------------------------


async def contended(enter: Enter, tasks: int, seconds: float) -> tuple[float, list[int]]:
    counts = [0] * tasks
    stop = False

    async def worker(index: int) -> None:
        while not stop:
            async with enter():
                counts[index] += 1
                await asyncio.sleep(0)

    running = [asyncio.create_task(worker(index)) for index in range(tasks)]
    await asyncio.sleep(0)
    start = time.perf_counter()
    await asyncio.sleep(seconds)
    stop = True
    elapsed = time.perf_counter() - start
    await asyncio.gather(*running)
    return sum(counts) / elapsed, counts


# -- 3. thread-to-task hand-off latency --------------------------------------------------------


def _percentiles(samples: list[int]) -> tuple[float, float]:
    ordered = sorted(samples)
    p50 = ordered[len(ordered) // 2] / 1000
    p99 = ordered[min(len(ordered) - 1, (len(ordered) * 99) // 100)] / 1000
    return p50, p99


async def handoff(rounds: int) -> list[int]:
    """Microsecond-precise samples (ns) of a release on a thread to the waiting task's
    resumption."""
    pool = allotment.ResourceManager(1)
    loop = asyncio.get_running_loop()
    samples = []
    for _ in range(rounds):
        held = pool.acquire(1)
        released_at = [0]
        queued = threading.Event()

        def release(
            held: allotment.Lease[int] = held,
            queued: threading.Event = queued,
            released_at: list[int] = released_at,
        ) -> None:
            queued.wait()
            while not pool.statistics().waiters:  # the task is in the queue, asleep
                time.sleep(0)
            time.sleep(0.0002)  # and its loop is asleep in select()
            released_at[0] = time.perf_counter_ns()
            held.release()

        thread = threading.Thread(target=release)
        thread.start()
        loop.call_soon(queued.set)
        lease = await pool.acquire_async(1)
        resumed = time.perf_counter_ns()
        lease.release()
        await loop.run_in_executor(None, thread.join)
        samples.append(resumed - released_at[0])
    return samples


async def bare_round_trip(rounds: int) -> list[int]:
    """The same, with nothing but a future resolved by the thread through the loop."""
    loop = asyncio.get_running_loop()
    samples = []
    for _ in range(rounds):
        future: asyncio.Future[None] = loop.create_future()
        resolved_at = [0]
        waiting = threading.Event()

        def resolve(
            future: asyncio.Future[None] = future,
            waiting: threading.Event = waiting,
            resolved_at: list[int] = resolved_at,
        ) -> None:
            waiting.wait()
            time.sleep(0.0002)  # the loop is asleep in select()
            resolved_at[0] = time.perf_counter_ns()
            loop.call_soon_threadsafe(future.set_result, None)

        thread = threading.Thread(target=resolve)
        thread.start()
        loop.call_soon(waiting.set)
        await future
        resumed = time.perf_counter_ns()
        await loop.run_in_executor(None, thread.join)
        samples.append(resumed - resolved_at[0])
    return samples


# -- the report --------------------------------------------------------------------------------


def _versions() -> str:
    found = [f"allotment {importlib.metadata.version('allotment')}"]
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        found.append(f"anyio {importlib.metadata.version('anyio')}")
    return ", ".join(found)


async def _report(quick: bool) -> str:
    repeats, number = (3, 2_000) if quick else (9, 20_000)
    seconds, rounds = (0.2, 50) if quick else (2.0, 2_000)
    costs, notes = await uncontended(repeats, number)
    base = costs["asyncio.Semaphore"]
    lines = [
        "### Uncontended `async with`, one task",
        "",
        "Target: allotment at most 2x asyncio.Semaphore, and faster than every anyio primitive.",
        "",
        "| subject | ns per `async with` | ratio to asyncio.Semaphore |",
        "|---|--:|--:|",
    ]
    lines += [f"| {name} | {value:.0f} | {value / base:.2f}x |" for name, value in costs.items()]
    lines += [
        "",
        "### 64 tasks on a capacity of one",
        "",
        "Targets: allotment at least 0.5x asyncio.Semaphore's throughput; fairness (most over "
        "fewest acquisitions of one task) at most 1.5.",
        "",
        "| subject | acquisitions/s | ratio to asyncio.Semaphore | fairness max/min |",
        "|---|--:|--:|--:|",
    ]
    subjects, _ = _subjects(1)
    rates: dict[str, float] = {}
    with _quiet_gc():
        for name, enter in subjects.items():
            rate, counts = await contended(enter, 64, seconds)
            rates[name] = rate
            fairness = max(counts) / max(1, min(counts))
            lines.append(
                f"| {name} | {rate:,.0f} | {rate / rates['asyncio.Semaphore']:.2f}x | "
                f"{fairness:.2f} |"
            )
    allotment_samples: list[int] = []
    bare_samples: list[int] = []
    for _ in range(10):  # interleaved, so that neither gets the machine's quieter moments
        allotment_samples += await handoff(rounds // 10)
        bare_samples += await bare_round_trip(rounds // 10)
    ours = _percentiles(allotment_samples)
    bare = _percentiles(bare_samples)
    lines += [
        "",
        "### Thread-to-task hand-off latency",
        "",
        "A thread releases the unit a task waits for; the time until the task resumes, in µs. "
        "Target: p50 within 1.5x the bare `call_soon_threadsafe` round trip.",
        "",
        "| mechanism | p50 µs | p99 µs | p50 ratio |",
        "|---|--:|--:|--:|",
        f"| bare `call_soon_threadsafe` round trip | {bare[0]:.1f} | {bare[1]:.1f} | 1.00x |",
        f"| allotment release to `acquire_async` | {ours[0]:.1f} | {ours[1]:.1f} | "
        f"{ours[0] / bare[0]:.2f}x |",
        "",
        f"Command: `python benchmarks/aio.py{' --quick' if quick else ''} --write "
        f"docs/benchmarks.md`, Python {platform.python_version()} on {platform.system()} "
        f"{platform.machine()}, {os.cpu_count()} cores; {_versions()}; {repeats} repeats of "
        f"{number} operations (medians), {seconds:g} s of contention per row, {rounds} "
        "hand-offs.",
    ]
    if notes:
        lines += ["", *(f"Note: {note}." for note in notes)]
    return "\n".join(lines) + "\n"


def report(quick: bool) -> str:
    return asyncio.run(_report(quick))


def replace_figures(page: str, figures: str) -> str:
    """``page`` with what lies between ``BEGIN`` and ``END`` replaced by ``figures``; a page
    without them gets a new section at its end. Whatever else the section holds stays."""
    begin, end = page.find(BEGIN), page.find(END)
    if begin < 0 or end < begin:
        return f"{page.rstrip()}\n\n{SECTION}\n\n{BEGIN}\n\n{figures}\n{END}\n"
    return f"{page[: begin + len(BEGIN)]}\n\n{figures}\n{page[end:]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few seconds, for smoke tests")
    parser.add_argument("--write", metavar="PATH", help="also write the figures into PATH")
    arguments = parser.parse_args()
    figures = report(arguments.quick)
    print(f"{SECTION}\n\n{figures}", end="")
    if arguments.write:
        with open(arguments.write, encoding="utf-8") as file:
            page = file.read()
        with open(arguments.write, "w", encoding="utf-8") as file:
            file.write(replace_figures(page, figures))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
