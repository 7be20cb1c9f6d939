"""The registry of live managers: what process-wide tools (the lock-order policy, the wait
graph) need to reach every manager without keeping any of them alive."""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._manager import ResourceManager

__all__ = ["live_managers", "register"]

# _lock serialises adds and copies: a WeakSet tolerates its own garbage-collection callbacks
# during iteration, but not an add from another thread.
_lock = threading.Lock()
_managers: weakref.WeakSet[ResourceManager[Any]] = weakref.WeakSet()


def register(manager: ResourceManager[Any]) -> None:
    with _lock:
        _managers.add(manager)


def live_managers() -> list[ResourceManager[Any]]:
    """Every manager not yet garbage-collected, in creation order."""
    with _lock:
        managers = list(_managers)
    managers.sort(key=lambda manager: manager._serial)
    return managers
