"""allotment: thread-safe, fair, weighted allocation of scarce resources.

>>> import allotment
>>> pool = allotment.ResourceManager(5)
>>> with pool.acquire(2) as lease:
...     lease.amounts
2
"""

from __future__ import annotations

import logging

from ._acquisition import Acquisition
from ._clock import Clock, SystemClock
from ._core import Fairness
from ._declared import DeclaredClaim
from ._errors import (
    AcquireTimeout,
    AllotmentError,
    BackendConflict,
    BackendLimitExceeded,
    BackendUnavailable,
    BankerModeRequired,
    ClaimClosed,
    ExceedsBurst,
    ExceedsCapacity,
    ExceedsClaim,
    InvalidAmount,
    InvalidAmountType,
    InvalidKey,
    InvalidLimit,
    InvalidLimitType,
    LeakedLeaseWarning,
    LeaseLost,
    LeaseReleased,
    LockOrderViolation,
    LockOrderWarning,
    ManagerClosed,
    ReentrantCall,
    ReleaseExceedsHeld,
    UnknownResource,
    UnsupportedByBackend,
)
from ._events import Event, EventKind, EventOwner, add_observer, remove_observer
from ._guard import guard
from ._keyed import KeyedRateLimiter
from ._lease import Lease
from ._limiters import RateGrant, RateLimiter, Reservation, WindowLimiter
from ._lock_order import (
    LockOrderPolicy,
    OrderEdge,
    get_lock_order_policy,
    set_lock_order_policy,
)
from ._manager import ResourceManager
from ._multi import LeaseGroup, Request, acquire_all, acquire_all_async, try_acquire_all
from ._recorder import Recorder
from ._semaphore import BoundedSemaphore, Semaphore
from ._statistics import (
    ClaimInfo,
    HolderInfo,
    ManagerStatistics,
    RateStatistics,
    RateWaiterInfo,
    WaiterInfo,
)
from ._wait_graph import ThreadRef, WaitEdge, WaitGraph, wait_graph
from .local import LocalBackend

__all__ = [
    "AcquireTimeout",
    "Acquisition",
    "AllotmentError",
    "BackendConflict",
    "BackendLimitExceeded",
    "BackendUnavailable",
    "BankerModeRequired",
    "BoundedSemaphore",
    "ClaimClosed",
    "ClaimInfo",
    "Clock",
    "DeclaredClaim",
    "Event",
    "EventKind",
    "EventOwner",
    "ExceedsBurst",
    "ExceedsCapacity",
    "ExceedsClaim",
    "Fairness",
    "HolderInfo",
    "InvalidAmount",
    "InvalidAmountType",
    "InvalidKey",
    "InvalidLimit",
    "InvalidLimitType",
    "KeyedRateLimiter",
    "LeakedLeaseWarning",
    "Lease",
    "LeaseGroup",
    "LeaseLost",
    "LeaseReleased",
    "LocalBackend",
    "LockOrderPolicy",
    "LockOrderViolation",
    "LockOrderWarning",
    "ManagerClosed",
    "ManagerStatistics",
    "OrderEdge",
    "RateGrant",
    "RateLimiter",
    "RateStatistics",
    "RateWaiterInfo",
    "Recorder",
    "ReentrantCall",
    "ReleaseExceedsHeld",
    "Request",
    "Reservation",
    "ResourceManager",
    "Semaphore",
    "SystemClock",
    "ThreadRef",
    "UnknownResource",
    "UnsupportedByBackend",
    "WaitEdge",
    "WaitGraph",
    "WaiterInfo",
    "WindowLimiter",
    "acquire_all",
    "acquire_all_async",
    "add_observer",
    "get_lock_order_policy",
    "guard",
    "remove_observer",
    "set_lock_order_policy",
    "try_acquire_all",
    "wait_graph",
]

__version__ = "0.1.0"

# Public classes live in private modules; present them where users import them from.
for _public in __all__:
    if _public not in {"LockOrderPolicy", "Request", "EventKind"}:  # type aliases, not classes
        globals()[_public].__module__ = __name__
del _public

logging.getLogger(__name__).addHandler(logging.NullHandler())
