"""The lock of a section: a ``threading.RLock`` that ``with lock:`` always leaves released.

Up to 3.13 ``with`` enters through one instruction (``BEFORE_WITH``) that calls ``__enter__``
and never checks the eval breaker, and the block's handler covers the next one: no asynchronous
exception can land between taking the lock and being inside the block. CPython 3.14 compiles
``with`` to a plain ``CALL`` of ``__enter__``, which checks the eval breaker once a C function
returns; what it raises belongs to the call, outside the block, so ``__exit__`` is never called
and the lock stays held for ever (CPython gh-148874; 3.15 skips that check). On 3.14 the lock's
``__enter__`` is therefore Python code: a Python callee checks in its own frame, where a ``try``
covers the acquisition and gives back what an exception cut short. ``__exit__`` stays the C
one (``WITH_EXCEPT_START`` calls it without a check).
"""

from __future__ import annotations

import _thread
import sys
import threading
from typing import TYPE_CHECKING, Protocol, cast

__all__ = ["ENTRY_CAN_BE_INTERRUPTED", "GuardedRLock", "SectionLock", "new_section_lock"]

ENTRY_CAN_BE_INTERRUPTED = sys.version_info[:2] == (3, 14)
"""Whether ``with lock:`` on a C lock can raise after taking it and before the block (every
3.14 release is treated so: the guard costs one Python call where it is not needed)."""


class SectionLock(Protocol):
    """What a pool or a meter needs of its lock: ``threading.RLock``, whose ``_is_owned``
    tells exactly whether the calling thread is inside a section (``threading.Condition``
    relies on it)."""

    def __enter__(self) -> bool: ...

    def __exit__(self, *exc_info: object) -> None: ...

    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...

    def _is_owned(self) -> bool: ...


class GuardedRLock(_thread.RLock):  # type: ignore[misc]  # typeshed: final; it is not
    """An ``RLock`` whose ``__enter__`` gives the lock back if an exception lands right after
    taking it (the check after the C ``acquire`` returns is inside the ``try``)."""

    __slots__ = ()

    if TYPE_CHECKING:

        def _is_owned(self) -> bool: ...

    def __enter__(self) -> bool:  # type: ignore[override]
        try:
            return self.acquire()
        except BaseException:
            # Taken and then interrupted, or interrupted while blocked (not taken).
            if self._is_owned():
                self.release()
            raise


def new_section_lock() -> SectionLock:
    """A section's lock: a plain ``RLock`` where ``with`` enters atomically."""
    if ENTRY_CAN_BE_INTERRUPTED:
        return cast("SectionLock", GuardedRLock())
    return cast("SectionLock", threading.RLock())
