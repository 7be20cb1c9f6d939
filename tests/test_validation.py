"""Bad input gets a precise error, raised before any state changes."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest

import allotment
from support import assert_idle


def _state(manager: allotment.ResourceManager[Any]) -> tuple[object, ...]:
    stats = manager.statistics()
    return (stats.capacity, stats.in_use, stats.available, len(stats.holders), stats.waiters)


SCALAR_BAD = [
    (0, allotment.InvalidAmount, "must be a positive int, got 0"),
    (-2, allotment.InvalidAmount, "must be a positive int, got -2"),
    (True, allotment.InvalidAmountType, "not a bool"),
    (False, allotment.InvalidAmountType, "not a bool"),
    (1.0, allotment.InvalidAmountType, r"not float \(1.0\)"),
    (Fraction(1), allotment.InvalidAmountType, "not Fraction"),
    ("2", allotment.InvalidAmountType, "not str"),
    (None, allotment.InvalidAmountType, "not NoneType"),
    ({"gpu": 1}, allotment.InvalidAmountType, "single unnamed resource"),
    (4, allotment.ExceedsCapacity, r"request for 4 can never be granted: the capacity is 3"),
]


@pytest.mark.parametrize(("amount", "error", "message"), SCALAR_BAD)
def test_bad_scalar_amounts(amount: object, error: type[Exception], message: str) -> None:
    pool = allotment.ResourceManager(3)
    held = pool.acquire(1)
    before = _state(pool)
    attempts: list[Callable[[Any], object]] = [
        pool.acquire,
        pool.try_acquire,
        lambda amount: pool.acquire(amount, timeout=1),
    ]
    for attempt in attempts:
        with pytest.raises(error, match=message):
            attempt(amount)
    assert _state(pool) == before
    held.release()
    assert_idle(pool)


NAMED_BAD = [
    ({}, allotment.InvalidAmount, "at least one resource"),
    ({"gpu": 0}, allotment.InvalidAmount, r"amount\['gpu'\] must be a positive int, got 0"),
    ({"gpu": -1}, allotment.InvalidAmount, "got -1"),
    ({"gpu": True}, allotment.InvalidAmountType, "not a bool"),
    ({"gpu": 1.5}, allotment.InvalidAmountType, "not float"),
    (
        {"tpu": 1},
        allotment.UnknownResource,
        "unknown resource 'tpu'; this manager has 'gpu', 'ram'",
    ),
    ({1: 1}, allotment.UnknownResource, "unknown resource 1"),
    ({"gpu": 1, "tpu": 1}, allotment.UnknownResource, "'tpu'"),
    (1, allotment.InvalidAmountType, "must be a mapping of resource names"),
    ([("gpu", 1)], allotment.InvalidAmountType, "not list"),
    ({"gpu": 3}, allotment.ExceedsCapacity, r"can never be granted: the capacity is \{'gpu': 2"),
]


@pytest.mark.parametrize(("amount", "error", "message"), NAMED_BAD)
def test_bad_named_amounts(amount: object, error: type[Exception], message: str) -> None:
    node = allotment.ResourceManager({"gpu": 2, "ram": 8})
    held = node.acquire({"ram": 1})
    before = _state(node)
    attempts: list[Callable[[Any], object]] = [node.acquire, node.try_acquire]
    for attempt in attempts:
        with pytest.raises(error, match=message):
            attempt(amount)
    assert _state(node) == before
    held.release()
    assert_idle(node)


def test_error_hierarchy() -> None:
    assert issubclass(allotment.AcquireTimeout, TimeoutError)
    assert issubclass(allotment.ManagerClosed, RuntimeError)
    assert issubclass(allotment.LeaseReleased, RuntimeError)
    for error in (
        allotment.InvalidAmount,
        allotment.UnknownResource,
        allotment.ExceedsCapacity,
        allotment.ReleaseExceedsHeld,
    ):
        assert issubclass(error, ValueError)
    assert issubclass(allotment.ExceedsClaim, ValueError)
    assert issubclass(allotment.InvalidAmountType, TypeError)
    for state_error in (
        allotment.ClaimClosed,
        allotment.BankerModeRequired,
        allotment.LockOrderViolation,
    ):
        assert issubclass(state_error, RuntimeError)
    assert issubclass(allotment.LockOrderWarning, RuntimeWarning)
    for name in allotment.__all__:
        thing = getattr(allotment, name)
        if (
            isinstance(thing, type)
            and issubclass(thing, BaseException)
            and not issubclass(thing, Warning)
        ):
            assert issubclass(thing, allotment.AllotmentError)


def test_integer_like_amounts_are_accepted() -> None:
    class Index:
        def __index__(self) -> int:
            return 2

    pool = allotment.ResourceManager(3)
    with pool.acquire(Index()) as lease:  # type: ignore[arg-type]
        assert lease.amounts == 2
        assert type(lease.amounts) is int


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(-1, ValueError), (float("nan"), ValueError), ("1", TypeError), (True, TypeError)],
)
def test_bad_timeouts(timeout: object, error: type[Exception]) -> None:
    pool = allotment.ResourceManager(1)
    with pytest.raises(error, match="timeout"):
        pool.acquire(1, timeout=timeout)  # type: ignore[arg-type]
    assert_idle(pool)


@pytest.mark.parametrize(
    ("capacity", "error", "message"),
    [
        (-1, allotment.InvalidAmount, "capacity must be zero or more"),
        (1.5, allotment.InvalidAmountType, "capacity must be an int"),
        (True, allotment.InvalidAmountType, "not a bool"),
        ({}, allotment.InvalidAmount, "needs at least one resource"),
        ({"": 1}, allotment.InvalidAmountType, "non-empty strings"),
        ({1: 1}, allotment.InvalidAmountType, "non-empty strings"),
        ({"gpu": -1}, allotment.InvalidAmount, "zero or more"),
        ({"gpu": "4"}, allotment.InvalidAmountType, "not str"),
    ],
)
def test_bad_capacities(capacity: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        allotment.ResourceManager(capacity)  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("new", "error"),
    [
        (-1, allotment.InvalidAmount),
        (2.0, allotment.InvalidAmountType),
        ({"gpu": 1}, allotment.InvalidAmountType),
    ],
)
def test_bad_scalar_resize_changes_nothing(new: object, error: type[Exception]) -> None:
    pool = allotment.ResourceManager(3)
    with pytest.raises(error):
        pool.resize(new)  # type: ignore[arg-type]
    assert pool.statistics().capacity == 3


@pytest.mark.parametrize(
    ("new", "error"),
    [
        ({"tpu": 1}, allotment.UnknownResource),
        ({"gpu": 1, "tpu": 1}, allotment.UnknownResource),
        ({"gpu": -1}, allotment.InvalidAmount),
        (2, allotment.InvalidAmountType),
    ],
)
def test_bad_named_resize_changes_nothing(new: object, error: type[Exception]) -> None:
    node = allotment.ResourceManager({"gpu": 2, "ram": 8})
    with pytest.raises(error):
        node.resize(new)  # type: ignore[arg-type]
    assert node.statistics().capacity == {"gpu": 2, "ram": 8}
