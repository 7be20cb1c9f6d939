"""Where a manager's or a limiter's state lives, when not in this process.

A backend makes the pools and meters that stand behind the public classes: the faces take
one with ``backend=`` and use what it makes through the same :class:`~allotment._core.Pool`
and :class:`~allotment._core.RateMeter` interfaces as the in-memory ones, so there is one
set of public classes and no second grant mechanism in them. ``allotment.redis.RedisBackend``
is the one shipped; ``import allotment`` never imports it.
"""

from __future__ import annotations

import fractions
from typing import Any, Literal, Protocol

from ._clock import Clock
from ._core import Form, Pool, Quantity, RateMeter
from ._errors import UnsupportedByBackend

__all__ = [
    "Backend",
    "OnUnavailable",
    "check_backend_name",
    "check_on_unavailable",
    "valid_on_unavailable",
]

OnUnavailable = Literal["raise", "allow", "deny"]


class Backend(Protocol):
    """What the faces ask of a backend."""

    def manager_pool(self, name: str, form: Form[Any], capacity: Quantity, clock: Clock) -> Pool:
        """The pool of the manager called ``name``, declared with ``capacity``."""
        ...

    def gcra_meter(
        self,
        name: str,
        interval_ns: fractions.Fraction,
        burst: int,
        key: str | None,
        on_unavailable: OnUnavailable | None,
    ) -> RateMeter:
        """The meter of a GCRA (or of one key of a keyed GCRA) called ``name``."""
        ...

    def window_meter(
        self, name: str, limit: int, per: fractions.Fraction, on_unavailable: OnUnavailable | None
    ) -> RateMeter:
        """The meter of a sliding window called ``name``."""
        ...


def check_backend_name(name: object, backend: object, kind: str) -> str:
    """A shared manager or limiter is found by its name: required, a non-empty string."""
    if not isinstance(name, str) or not name:
        raise TypeError(
            f"a {kind} with a backend needs a name (a non-empty string): every process that "
            f"names it shares it; got {name!r}"
        )
    return name


def check_on_unavailable(value: object, backend: object) -> OnUnavailable | None:
    """``on_unavailable`` is a backend's concern: refused without one."""
    if value is None:
        return None
    if backend is None:
        raise UnsupportedByBackend("on_unavailable= applies only to a limiter with a backend")
    return valid_on_unavailable(value)


def valid_on_unavailable(value: object) -> OnUnavailable:
    if value == "raise" or value == "allow" or value == "deny":  # noqa: PLR1714 - narrows
        return value
    raise ValueError(f"on_unavailable must be 'raise', 'allow' or 'deny', not {value!r}")
