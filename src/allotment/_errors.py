"""The exceptions allotment raises.

Every exception derives from :class:`AllotmentError`, and each one also derives from the
built-in exception a caller would catch anyway (``TimeoutError``, ``ValueError``,
``TypeError``, ``RuntimeError``), so code written for the standard library keeps working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._lock_order import OrderEdge
    from ._manager import ResourceManager

__all__ = [
    "AcquireTimeout",
    "AllotmentError",
    "BackendConflict",
    "BackendLimitExceeded",
    "BackendUnavailable",
    "BankerModeRequired",
    "ClaimClosed",
    "ExceedsBurst",
    "ExceedsCapacity",
    "ExceedsClaim",
    "InvalidAmount",
    "InvalidAmountType",
    "InvalidKey",
    "InvalidLimit",
    "InvalidLimitType",
    "LeakedLeaseWarning",
    "LeaseLost",
    "LeaseReleased",
    "LockOrderViolation",
    "LockOrderWarning",
    "ManagerClosed",
    "ReentrantCall",
    "ReleaseExceedsHeld",
    "UnknownResource",
    "UnsupportedByBackend",
]


class AllotmentError(Exception):
    """Base class of every exception allotment raises."""


class AcquireTimeout(AllotmentError, TimeoutError):
    """The request was not granted before its deadline; nothing is held on its behalf."""

    manager: ResourceManager[Any] | None = None
    """The manager the request was waiting on when the deadline passed."""


class BackendUnavailable(AllotmentError, ConnectionError):
    """The backend that keeps a shared limit (a Redis server) could not be reached or did not
    answer in time. Raised within the backend's ``timeout``, never after a silent retry.
    Nothing granted is lost: a lease that cannot be released is released again in the
    background, and in any case returns when its TTL runs out."""


class BackendConflict(AllotmentError, ValueError):
    """A shared manager or limiter already exists under this name with other settings
    (another capacity, rate, burst, limit or period, or other resource names)."""


class BackendLimitExceeded(AllotmentError, RuntimeError):
    """A fixed limit of the backend would be exceeded (a LocalBackend manager holds at most
    1024 holders and waiters across its processes). Raised before anything changes."""


class UnsupportedByBackend(AllotmentError, TypeError):
    """What was asked cannot be done on this backend (banker mode on Redis, for one):
    refused when the manager or limiter is made, not discovered later."""


class LeaseLost(AllotmentError, RuntimeError):
    """The lease expired before it could be renewed (its process could not reach the server
    for longer than its TTL, or the server lost its data): its units may have been granted
    to someone else, and work done under it since may have overlapped theirs. Raised by
    :meth:`Lease.release` (and the end of its ``with`` block); ``lease.lost`` tells it
    earlier. Fencing tokens (``lease.fencing_token``) let the resource itself refuse the
    late writer."""


class ManagerClosed(AllotmentError, RuntimeError):
    """The manager was closed: queued requests are refused and new ones are rejected."""


class ReentrantCall(AllotmentError, RuntimeError):
    """A manager was used from inside its own critical section, on the thread that is in it.

    That happens only when a finalizer (``__del__``, ``weakref.finalize``), a gc callback or a
    signal handler runs while this thread is inside the manager's short bookkeeping, and calls
    back into the manager. Waiting there would deadlock the thread on itself, so acquisitions
    (and statistics, resizes, closing, partial releases) raise this instead. A full release
    from there is allowed: it is carried out as soon as the interrupted section ends.
    """


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


class ExceedsBurst(InvalidAmount):
    """A cost is more than a rate limiter can ever allow at once (its ``burst``, or a window
    limiter's ``limit``), so waiting would never end. Raised before anything changes."""


class InvalidLimit(AllotmentError, ValueError):
    """A rate limiter's settings are impossible: a rate, period, burst or limit that is zero,
    negative, NaN or infinite."""


class InvalidLimitType(AllotmentError, TypeError):
    """A rate limiter's setting is not a number (or is a bool), or a burst or limit is not a
    whole number."""


class InvalidKey(AllotmentError, TypeError):
    """A keyed limiter was given a key that cannot be a dict key (it is not hashable)."""


class ReleaseExceedsHeld(InvalidAmount):
    """A partial release asks to give back more than the lease still holds."""


class ExceedsClaim(InvalidAmount):
    """A request through a declared claim would take the claim beyond its declared maximum."""


class ClaimClosed(AllotmentError, RuntimeError):
    """A declared claim was closed: it takes nothing more, and its queued requests are refused."""


class BankerModeRequired(AllotmentError, RuntimeError):
    """Declared claims need a manager created with ``banker=True``."""


class LockOrderViolation(AllotmentError, RuntimeError):
    """An acquisition could deadlock with another thread (policy ``"raise"``).

    Raised before the acquisition changes anything: it closes a cycle in the order in which
    threads have nested acquisitions (``A`` held while ``B`` was acquired somewhere, ``B``
    held while ``A`` is acquired now), or it takes a manager of lower rank than one the thread
    holds. The message lists each edge of the cycle and where it was first seen.
    """

    edge: OrderEdge | None = None
    """The nesting this acquisition would have added."""
    cycle: tuple[OrderEdge, ...] = ()
    """``edge`` followed by the recorded edges that lead back to it; empty for a rank
    inversion that closes no cycle."""


class LeakedLeaseWarning(RuntimeWarning):
    """A lease was garbage-collected while it still held units: its units were returned, but
    the code that dropped it held nothing meanwhile (``pool.acquire(1)`` as a bare statement
    is released at once). Shown by default, as every ``RuntimeWarning`` is (not a
    ``ResourceWarning``, which Python hides unless asked), and attributed to the line of the
    caller's code that was running when the lease was collected."""


class LockOrderWarning(RuntimeWarning):
    """The warning issued instead of :class:`LockOrderViolation` under policy ``"warn"``."""
