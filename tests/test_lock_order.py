"""The lock-order checker: inversions are reported on the acquisition that makes them, in a
single thread, deterministically; consistent orders never are."""

from __future__ import annotations

import gc
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import allotment
from allotment import _lock_order
from allotment._manager import parts_of
from support import GENEROUS, assert_idle, start


def managers(
    count: int, policy: allotment.LockOrderPolicy = "raise", capacity: int = 2
) -> list[Any]:
    return [
        allotment.ResourceManager(capacity, name=name, lock_order=policy, capture_sites=True)
        for name in "ABCDEFGH"[:count]
    ]


@pytest.fixture
def global_policy() -> Iterator[None]:
    previous = allotment.get_lock_order_policy()
    yield
    allotment.set_lock_order_policy(previous)


def test_an_inversion_is_reported_on_the_second_order_with_both_sites() -> None:
    a, b = managers(2)
    first_order = _line() + 1
    with a.acquire(1), b.acquire(1):
        pass
    b_held_at = _line() + 1
    with b.acquire(1):
        a_now_at = _line() + 2
        with pytest.raises(allotment.LockOrderViolation) as caught:
            a.acquire(1)
    message = str(caught.value)
    assert "acquiring 'A' while holding 'B' closes a cycle" in message
    now, first_seen = caught.value.cycle
    assert caught.value.edge == now
    assert (now.held, now.acquired) == ("B", "A")
    assert now.held_site is not None
    assert now.held_site.startswith(f"{__file__}:{b_held_at} in ")
    assert now.acquired_site is not None
    assert now.acquired_site.startswith(f"{__file__}:{a_now_at} in ")
    assert (first_seen.held, first_seen.acquired) == ("A", "B")
    assert first_seen.held_site == first_seen.acquired_site
    assert first_seen.held_site is not None
    assert first_seen.held_site.startswith(f"{__file__}:{first_order} in ")
    assert first_seen.thread_name == threading.current_thread().name
    for site in (now.held_site, now.acquired_site, first_seen.held_site):
        assert site in message
    # Raised before anything changed.
    assert_idle(a)
    assert_idle(b)


def _line() -> int:
    import sys

    return sys._getframe(1).f_lineno


def test_the_report_is_deterministic() -> None:
    for _ in range(3):
        a, b = managers(2)
        with a.acquire(1), b.acquire(1):
            pass
        with b.acquire(1), pytest.raises(allotment.LockOrderViolation):
            a.acquire(1)
        # Under "raise" the refused edge is not recorded: the same inversion raises again.
        with b.acquire(1), pytest.raises(allotment.LockOrderViolation):
            a.acquire(1, timeout=5)


def test_a_three_manager_cycle_lists_every_edge() -> None:
    a, b, c = managers(3, "warn")
    with a.acquire(1), b.acquire(1):
        pass
    with b.acquire(1), c.acquire(1):
        pass
    with c.acquire(1), pytest.warns(allotment.LockOrderWarning) as caught:
        allotment.acquire_all([(a, 1)]).release()
    assert {warning.filename for warning in caught} == {__file__}
    cycles = [str(w.message) for w in caught if "closes a cycle" in str(w.message)]
    assert len(cycles) == 1
    assert "'C' -> 'A'" in cycles[0]
    assert "'A' -> 'B'" in cycles[0]
    assert "'B' -> 'C'" in cycles[0]


def test_the_edge_is_seen_across_threads() -> None:
    a, b = managers(2)

    def nest_a_then_b() -> None:
        with a.acquire(1), b.acquire(1):
            pass

    start(nest_a_then_b, name="t1").outcome()
    with b.acquire(1), pytest.raises(allotment.LockOrderViolation, match="thread 't1' held"):
        a.acquire(1)


def test_warn_reports_each_new_inversion_once() -> None:
    a, b = managers(2, "warn")
    with (
        b.acquire(1),
        pytest.warns(allotment.LockOrderWarning, match="goes against rank order") as caught,
    ):
        a.acquire(1).release()
    assert caught[0].filename == __file__  # points at the acquisition
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with b.acquire(1):
            a.acquire(1).release()


