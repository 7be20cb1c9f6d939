"""guard: a call holds a manager's units and spends a limiter's rate while it runs.

``allotment.guard(*parts)``, ``ResourceManager.guard(amount)`` and ``RateLimiter.guard(cost)``
wrap a function so that each call goes through ``acquire_all`` first; and
``LeaseGroup.refund`` gives a group's rate back for work that never started.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import allotment
from allotment.testing import ManualClock
from support import assert_idle, start, wait_until


class Boom(Exception):
    """Raised by a guarded function on purpose."""


def sample(first: int, /, second: str = "b", *rest: int, flag: bool = False, **extra: float) -> str:
    """Join the arguments."""
    return f"{first}{second}{rest}{flag}{sorted(extra.items())}"


def parts() -> tuple[
    allotment.ResourceManager[int], allotment.RateLimiter, allotment.WindowLimiter, ManualClock
]:
    clock = ManualClock()
    pool = allotment.ResourceManager(2, clock=clock, name="pool")
    api = allotment.RateLimiter(10, per=1, burst=5, clock=clock, name="api")
    window = allotment.WindowLimiter(3, per=1, clock=clock, name="window")
    return pool, api, window, clock


def decorators() -> list[Callable[[Callable[..., str]], Callable[..., str]]]:
    pool, api, window, _ = parts()
    return [
        pool.guard(1),
        pool.guard(1, timeout=5),
        api.guard(),
        api.guard(cost=2, timeout=0),
        window.guard(3),
        allotment.guard((pool, 1), (api, 1), (window, 1), timeout=1),
    ]


# -- the wrapper ---------------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(6))
def test_the_wrapper_keeps_the_name_docstring_and_signature(index: int) -> None:
    guarded = decorators()[index](sample)
    assert guarded is not sample
    assert guarded.__name__ == "sample"
    assert guarded.__qualname__ == "sample"
    assert guarded.__module__ == __name__
    assert guarded.__doc__ == "Join the arguments."
    assert vars(guarded)["__wrapped__"] is sample
    assert inspect.unwrap(guarded) is sample
    assert inspect.signature(guarded) == inspect.signature(sample)
    assert guarded.__annotations__ == sample.__annotations__
    arguments = (1, "x", 2, 3)
    assert guarded(*arguments, flag=True, size=1.5) == sample(*arguments, flag=True, size=1.5)


def test_return_values_and_exceptions_pass_through_unchanged() -> None:
    pool, api, _, _ = parts()
    result = object()
    error = Boom("the original")

    @allotment.guard((pool, 1), (api, 1))
    def give() -> object:
        return result

    @allotment.guard((pool, 1), (api, 1))
    def fail() -> None:
        raise error

    assert give() is result
    with pytest.raises(Boom) as raised:
        fail()
    assert raised.value is error
    assert raised.value.__context__ is None  # nothing in the guard raised on the way out
    assert_idle(pool)
    # The rate stays spent: both calls ran.
    assert api.statistics().allowed_units == 2


def test_a_keyboard_interrupt_from_the_function_releases_but_keeps_the_rate_spent() -> None:
    pool, api, _, _ = parts()

    @allotment.guard((pool, 2), (api, 3))
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert_idle(pool)
    assert api.statistics().allowed_units == 3  # the call started: its rate was used


def test_methods_staticmethods_and_classmethods_are_guarded() -> None:
    pool, api, _, _ = parts()
    inside: list[tuple[str, int, int]] = []

    def note(what: str) -> None:
        inside.append((what, pool.statistics().in_use, api.statistics().allowed_units))

    class Service:
        def __init__(self, base: int) -> None:
            self.base = base

        @pool.guard(1)
        def add(self, amount: int) -> int:
            """Add to the base."""
            note("method")
            return self.base + amount

        @staticmethod
        @api.guard(2)
        def double(value: int) -> int:
            note("static")
            return 2 * value

        @classmethod
        @allotment.guard((pool, 2), (api, 1))
        def make(cls, base: int) -> Service:
            note("class")
            return cls(base)

    service = Service(10)
    assert service.add(5) == 15
    assert Service.add(service, 1) == 11
    assert service.double(4) == Service.double(4) == 8
    made = Service.make(3)
    assert isinstance(made, Service)
    assert made.base == 3
    assert inside == [
        ("method", 1, 0),
        ("method", 1, 0),
        ("static", 0, 2),
        ("static", 0, 4),
        ("class", 2, 5),
    ]
    assert Service.add.__name__ == "add"
    assert Service.add.__doc__ == "Add to the base."
    assert list(inspect.signature(service.add).parameters) == ["amount"]
    assert list(inspect.signature(Service.make).parameters) == ["base"]
    assert_idle(pool)


def test_decorating_an_async_generator_function_is_refused_at_once() -> None:
    pool, api, _, _ = parts()

    async def fetch() -> AsyncIterator[int]:
        yield 1

    for decorator in (pool.guard(1), api.guard(), allotment.guard((pool, 1), (api, 1))):
        with pytest.raises(TypeError, match="async generator function"):
            decorator(fetch)
    assert_idle(pool)
    assert api.statistics().allowed == 0


# -- what the call holds -----------------------------------------------------------------------


def test_a_managers_units_are_held_while_the_call_runs_and_given_back_however_it_ends() -> None:
    gpus = allotment.ResourceManager({"gpu": 2, "cpu": 8}, name="node")
    seen: list[tuple[object, list[str]]] = []

    @gpus.guard({"gpu": 1, "cpu": 4})
    def work(fail: bool) -> str:
        stats = gpus.statistics()
        seen.append((stats.in_use, [holder.thread_name for holder in stats.holders]))
        if fail:
            raise Boom
        return "done"

    assert work(False) == "done"
    assert_idle(gpus)
    with pytest.raises(Boom):
        work(True)
    assert_idle(gpus)
    me = threading.current_thread().name
    assert seen == [({"gpu": 1, "cpu": 4}, [me])] * 2


def test_a_guarded_function_never_runs_more_often_at_once_than_the_units_allow() -> None:
    pool = allotment.ResourceManager(2)
    lock = threading.Lock()
    running = 0
    peak = 0
    calls = 0

    @pool.guard(1)
    def work() -> None:
        nonlocal running, peak, calls
        with lock:
            running += 1
            calls += 1
            peak = max(peak, running)
        with lock:
            running -= 1

    def loop() -> None:
        for _ in range(200):
            work()

    workers = [start(loop, name=f"caller-{index}") for index in range(4)]
    for worker in workers:
        worker.outcome()
    assert calls == 800
    assert 1 <= peak <= 2
    assert_idle(pool)


def test_a_manager_guard_that_times_out_never_runs_the_function() -> None:
    pool, _, _, clock = parts()
    held = pool.acquire(2)
    ran: list[str] = []

    @pool.guard(1, timeout=0)
    def at_once() -> None:
        ran.append("at once")

    @pool.guard(1, timeout=5)
    def patient() -> None:
        ran.append("patient")

    with pytest.raises(allotment.AcquireTimeout):
        at_once()
    worker = start(patient, name="patient")
    wait_until(lambda: clock.sleepers == 1, "the guarded call waits on the pool's clock")
    clock.advance(5)
    with pytest.raises(allotment.AcquireTimeout):
        worker.outcome()
    assert ran == []
    held.release()
    patient()
    assert ran == ["patient"]
    assert_idle(pool)


def test_a_limiter_guard_spends_its_cost_on_every_call() -> None:
    _, api, _, clock = parts()  # 10 per second, 5 at once
    spent: list[int] = []

    @api.guard(cost=3)
    def call() -> int:
        spent.append(api.statistics().allowed_units)
        return len(spent)

    assert call() == 1
    assert spent == [3]  # spent before the body runs
    assert api.statistics().available == 2
    clock.advance(0.1)  # three units free again
    assert call() == 2
    assert spent == [3, 6]
    stats = api.statistics()
    assert (stats.allowed, stats.allowed_units) == (2, 6)


def test_a_limiter_guard_with_a_timeout_raises_at_once_without_running() -> None:
    _, api, _, clock = parts()
    ran: list[str] = []

    @api.guard(3, timeout=0.05)
    def call() -> None:
        ran.append("ran")

    call()
    before = api.statistics()
    # Two units are left; the third comes only in 0.1 s, after the deadline. Nothing moves
    # this clock: if the call waited for its deadline, the test would hang.
    with pytest.raises(allotment.AcquireTimeout):
        call()
    after = api.statistics()
    assert ran == ["ran"]
    assert (after.allowed, after.allowed_units, after.waiters) == (before.allowed, 3, ())
    assert after.refused == before.refused + 1
    clock.advance(0.1)
    call()
    assert ran == ["ran", "ran"]


def test_a_limiter_guard_waits_its_turn_on_the_limiters_clock() -> None:
    _, api, _, clock = parts()
    api.acquire(5)
    ran: list[float] = []

    @api.guard(2, timeout=1)
    def call() -> None:
        ran.append(clock.now())

    worker = start(call, name="waiting")
    wait_until(lambda: clock.sleepers == 1, "the guarded call sleeps until its time")
    assert ran == []
    clock.advance(0.2)
    worker.outcome()
    assert ran == [pytest.approx(0.2)]


def test_a_combined_guard_holds_and_spends_both_during_the_call() -> None:
    pool, api, _, _ = parts()
    seen: list[tuple[int, int]] = []

    @allotment.guard((pool, 1), (api, 2), timeout=0)
    def both() -> None:
        seen.append((pool.statistics().in_use, api.statistics().allowed_units))

    both()
    assert seen == [(1, 2)]
    assert_idle(pool)
    assert api.statistics().allowed_units == 2  # the rate stays spent, the unit came back


def test_a_combined_guard_that_times_out_on_the_pool_spends_no_rate() -> None:
    pool, api, _, clock = parts()
    ran: list[str] = []

    @allotment.guard((pool, 1), (api, 1), timeout=0)
    def at_once() -> None:
        ran.append("at once")

    @allotment.guard((pool, 1), (api, 1), timeout=0.5)
    def patient() -> None:
        ran.append("patient")

    held = pool.acquire(2)
    before = api.statistics()
    with pytest.raises(allotment.AcquireTimeout):
        at_once()
    assert api.statistics() == before  # not spent, not even asked
    worker = start(patient, name="patient")
    wait_until(lambda: clock.sleepers == 1, "the guarded call waits for the pool")
    clock.advance(0.5)
    with pytest.raises(allotment.AcquireTimeout):
        worker.outcome()
    after = api.statistics()
    assert (after.allowed, after.allowed_units, after.refused) == (0, 0, 0)
    assert ran == []
    held.release()
    assert_idle(pool)


def test_a_combined_guard_that_cannot_get_the_rate_in_time_holds_nothing() -> None:
    pool, api, _, _ = parts()
    api.acquire(5)
    ran: list[str] = []

    @allotment.guard((pool, 2), (api, 1), timeout=0.05)
    def call() -> None:
        ran.append("ran")

    with pytest.raises(allotment.AcquireTimeout):
        call()
    assert ran == []
    assert_idle(pool)
    assert api.statistics().allowed_units == 5


# -- bad parts -------------------------------------------------------------------------------------


Made = tuple[
    allotment.ResourceManager[int], allotment.RateLimiter, allotment.WindowLimiter, ManualClock
]

BAD_PARTS: list[tuple[str, Callable[[Made], tuple[Any, ...]], type[Exception]]] = [
    ("nothing", lambda made: (), TypeError),
    ("a bare manager", lambda made: (made[0],), TypeError),
    ("a triple", lambda made: ((made[0], 1, 2),), TypeError),
    ("a list", lambda made: ([made[0], 1],), TypeError),
    ("an unknown object", lambda made: ((object(), 1),), TypeError),
    ("a number for an object", lambda made: ((1, made[0]),), TypeError),
    ("a zero amount", lambda made: ((made[0], 0),), allotment.InvalidAmount),
    ("a negative amount", lambda made: ((made[0], -1),), allotment.InvalidAmount),
    ("a float amount", lambda made: ((made[0], 1.5),), allotment.InvalidAmountType),
    ("a bool amount", lambda made: ((made[0], True),), allotment.InvalidAmountType),
    ("a mapping for an int pool", lambda made: ((made[0], {"a": 1}),), allotment.InvalidAmountType),
    ("above the capacity", lambda made: ((made[0], 3),), allotment.ExceedsCapacity),
    ("merged above", lambda made: ((made[0], 1), (made[0], 2)), allotment.ExceedsCapacity),
    ("a zero cost", lambda made: ((made[1], 0),), allotment.InvalidAmount),
    ("a float cost", lambda made: ((made[1], 1.0),), allotment.InvalidAmountType),
    ("a bool cost", lambda made: ((made[1], True),), allotment.InvalidAmountType),
    ("a cost above the burst", lambda made: ((made[1], 6),), allotment.ExceedsBurst),
    ("costs merged above", lambda made: ((made[1], 3), (made[1], 3)), allotment.ExceedsBurst),
    ("above the window", lambda made: ((made[2], 4),), allotment.ExceedsBurst),
]


@pytest.mark.parametrize(
    ("made_parts", "error"),
    [pytest.param(make, error, id=name) for name, make, error in BAD_PARTS],
)
def test_bad_parts_are_refused_when_decorating(
    made_parts: Callable[[Made], tuple[Any, ...]], error: type[Exception]
) -> None:
    made = parts()
    pool, api, window, _ = made
    before = (api.statistics(), window.statistics())
    with pytest.raises(error):
        allotment.guard(*made_parts(made))  # before any function is given
    assert_idle(pool)
    assert (api.statistics(), window.statistics()) == before


@pytest.mark.parametrize(
    ("decorate", "error"),
    [
        pytest.param(lambda made: made[0].guard(0), allotment.InvalidAmount, id="pool-zero"),
        pytest.param(lambda made: made[0].guard(3), allotment.ExceedsCapacity, id="pool-over"),
        pytest.param(lambda made: made[0].guard(1.0), allotment.InvalidAmountType, id="pool-1.0"),
        pytest.param(lambda made: made[1].guard(0), allotment.InvalidAmount, id="api-zero"),
        pytest.param(lambda made: made[1].guard(6), allotment.ExceedsBurst, id="api-over"),
        pytest.param(lambda made: made[2].guard(4), allotment.ExceedsBurst, id="window-over"),
    ],
)
def test_the_methods_refuse_bad_amounts_when_decorating(
    decorate: Callable[[Made], object], error: type[Exception]
) -> None:
    made = parts()
    with pytest.raises(error):
        decorate(made)
    assert_idle(made[0])
    assert made[1].statistics().allowed == 0


# -- refund ---------------------------------------------------------------------------------------


def test_refund_gives_a_groups_rate_back_exactly_once() -> None:
    pool, api, _, _ = parts()
    api.acquire(3)  # two units left
    group = allotment.acquire_all([(pool, 1), (api, 2)])
    assert not api.try_acquire(1)
    spent = api.statistics()
    assert group.refund() is True
    refunded = api.statistics()
    assert (refunded.allowed, refunded.allowed_units) == (spent.allowed - 1, 3)
    assert refunded.available == 2
    assert group.refund() is False  # nothing left to give back
    assert api.statistics() == refunded
    assert pool.statistics().in_use == 1  # refund gives back rate, not leases
    group.release()
    assert_idle(pool)
    assert api.try_acquire(2)  # the clock never moved: these are the refunded units
    assert not api.try_acquire(1)


def test_refund_after_a_later_grant_gives_nothing_back() -> None:
    pool, api, _, _ = parts()
    group = allotment.acquire_all([(pool, 1), (api, 2)])
    assert api.try_acquire(1)  # granted after the group: judged with the group counted
    spent = api.statistics()
    assert group.refund() is False
    assert api.statistics() == spent
    assert group.refund() is False
    assert api.statistics() == spent
    group.release()
    assert_idle(pool)


def test_a_group_without_limiters_has_nothing_to_refund() -> None:
    pool, _, _, _ = parts()
    group = allotment.acquire_all([(pool, 2)])
    assert group.refund() is True
    assert pool.statistics().in_use == 2
    group.release()
    assert_idle(pool)
