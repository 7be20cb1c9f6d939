"""Amounts: validating what callers pass, and the arithmetic the allocator does on it.

A manager built from an ``int`` keeps its amounts as plain ints, so its hot path is integer
arithmetic. A manager of named resources keeps them as :class:`Units`, one count per resource
in a fixed order. Both support the same three operators, which is all the allocator uses:

- ``request <= available``: the request *fits*: every resource it asks for has at least that
  many units. Resources it does not ask for are ignored, even when they are in debt after a
  shrink, so a shrink of one resource never blocks requests for the others.
- ``a + b`` and ``a - b``: element-wise sums and differences.

A *form* translates between what users write (``2``, ``{"gpu": 1}``) and those internal values,
and owns every validation rule, so a bad amount is rejected before any state changes.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Protocol, TypeVar

import attrs

from .._errors import InvalidAmount, InvalidAmountType, UnknownResource

__all__ = [
    "Amount",
    "Form",
    "NamedForm",
    "Quantity",
    "ScalarForm",
    "Units",
    "form_for",
]

_Q = TypeVar("_Q", bound="Quantity")

Amount = TypeVar("Amount", int, Mapping[str, int])
"""What users pass and get back: an ``int``, or a mapping from resource name to ``int``."""

_Rendered_co = TypeVar("_Rendered_co", covariant=True)


class Quantity(Protocol):
    """The operations the allocator needs: ``int`` and :class:`Units` both provide them."""

    def __le__(self: _Q, other: _Q, /) -> bool: ...

    def __add__(self: _Q, other: _Q, /) -> _Q: ...

    def __sub__(self: _Q, other: _Q, /) -> _Q: ...

    def __bool__(self) -> bool: ...


# Not attrs.frozen: a frozen class's __init__ goes through object.__setattr__, which doubles the
# cost of the arithmetic below on every acquire and release. Units are never mutated: each
# operator returns a new instance.
@attrs.define(eq=True, hash=True)
class Units:
    """Counts of several named resources, in the order the manager was built with."""

    counts: tuple[int, ...]

    def __le__(self, other: Units) -> bool:
        # Only the resources this request asks for matter (see the module docstring).
        for wanted, have in zip(self.counts, other.counts, strict=True):
            if wanted > have and wanted:
                return False
        return True

    def __add__(self, other: Units) -> Units:
        return Units(tuple(map(operator.add, self.counts, other.counts)))

    def __sub__(self, other: Units) -> Units:
        return Units(tuple(map(operator.sub, self.counts, other.counts)))

    def __bool__(self) -> bool:
        return any(self.counts)


def _whole_number(value: object, what: str) -> int:
    """Return ``value`` as an int, or raise InvalidAmountType for bools, floats and the like."""
    if type(value) is int:
        return value
    if isinstance(value, bool):
        raise InvalidAmountType(f"{what} must be an int, not a bool ({value!r})")
    try:
        # Accepts int subclasses and integer types of other libraries (numpy.int64...).
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidAmountType(
            f"{what} must be an int, not {type(value).__name__} ({value!r})"
        ) from None


def _positive(value: object, what: str) -> int:
    number = _whole_number(value, what)
    if number <= 0:
        raise InvalidAmount(f"{what} must be a positive int, got {number}")
    return number


def _non_negative(value: object, what: str) -> int:
    number = _whole_number(value, what)
    if number < 0:
        raise InvalidAmount(f"{what} must be zero or more, got {number}")
    return number


class Form(Protocol[_Rendered_co]):
    """Translates one manager's public amounts to internal quantities and back."""

    def parse(self, amount: object, what: str = "amount") -> Quantity:
        """A positive request or release; raise before anything changes if it is invalid."""
        ...

    def parse_capacity(self, capacity: object, current: Quantity | None) -> Quantity:
        """A new capacity; resources it leaves out keep their ``current`` capacity."""
        ...

    def render(self, quantity: Quantity) -> _Rendered_co:
        """The public form of a request or holding (named forms omit zero entries)."""
        ...

    def render_all(self, quantity: Quantity, floor: int | None = None) -> _Rendered_co:
        """The public form of a manager-wide figure (named forms list every resource).

        With ``floor``, counts below it are shown as ``floor``.
        """
        ...

    def zero(self) -> Quantity:
        """Nothing at all."""
        ...


