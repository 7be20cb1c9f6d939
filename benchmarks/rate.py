"""Benchmarks: allotment's rate limiters against other Python rate limiters, in one run.

    python benchmarks/rate.py                 # full run (about two minutes), prints the report
    python benchmarks/rate.py --quick         # seconds, for a smoke test
    python benchmarks/rate.py --write docs/benchmarks.md   # also update the page

The other libraries are optional (the ``bench`` dependency group installs them); any that does
not import is left out with a note, so the script runs with allotment alone.

Three measurements. *Cost*: nanoseconds per call on one thread, with a limit so high that no
call is ever refused or waits; medians over several repeats, the limiters interleaved.
*Accuracy*: a few threads call a blocking acquire as fast as they are let through for a few
seconds; every allowed unit's time is recorded and checked against the limiter's promise,
exactly, over every pair of units. *Fairness*: more threads, the same way; how evenly the
units were shared out. Nothing here is asserted: the figures are reported, not tested.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import importlib
import importlib.metadata
import math
import os
import platform
import statistics
import threading
import time
import timeit
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import allotment
from common import quiet_gc, run_section_script

Kind = Literal["bucket", "window"]

RATE = 200
"""Units per second in the accuracy and fairness runs."""
BURSTS = (1, 10)
"""The bucket limiters' bursts in the accuracy runs (the fairness runs use the last)."""
TOLERANCE = 0.001
"""Seconds of slack before a unit counts as early: the time of a grant is read by the thread
after the call returns, so it is late by up to a scheduling delay, which can make two grants
look closer together than the limiter let them through."""
SECTION = "## Rate limiters"


@dataclass(frozen=True)
class Shape:
    """What a limiter promises. A *bucket* (GCRA, token or leaky bucket): at most
    ``burst + t * rate / per`` units in any interval of length ``t``. A *window*: at most
    ``rate`` units in any window of length ``per``."""

    kind: Kind
    rate: int
    per: float = 1.0
    burst: int = 1

    @property
    def interval(self) -> float:
        """Seconds per unit at the sustained rate."""
        return self.per / self.rate

    def describe(self) -> str:
        if self.kind == "bucket":
            return f"{self.rate}/s, burst {self.burst}"
        return f"{self.rate} per {self.per:g} s window"


@dataclass
class Built:
    """One fresh limiter, seen through what the benchmark calls on it."""

    acquire: Callable[[], object] | None = None
    """Returns once a unit is allowed (blocking)."""
    acquire_async: Callable[[], Awaitable[object]] | None = None
    """The same, for an event loop."""
    try_acquire: Callable[[], object] | None = None
    """Takes a unit if allowed now; never waits."""
    close: Callable[[], object] = lambda: None


@dataclass(frozen=True)
class Subject:
    """A limiter to compare: a label (Markdown), its kind, and how to build one."""

    label: str
    kind: Kind
    module: str
    """The module that must import for the subject to run."""
    build: Callable[[Shape], Built]
    notes: tuple[str, ...] = ()


NOTES: dict[str, str] = {
    "async": "asyncio only: tasks in one event loop stand in for threads, and the blocking "
    "call is `await limiter.acquire()`.",
    "token-bucket": "no blocking call: `consume()`, and when refused, sleep for the missing "
    "tokens over the rate (read with `get_token_count()`), then retry, as the `limiter` "
    "package does on top of it.",
    "limits": "no blocking call: `hit()`, and when refused, sleep until "
    "`get_window_stats().reset_time`, then retry.",
    "pyrate": "the blocking `try_acquire()` sleeps the computed wait plus `buffer_ms` "
    "(default 50 ms) before it tries again.",
    "fixed": "a fixed window opens at the first hit and closes `per` later, so up to twice "
    "the limit can pass within `per` around the moment it closes (documented); under "
    "saturation from the start, as here, that does not show. Its lateness is not computed.",
    "limiter": "built on `token-bucket`; `with limiter:` sleeps for the missing tokens over "
    "the rate and retries.",
}
MARKS = "¹²³⁴⁵⁶⁷⁸⁹"


