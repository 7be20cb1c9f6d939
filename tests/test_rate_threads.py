"""Rate limiters under real threads: the real clock, signals, and many threads on a stepped clock.

The real-clock tests check what no schedule may do (allow a unit early, serve out of order,
let ``try_acquire`` barge, spend anything for an interrupted caller); timing only ever enters
as a lower bound the limiter promises or as a generous margin. The many-thread tests run on a
clock the test steps itself, so their checks are exact: every grant is recorded at its clock
reading, in fractions on the nanosecond grid, and every interval is checked against the bound.

``ALLOTMENT_STRESS=heavy`` runs the Hypothesis tests with the ``heavy`` profile of conftest.
"""

from __future__ import annotations

import fractions
import functools
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import allotment
from allotment._clock import WakeHandle
from allotment._core import Meter
from allotment._limiters import limiter_parts
from support import GENEROUS, Worker, assert_idle, inject, start, wait_until

Limiter = allotment.RateLimiter | allotment.WindowLimiter
Fraction = fractions.Fraction
NANO = 1_000_000_000

HEAVY = os.environ.get("ALLOTMENT_STRESS") == "heavy"
# The heavy profile of conftest sets its own number of examples; otherwise keep it modest.
stress_settings = settings() if HEAVY else settings(max_examples=50)

posix_signals = pytest.mark.skipif(
    sys.platform == "win32" or not hasattr(signal, "pthread_kill"), reason="needs pthread_kill"
)


class Injected(Exception):
    """Raised into a sleeping acquirer from outside."""


def drain(limiter: Limiter) -> None:
    while limiter.try_acquire():
        pass


def queued(limiter: Limiter, count: int) -> None:
    wait_until(
        lambda: len(limiter.statistics().waiters) == count,
        f"{count} caller(s) wait on {limiter.name}",
    )


# -- the real clock -------------------------------------------------------------------------------


@pytest.mark.parametrize(("burst", "slack"), [(1, 0), (5, 4)])
def test_no_unit_is_allowed_early_on_the_real_clock(burst: int, slack: int) -> None:
    rate = 50
    interval = 1 / rate
    returned: list[float] = []
    lock = threading.Lock()
    started = threading.Barrier(4)
    t0 = time.monotonic()
    limiter = allotment.RateLimiter(rate, per=1, burst=burst)

    def run() -> None:
        started.wait(GENEROUS)
        for _ in range(10):
            limiter.acquire()
            now = time.monotonic()
            with lock:
                returned.append(now)

    workers = [start(run, name=f"acquirer-{index}") for index in range(4)]
    for worker in workers:
        worker.outcome()
    returned.sort()
    assert len(returned) == 40
    # The k-th unit (from 0) cannot be allowed before T0 + (k - (burst - 1)) * interval: the
    # bucket starts full, then refills one unit per interval.
    early = [
        (k, when - t0)
        for k, when in enumerate(returned)
        if when < t0 + (k - slack) * interval - 1e-6
    ]
    assert early == []
    assert limiter.statistics().allowed_units == 40


def arrived(limiter: Limiter, count: int, worker: Worker) -> Callable[[], bool]:
    return lambda: limiter.statistics().waited == count or worker.finished.is_set()


def test_queued_callers_are_allowed_in_arrival_order_on_the_real_clock() -> None:
    limiter = allotment.RateLimiter(20, per=1, burst=3)  # one unit per 50 ms
    drain(limiter)
    costs = [3, 1, 2, 1, 2]
    names = [f"w{index}-cost{cost}" for index, cost in enumerate(costs)]
    order: list[str] = []
    overtaken: list[tuple[str, set[str]]] = []
    lock = threading.Lock()

    def run(name: str, cost: int, ahead: frozenset[str]) -> None:
        limiter.acquire(cost, timeout=GENEROUS)
        # Whoever arrived earlier must have been allowed already: none of them still waits.
        still_waiting = {waiter.thread_name for waiter in limiter.statistics().waiters}
        with lock:
            order.append(name)
            if still_waiting & ahead:
                overtaken.append((name, still_waiting & ahead))

    workers: list[Worker] = []
    for index, (name, cost) in enumerate(zip(names, costs, strict=True)):
        worker = start(run, name, cost, frozenset(names[:index]), name=name)
        workers.append(worker)
        # One at a time: the next arrives once this one is queued (or, on a slow machine
        # that let the queue run dry, already allowed).
        wait_until(arrived(limiter, index + 1, worker), f"{name} is queued")
    for worker in workers:
        worker.outcome()
    assert overtaken == []
    assert order == names
    assert limiter.statistics().allowed_units == sum(costs) + 3  # the drain took three


