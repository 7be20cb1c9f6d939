"""What observing costs: the uncontended paths with no observer, with a Recorder, and with a
plain callable observer.

Run ``python benchmarks/observe.py`` (``--write docs/benchmarks.md`` to update its section).
Each case is timed in batches, the cases interleaved within each repeat; an observer is
installed just before its case's batch and removed after, so the other cases run with none.

``--plain`` times only the rows without an observer, with nothing but the API every version
of allotment has: run it with ``PYTHONPATH`` pointing at an older tree to compare with the
code before events existed (see the section in ``docs/benchmarks.md``).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import statistics
import sys
import threading
import time
import timeit
from collections.abc import Callable
from typing import Any

import allotment
from common import quiet_gc, replace_figures

HEADING = "## Observing: what events cost"
SCRIPT = "observe.py"

Case = tuple[str, Callable[[], object], str]
"""A row's label, what is timed, and which observer is installed for it."""

FLOOR = "the records alone"
"""The floor row's observer kind: no observer, the timed block keeps two records itself."""
FOLDED = "one record per lease"
"""The same with one record for both events, completed in place at the release."""
_floor_ring: collections.deque[tuple[object, ...]] = collections.deque(maxlen=100_000)
_floor_ticks = itertools.count()


def floor_case(pool: allotment.ResourceManager[int], *, folded: bool) -> Callable[[], object]:
    """The plain block plus only what its two events must cost a recorder: a request number,
    the thread's owner (a ``threading.local`` read), two clock reads, the grant's full record
    and the release's compact one, each appended to a bounded ring of the same size and
    counted. No checks, no observed lease: what any pure-Python design pays at the least.
    ``folded``: one record per lease instead, a list appended at the grant and completed in
    place at the release (the proposal measured in stop 30)."""
    append, tick = _floor_ring.append, _floor_ticks.__next__
    now_ns = time.monotonic_ns
    new_id = itertools.count(1).__next__
    owners = threading.local()
    owners.owner = ("MainThread", threading.get_ident())

    def with_pool_and_its_records() -> None:
        with pool.acquire(1):
            granted = (
                "granted", "pool", now_ns(), owners.owner, 1, new_id(), 0.0, None, None, None,
                1, None, False, None,
            )  # fmt: skip
            append(granted)
            tick()
        append((None, granted, now_ns(), 1))
        tick()

    def with_pool_and_its_one_record() -> None:
        with pool.acquire(1):
            record = [
                "granted", "pool", now_ns(), owners.owner, 1, new_id(), 0.0, None, None, None,
                1, None, False, None, None,
            ]  # fmt: skip
            append(record)  # type: ignore[arg-type]
            tick()
        record[14] = now_ns()
        tick()  # two events: counted twice

    return with_pool_and_its_one_record if folded else with_pool_and_its_records


def cases(plain_only: bool) -> list[Case]:
    baseline = threading.Semaphore()
    pool = allotment.ResourceManager(1)
    node = allotment.ResourceManager({"gpu": 4, "ram_gb": 64})
    limiter = allotment.RateLimiter(1e12, burst=1_000_000_000)

    def with_threading() -> None:
        with baseline:
            pass

    def with_pool() -> None:
        with pool.acquire(1):
            pass

    def with_node() -> None:
        with node.acquire({"gpu": 1, "ram_gb": 8}):
            pass

    def try_rate() -> None:
        limiter.try_acquire()

    rows: list[Case] = [
        ("`with threading.Semaphore()`", with_threading, "none"),
        ("`with pool.acquire(1)`", with_pool, "none"),
        ('`with node.acquire({"gpu": 1, "ram_gb": 8})`', with_node, "none"),
        ("`limiter.try_acquire()`", try_rate, "none"),
    ]
    if plain_only:
        return rows
    rows.append(("`with pool.acquire(1)`", floor_case(pool, folded=False), FLOOR))
    rows.append(("`with pool.acquire(1)`", floor_case(pool, folded=True), FOLDED))
    for label, function in (
        ("`with pool.acquire(1)`", with_pool),
        ('`with node.acquire({"gpu": 1, "ram_gb": 8})`', with_node),
        ("`limiter.try_acquire()`", try_rate),
    ):
        rows.append((label, function, "recorder"))
        rows.append((label, function, "callable"))
    return rows


def measure(rows: list[Case], repeats: int, number: int) -> dict[tuple[str, str], float]:
    samples: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    with quiet_gc():
        for _ in range(repeats):
            for label, function, observer_kind in rows:
                observer = _observer(observer_kind)
                _floor_ring.clear()  # as a new recorder's: the floor row fills it afresh
                if observer is not None:
                    allotment.add_observer(observer)
                try:
                    seconds = timeit.timeit(function, number=number)
                finally:
                    if observer is not None:
                        allotment.remove_observer(observer)
                samples[label, observer_kind].append(seconds / number * 1e9)
    return {key: statistics.median(values) for key, values in samples.items()}


def _observer(kind: str) -> Any:
    if kind == "recorder":
        return allotment.Recorder(capacity=100_000)
    if kind == "callable":
        kept: collections.deque[object] = collections.deque(maxlen=100_000)
        return kept.append
    return None


def report(quick: bool, plain_only: bool) -> str:
    repeats, number = (3, 2_000) if quick else (15, 20_000)
    medians = measure(cases(plain_only), repeats, number)
    version = ".".join(map(str, sys.version_info[:3]))
    lines = [
        f"Python {version}; nanoseconds per operation, uncontended, one thread; the median of "
        f"{repeats} repeats of {number:,} operations, the cases interleaved.",
        "",
    ]
    if plain_only:
        lines += ["| operation | no observer |", "| --- | ---: |"]
        for (label, _kind), value in medians.items():
            lines.append(f"| {label} | {value:.0f} |")
        return "\n".join(lines) + "\n"
    lines += [
        "| operation | no observer | with a `Recorder` | ratio | with a callable observer "
        "| ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label in dict.fromkeys(label for label, _kind in medians):
        plain = medians[label, "none"]
        recorder = medians.get((label, "recorder"))
        other = medians.get((label, "callable"))
        if recorder is None or other is None:
            lines.append(f"| {label} | {plain:.0f} | — | — | — | — |")
            continue
        lines.append(
            f"| {label} | {plain:.0f} | {recorder:.0f} | {recorder / plain:.2f}x "
            f"| {other:.0f} | {other / plain:.2f}x |"
        )
    floor = medians.get(("`with pool.acquire(1)`", FLOOR))
    folded = medians.get(("`with pool.acquire(1)`", FOLDED))
    if floor is not None and folded is not None:
        plain = medians["`with pool.acquire(1)`", "none"]
        lines += [
            "",
            f"The floor of `with pool.acquire(1)` with a `Recorder` (the block keeping its "
            f"records itself, no observer: `floor_case`): two records {floor:.0f} ns, "
            f"{floor / plain:.2f}x; one record per lease {folded:.0f} ns, {folded / plain:.2f}x.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for smoke tests")
    parser.add_argument("--plain", action="store_true", help="only the rows with no observer")
    parser.add_argument("--write", metavar="PATH", help="also write the figures into PATH")
    arguments = parser.parse_args()
    figures = report(arguments.quick, arguments.plain)
    print(f"{HEADING}\n\n{figures}", end="")
    if arguments.write:
        with open(arguments.write, encoding="utf-8") as file:
            page = file.read()
        with open(arguments.write, "w", encoding="utf-8") as file:
            file.write(replace_figures(page, figures, HEADING, SCRIPT))


if __name__ == "__main__":
    main()
