"""acquire_all of two managers and a limiter, against the hand-written equivalent.

    python benchmarks/group.py                      # prints the figures
    python benchmarks/group.py --write docs/benchmarks.md

One thread takes ``[(host, 1), (total, 1), (api, 1)]`` (a host's connections, the process's
total, and a rate limit that never makes it wait) and gives the managers back, nanoseconds
per round; the baseline is two nested ``threading.Semaphore`` and a token bucket written by
hand (a lock, a float balance and ``time.monotonic``), which is what the call replaces. Every
figure is a median of repeats interleaved in one process. Nothing here is asserted.
"""

from __future__ import annotations

import platform
import statistics
import sys
import threading
import time
import timeit

import allotment
from common import quiet_gc, run_section_script

HEADING = "## acquire_all of two managers and a limiter"


class _TokenBucket:
    """The smallest honest token bucket: refill by elapsed time, take one under a lock."""

    def __init__(self, rate: float, burst: float) -> None:
        self._lock = threading.Lock()
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._last = time.monotonic()

    def take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now
            if tokens < 1:
                self._tokens = tokens
                return False
            self._tokens = tokens - 1
            return True


def measure(repeats: int, number: int) -> tuple[float, float]:
    """Median ns per round: (acquire_all, hand-written)."""
    host = allotment.ResourceManager(4, name="host")
    total = allotment.ResourceManager(100, name="total")
    api = allotment.RateLimiter(1e9, burst=1_000_000, name="api")
    requests: list[allotment.Request] = [(host, 1), (total, 1), (api, 1)]
    host_semaphore, total_semaphore = threading.Semaphore(4), threading.Semaphore(100)
    bucket = _TokenBucket(1e9, 1_000_000)

    def together() -> None:
        with allotment.acquire_all(requests):
            pass

    def by_hand() -> None:
        with host_semaphore, total_semaphore:
            bucket.take()

    samples: dict[str, list[float]] = {"all": [], "hand": []}
    with quiet_gc():
        for _ in range(repeats):
            samples["all"].append(timeit.timeit(together, number=number) / number * 1e9)
            samples["hand"].append(timeit.timeit(by_hand, number=number) / number * 1e9)
    return statistics.median(samples["all"]), statistics.median(samples["hand"])


def report(quick: bool) -> str:
    repeats, number = (3, 2_000) if quick else (7, 20_000)
    together, by_hand = measure(repeats, number)
    python = f"{platform.python_implementation()} {platform.python_version()}"
    if not sys._is_gil_enabled() if hasattr(sys, "_is_gil_enabled") else False:
        python += " (free-threaded, GIL off)"
    return (
        f"{python}, medians of {repeats} x {number} rounds, ns per round:\n\n"
        "| `acquire_all([(host, 1), (total, 1), (api, 1)])` | two nested "
        "`threading.Semaphore` + a token bucket | ratio |\n"
        "| --: | --: | --: |\n"
        f"| {together:.0f} | {by_hand:.0f} | {together / by_hand:.2f} |\n"
    )


if __name__ == "__main__":
    run_section_script(__doc__.splitlines()[0] if __doc__ else None, HEADING, "group.py", report)
