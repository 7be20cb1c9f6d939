"""The arithmetic of named amounts: each written-out operator agrees with the general loop."""

from __future__ import annotations

import pickle

from hypothesis import given
from hypothesis import strategies as st

from allotment._core import NamedForm, Units

counts = st.integers(min_value=-50, max_value=50)


@st.composite
def same_size(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int, ...]]:
    size = draw(st.integers(min_value=1, max_value=11))  # both sides of the written-out limit
    first = draw(st.lists(st.integers(min_value=0, max_value=50), min_size=size, max_size=size))
    second = draw(st.lists(counts, min_size=size, max_size=size))
    return tuple(first), tuple(second)


def _fits(wanted: tuple[int, ...], have: tuple[int, ...]) -> bool:
    # The rule of the module docstring: only the resources asked for must be available.
    return all(want <= got for want, got in zip(wanted, have, strict=True) if want)


@given(same_size())
def test_the_operators_agree_with_the_rule(pair: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
    request, available = Units(pair[0]), Units(pair[1])
    assert (request <= available) is _fits(pair[0], pair[1])
    assert (available - request).counts == tuple(b - a for a, b in zip(*pair, strict=True))
    assert (available + request).counts == tuple(a + b for a, b in zip(*pair, strict=True))
    assert bool(request) is any(pair[0])
    assert bool(available) is any(pair[1])
    # Every result is of the class made for its size, whichever way it was built.
    assert type(available - request) is type(request) is type(Units(pair[1]))
    assert isinstance(request, Units)


@given(same_size())
def test_equality_and_hashing_go_by_the_counts(
    pair: tuple[tuple[int, ...], tuple[int, ...]],
) -> None:
    first, second = Units(pair[0]), Units(pair[1])
    assert (first == second) is (pair[0] == pair[1])
    assert first == Units(tuple(pair[0]))
    assert hash(first) == hash(Units(tuple(pair[0])))
    assert pickle.loads(pickle.dumps(first)) == first
    assert first != pair[0]  # never equal to a bare tuple
    assert repr(first) == f"Units({pair[0]!r})"


@given(st.dictionaries(st.sampled_from(["gpu", "ram_gb", "disk"]), st.integers(1, 9), min_size=1))
def test_the_quick_parse_agrees_with_the_checked_one(amount: dict[str, int]) -> None:
    form = NamedForm(("gpu", "ram_gb", "disk"))
    assert form.parse(amount) == form._parse_checked(amount, "amount")
    assert form.render(form.parse(amount)) == amount
