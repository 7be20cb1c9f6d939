"""The registry of live managers: what process-wide tools (the wait graph) need to reach every
manager without keeping any of them alive.

Lock-free on purpose: ``wait_graph()`` may run from a signal handler that interrupted a thread
in the middle of a registration, so nothing here may wait. Each step is one dictionary
operation, which the interpreter performs atomically, and a dead manager's entry is removed by
its weak reference's callback.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._manager import ResourceManager

__all__ = ["live_managers", "register"]

_managers: dict[int, weakref.ref[ResourceManager[Any]]] = {}


def register(manager: ResourceManager[Any], serial: int) -> None:
    def forget(_: object, serial: int = serial) -> None:
        _managers.pop(serial, None)

    _managers[serial] = weakref.ref(manager, forget)


def live_managers() -> list[ResourceManager[Any]]:
    """Every manager not yet garbage-collected, in creation order."""
    # dict.copy() runs in C with no allocation the collector watches while it walks, so a
    # manager collected meanwhile (its callback pops an entry) cannot change the dict
    # mid-walk; sorting the copy's items may run the collector, which is then harmless.
    entries = sorted(_managers.copy().items())
    managers = [reference() for _, reference in entries]
    return [manager for manager in managers if manager is not None]