def test_try_acquire_never_barges_past_a_waiter_on_the_real_clock() -> None:
    # One unit per 0.25 s, two at once. A waiter for two units is allowed 0.5 s after the
    # drain; from 0.25 s on, one unit would fit a caller who ignored the queue.
    limiter = allotment.RateLimiter(4, per=1, burst=2)
    drain(limiter)
    waiter = start(limiter.acquire, 2, GENEROUS, name="waiter")
    queued(limiter, 1)
    barged: list[float] = []
    attempts = 0

    def barge() -> None:
        nonlocal attempts
        while not waiter.finished.is_set():
            attempts += 1
            if limiter.try_acquire(1):
                # The next unit after the waiter's comes 0.25 s after it: a success here, with
                # the waiter not yet returned, can only be one taken past it.
                barged.append(time.monotonic())
            time.sleep(0)

    barger = start(barge, name="barger")
    waiter.outcome()
    barger.outcome()
    assert barged == []
    assert attempts > 1
    stats = limiter.statistics()
    assert stats.allowed == 3  # the drain (two units, one by one) and the waiter
    assert stats.refused >= attempts - 1  # every failed try counts


@pytest.mark.parametrize("round_", range(2))
@pytest.mark.parametrize("victim_at", [0, 1])
def test_an_exception_in_a_sleeping_acquirer_spends_nothing_on_the_real_clock(
    victim_at: int, round_: int
) -> None:
    interval = 0.2
    limiter = allotment.RateLimiter(5, per=1, burst=1)
    drained_from = time.monotonic()
    drain(limiter)
    names = ["w0", "w1", "w2"]
    returned: dict[str, float] = {}

    def run(name: str) -> None:
        limiter.acquire()
        returned[name] = time.monotonic()

    workers = []
    for index, name in enumerate(names):
        workers.append(start(run, name, name=name))
        queued(limiter, index + 1)
    planned = [waiter.allowed_in for waiter in limiter.statistics().waiters]
    assert planned == pytest.approx([interval, 2 * interval, 3 * interval], abs=0.1)
    victim = workers[victim_at]
    # The exception lands when the victim's timed wait returns: at its planned time.
    inject(victim, Injected)
    with pytest.raises(Injected):
        victim.outcome()
    for worker in workers:
        if worker is not victim:
            worker.outcome()
    stats = limiter.statistics()
    assert stats.waiters == ()
    assert stats.allowed == 1 + 2  # the drain and the two others: the victim spent nothing
    assert stats.allowed_units == 3
    behind = names[victim_at + 1]
    # Without the victim's leaving, the one behind it could not return before its own
    # planned time, drained + (victim_at + 2) intervals; it took the victim's place instead.
    assert returned[behind] < drained_from + (victim_at + 2) * interval


@posix_signals
def test_keyboard_interrupt_in_the_main_thread_spends_nothing_and_moves_the_next_up() -> None:
    assert threading.current_thread() is threading.main_thread()
    interval = 0.25
    limiter = allotment.RateLimiter(4, per=1, burst=2)
    drain(limiter)
    snapshots: list[allotment.RateStatistics] = []
    returned: list[float] = []

    def behind() -> None:
        limiter.acquire(1)
        returned.append(time.monotonic())

    def interrupt_main() -> Worker:
        queued(limiter, 1)  # the main thread waits for two units, 0.5 s from the drain
        worker = start(behind, name="behind")
        queued(limiter, 2)  # and "behind" for one more, 0.75 s from the drain
        snapshots.append(limiter.statistics())
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
        return worker

    armed = True

    def raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
        nonlocal armed
        if armed:  # once, and only while the main thread is in acquire
            armed = False
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGUSR1, raise_keyboard_interrupt)
    interrupter = start(interrupt_main, name="interrupter")
    try:
        with pytest.raises(KeyboardInterrupt):
            limiter.acquire(2)  # sleeps until the signal arrives
    finally:
        armed = False
        interrupter.join(GENEROUS)  # no signal may arrive after the handler is restored
        signal.signal(signal.SIGUSR1, previous)
    after = limiter.statistics()
    worker = interrupter.outcome()
    assert isinstance(worker, Worker)
    (before,) = snapshots
    assert [waiter.thread_name for waiter in before.waiters] == ["MainThread", "behind"]
    assert after.allowed == before.allowed  # the main thread spent nothing
    # "behind" moved up by two intervals: its planned time came two intervals earlier than
    # it was (or it has been allowed already).
    if after.waiters:
        (moved,) = after.waiters
        assert moved.thread_name == "behind"
        assert moved.allowed_in <= max(0.0, before.waiters[1].allowed_in - 2 * interval) + 1e-6
    worker.outcome()
    assert len(returned) == 1
    final = limiter.statistics()
    assert (final.allowed, final.waiters) == (before.allowed + 1, ())