def test_a_rank_inversion_is_reported_even_without_a_cycle() -> None:
    a, b = managers(2)
    with b.acquire(1), pytest.raises(allotment.LockOrderViolation) as caught:
        a.acquire(1)
    assert "goes against rank order" in str(caught.value)
    assert "rank 0, created #" in str(caught.value)
    assert caught.value.cycle == ()


def test_declared_ranks_make_any_order_consistent() -> None:
    outer = allotment.ResourceManager(1, name="outer", rank=0, lock_order="raise")
    inner = allotment.ResourceManager(1, name="inner", rank=-1, lock_order="raise")
    with inner.acquire(1), outer.acquire(1):
        pass
    with outer.acquire(1), pytest.raises(allotment.LockOrderViolation):
        inner.acquire(1)


def test_acquisitions_that_cannot_wait_are_not_reported_but_count_as_held() -> None:
    a, b = managers(2)
    with b.acquire(1):
        lease = a.try_acquire(1)  # cannot deadlock: it never waits
        assert lease is not None
        lease.release()
        a.acquire(1, timeout=0).release()
        allotment.try_acquire_all([(a, 1)]).release()  # type: ignore[union-attr]
        allotment.acquire_all([(a, 1)], timeout=0).release()
    held = b.try_acquire(1)
    assert held is not None
    with pytest.raises(allotment.LockOrderViolation, match="goes against rank order"):
        a.acquire(1)
    held.release()


def test_nesting_on_one_manager_is_not_an_inversion() -> None:
    (a,) = managers(1)
    with a.acquire(1), a.acquire(1):
        pass


def test_released_leases_no_longer_count_as_held() -> None:
    a, b = managers(2)
    lease = b.acquire(1)
    # Released by another thread: the main thread holds nothing any more.
    start(lease.release, name="releaser").outcome()
    a.acquire(1).release()
    assert len(_lock_order._held.get()[0]) <= 1


def test_acquire_all_is_checked_against_what_the_thread_holds() -> None:
    a, b, c = managers(3)
    with c.acquire(1), pytest.raises(allotment.LockOrderViolation, match="holding 'C'"):
        allotment.acquire_all([(a, 1), (b, 1)])
    assert_idle(a)
    assert_idle(b)
    # acquire_all itself nests in rank order, and those edges count too.
    allotment.acquire_all([(a, 1), (c, 1)]).release()
    with c.acquire(1), pytest.raises(allotment.LockOrderViolation, match="closes a cycle"):
        a.acquire(1)


def test_managers_with_the_policy_off_are_invisible() -> None:
    a = allotment.ResourceManager(1, name="A", lock_order="off")
    b = allotment.ResourceManager(1, name="B", lock_order="raise")
    with b.acquire(1), a.acquire(1):
        pass
    with a.acquire(1), b.acquire(1):
        pass
    assert (a.lock_order, b.lock_order) == ("off", "raise")


def test_a_manager_whose_checking_was_turned_off_is_invisible(global_policy: None) -> None:
    a = allotment.ResourceManager(1, name="A", lock_order="raise")
    b = allotment.ResourceManager(1, name="B")
    allotment.set_lock_order_policy("raise")
    with b.acquire(1):  # recorded as held while B was checked
        allotment.set_lock_order_policy("off")
        a.acquire(1).release()  # against rank order, but B no longer takes part


def test_the_global_policy_reaches_live_and_new_managers(global_policy: None) -> None:
    a = allotment.ResourceManager(1, name="A")
    explicit = allotment.ResourceManager(1, name="explicit", lock_order="off")
    assert allotment.set_lock_order_policy("raise") == "off"
    b = allotment.ResourceManager(1, name="B")
    assert (a.lock_order, b.lock_order, explicit.lock_order) == ("raise", "raise", "off")
    assert allotment.get_lock_order_policy() == "raise"
    with b.acquire(1), pytest.raises(allotment.LockOrderViolation):
        a.acquire(1)
    allotment.set_lock_order_policy("off")
    assert a.lock_order == "off"
    with b.acquire(1), a.acquire(1):
        pass