# -- the limiters --------------------------------------------------------------------------


def _checked(call: Callable[[], object]) -> Callable[[], None]:
    """A blocking call that answers ``False`` when it gives up: raise instead, so that a
    refusal is never counted as an allowed unit."""

    def acquire() -> None:
        if call() is False:
            raise RuntimeError("the blocking call returned False")

    return acquire


def _retrying(attempt: Callable[[], object], wait: Callable[[], float]) -> Callable[[], None]:
    """Blocking, for a library without a blocking call: try, and when refused, sleep as long
    as the library says the next unit is away, then try again."""

    def acquire() -> None:
        while not attempt():
            time.sleep(max(0.0, wait()))

    return acquire


def _allotment_rate(shape: Shape) -> Built:
    limiter = allotment.RateLimiter(shape.rate, per=shape.per, burst=shape.burst)
    return Built(acquire=limiter.acquire, try_acquire=limiter.try_acquire)


def _allotment_window(shape: Shape) -> Built:
    limiter = allotment.WindowLimiter(shape.rate, per=shape.per)
    return Built(acquire=limiter.acquire, try_acquire=limiter.try_acquire)


def _pyrate(limiter: Any) -> Built:
    def attempt() -> object:
        return limiter.try_acquire("bench", blocking=False)

    return Built(
        acquire=_checked(lambda: limiter.try_acquire("bench")),
        try_acquire=attempt,
        close=limiter.close,
    )


def _pyrate_bucket(shape: Shape) -> Built:
    pyrate = importlib.import_module("pyrate_limiter")
    rate = pyrate.Rate(shape.rate, round(shape.per * 1000), burst=shape.burst)
    return _pyrate(pyrate.Limiter(pyrate.StateBucket([rate], algorithm=pyrate.TokenBucket())))


def _pyrate_window(shape: Shape) -> Built:
    pyrate = importlib.import_module("pyrate_limiter")
    return _pyrate(pyrate.Limiter(pyrate.Rate(shape.rate, round(shape.per * 1000))))


def _aiolimiter(shape: Shape) -> Built:
    module = importlib.import_module("aiolimiter")
    # A leaky bucket of max_rate units draining max_rate per time_period.
    limiter = module.AsyncLimiter(shape.burst, shape.burst * shape.interval)
    acquire: Callable[[], Awaitable[object]] = limiter.acquire
    return Built(acquire_async=acquire)


def _token_bucket(shape: Shape) -> Built:
    module = importlib.import_module("token_bucket")
    storage = module.MemoryStorage()
    per_second = shape.rate / shape.per
    limiter = module.Limiter(per_second, shape.burst, storage)

    def attempt() -> bool:
        return bool(limiter.consume(b"bench"))

    def wait() -> float:
        return (1 - float(storage.get_token_count(b"bench"))) / per_second

    return Built(acquire=_retrying(attempt, wait), try_acquire=attempt)


def _limiter(shape: Shape) -> Built:
    module = importlib.import_module("limiter")
    limiter = module.Limiter(rate=shape.rate / shape.per, capacity=shape.burst)

    def acquire() -> None:
        with limiter:
            pass

    return Built(acquire=acquire)


def _limits(strategy_name: str) -> Callable[[Shape], Built]:
    def build(shape: Shape) -> Built:
        limits = importlib.import_module("limits")
        strategies = importlib.import_module("limits.strategies")
        storage = importlib.import_module("limits.storage")
        if shape.per != int(shape.per) or shape.per < 1:
            raise ValueError("limits counts whole seconds")
        item = limits.RateLimitItemPerSecond(shape.rate, int(shape.per))
        strategy = getattr(strategies, strategy_name)(storage.MemoryStorage())

        def attempt() -> bool:
            return bool(strategy.hit(item, "bench"))

        def wait() -> float:
            return float(strategy.get_window_stats(item, "bench").reset_time) - time.time()

        return Built(acquire=_retrying(attempt, wait), try_acquire=attempt)

    return build