class SignallingClock:
    """A clock standing still, which when armed sends SIGUSR1 to the main thread the next time
    it is read. A limiter reads its clock inside its critical section, so the handler runs
    there, as a real signal arriving at that moment would."""

    def __init__(self) -> None:
        self.armed = False

    def now(self) -> float:
        if self.armed:
            self.armed = False
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
        return 5.0

    def sleep_until(self, handle: WakeHandle, deadline: float) -> bool:
        raise AssertionError("nothing sleeps in this test")


@posix_signals
@pytest.mark.parametrize("kind", ["rate", "window"])
@pytest.mark.parametrize("section", ["try_acquire", "statistics", "charge"])
def test_a_real_signal_handler_inside_the_section_gets_reentrant_call_or_a_value(
    kind: str, section: str
) -> None:
    assert threading.current_thread() is threading.main_thread()
    clock = SignallingClock()
    limiter: Limiter = (
        allotment.RateLimiter(10, per=1, burst=3, clock=clock)
        if kind == "rate"
        else allotment.WindowLimiter(3, per=1, clock=clock)
    )
    meter = limiter_parts(limiter).meter
    assert isinstance(meter, Meter)
    seen: list[object] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        seen.append(meter._lock._is_owned())  # it really runs inside the section
        for call in (limiter.try_acquire, limiter.reserve, lambda: limiter.acquire(1, 0)):
            try:
                seen.append(call())
            except allotment.ReentrantCall as error:
                seen.append(error)
        seen.append(limiter.statistics())
        seen.append(repr(limiter))

    calls: dict[str, Callable[[], object]] = {
        "try_acquire": limiter.try_acquire,
        "statistics": limiter.statistics,
        "charge": lambda: limiter.charge(1),
    }
    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        clock.armed = True
        calls[section]()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert not clock.armed
    assert seen[0] is True
    assert [type(value) for value in seen[1:4]] == [allotment.ReentrantCall] * 3
    assert isinstance(seen[4], allotment.RateStatistics)
    assert isinstance(seen[5], str)
    assert seen[5].startswith("<allotment.")
    # The interrupted call finished normally and the limiter works afterwards.
    assert not meter._lock._is_owned()
    assert limiter.statistics().waiters == ()
    assert limiter.try_acquire()


# -- many threads on a stepped clock --------------------------------------------------------------


@attrs.define(eq=False)
class _Sleeper:
    relay: threading.Lock
    deadline: float
    woken: bool = False


