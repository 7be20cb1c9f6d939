"""The exceptions allotment raises.

Every exception derives from :class:`AllotmentError`, and each one also derives from the
built-in exception a caller would catch anyway (``TimeoutError``, ``ValueError``,
``TypeError``, ``RuntimeError``), so code written for the standard library keeps working.
"""

from __future__ import annotations

__all__ = [
    "AcquireTimeout",
    "AllotmentError",
    "ExceedsCapacity",
    "InvalidAmount",
    "InvalidAmountType",
    "LeaseReleased",
    "ManagerClosed",
    "ReleaseExceedsHeld",
    "UnknownResource",
]


class AllotmentError(Exception):
    """Base class of every exception allotment raises."""


class AcquireTimeout(AllotmentError, TimeoutError):
    """The request was not granted before its deadline; nothing is held on its behalf."""


class ManagerClosed(AllotmentError, RuntimeError):
    """The manager was closed: queued requests are refused and new ones are rejected."""


class LeaseReleased(AllotmentError, RuntimeError):
    """A lease that was already released fully was entered as a context manager again."""


class InvalidAmount(AllotmentError, ValueError):
    """An amount has the right type but an impossible value (zero or negative)."""


class InvalidAmountType(AllotmentError, TypeError):
    """An amount is not a whole number (a bool, a float, a string...) or has the wrong form.

    A manager built from an ``int`` takes plain ints; a manager of named resources takes
    mappings from resource name to int.
    """


class UnknownResource(InvalidAmount):
    """A mapping names a resource the manager does not have."""


class ExceedsCapacity(InvalidAmount):
    """A request asks for more than the manager's capacity, so it could never be granted.

    Raised at once by ``acquire`` and ``try_acquire``, and raised to a queued request when
    ``resize`` shrinks the capacity below what it asks for.
    """


class ReleaseExceedsHeld(InvalidAmount):
    """A partial release asks to give back more than the lease still holds."""