def test_bad_policies_are_rejected(global_policy: None) -> None:
    with pytest.raises(ValueError, match="lock_order must be"):
        allotment.ResourceManager(1, lock_order="loud")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="lock_order must be"):
        allotment.set_lock_order_policy("on")  # type: ignore[arg-type]
    assert allotment.get_lock_order_policy() == "off"


def test_edges_of_collected_managers_are_forgotten() -> None:
    a, b = managers(2)
    serials = {parts_of(a).serial, parts_of(b).serial}
    with a.acquire(1), b.acquire(1):
        pass
    assert _lock_order._graph.known(parts_of(a).serial, parts_of(b).serial)
    del a, b
    gc.collect()
    c, d = managers(2)
    with c.acquire(1), d.acquire(1):  # any check drains the forgotten managers
        pass
    graph = _lock_order._graph
    assert not serials & set(graph._edges)
    assert not serials & set(graph._sources)
    assert not any(serials & set(targets) for targets in graph._edges.values())
    assert not serials & graph._watched


def test_the_held_list_stays_as_short_as_what_is_held() -> None:
    a, b = managers(2)
    for _ in range(1000):
        with a.acquire(1), b.acquire(1):
            pass
    assert len(_lock_order._held.get()[0]) <= 2
    # Acquisitions that are never checked (tries) still prune now and then.
    kept = [a.acquire(1, timeout=0) for _ in range(2)]
    for _ in range(1000):
        lease = b.try_acquire(1)
        assert lease is not None
        lease.release()
    assert len(_lock_order._held.get()[0]) <= 2 * len(kept) + 16
    for lease in kept:
        lease.release()


# -- generated programs, against a reference model ----------------------------------------


@st.composite
def programs(draw: st.DrawFn) -> tuple[int, list[list[int]]]:
    """A number of managers and a list of nestings: each a sequence of managers a thread
    takes while holding the previous ones."""
    count = draw(st.integers(2, 5))
    nestings = draw(
        st.lists(st.lists(st.integers(0, count - 1), min_size=1, max_size=4), max_size=12)
    )
    return count, nestings


def expected_reports(count: int, nestings: list[list[int]]) -> list[tuple[int, int]]:
    """What lockdep-style checking under "warn" reports: each new edge (held, acquired) that
    goes against creation order or closes a cycle, once."""
    edges: set[tuple[int, int]] = set()
    reports = []

    def reaches(start: int, goal: int) -> bool:
        seen, todo = {start}, [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            for held, acquired in edges:
                if held == node and acquired not in seen:
                    seen.add(acquired)
                    todo.append(acquired)
        return False

    for nesting in nestings:
        held: list[int] = []
        for manager in nesting:
            for holder in dict.fromkeys(held):
                if holder == manager or (holder, manager) in edges:
                    continue
                if manager < holder or reaches(manager, holder):
                    reports.append((holder, manager))
                edges.add((holder, manager))
            held.append(manager)
    return reports


def names_in(message: str) -> tuple[str, str]:
    first_line = message.splitlines()[0]
    quoted = first_line.split("'")
    return quoted[3], quoted[1]  # "acquiring 'X' ... while holding 'Y'"


@given(programs())
def test_generated_programs_are_reported_exactly_where_the_model_says(
    program: tuple[int, list[list[int]]],
) -> None:
    count, nestings = program
    pool = managers(count, "warn", capacity=4)  # a nesting takes one manager 4 times at most
    reported = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for nesting in nestings:
            leases = [pool[index].acquire(1, timeout=GENEROUS) for index in nesting]
            for lease in reversed(leases):
                lease.release()
    for warning in caught:
        assert issubclass(warning.category, allotment.LockOrderWarning)
        held, acquired = names_in(str(warning.message))
        reported.append(("ABCDEFGH".index(held), "ABCDEFGH".index(acquired)))
    assert reported == expected_reports(count, nestings)


@given(st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=5), max_size=20))
def test_a_consistent_order_is_never_reported(nestings: list[list[int]]) -> None:
    pool = managers(6)
    for nesting in nestings:
        ordered = sorted(set(nesting))  # rank order: creation order here
        leases = [pool[index].acquire(1) for index in ordered]
        for lease in reversed(leases):
            lease.release()
