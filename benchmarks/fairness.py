"""Benchmarks: strict FIFO against bounded fairness against ``threading.Semaphore``, contended.

    python benchmarks/fairness.py                 # full run (about a minute), prints the report
    python benchmarks/fairness.py --quick         # seconds, for a smoke test
    python benchmarks/fairness.py --write docs/benchmarks.md   # this Python's section of the page
    PYTHON_GIL=0 python3.13t benchmarks/fairness.py --write docs/benchmarks.md

Eight threads share a capacity of two. Each takes a unit, works while holding it (no work, or
50 us of CPU: a busy loop on ``perf_counter``), gives it back, and at once asks again, for a
fixed time. Reported per implementation: operations per second (and the ratio to
``threading.Semaphore``'s, measured in the same repeat), busiest/least (the most operations one
thread finished over the fewest), and the longest wait for a unit, in milliseconds. Medians
over the repeats; the implementations are interleaved within each repeat. Nothing here is
asserted: the figures are reported, not tested.
"""

from __future__ import annotations

import platform
import statistics
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import allotment
from common import run_section_script

THREADS = 8
CAPACITY = 2
BOUND = 0.001
WORKS = {"no work": 0.0, "50 us of CPU": 50e-6}

Enter = Callable[[], AbstractContextManager[Any]]


def _threading(capacity: int) -> Enter:
    semaphore = threading.Semaphore(capacity)
    return lambda: semaphore


def _semaphore(fairness: allotment.Fairness) -> Callable[[int], Enter]:
    def make(capacity: int) -> Enter:
        semaphore = allotment.Semaphore(capacity, fairness=fairness)
        return lambda: semaphore

    return make


def _manager(fairness: allotment.Fairness) -> Callable[[int], Enter]:
    def make(capacity: int) -> Enter:
        manager = allotment.ResourceManager(capacity, fairness=fairness)
        return lambda: manager.acquire(1)

    return make


IMPLEMENTATIONS: dict[str, Callable[[int], Enter]] = {
    "threading.Semaphore": _threading,
    "allotment.Semaphore, strict": _semaphore("strict"),
    "allotment.Semaphore, bounded": _semaphore("bounded"),
    "ResourceManager.acquire(1), strict": _manager("strict"),
    "ResourceManager.acquire(1), bounded": _manager("bounded"),
}


@dataclass
class Sample:
    per_second: float
    busiest_over_least: float
    longest_wait_ms: float


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def measure(enter: Enter, work: float, duration: float) -> Sample:
    counts = [0] * THREADS
    longest = [0.0] * THREADS
    start = threading.Barrier(THREADS + 1)
    stop = threading.Event()
    clock = time.perf_counter

    def worker(index: int) -> None:
        done = 0
        worst = 0.0
        start.wait()
        while not stop.is_set():
            asked = clock()
            with enter():
                waited = clock() - asked
                if work:
                    _spin(work)
            worst = max(worst, waited)
            done += 1
        counts[index] = done
        longest[index] = worst

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(THREADS)]
    for thread in threads:
        thread.start()
    start.wait()
    began = clock()
    time.sleep(duration)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = clock() - began
    return Sample(sum(counts) / elapsed, max(counts) / max(1, min(counts)), max(longest) * 1e3)


def _python() -> str:
    if not sysconfig.get_config_var("Py_GIL_DISABLED"):
        return platform.python_version()
    gil = "with the GIL" if sys._is_gil_enabled() else "without the GIL"  # type: ignore[attr-defined]
    return f"{platform.python_version()} free-threaded ({gil})"


def report(quick: bool) -> str:
    repeats, duration = (2, 0.2) if quick else (5, 1.0)
    lines = [
        f"Produced by `python benchmarks/fairness.py` on {time.strftime('%Y-%m-%d')}, Python "
        f"{_python()}, {platform.machine()}, {THREADS} threads on a capacity of {CAPACITY}, "
        f"bound {BOUND * 1e3:g} ms; medians of {repeats} repeats of {duration:g} s.",
    ]
    for label, work in WORKS.items():
        samples: dict[str, list[Sample]] = {name: [] for name in IMPLEMENTATIONS}
        ratios: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
        for _ in range(repeats):
            baseline = None
            for name, make in IMPLEMENTATIONS.items():
                sample = measure(make(CAPACITY), work, duration)
                samples[name].append(sample)
                baseline = sample.per_second if baseline is None else baseline
                ratios[name].append(sample.per_second / baseline)
        lines += [
            "",
            f"**{label}**",
            "",
            "| implementation | operations per second | ratio to threading | busiest/least "
            "| longest wait (ms) |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, taken in samples.items():
            lines.append(
                f"| {name} | {statistics.median(s.per_second for s in taken):,.0f} "
                f"| {statistics.median(ratios[name]):.2f} "
                f"| {statistics.median(s.busiest_over_least for s in taken):.2f} "
                f"| {statistics.median(s.longest_wait_ms for s in taken):.1f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        version += "t"
    run_section_script(
        __doc__.splitlines()[0] if __doc__ else None,
        f"## Bounded fairness, Python {version}",
        f"fairness.py on Python {version}",
        report,
    )