@attrs.frozen
class ScalarForm:
    """Amounts of a manager built from an ``int``: plain positive ints."""

    def parse(self, amount: object, what: str = "amount") -> int:
        if type(amount) is int and amount > 0:
            return amount
        if isinstance(amount, Mapping):
            raise InvalidAmountType(
                f"{what} must be an int: this manager has a single unnamed resource"
            )
        return _positive(amount, what)

    def parse_capacity(self, capacity: object, current: Quantity | None) -> int:
        if isinstance(capacity, Mapping):
            raise InvalidAmountType(
                "capacity must be an int: this manager has a single unnamed resource"
            )
        return _non_negative(capacity, "capacity")

    def render(self, quantity: Quantity) -> int:
        assert isinstance(quantity, int)
        return quantity

    def render_all(self, quantity: Quantity, floor: int | None = None) -> int:
        assert isinstance(quantity, int)
        return quantity if floor is None else max(quantity, floor)

    def zero(self) -> int:
        return 0


@attrs.frozen
class NamedForm:
    """Amounts of a manager of named resources: mappings from name to int."""

    names: tuple[str, ...]
    positions: Mapping[str, int] = attrs.field(init=False)

    @positions.default
    def _positions_default(self) -> dict[str, int]:
        return {name: position for position, name in enumerate(self.names)}

    def _counts(self, amount: object, what: str, *, allow_zero: bool) -> list[int]:
        """One count per resource, in order; resources ``amount`` leaves out count -1."""
        if type(amount) is not dict and not isinstance(amount, Mapping):
            raise InvalidAmountType(
                f"{what} must be a mapping of resource names to ints, such as "
                f"{{{self.names[0]!r}: 1}}, not {type(amount).__name__} ({amount!r})"
            )
        counts = [-1] * len(self.names)
        positions = self.positions
        lowest = 0 if allow_zero else 1
        for name, value in amount.items():
            position = positions.get(name) if type(name) is str else None
            if position is None:
                known = ", ".join(map(repr, self.names))
                raise UnknownResource(f"unknown resource {name!r}; this manager has {known}")
            if type(value) is int and value >= lowest:
                counts[position] = value
            else:
                # The slow path builds the message only when it is needed.
                check = _non_negative if allow_zero else _positive
                counts[position] = check(value, f"{what}[{name!r}]")
        return counts

    def parse(self, amount: object, what: str = "amount") -> Units:
        counts = self._counts(amount, what, allow_zero=False)
        if not amount:
            raise InvalidAmount(f"{what} must name at least one resource, got an empty mapping")
        return Units(tuple([count if count > 0 else 0 for count in counts]))

    def parse_capacity(self, capacity: object, current: Quantity | None) -> Units:
        counts = self._counts(capacity, "capacity", allow_zero=True)
        if current is None:
            missing = [name for name, count in zip(self.names, counts, strict=True) if count < 0]
            if missing:
                raise UnknownResource(f"capacity has no entry for {', '.join(missing)}")
            base: tuple[int, ...] = (0,) * len(self.names)
        else:
            assert isinstance(current, Units)
            base = current.counts
        return Units(tuple(old if new < 0 else new for new, old in zip(counts, base, strict=True)))

    def render(self, quantity: Quantity) -> dict[str, int]:
        assert isinstance(quantity, Units)
        return {
            name: count for name, count in zip(self.names, quantity.counts, strict=True) if count
        }

    def render_all(self, quantity: Quantity, floor: int | None = None) -> dict[str, int]:
        assert isinstance(quantity, Units)
        if floor is None:
            return dict(zip(self.names, quantity.counts, strict=True))
        return {
            name: max(count, floor) for name, count in zip(self.names, quantity.counts, strict=True)
        }

    def zero(self) -> Units:
        return Units((0,) * len(self.names))


def form_for(capacity: object) -> ScalarForm | NamedForm:
    """The form a manager built from ``capacity`` uses; validates the resource names."""
    if not isinstance(capacity, Mapping):
        return ScalarForm()
    if not capacity:
        raise InvalidAmount("a manager of named resources needs at least one resource")
    for name in capacity:
        if not isinstance(name, str) or not name:
            raise InvalidAmountType(f"resource names must be non-empty strings, got {name!r}")
    return NamedForm(tuple(capacity))
