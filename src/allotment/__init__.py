"""allotment: thread-safe, fair, weighted allocation of scarce resources.

>>> import allotment
>>> pool = allotment.ResourceManager(5)
>>> with pool.acquire(2) as lease:
...     lease.amounts
2
"""

from __future__ import annotations

import logging

from ._errors import (
    AcquireTimeout,
    AllotmentError,
    ExceedsCapacity,
    InvalidAmount,
    InvalidAmountType,
    LeaseReleased,
    ManagerClosed,
    ReleaseExceedsHeld,
    UnknownResource,
)
from ._lease import Lease
from ._manager import ResourceManager
from ._semaphore import BoundedSemaphore, Semaphore
from ._statistics import HolderInfo, ManagerStatistics, WaiterInfo

__all__ = [
    "AcquireTimeout",
    "AllotmentError",
    "BoundedSemaphore",
    "ExceedsCapacity",
    "HolderInfo",
    "InvalidAmount",
    "InvalidAmountType",
    "Lease",
    "LeaseReleased",
    "ManagerClosed",
    "ManagerStatistics",
    "ReleaseExceedsHeld",
    "ResourceManager",
    "Semaphore",
    "UnknownResource",
    "WaiterInfo",
]

__version__ = "0.1.0"

# Public classes live in private modules; present them where users import them from.
for _public in __all__:
    globals()[_public].__module__ = __name__
del _public

logging.getLogger(__name__).addHandler(logging.NullHandler())