SUBJECTS = (
    Subject("allotment `RateLimiter`", "bucket", "allotment", _allotment_rate),
    Subject(
        "pyrate-limiter `Limiter`, `TokenBucket`",
        "bucket",
        "pyrate_limiter",
        _pyrate_bucket,
        ("pyrate",),
    ),
    Subject("aiolimiter `AsyncLimiter`", "bucket", "aiolimiter", _aiolimiter, ("async",)),
    Subject("token-bucket `Limiter`", "bucket", "token_bucket", _token_bucket, ("token-bucket",)),
    Subject("limiter `Limiter`", "bucket", "limiter", _limiter, ("limiter",)),
    Subject("allotment `WindowLimiter`", "window", "allotment", _allotment_window),
    Subject(
        "pyrate-limiter `Limiter`, `InMemoryBucket`",
        "window",
        "pyrate_limiter",
        _pyrate_window,
        ("pyrate",),
    ),
    Subject(
        "limits `MovingWindowRateLimiter`",
        "window",
        "limits",
        _limits("MovingWindowRateLimiter"),
        ("limits",),
    ),
    Subject(
        "limits `FixedWindowRateLimiter`",
        "window",
        "limits",
        _limits("FixedWindowRateLimiter"),
        ("limits", "fixed"),
    ),
)
DISTRIBUTIONS = {
    "allotment": "allotment",
    "pyrate_limiter": "pyrate-limiter",
    "aiolimiter": "aiolimiter",
    "token_bucket": "token-bucket",
    "limiter": "limiter",
    "limits": "limits",
}
"""Each subject's module and the distribution that installs it."""


def _available(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


# -- 1. uncontended cost ---------------------------------------------------------------------


def _seconds_sync(call: Callable[[], object], number: int) -> float:
    return timeit.timeit(call, number=number)


def _seconds_async(call: Callable[[], Awaitable[object]], number: int) -> float:
    async def batch() -> float:
        started = time.perf_counter()
        for _ in range(number):
            await call()
        return time.perf_counter() - started

    return asyncio.run(batch())


HUGE = 10**9
"""A limit no run comes near: nothing is refused and nothing waits."""


@dataclass(frozen=True)
class Cost:
    subject: Subject
    try_ns: float | None
    acquire_ns: float | None


def uncontended(subjects: Sequence[Subject], repeats: int, number: int) -> list[Cost]:
    """Nanoseconds per non-blocking and per blocking call that is allowed at once. Each
    repeat times ``number`` calls on a fresh limiter (so a window limiter's log never holds
    more than ``number`` entries), the subjects interleaved."""
    samples: dict[tuple[str, str], list[float]] = {}
    with quiet_gc():
        for _ in range(repeats):
            for subject in subjects:
                shape = Shape(subject.kind, HUGE, 1.0, HUGE)
                for operation in ("try", "acquire"):
                    built = subject.build(shape)
                    try:
                        if operation == "try" and built.try_acquire is not None:
                            seconds = _seconds_sync(built.try_acquire, number)
                        elif operation == "acquire" and built.acquire is not None:
                            seconds = _seconds_sync(built.acquire, number)
                        elif operation == "acquire" and built.acquire_async is not None:
                            seconds = _seconds_async(built.acquire_async, number)
                        else:
                            continue
                    finally:
                        built.close()
                    key = (subject.label, operation)
                    samples.setdefault(key, []).append(seconds / number * 1e9)

    def median(subject: Subject, operation: str) -> float | None:
        values = samples.get((subject.label, operation))
        return statistics.median(values) if values else None

    return [Cost(s, median(s, "try"), median(s, "acquire")) for s in subjects]


# -- 2. accuracy and fairness under saturation ---------------------------------------------


MARGIN = 0.05
"""Seconds the callers go on past the measured span, so that its end is saturated too."""
GRACE = 0.25
"""Seconds after that to let the callers finish their last call. A caller still blocked then
(a window limiter holds them until its next window) is left behind: its units come after
the span and are not counted, and it returns from its last call soon after."""


@dataclass
class Run:
    """Every allowed unit's time (``time.monotonic``), per caller; or what went wrong."""

    stamps: list[list[float]]
    error: str | None = None


def _threads(acquire: Callable[[], object], callers: int, seconds: float) -> Run:
    stamps: list[list[float]] = [[] for _ in range(callers)]
    errors: list[str] = []
    barrier = threading.Barrier(callers + 1)
    stop = [math.inf]

    def caller(mine: list[float]) -> None:
        barrier.wait()
        until, now = stop[0], time.monotonic
        try:
            while True:
                acquire()
                moment = now()
                mine.append(moment)
                if moment >= until:
                    return
        except Exception as error:
            errors.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=caller, args=(mine,), daemon=True) for mine in stamps]
    for thread in threads:
        thread.start()
    stop[0] = time.monotonic() + seconds + MARGIN
    barrier.wait()
    for thread in threads:
        thread.join(timeout=max(0.0, stop[0] + GRACE - time.monotonic()))
    return Run([list(mine) for mine in stamps], errors[0] if errors else None)