class SteppedClock:
    """A manual clock whose every wake-up is relayed by the thread that steps it.

    Like :class:`allotment.testing.ManualClock`, time moves only in :meth:`advance`. But a
    sleeper does not block on the handle it was given: it blocks on a private relay, which
    :meth:`advance` releases at the deadline and :meth:`settled` releases once it finds the
    handle released by a waker (taking the handle, as a real clock's sleep would). So "every
    running thread is asleep" is exact: with ManualClock, a thread woken by a hand-off still
    counts as a sleeper until it runs, and the clock could be stepped under it; then it would
    be allowed late, or record a later time than it was allowed at.

    Time is kept in whole nanoseconds, so a reading is exactly a point of the limiter's grid.
    """

    def __init__(self) -> None:
        self.ns = 0
        self._lock = threading.Lock()
        self._sleepers: dict[WakeHandle, _Sleeper] = {}

    def now(self) -> float:
        return self.ns / NANO

    def now_ns(self) -> int:
        return self.ns

    def exact(self) -> Fraction:
        """The current reading, exactly."""
        return Fraction(self.ns, NANO)

    def sleep_until(self, handle: WakeHandle, deadline: float) -> bool:
        relay = threading.Lock()
        relay.acquire()
        sleeper = _Sleeper(relay, deadline)
        with self._lock:
            if self.now() >= deadline:
                return False
            self._sleepers[handle] = sleeper
        relay.acquire()
        return sleeper.woken

    def advance(self, nanoseconds: int) -> None:
        with self._lock:
            self.ns += nanoseconds
            now = self.now()
            due = [handle for handle, sleeper in self._sleepers.items() if sleeper.deadline <= now]
            for handle in due:
                self._sleepers.pop(handle).relay.release()

    def settled(self, running: int) -> bool:
        """Relay every sleeper whose handle a waker has released. ``True`` if there was none
        and ``running`` threads sleep: none can move until the clock does."""
        with self._lock:
            woken = [handle for handle in self._sleepers if handle.acquire(False)]
            for handle in woken:
                sleeper = self._sleepers.pop(handle)
                sleeper.woken = True
                sleeper.relay.release()
            return not woken and len(self._sleepers) == running

    def pause(self, nanoseconds: int) -> None:
        """Sleep on this clock for ``nanoseconds`` (a caller holding something)."""
        handle = threading.Lock()
        handle.acquire()
        self.sleep_until(handle, (self.ns + nanoseconds) / NANO)


def drive(clock: SteppedClock, workers: Sequence[Worker], steps: Sequence[int], most: int) -> int:
    """Step ``clock`` by the next of ``steps`` (ns, in turn) each time every running worker
    sleeps on it, until all have finished; return the number of steps taken. On any failure,
    let the workers run out."""

    def running() -> int:
        return sum(not worker.finished.is_set() for worker in workers)

    taken = 0
    try:
        while True:
            # running() is read first: a count of sleepers equal to it means all of them.
            wait_until(lambda: clock.settled(running()), "every running thread sleeps")
            if not running():
                return taken
            assert taken < most, f"still running after {taken} steps"
            clock.advance(steps[taken % len(steps)])
            taken += 1
    finally:
        for _ in range(100_000):
            if not running():
                break
            clock.settled(0)
            clock.advance(NANO)
            time.sleep(0.0001)


@attrs.frozen
class Op:
    kind: str
    """acquire, timeout, try, poll, reserve-cancel, reserve-hold, reserve-wait."""
    cost: int
    timeout: float | None
    hold: int
    """For reserve-hold: units of time to wait before cancelling. For poll: tries, less 1."""


# Polls twice as often: they find the edges, where an off-by-one shows.
KINDS = ["acquire", "timeout", "try", "poll", "poll", "reserve-cancel", "reserve-hold"]
KINDS += ["reserve-wait"]


def ops(largest: int) -> st.SearchStrategy[Op]:
    return st.builds(
        Op,
        kind=st.sampled_from(KINDS),
        cost=st.integers(1, largest),
        timeout=st.sampled_from([0.0, 0.05, 0.3, 2.0, None]),
        hold=st.integers(0, 8),
    )


# A waiter is allowed when it is noticed, and a reservation queued behind it keeps its tick:
# if the waiter is noticed late, the two come closer than the bound allows (documented in
# _meter.py). The clock is then stepped so that nobody is late: in whole steps dividing the
# interval (or the window). With other steps, reservations are cancelled before their time.
HELD = frozenset({"reserve-hold", "reserve-wait"})


