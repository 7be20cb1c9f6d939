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
from typing import Protocol, TypeVar, cast

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


class Units:
    """Counts of several named resources, in the order the manager was built with.

    Never mutated: each operator returns a new instance. ``Units(counts)`` returns an instance
    of a subclass made for ``len(counts)`` resources, whose operators are written out for that
    many (as ``collections.namedtuple`` and attrs write out their methods): a loop over
    ``zip`` costs three times as much on the two or three resources of a typical manager, on
    every acquire and release. Equality and hashing go by the counts alone.
    """

    __slots__ = ("counts",)
    counts: tuple[int, ...]

    def __new__(cls, counts: tuple[int, ...]) -> Units:
        made: Units = _new_object(_units_class(len(counts)))
        made.counts = counts
        return made

    def __le__(self, other: Units) -> bool:
        # Only the resources this request asks for matter (see the module docstring).
        for wanted, have in zip(self.counts, other.counts):  # noqa: B905 - one form, one length
            if wanted > have and wanted:
                return False
        return True

    def __add__(self, other: Units) -> Units:
        return Units(tuple(map(operator.add, self.counts, other.counts)))

    def __sub__(self, other: Units) -> Units:
        return Units(tuple(map(operator.sub, self.counts, other.counts)))

    def __bool__(self) -> bool:
        return any(self.counts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Units) and self.counts == other.counts

    def __hash__(self) -> int:
        return hash(self.counts)

    def __repr__(self) -> str:
        return f"Units({self.counts!r})"

    def __reduce__(self) -> tuple[type[Units], tuple[tuple[int, ...]]]:
        return Units, (self.counts,)


_new_object = object.__new__

_WRITTEN_OUT_UP_TO = 8
"""Managers of more resources than this use :class:`Units`' loops."""

_UNITS_TEMPLATE = """
class {name}(Units):
    __slots__ = ()

    def __le__(self, other):
        a = self.counts
        b = other.counts
        return {fits}

    def __add__(self, other):
        a = self.counts
        b = other.counts
        made = _new_object({name})
        made.counts = ({sums},)
        return made

    def __sub__(self, other):
        a = self.counts
        b = other.counts
        made = _new_object({name})
        made.counts = ({differences},)
        return made

    def __bool__(self):
        a = self.counts
        return {any_count}
"""

_units_classes: dict[int, type[Units]] = {}


def _units_class(size: int) -> type[Units]:
    """The subclass of :class:`Units` for ``size`` resources, made on first use."""
    made = _units_classes.get(size)
    if made is not None:
        return made
    name = f"Units{size}"
    if 0 < size <= _WRITTEN_OUT_UP_TO:
        indices = range(size)
        source = _UNITS_TEMPLATE.format(
            name=name,
            fits=" and ".join(f"(a[{i}] <= b[{i}] or not a[{i}])" for i in indices),
            sums=", ".join(f"a[{i}] + b[{i}]" for i in indices),
            differences=", ".join(f"a[{i}] - b[{i}]" for i in indices),
            any_count="bool(" + " or ".join(f"a[{i}]" for i in indices) + ")",
        )
        namespace: dict[str, object] = {
            "Units": Units,
            "_new_object": _new_object,
            "__name__": __name__,
        }
        exec(source, namespace)
        made = cast("type[Units]", namespace[name])
    else:
        made = type(name, (Units,), {"__slots__": ()})
    made.__qualname__ = name
    # setdefault: two threads making the same class keep one.
    return _units_classes.setdefault(size, made)


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
    _units: type[Units] = attrs.field(init=False)
    """The :class:`Units` subclass for this many resources, made once."""

    @positions.default
    def _positions_default(self) -> dict[str, int]:
        return {name: position for position, name in enumerate(self.names)}

    @_units.default
    def _units_default(self) -> type[Units]:
        return _units_class(len(self.names))

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
        if type(amount) is dict and amount:
            # The common case, checked in one pass; anything unusual takes the path below,
            # which finds the first problem and names it.
            counts = [0] * len(self.names)
            positions = self.positions
            for name, value in amount.items():
                if type(name) is not str or type(value) is not int or value <= 0:
                    break
                position = positions.get(name)
                if position is None:
                    break
                counts[position] = value
            else:
                made = _new_object(self._units)
                made.counts = tuple(counts)
                return made
        return self._parse_checked(amount, what)

    def _parse_checked(self, amount: object, what: str) -> Units:
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
