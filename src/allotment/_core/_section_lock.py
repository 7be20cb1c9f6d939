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

Releasing. The core sections (``_pool.py``, ``_meter.py``) do not use ``with`` at all: each is
written out in one shape, the only one no exception can skip on any interpreter::

    if lock._is_owned():          # re-entry, tested first: then this frame alone holds it
        raise ...
    try:
        lock.acquire()            # the first call inside the try
        ...                       # the body; every way out goes through the finally
    finally:
        try:
            lock.release()        # the finally's first statement, inside a try
        except RuntimeError:
            pass                  # not held: the exception came while waiting for it

An asynchronous exception can land only at a check point. After ``acquire`` returns (3.14
checks there) it is inside the ``try``. On 3.10 the jump to an exception handler is itself a
check point, unless the handler's first instruction is ``SETUP_FINALLY``: a signal made pending
while the body ran (a C call that signals and then raises) is handled there, and a signal
handler that raises skips whatever the handler was about to do. That hole is in every other
form of a section: ``with lock:`` (its exit handler starts with ``WITH_EXCEPT_START``),
``try: ... finally: lock.release()`` and ``except BaseException: lock.release()``. A
``finally`` whose body starts with ``try`` starts with ``SETUP_FINALLY``, and then nothing
checks before ``release`` has run (loading ``lock.release`` is no check point). 3.11 and newer
check nowhere between a raise and its handler. The release is its own test of ownership: no
check point between a test and the release. A helper function would not do: a Python call's
first instruction is a check point on 3.11 and newer, before the release. The faces around
the core (the HTTP policy, the keyed limiter, the observers' registry, the Redis backend,
``testing``, ``otel``, the lock-order graph) use the same shape on ``RLock``s;
``LocalBackend``'s registry and doorbell-thread locks still use ``with`` (the 3.10 hole
remains there). ``tests/test_handler_entry.py`` proves the shape for each core section,
``tests/test_handler_entry_edges.py`` for the faces.
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
