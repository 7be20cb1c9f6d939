"""The figure of RateLimiter's bound, docs/_static/rate-bound.png, from a deterministic run.

    python benchmarks/plot_rate.py                  # writes docs/_static/rate-bound.png
    python benchmarks/plot_rate.py --output x.png

A ``RateLimiter`` on a ``ManualClock`` (time moves only when this script moves it) serves a
bursty workload: requests arrive in bursts and in a trickle, queue in arrival order, and each
clock step the queue's head tries ``try_acquire()`` until one is refused. Every allowed unit's
time is recorded, checked in exact arithmetic against the bound ``burst + t * rate / per``
over every interval, compared with the schedule a perfect GCRA would give (computed here
independently, in fractions), and plotted. Needs matplotlib (the ``plot`` dependency group).
"""

from __future__ import annotations

import argparse
import importlib
import math
from collections import deque
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import allotment
from allotment.testing import ManualClock

RATE = 2
PER = 1
BURST = 5
STEP = Fraction(1, 100)
"""Seconds per clock step; every arrival and every ideal grant falls on a step."""
HORIZON = 30
BURSTS: tuple[tuple[float, int], ...] = ((0, 12), (9, 8), (21, 15))
"""(time, requests) arriving at once."""
TRICKLE = (14, 19, 1)
"""One request per this many seconds, from the first time to the second (below the rate)."""

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "_static" / "rate-bound.png"


def arrivals() -> list[Fraction]:
    """Every request's arrival time, in order."""
    times = [Fraction(at) for at, count in BURSTS for _ in range(count)]
    start, stop, every = TRICKLE
    times += [Fraction(at) for at in range(start, stop, every)]
    return sorted(times)


def run(times: Sequence[Fraction]) -> list[Fraction]:
    """Drive the limiter on a manual clock; the time each unit was allowed, in order."""
    clock = ManualClock()
    limiter = allotment.RateLimiter(RATE, per=PER, burst=BURST, clock=clock)
    pending: deque[Fraction] = deque()
    upcoming = deque(times)
    allowed: list[Fraction] = []
    for step in range(int(HORIZON / STEP) + 1):
        now = step * STEP
        clock.advance(max(0.0, float(now) - clock.now()))
        while upcoming and upcoming[0] <= now:
            pending.append(upcoming.popleft())
        while pending and limiter.try_acquire():
            pending.popleft()
            allowed.append(now)
    return allowed


def ideal(times: Sequence[Fraction]) -> list[Fraction]:
    """A perfect GCRA serving the requests in order, each as early as the bound lets it."""
    interval = Fraction(PER) / RATE
    tolerance = BURST * interval
    tat, previous, granted = Fraction(0), Fraction(0), []
    for arrival in times:
        due = max(arrival, previous, tat + interval - tolerance)
        granted.append(due)
        tat = max(tat, due) + interval
        previous = due
    return granted


def worst_overshoot(granted: Sequence[Fraction]) -> Fraction:
    """The most units by which any interval exceeds ``burst + t * rate / per``: at most zero
    when the bound holds (exact; see ``benchmarks/rate.py`` for the method)."""
    interval = Fraction(PER) / RATE
    tat: Fraction | None = None
    worst = Fraction(-BURST)
    for moment in granted:
        tat = (moment if tat is None else max(tat, moment)) + interval
        worst = max(worst, (tat - moment) / interval - BURST)
    return worst


def plot(times: Sequence[Fraction], allowed: Sequence[Fraction], output: Path) -> None:
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    pyplot = importlib.import_module("matplotlib.pyplot")

    def steps(moments: Sequence[Fraction]) -> tuple[list[float], list[int]]:
        xs, ys = [0.0], [0]
        for count, moment in enumerate(moments, start=1):
            xs.append(float(moment))
            ys.append(count)
        xs.append(float(HORIZON))
        ys.append(len(moments))
        return xs, ys

    figure, axes = pyplot.subplots(figsize=(7.2, 3.8), dpi=100)
    axes.step(*steps(times), where="post", color="0.6", linewidth=1.2, label="requested")
    bound_x = [0.0, float(HORIZON)]
    bound_y = [BURST, BURST + HORIZON * RATE / PER]
    axes.plot(
        bound_x, bound_y, "--", color="tab:red", linewidth=1.2, label="bound: burst + t·rate/per"
    )
    for index, (at, count) in enumerate(BURSTS[1:]):
        # The same bound over intervals that start when a later burst arrives.
        before = sum(1 for moment in allowed if moment < at)
        until = min(float(HORIZON), at + count / RATE * PER + 1)
        axes.plot(
            [at, until],
            [before + BURST, before + BURST + (until - at) * RATE / PER],
            ":",
            color="tab:red",
            linewidth=1.0,
            label="the same bound from a later start" if index == 0 else None,
        )
    axes.step(*steps(allowed), where="post", color="tab:blue", linewidth=1.8, label="allowed")
    best = ideal(times)
    axes.plot(
        [float(moment) for moment in best],
        range(1, len(best) + 1),
        ".",
        color="black",
        markersize=3,
        label="ideal GCRA schedule",
    )
    axes.set_xlim(0, HORIZON)
    axes.set_ylim(0, max(len(times), BURST + HORIZON * RATE / PER) * 1.05)
    axes.set_xlabel("time (s, ManualClock)")
    axes.set_ylabel("units, cumulative")
    axes.set_title(
        f"RateLimiter({RATE}, per={PER}, burst={BURST}): bursty requests, FIFO", fontsize=10
    )
    axes.grid(True, linewidth=0.4, alpha=0.5)
    axes.legend(loc="upper left", fontsize=8, frameon=False)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    pyplot.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"default: {OUTPUT}")
    arguments = parser.parse_args()
    times = arrivals()
    allowed = run(times)
    best = ideal(times)
    overshoot = worst_overshoot(allowed)
    print(f"{len(times)} requests, {len(allowed)} allowed by t = {HORIZON} s")
    print(f"worst overshoot of burst + t * rate / per over any interval: {float(overshoot):g}")
    differ = sum(1 for got, want in zip(allowed, best, strict=False) if got != want)
    missing = len(best) - len(allowed) if len(best) > len(allowed) else 0
    print(f"grants differing from the ideal GCRA schedule: {differ} (+{missing} not reached)")
    plot(times, allowed, arguments.output)
    size = math.ceil(arguments.output.stat().st_size / 1024)
    print(f"wrote {arguments.output} ({size} KB)")


if __name__ == "__main__":
    main()
