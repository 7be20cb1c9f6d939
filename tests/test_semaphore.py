"""Semaphore and BoundedSemaphore behave like threading's, and are FIFO-fair."""

from __future__ import annotations

import functools
import re
import sys
import threading
import time
from typing import Any

import pytest

import allotment
from support import GENEROUS, start, wait_until

KINDS = [
    (threading.Semaphore, allotment.Semaphore),
    (threading.BoundedSemaphore, allotment.BoundedSemaphore),
]
ALL_CLASSES = [cls for pair in KINDS for cls in pair]


def _outcome(action: Any) -> object:
    """What an action returned, or the type and text of what it raised."""
    try:
        return ("ok", action())
    except Exception as error:  # compared across implementations
        return (type(error), str(error))


@pytest.mark.parametrize(("standard", "ours"), KINDS)
def test_same_results_as_threading_for_a_script(standard: Any, ours: Any) -> None:
    script: list[tuple[str, dict[str, Any]]] = [
        ("acquire", {"blocking": False}),
        ("acquire", {"blocking": True, "timeout": 0}),
        ("acquire", {"timeout": -5}),
        ("acquire", {"timeout": 0.01}),
        ("release", {}),
        ("acquire", {"timeout": 0.05}),  # the release made a permit, unless bounded at 0
        ("release", {}),
        ("release", {"n": 2}),
        ("release", {"n": 0}),
        ("release", {"n": -1}),
        ("acquire", {"blocking": False, "timeout": 1}),
        ("acquire", {"blocking": False}),
        ("acquire", {"blocking": False}),
        ("release", {"n": 3}),
        ("release", {}),
    ]
    for initial in (0, 1, 2):
        theirs_sem, ours_sem = standard(initial), ours(initial)
        for method, kwargs in script:
            expected = _outcome(functools.partial(getattr(theirs_sem, method), **kwargs))
            actual = _outcome(functools.partial(getattr(ours_sem, method), **kwargs))
            assert actual == expected, (initial, method, kwargs)
            assert ours_sem._value == theirs_sem._value


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda cls: f"{cls.__module__}.{cls.__name__}")
def test_negative_initial_value_is_rejected(cls: Any) -> None:
    with pytest.raises(ValueError, match="semaphore initial value must be >= 0"):
        cls(-1)


@pytest.mark.parametrize(("standard", "ours"), KINDS)
def test_context_manager(standard: Any, ours: Any) -> None:
    for cls in (standard, ours):
        semaphore = cls(1)
        with semaphore as entered:
            assert entered is True
            assert not semaphore.acquire(blocking=False)
        assert semaphore.acquire(blocking=False)


@pytest.mark.parametrize(("standard", "ours"), KINDS)
def test_a_subclass_release_runs_when_a_with_block_ends(standard: Any, ours: Any) -> None:
    # threading's __exit__ calls self.release(): a drop-in must too, for subclasses.
    for base in (standard, ours):

        class Counting(base):  # type: ignore[valid-type, misc]
            released: list[int]

            def release(self, n: int = 1) -> None:
                self.released.append(n)
                super().release(n)

        semaphore = Counting(1)
        semaphore.released = []
        with semaphore:
            assert not semaphore.acquire(blocking=False)
        assert semaphore.released == [1]
        assert semaphore.acquire(blocking=False)  # the permit came back through it


@pytest.mark.parametrize(("standard", "ours"), KINDS)
def test_repr_has_the_same_form(standard: Any, ours: Any) -> None:
    semaphore = ours(3)
    semaphore.acquire()
    text = repr(semaphore)
    name = standard.__name__
    expected = "value=2/3" if "Bounded" in name else "value=2"
    assert re.fullmatch(rf"<allotment\.{name} at 0x[0-9a-f]+: {expected}>", text), text
    if sys.version_info >= (3, 13):  # threading gained this repr in 3.13
        theirs = standard(3)
        theirs.acquire()
        assert repr(theirs).split(" at ")[1].split(": ")[1] == text.split(": ")[1]


def test_release_may_exceed_the_initial_value_unless_bounded() -> None:
    semaphore = allotment.Semaphore(1)
    semaphore.release(3)
    assert semaphore._value == 4
    bounded = allotment.BoundedSemaphore(1)
    with pytest.raises(ValueError, match="Semaphore released too many times"):
        bounded.release()
    bounded.acquire()
    with pytest.raises(ValueError, match="Semaphore released too many times"):
        bounded.release(2)
    assert bounded._value == 0  # the failed release changed nothing
    bounded.release()
    assert bounded._value == 1


def test_zero_semaphore_as_a_signal() -> None:
    semaphore = allotment.Semaphore(0)
    worker = start(lambda: semaphore.acquire(timeout=GENEROUS), name="waiter")
    wait_until(lambda: len(semaphore._pool.snapshot().waiters) == 1, "the thread waits")
    semaphore.release()
    assert worker.outcome() is True


def test_timeout_returns_false() -> None:
    semaphore = allotment.Semaphore(0)
    started = time.monotonic()
    assert semaphore.acquire(timeout=0.05) is False
    assert time.monotonic() - started >= 0.05
    assert semaphore._pool.snapshot().waiters == ()


def test_permits_go_to_waiters_in_arrival_order_and_are_not_overtaken() -> None:
    semaphore = allotment.Semaphore(0)

    def queued() -> list[str]:
        return [view.thread.name for view in semaphore._pool.snapshot().waiters]

    workers = []
    for number in range(6):
        workers.append(start(lambda: semaphore.acquire(timeout=GENEROUS), name=f"w{number}"))
        wait_until(functools.partial(lambda n: len(queued()) == n, number + 1), "it queues")
    for number in range(6):
        semaphore.release()
        # Handed to the head under the lock: it has left the queue when release returns, and
        # a newcomer, blocking or not, finds nothing to take.
        assert queued() == [f"w{later}" for later in range(number + 1, 6)]
        assert not semaphore.acquire(blocking=False)
        assert not semaphore.acquire(timeout=0)
        assert workers[number].outcome() is True


@pytest.mark.parametrize("bad", [1.5, "1", None])
def test_non_integer_values_are_rejected(bad: object) -> None:
    with pytest.raises(TypeError):
        allotment.Semaphore(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        allotment.Semaphore(1).release(bad)  # type: ignore[arg-type]


def test_nan_timeout_is_rejected_and_inf_waits() -> None:
    semaphore = allotment.Semaphore(1)
    with pytest.raises(ValueError, match="timeout"):
        semaphore.acquire(timeout=float("nan"))
    assert semaphore.acquire(timeout=float("inf"))