def _tasks(acquire: Callable[[], Awaitable[object]], callers: int, seconds: float) -> Run:
    stamps: list[list[float]] = [[] for _ in range(callers)]

    async def caller(mine: list[float], until: float) -> None:
        now = time.monotonic
        while True:
            await acquire()
            moment = now()
            mine.append(moment)
            if moment >= until:
                return

    async def main() -> None:
        until = time.monotonic() + seconds + MARGIN
        callers_done = asyncio.gather(*(caller(mine, until) for mine in stamps))
        # Past the grace, the callers still waiting are cancelled (threads are left behind).
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(callers_done, seconds + MARGIN + GRACE)

    try:
        asyncio.run(main())
    except Exception as error:
        return Run(stamps, f"{type(error).__name__}: {error}")
    return Run(stamps)


def saturate(subject: Subject, shape: Shape, callers: int, seconds: float) -> Run:
    """``callers`` threads (tasks, for an asyncio limiter) on one fresh limiter, each calling
    its blocking acquire in a loop for ``seconds`` (and ``MARGIN``)."""
    built = subject.build(shape)
    try:
        if built.acquire is not None:
            return _threads(built.acquire, callers, seconds)
        if built.acquire_async is not None:
            return _tasks(built.acquire_async, callers, seconds)
        raise ValueError(f"{subject.label} has no blocking call")
    finally:
        built.close()


@dataclass(frozen=True)
class Accuracy:
    """What a saturated run allowed, against ``shape``'s promise."""

    allowed: int
    ideal: int
    most_in_window: int
    bound: int
    early: int
    excess: float
    lateness: tuple[float, float] | None  # p50, p99 in seconds


def _span(shape: Shape, seconds: float) -> float:
    """The measured span: ``seconds`` and half a unit's interval, so that no ideal grant
    falls on its end (a bucket's every interval, a window's every period)."""
    return seconds + shape.interval / 2


def ideal_count(shape: Shape, span: float) -> int:
    """Units the promise allows in ``[t0, t0 + span]`` from a full start."""
    if shape.kind == "bucket":
        return shape.burst + math.floor(span / shape.interval)
    return shape.rate * (math.floor(span / shape.per) + 1)