def run_program(
    limiter: Limiter,
    clock: SteppedClock,
    program: Sequence[Op],
    *,
    unit: int,
    grants: list[tuple[Fraction, int]],
    lock: threading.Lock,
) -> None:
    scale = limiter_parts(limiter).meter.scale

    def granted(at: Fraction, cost: int) -> None:
        with lock:
            grants.append((at, cost))

    for op in program:
        if op.kind == "acquire":
            limiter.acquire(op.cost)
            granted(clock.exact(), op.cost)
        elif op.kind == "timeout":
            try:
                limiter.acquire(op.cost, timeout=op.timeout)
            except allotment.AcquireTimeout:
                continue
            granted(clock.exact(), op.cost)
        elif op.kind == "try":
            if limiter.try_acquire(op.cost):
                granted(clock.exact(), op.cost)
        elif op.kind == "poll":
            # try_acquire at every step of the clock (stepping to the edge of each planned
            # time, one nanosecond before it, then onto it), until allowed or out of tries.
            for _ in range(op.hold + 1):
                if limiter.try_acquire(op.cost):
                    granted(clock.exact(), op.cost)
                    break
                clock.pause(1)
        else:
            asked_at = clock.exact()
            reservation = limiter.reserve(op.cost)
            promised = reservation._ticket.promised
            at = asked_at if promised < 0 else Fraction(promised, scale * NANO)
            if op.kind == "reserve-wait":
                reservation.wait()
                assert clock.exact() >= at
                assert not reservation.cancel()
                granted(at, op.cost)
                continue
            if op.kind == "reserve-hold":
                clock.pause(op.hold * unit // 2)
            if reservation.cancel():
                assert promised >= 0, "a reservation allowed at once cannot be refunded"
            else:
                granted(at, op.cost)


def run_stress(
    limiter: Limiter, clock: SteppedClock, programs: list[list[Op]], steps: list[int], unit: int
) -> list[tuple[Fraction, int]]:
    grants: list[tuple[Fraction, int]] = []
    lock = threading.Lock()
    workers = [
        start(
            functools.partial(
                run_program, limiter, clock, program, unit=unit, grants=grants, lock=lock
            ),
            name=f"stress-{index}",
        )
        for index, program in enumerate(programs)
    ]
    total_cost = sum(op.cost + op.hold * op.cost for program in programs for op in program)
    drive(clock, workers, steps, most=40 * (total_cost + 10) * max(1, unit // min(steps)))
    for worker in workers:
        worker.outcome()
    stats = limiter.statistics()
    assert stats.waiters == ()
    assert stats.allowed == len(grants)
    assert stats.allowed_units == sum(cost for _, cost in grants)
    return sorted(grants)


# (rate, per): whole intervals of 100 and 250 ms, 285.714... ms, and one of 333,333,333.3 ns.
RATES = [(Fraction(10), Fraction(1)), (Fraction(4), Fraction(1)), (Fraction(3), Fraction(1))]
RATES += [(Fraction(7), Fraction(2)), (Fraction(5, 2), Fraction(1, 2))]
STEPS = [Fraction(1), Fraction(1, 2), Fraction(1, 4), Fraction(1, 5), Fraction(1, 3)]
STEPS += [Fraction(2, 3), Fraction(7, 10), Fraction(3, 2)]


def stepping(length: Fraction, fraction: Fraction, edge: bool) -> tuple[list[int], bool]:
    """The steps (ns) of a clock stepping by ``fraction`` of ``length``, or with ``edge``,
    to one nanosecond before each such point, then onto it; and whether every point the
    limiter plans lands on the steps' grid (so nobody is ever allowed late)."""
    step = max(2, round(fraction * length))
    if edge:
        return [step - 1, 1], False
    return [step], (length / step).denominator == 1


def without_held_reservations(programs: list[list[Op]]) -> list[list[Op]]:
    return [
        [attrs.evolve(op, kind="reserve-cancel") if op.kind in HELD else op for op in program]
        for program in programs
    ]


@stress_settings
@given(
    data=st.data(),
    rate_per=st.sampled_from(RATES),
    burst=st.integers(1, 4),
    step_of_interval=st.sampled_from(STEPS),
    edge=st.booleans(),
)
def test_many_threads_never_exceed_the_gcra_bound_exactly(
    data: st.DataObject,
    rate_per: tuple[Fraction, Fraction],
    burst: int,
    step_of_interval: Fraction,
    edge: bool,
) -> None:
    rate, per = rate_per
    interval = per * NANO / rate  # nanoseconds, maybe not whole
    steps, aligned = stepping(interval, step_of_interval, edge)
    programs = data.draw(
        st.lists(st.lists(ops(burst), min_size=1, max_size=6), min_size=8, max_size=16),
        label="programs",
    )
    if not aligned:
        programs = without_held_reservations(programs)
    clock = SteppedClock()
    limiter = allotment.RateLimiter(rate, per=per, burst=burst, clock=clock)
    grants = run_stress(limiter, clock, programs, steps, unit=max(1, round(interval)))
    # In any interval [a, b] (a, b grant times): at most burst + (b - a) * rate / per units.
    per_second = rate / per
    for first in range(len(grants)):
        units = 0
        for last in range(first, len(grants)):
            units += grants[last][1]
            length = grants[last][0] - grants[first][0]
            assert units <= burst + length * per_second, (grants[first], grants[last], units)


@stress_settings
@given(
    data=st.data(),
    limit=st.integers(1, 4),
    per=st.sampled_from([Fraction(1), Fraction(1, 2), Fraction(3, 10), Fraction(1, 3)]),
    step_of_window=st.sampled_from([s / 3 for s in STEPS]),
    edge=st.booleans(),
)
def test_many_threads_never_exceed_the_window_limit_exactly(
    data: st.DataObject, limit: int, per: Fraction, step_of_window: Fraction, edge: bool
) -> None:
    window = per * NANO
    steps, aligned = stepping(window, step_of_window, edge)
    programs = data.draw(
        st.lists(st.lists(ops(limit), min_size=1, max_size=6), min_size=8, max_size=16),
        label="programs",
    )
    if not aligned:
        programs = without_held_reservations(programs)
    clock = SteppedClock()
    limiter = allotment.WindowLimiter(limit, per=per, clock=clock)
    grants = run_stress(limiter, clock, programs, steps, unit=max(1, round(window / limit)))
    # Every window (t - per, t] holds at most ``limit`` units; the fullest ends at a grant.
    for last in range(len(grants)):
        end = grants[last][0]
        inside = sum(cost for when, cost in grants[: last + 1] if when > end - per)
        # Grants at the same time as ``end`` but sorted after it count too.
        inside += sum(cost for when, cost in grants[last + 1 :] if when == end)
        assert inside <= limit, (end, inside)


@pytest.mark.parametrize("seed", range(3))
def test_acquire_all_with_a_limiter_under_threads(seed: int) -> None:
    clock = SteppedClock()
    capacity = 2
    pool = allotment.ResourceManager(capacity, clock=clock, name="pool")
    api = allotment.RateLimiter(10, per=1, burst=2, clock=clock, name="api")
    lock = threading.Lock()
    holding = 0
    peak = 0
    over: list[int] = []
    grants: list[tuple[Fraction, int]] = []
    timeouts = 0
    interval = NANO // 10

    def run(index: int) -> None:
        nonlocal holding, peak, timeouts
        rng = random.Random(seed * 1000 + index)
        for round_ in range(4):
            # All start at once: two are granted and hold across a step, four fail at once.
            timeout = 0.0 if round_ == 0 else rng.choice([0.0, 0.05, 0.3, 2.0])
            try:
                group = allotment.acquire_all([(pool, 1), (api, 1)], timeout=timeout)
            except allotment.AcquireTimeout:
                with lock:
                    timeouts += 1
                continue
            with lock:
                holding += 1
                peak = max(peak, holding)
                in_use = pool.statistics().in_use
                if holding > capacity or in_use > capacity:
                    over.append(max(holding, in_use))
                grants.append((clock.exact(), 1))
            clock.pause(rng.choice([interval // 2, interval, 3 * interval]))
            with lock:
                holding -= 1
            group.release()

    workers = [start(run, index, name=f"group-{index}") for index in range(6)]
    drive(clock, workers, [interval // 4], most=10_000)
    for worker in workers:
        worker.outcome()
    assert over == []
    assert peak == capacity  # six threads holding up to three intervals: the pool filled up
    assert timeouts >= 4
    assert_idle(pool)
    stats = api.statistics()
    assert stats.waiters == ()
    assert stats.allowed_units == len(grants) == 6 * 4 - timeouts
    grants.sort()
    for first in range(len(grants)):
        for last in range(first, len(grants)):
            length = grants[last][0] - grants[first][0]
            assert last - first + 1 <= 2 + length * 10
