"""Benchmarks: allotment's asyncio support against asyncio's and anyio's primitives, in one run.

    python benchmarks/aio.py                 # full run (about a minute), prints the report
    python benchmarks/aio.py --quick         # seconds, for a smoke test
    python benchmarks/aio.py --write docs/benchmarks.md   # also update the page

anyio is optional (the ``bench`` dependency group installs it); without it, or without
``Semaphore(fast_acquire=True)`` (anyio 4.5 and later), those rows are left out with a note,
so the script runs with allotment alone.

Three measurements. *Cost*: nanoseconds per uncontended ``async with`` on one task, in
batches inside one running loop (so the loop's start-up is not counted), the primitives
interleaved, medians over repeats. *Contention*: 64 tasks on a capacity of one, each
acquiring, yielding once inside, and releasing, for a fixed time: acquisitions per second,
and fairness as the most over the fewest acquisitions of one task; medians over repeats, the
primitives interleaved. *Hand-off*: a worker thread holds the unit while a task waits for it;
the thread notes the time and releases; the task notes when it resumes. The baseline is the
bare mechanism, a thread resolving a future the task awaits with ``call_soon_threadsafe``;
the two alternate round by round. Rounds are synchronised with events and futures, never
with sleeps. Nothing here is asserted: the figures and the targets are reported, not tested.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import math
import os
import platform
import queue
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import allotment
from common import quiet_gc, run_section_script

SECTION = "## asyncio"

TASKS = 64
"""Tasks on a capacity of one in the contention runs."""
WARM_UP = 0.02
"""Seconds the contending tasks run before the counting starts (every task is queued)."""
UNCONTENDED_CAPACITY = 1_000_000
"""A capacity the single task never comes near: nothing waits."""
COST_TARGET = 2.0
THROUGHPUT_TARGET = 0.5
FAIRNESS_TARGET = 1.5
HANDOFF_TARGET = 1.5

Kind = Literal["object", "pool"]
"""How a primitive is entered: ``async with primitive:``, or (allotment's pool)
``async with pool.acquire_async(1):``."""


@dataclass(frozen=True)
class Subject:
    """A primitive to compare: a label (Markdown), how it is entered, and how to build one
    with a given capacity (inside a running loop)."""

    label: str
    kind: Kind
    build: Callable[[int], Any]
    distribution: str = "allotment"
    """What installs it (none for the standard library)."""


def _anyio() -> Any:
    """anyio, typed as ``Any`` whether or not it is installed (it is optional)."""
    return importlib.import_module("anyio")


BASELINE = Subject("`asyncio.Semaphore`", "object", asyncio.Semaphore, "")
ALLOTMENT = Subject(
    "allotment `ResourceManager.acquire_async(1)`", "pool", allotment.ResourceManager
)
SUBJECTS = (
    BASELINE,
    ALLOTMENT,
    Subject("anyio `Semaphore`", "object", lambda capacity: _anyio().Semaphore(capacity), "anyio"),
    Subject(
        "anyio `Semaphore(fast_acquire=True)`",
        "object",
        lambda capacity: _anyio().Semaphore(capacity, fast_acquire=True),
        "anyio",
    ),
    Subject(
        "anyio `CapacityLimiter`",
        "object",
        lambda capacity: _anyio().CapacityLimiter(capacity),
        "anyio",
    ),
)


def _available(subjects: Sequence[Subject]) -> tuple[list[Subject], list[str]]:
    """The subjects that can be built here, and a note for each that cannot. Called inside
    a running loop, where they are built."""
    found, notes = [], []
    for subject in subjects:
        try:
            subject.build(1)
        except ImportError:
            note = "anyio is not installed: its rows are left out"
        except TypeError:
            note = f"{_version('anyio')} has no `fast_acquire` (new in 4.5): that row is left out"
        else:
            found.append(subject)
            continue
        if note not in notes:
            notes.append(note)
    return found, notes


# -- 1. uncontended cost -----------------------------------------------------------------------


async def _batch_object(primitive: Any, number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        async with primitive:
            pass
    return time.perf_counter() - start


async def _batch_pool(pool: allotment.ResourceManager[int], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        async with pool.acquire_async(1):
            pass
    return time.perf_counter() - start


def _batch(subject: Subject, number: int) -> Awaitable[float]:
    """Seconds for ``number`` uncontended ``async with`` blocks on a fresh primitive, the
    statement written out (no call per operation but the primitive's own)."""
    primitive = subject.build(UNCONTENDED_CAPACITY)
    if subject.kind == "pool":
        return _batch_pool(primitive, number)
    return _batch_object(primitive, number)


async def uncontended(subjects: Sequence[Subject], repeats: int, number: int) -> dict[str, float]:
    """Nanoseconds per ``async with``: the median of ``repeats`` batches, interleaved."""
    samples: dict[str, list[float]] = {subject.label: [] for subject in subjects}
    with quiet_gc():
        for _ in range(repeats):
            for subject in subjects:
                samples[subject.label].append(await _batch(subject, number) / number * 1e9)
    return {label: statistics.median(values) for label, values in samples.items()}


# -- 2. contended throughput and fairness ----------------------------------------------------


@dataclass(frozen=True)
class Contention:
    rate: float
    """Acquisitions per second, all tasks together."""
    fairness: float
    """The most acquisitions of one task over the fewest (``inf`` if one got none)."""


async def contended(subject: Subject, tasks: int, seconds: float) -> Contention:
    """``tasks`` tasks on a fresh primitive of capacity one, each acquiring, yielding once
    inside, and releasing, in a loop; counted for ``seconds`` after a short warm-up."""
    primitive = subject.build(1)
    counts = [0] * tasks
    going = [True]

    async def enter_object(index: int) -> None:
        while going[0]:
            async with primitive:
                counts[index] += 1
                await asyncio.sleep(0)

    async def enter_pool(index: int) -> None:
        while going[0]:
            async with primitive.acquire_async(1):
                counts[index] += 1
                await asyncio.sleep(0)

    worker = enter_pool if subject.kind == "pool" else enter_object
    running = [asyncio.create_task(worker(index)) for index in range(tasks)]
    try:
        await asyncio.sleep(WARM_UP)
        before, start = list(counts), time.perf_counter()
        await asyncio.sleep(seconds)
        after, elapsed = list(counts), time.perf_counter() - start
    finally:
        going[0] = False
        await asyncio.gather(*running)
    mine = [last - first for first, last in zip(before, after, strict=True)]
    least = min(mine)
    return Contention(sum(mine) / elapsed, max(mine) / least if least else math.inf)


async def contention(
    subjects: Sequence[Subject], repeats: int, seconds: float
) -> dict[str, tuple[float, float, float]]:
    """Per subject: the median rate, the median fairness and the worst fairness over
    ``repeats`` runs, the subjects interleaved."""
    runs: dict[str, list[Contention]] = {subject.label: [] for subject in subjects}
    for _ in range(repeats):
        for subject in subjects:
            with quiet_gc():
                runs[subject.label].append(await contended(subject, TASKS, seconds))
    return {
        label: (
            statistics.median(run.rate for run in found),
            statistics.median(run.fairness for run in found),
            max(run.fairness for run in found),
        )
        for label, found in runs.items()
    }


# -- 3. thread-to-task hand-off latency --------------------------------------------------------

Command = Callable[[], None]


def _serve(commands: queue.SimpleQueue[Command | None]) -> None:
    """The worker thread: runs each command in turn, until ``None``."""
    while (command := commands.get()) is not None:
        command()


async def _allotment_round(
    pool: allotment.ResourceManager[int], commands: queue.SimpleQueue[Command | None]
) -> int:
    """One hand-off, in nanoseconds: the worker takes the unit, the task queues for it, the
    worker releases it once the task is queued and asleep."""
    loop = asyncio.get_running_loop()
    held: asyncio.Future[None] = loop.create_future()
    asleep = threading.Event()
    released_at = [0]

    def hold_then_release() -> None:
        lease = pool.acquire(1)
        loop.call_soon_threadsafe(held.set_result, None)
        asleep.wait()
        while len(pool.statistics().waiters) != 1:  # already so: the task queued, then slept
            time.sleep(0)
        released_at[0] = time.perf_counter_ns()
        lease.release()

    commands.put(hold_then_release)
    await held
    acquisition = pool.acquire_async(1)
    # Runs once the task has queued and is suspended in the await below.
    loop.call_soon(asleep.set)
    lease = await acquisition
    resumed = time.perf_counter_ns()
    lease.release()
    return resumed - released_at[0]


async def _bare_round(commands: queue.SimpleQueue[Command | None]) -> int:
    """The same, with nothing but a future the thread resolves through the loop."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    future: asyncio.Future[None] = loop.create_future()
    asleep = threading.Event()
    resolved_at = [0]

    def wait_then_resolve() -> None:
        loop.call_soon_threadsafe(ready.set_result, None)
        asleep.wait()
        resolved_at[0] = time.perf_counter_ns()
        loop.call_soon_threadsafe(future.set_result, None)

    commands.put(wait_then_resolve)
    await ready
    loop.call_soon(asleep.set)
    await future
    resumed = time.perf_counter_ns()
    return resumed - resolved_at[0]


async def handoff(rounds: int) -> tuple[list[int], list[int]]:
    """Nanoseconds from the thread's release to the task's resumption, allotment's and the
    bare round trip's, alternating round by round on one worker thread."""
    pool = allotment.ResourceManager(1)
    commands: queue.SimpleQueue[Command | None] = queue.SimpleQueue()
    worker = threading.Thread(target=_serve, args=(commands,), daemon=True)
    worker.start()
    ours: list[int] = []
    bare: list[int] = []
    try:
        with quiet_gc():
            for _ in range(rounds):
                ours.append(await _allotment_round(pool, commands))
                bare.append(await _bare_round(commands))
    finally:
        commands.put(None)
        worker.join()
    return ours, bare


def _percentile(values: Sequence[int], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.floor(fraction * len(ordered)))]


# -- the report --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    repeats: int
    number: int
    contention_repeats: int
    seconds: float
    rounds: int

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:
            return cls(3, 2_000, 1, 0.2, 100)
        return cls(15, 20_000, 5, 2.0, 2_000)


def _verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def _fairness(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:.2f}"


def _version(name: str) -> str:
    try:
        return f"{name} {importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return name


def _versions(subjects: Sequence[Subject]) -> str:
    names = dict.fromkeys(["allotment", *(s.distribution for s in subjects if s.distribution)])
    return ", ".join(_version(name) for name in names)


def cost_part(
    subjects: Sequence[Subject], costs: dict[str, float], settings: Settings
) -> list[str]:
    base, ours = costs[BASELINE.label], costs[ALLOTMENT.label]
    others = {s.label: costs[s.label] for s in subjects if s.distribution == "anyio"}
    lines = [
        "### Uncontended `async with`, one task",
        "",
        f"One task, a capacity of {UNCONTENDED_CAPACITY:,} so that nothing waits; nanoseconds "
        "per `async with primitive: pass` (for allotment, `async with pool.acquire_async(1): "
        f"pass`), timed in batches of {settings.number:,} inside one running loop, the median "
        f"of {settings.repeats} repeats, each on a fresh primitive, the primitives "
        "interleaved.",
        "",
        "| primitive | ns per `async with` | ratio to asyncio.Semaphore |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {label} | {ns:,.0f} | {ns / base:.2f}x |" for label, ns in costs.items()]
    lines += [
        "",
        f"- Target: allotment at most {COST_TARGET:g}x asyncio.Semaphore: "
        f"{_verdict(ours <= COST_TARGET * base)} ({ours / base:.2f}x).",
    ]
    if others:
        slower = {label: ns for label, ns in others.items() if ns <= ours}
        detail = (
            ", ".join(f"{label} {ours / ns:.2f}x as fast" for label, ns in slower.items())
            if slower
            else f"{min(others.values()) / ours:.2f}x faster than the fastest of them"
        )
        lines.append(
            f"- Target: allotment faster than every anyio primitive: "
            f"{_verdict(not slower)} ({detail})."
        )
    return lines


def contention_part(found: dict[str, tuple[float, float, float]], settings: Settings) -> list[str]:
    base = found[BASELINE.label][0]
    rate, fairness, worst = found[ALLOTMENT.label]
    lines = [
        f"### {TASKS} tasks on a capacity of one",
        "",
        f"{TASKS} tasks on a fresh primitive of capacity one, each in a loop: acquire, "
        "`await asyncio.sleep(0)` inside, release. Counted for "
        f"{settings.seconds:g} s after a {WARM_UP * 1e3:g} ms warm-up; the median of "
        f"{settings.contention_repeats} runs, the primitives interleaved. *Fairness*: the "
        "most acquisitions of one task over the fewest, median and worst run (1.00: all got "
        "as many).",
        "",
        "| primitive | acquisitions/s | ratio to asyncio.Semaphore | fairness (worst) |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {label} | {r:,.0f} | {r / base:.2f}x | {_fairness(f)} ({_fairness(w)}) |"
        for label, (r, f, w) in found.items()
    ]
    lines += [
        "",
        f"- Target: allotment at least {THROUGHPUT_TARGET:g}x asyncio.Semaphore's "
        f"throughput: {_verdict(rate >= THROUGHPUT_TARGET * base)} ({rate / base:.2f}x).",
        f"- Target: allotment's fairness at most {FAIRNESS_TARGET:g}: "
        f"{_verdict(worst <= FAIRNESS_TARGET)} (median {_fairness(fairness)}, worst "
        f"{_fairness(worst)}).",
    ]
    return lines


def handoff_part(ours: Sequence[int], bare: Sequence[int], settings: Settings) -> list[str]:
    rows = [
        ("bare `call_soon_threadsafe(future.set_result, None)`", bare),
        ("allotment `lease.release()` to `await pool.acquire_async(1)`", ours),
    ]
    base = _percentile(bare, 0.5)
    lines = [
        "### Thread-to-task hand-off latency",
        "",
        "A worker thread holds the unit; a task awaits `pool.acquire_async(1)`; once the task "
        "is queued and suspended (an event set by a callback the loop runs after the task "
        "suspends, then `statistics().waiters` checked), the thread reads "
        "`time.perf_counter_ns()` and releases; the task reads it again when it resumes. The "
        "baseline is the bare mechanism, in the same steps: the thread reads the clock and "
        "resolves a future the task awaits with `loop.call_soon_threadsafe`. "
        f"{settings.rounds:,} rounds of each, alternating; microseconds.",
        "",
        "| hand-off | p50 µs | p99 µs | p50 ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {label} | {_percentile(samples, 0.5) / 1e3:.1f} | "
        f"{_percentile(samples, 0.99) / 1e3:.1f} | {_percentile(samples, 0.5) / base:.2f}x |"
        for label, samples in rows
    ]
    ratio = _percentile(ours, 0.5) / base
    lines += [
        "",
        f"- Target: allotment's p50 within {HANDOFF_TARGET:g}x the bare round trip's: "
        f"{_verdict(ratio <= HANDOFF_TARGET)} ({ratio:.2f}x).",
    ]
    return lines


async def _report(quick: bool) -> str:
    settings = Settings.for_mode(quick)
    subjects, notes = _available(SUBJECTS)
    costs = await uncontended(subjects, settings.repeats, settings.number)
    found = await contention(subjects, settings.contention_repeats, settings.seconds)
    ours, bare = await handoff(settings.rounds)
    intro = [
        "Produced by `python benchmarks/aio.py" + (" --quick" if quick else "") + "`"
        f" on {time.strftime('%Y-%m-%d')}, Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} cores; {_versions(subjects)}. Timings on a "
        "shared machine move from run to run: read the ratios, not the digits.",
    ]
    if notes:
        intro += ["", *(f"Note: {note}." for note in notes)]
    parts = [
        intro,
        cost_part(subjects, costs, settings),
        contention_part(found, settings),
        handoff_part(ours, bare, settings),
    ]
    return "\n\n".join("\n".join(part) for part in parts) + "\n"


def report(quick: bool) -> str:
    """The figures, in Markdown, without the section's heading."""
    return asyncio.run(_report(quick))


def main() -> None:
    description = __doc__.splitlines()[0] if __doc__ else None
    run_section_script(description, SECTION, "aio.py", report)


if __name__ == "__main__":
    main()