def ideal_time(shape: Shape, start: float, index: int) -> float:
    """When the ``index``-th unit (from 0) is due under saturation from ``start``."""
    if shape.kind == "bucket":
        return start + max(0, index - shape.burst + 1) * shape.interval
    return start + (index // shape.rate) * shape.per


def most_in_window(stamps: Sequence[float], length: float) -> int:
    """The most units in any window ``(t - length, t]`` (``stamps`` sorted)."""
    most, first = 0, 0
    for last, moment in enumerate(stamps):
        while stamps[first] <= moment - length:
            first += 1
        most = max(most, last - first + 1)
    return most


def bucket_excess(stamps: Sequence[float], shape: Shape, tolerance: float) -> tuple[int, float]:
    """Units allowed before the bucket bound permits, and the worst overshoot in units.

    With ``tat`` run over the actual grant times (``tat = max(tat, t) + interval``, from
    minus infinity), ``tat - t_j`` is the largest ``(j - i + 1) * interval - (t_j - t_i)`` over
    every earlier unit ``i``: so unit ``j`` broke ``burst + t * rate / per`` for some interval
    ending at it exactly when ``tat - t_j > burst * interval``."""
    interval, allowance = shape.interval, shape.burst * shape.interval
    tat, early, worst = -math.inf, 0, 0.0
    for moment in stamps:
        tat = max(tat, moment) + interval
        ahead = tat - moment
        if ahead > allowance + tolerance:
            early += 1
        worst = max(worst, (ahead - allowance) / interval)
    return early, worst


def window_excess(stamps: Sequence[float], shape: Shape, tolerance: float) -> tuple[int, float]:
    """Units that made some window of length ``per`` (less ``tolerance``) hold more than the
    limit, and the worst overshoot in units over windows of the full length."""
    early, first = 0, 0
    for last, moment in enumerate(stamps):
        while stamps[first] <= moment - shape.per + tolerance:
            first += 1
        if last - first + 1 > shape.rate:
            early += 1
    return early, float(max(0, most_in_window(stamps, shape.per) - shape.rate))


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.floor(fraction * len(ordered)))]


def judge(run: Run, shape: Shape, seconds: float, schedule: bool) -> Accuracy:
    """Check every grant of ``run`` against ``shape``. ``schedule``: the limiter serves the
    units at the times the promise allows from the first grant (not a fixed window), so
    lateness against that ideal means something."""
    stamps = sorted(moment for mine in run.stamps for moment in mine)
    span = _span(shape, seconds)
    start = stamps[0]
    counted = stamps[: bisect.bisect_right(stamps, start + span)]
    if shape.kind == "bucket":
        early, excess = bucket_excess(stamps, shape, TOLERANCE)
        # A window shorter than ``per`` holds fewer than burst + rate units.
        bound = math.ceil(shape.burst + shape.rate) - 1
    else:
        early, excess = window_excess(stamps, shape, TOLERANCE)
        bound = shape.rate
    lateness = None
    if schedule:
        late = [moment - ideal_time(shape, start, i) for i, moment in enumerate(counted)]
        lateness = (_percentile(late, 0.5), _percentile(late, 0.99))
    return Accuracy(
        allowed=len(counted),
        ideal=ideal_count(shape, span),
        most_in_window=most_in_window(stamps, shape.per),
        bound=bound,
        early=early,
        excess=excess,
        lateness=lateness,
    )


@dataclass(frozen=True)
class Fairness:
    allowed: int
    ideal: int
    least: int
    most: int
    jain: float


def share(run: Run, shape: Shape, seconds: float) -> Fairness:
    """How evenly the callers shared the units allowed in the steady state: from half a
    period after the first grant to the end of the span. The start (a full bucket, the
    first window) goes to whichever thread runs first, fair or not, and is left out."""
    start = min(moment for mine in run.stamps for moment in mine)
    skipped, span = _span(shape, shape.per / 2), _span(shape, seconds)
    begin, end = start + skipped, start + span
    counts = [sum(1 for moment in mine if begin < moment <= end) for mine in run.stamps]
    squares = sum(count * count for count in counts)
    jain = sum(counts) ** 2 / (len(counts) * squares) if squares else math.nan
    ideal = ideal_count(shape, span) - ideal_count(shape, skipped)
    return Fairness(sum(counts), ideal, min(counts), max(counts), jain)


# -- the report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    quick: bool
    repeats: int
    number: int
    seconds: float
    bursts: tuple[int, ...]
    fairness_seconds: float
    callers: int = 4
    fairness_callers: int = 8

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:
            return cls(True, 5, 1_000, 0.3, BURSTS[-1:], 0.6)
        return cls(False, 21, 5_000, 4.5, BURSTS, 2.5)


@dataclass
class Footnotes:
    """Footnote marks, numbered in order of first use."""

    used: list[str] = field(default_factory=list)

    def mark(self, subject: Subject) -> str:
        marks = []
        for note in subject.notes:
            if note not in self.used:
                self.used.append(note)
            marks.append(MARKS[self.used.index(note)])
        return f"{subject.label}{''.join(marks)}"

    def lines(self) -> list[str]:
        return [f"{MARKS[i]} {NOTES[note]}" for i, note in enumerate(self.used)]


def _ns(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _ratio(value: float | None, base: float | None) -> str:
    return "—" if value is None or base is None else f"{value / base:.2f}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def cost_part(subjects: Sequence[Subject], settings: Settings, notes: Footnotes) -> list[str]:
    costs = uncontended(subjects, settings.repeats, settings.number)
    base = {cost.subject.kind: cost for cost in costs if cost.subject.module == "allotment"}
    lines = [
        "### Uncontended cost",
        "",
        f"One thread, a limit of {HUGE:,} per second so that every call is allowed at once; "
        f"nanoseconds per call, the median of {settings.repeats} repeats of "
        f"{settings.number:,} calls, each repeat on a fresh limiter (so a sliding log holds "
        f"at most {settings.number:,} entries), the limiters interleaved. *Non-blocking*: a "
        "call that answers at once whether the unit was taken; *blocking*: one that would "
        "wait if it had to. Ratios are to allotment's limiter of the same kind.",
        "",
        "| limiter | non-blocking ns | ratio | blocking ns | ratio |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for cost in costs:
        own = base.get(cost.subject.kind)
        lines.append(
            f"| {notes.mark(cost.subject)} | {_ns(cost.try_ns)} | "
            f"{_ratio(cost.try_ns, own.try_ns if own else None)} | {_ns(cost.acquire_ns)} | "
            f"{_ratio(cost.acquire_ns, own.acquire_ns if own else None)} |"
        )
    return lines


def _shapes(subject: Subject, bursts: Sequence[int]) -> list[Shape]:
    if subject.kind == "bucket":
        return [Shape("bucket", RATE, 1.0, burst) for burst in bursts]
    return [Shape("window", RATE, 1.0)]


def accuracy_part(subjects: Sequence[Subject], settings: Settings, notes: Footnotes) -> list[str]:
    seconds, callers = settings.seconds, settings.callers
    lines = [
        "### Accuracy under saturation",
        "",
        f"{callers} threads call the blocking acquire in a loop for {seconds:g} s on a fresh "
        "limiter; each records `time.monotonic()` when its call returns, and that is the "
        "time the unit counts at: when the caller could act on it. *Allowed*: units in the "
        "span from the first grant, against the most the promise allows from a full start "
        "(for a bucket, its burst and the span's worth at the rate; for a window, the limit "
        "once per window started in the span). *Most in 1 s*: the most units in any "
        "half-open window of one second, against the most the promise allows there (for a "
        "bucket, one less than burst + rate). *Early*: units that end an interval holding "
        "more than the promise allows (for a bucket, the burst and t seconds' worth at the "
        "rate in any interval of t seconds; for a window, the limit in any window), checked "
        f"exactly over every interval, with {TOLERANCE * 1e3:g} ms of slack for the delay "
        "between a grant and its recorded time. A single unit returned late, with the ones "
        "after it on time, makes every later unit end such an interval: the count is of "
        "units, not of incidents. *Worst*: the largest overshoot over any interval, in units "
        "(no slack). *Lateness*: each unit's time less the time the promise would have let it "
        "through under saturation from the first grant, median and 99th percentile in ms "
        "(it grows with the run when a limiter falls behind).",
        "",
        "| limiter | promise | allowed / ideal | most in 1 s / bound | early | worst (units) | "
        "lateness p50 / p99 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for subject in subjects:
        for shape in _shapes(subject, settings.bursts):
            label = f"| {notes.mark(subject)} | {shape.describe()} |"
            run = saturate(subject, shape, callers, seconds)
            if run.error is not None or not any(run.stamps):
                lines.append(f"{label} failed: {run.error or 'nothing allowed'} |{' — |' * 5}")
                continue
            schedule = "fixed" not in subject.notes
            result = judge(run, shape, seconds, schedule)
            late = (
                "—"
                if result.lateness is None
                else f"{_ms(result.lateness[0])} / {_ms(result.lateness[1])}"
            )
            lines.append(
                f"{label} {result.allowed} / {result.ideal} | "
                f"{result.most_in_window} / {result.bound} | {result.early} | "
                f"{result.excess:.2f} | {late} |"
            )
    return lines


def fairness_part(subjects: Sequence[Subject], settings: Settings, notes: Footnotes) -> list[str]:
    seconds, callers = settings.fairness_seconds, settings.fairness_callers
    lines = [
        "### Fairness",
        "",
        f"{callers} threads (tasks, for asyncio) on one fresh limiter for {seconds:g} s, as "
        "above; the units each was allowed in the steady state, from half a second after the "
        "first grant to the end of the span (the first burst or window goes to whichever "
        "thread runs first, and is left out). Jain's index is 1.0 when all got as many "
        f"and 1/{callers} when one got everything.",
        "",
        "| limiter | promise | allowed / ideal | least / most per thread | Jain's index |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for subject in subjects:
        shape = _shapes(subject, settings.bursts)[-1]
        label = f"| {notes.mark(subject)} | {shape.describe()} |"
        run = saturate(subject, shape, callers, seconds)
        if run.error is not None or not any(run.stamps):
            lines.append(f"{label} failed: {run.error or 'nothing allowed'} |{' — |' * 3}")
            continue
        result = share(run, shape, seconds)
        lines.append(
            f"{label} {result.allowed} / {result.ideal} | {result.least} / {result.most} | "
            f"{'—' if math.isnan(result.jain) else f'{result.jain:.3f}'} |"
        )
    return lines


def _versions(subjects: Sequence[Subject]) -> str:
    names = dict.fromkeys(DISTRIBUTIONS[subject.module] for subject in subjects)
    return ", ".join(f"{name} {importlib.metadata.version(name)}" for name in names)


def report(quick: bool) -> str:
    """The figures, in Markdown, without the section's heading."""
    settings = Settings.for_mode(quick)
    subjects = [subject for subject in SUBJECTS if _available(subject.module)]
    missing = sorted({DISTRIBUTIONS[s.module] for s in SUBJECTS if not _available(s.module)})
    notes = Footnotes()
    parts = [
        cost_part(subjects, settings, notes),
        accuracy_part(subjects, settings, notes),
        fairness_part(subjects, settings, notes),
    ]
    intro = [
        "Produced by `python benchmarks/rate.py" + (" --quick" if quick else "") + "`"
        f" on {time.strftime('%Y-%m-%d')}, Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} cores; {_versions(subjects)}. "
        "The accuracy and fairness figures come from one run per row: read the pattern, not "
        "the last digit.",
    ]
    if missing:
        intro += ["", f"Not installed, so left out: {', '.join(missing)}."]
    body = [intro, *parts, *([line] for line in notes.lines())]
    return "\n\n".join("\n".join(part) for part in body) + "\n"


def main() -> None:
    description = __doc__.splitlines()[0] if __doc__ else None
    run_section_script(description, SECTION, "rate.py", report)


if __name__ == "__main__":
    main()
