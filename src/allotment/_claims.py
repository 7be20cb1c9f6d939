"""Claims: one record per request, from the moment it asks until its last unit returns.

A claim is what the allocator's queue and its table of holders refer to; a :class:`Lease` is
a claim with a public face, so a lease costs one object. While a claim waits it owns a
*wake-up handle*: a lock created already acquired, which the thread that grants the claim
releases. Each waiter sleeps on its own handle, so a release wakes exactly the waiters it
granted and nobody else (no ``notify_all`` herd).
"""

from __future__ import annotations

import enum
import math
import numbers
import sys
import threading
import time
from types import CodeType
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from ._amounts import Quantity

__all__ = ["Claim", "ClaimState", "Site", "caller_site", "deadline_after", "describe_site"]

Site = tuple[CodeType, int]
"""Where a request was made: the caller's code object and bytecode offset.

Reading ``frame.f_lineno`` costs more than the rest of an uncontended acquire, so the line is
looked up only when a site is shown.
"""

_monotonic = time.monotonic
_new_handle = threading.Lock
_TIMEOUT_MAX = threading.TIMEOUT_MAX


class ClaimState(enum.Enum):
    """Where a claim is in its life. It only moves down this list, and only under the lock."""

    PENDING = "pending"
    """Asking (queued, once it waits); ``_units`` is the request and nothing is held."""
    GRANTED = "granted"
    """Holding ``_units``; partial releases reduce them."""
    REFUSED = "refused"
    """Taken off the queue without a grant; ``_error`` says why."""
    FINISHED = "finished"
    """Everything was given back (released, withdrawn or reclaimed), or never granted."""


PENDING = ClaimState.PENDING
GRANTED = ClaimState.GRANTED
REFUSED = ClaimState.REFUSED
FINISHED = ClaimState.FINISHED


@attrs.define(eq=False)
class Claim:
    """A request and then a holding.

    ``_units``, ``_state``, ``_since`` and ``_error`` are guarded by the allocator's lock;
    ``_thread``, ``_site`` and ``_owner`` never change. ``_since`` is when the claim asked,
    reset to when it was granted if it had to queue (monotonic clock). ``_thread`` is the thread
    that asked, ``_site`` where it asked (or ``None``), ``_owner`` the manager of a lease.
    ``_error`` is set only with the REFUSED state and ``_handle`` only for a claim that queues:
    left unset otherwise, they cost nothing on the uncontended path.

    The fields are private because :class:`Lease` inherits them; the allocator, which owns
    the bookkeeping, is the only other module that touches them.
    """

    _units: Quantity
    _thread: threading.Thread
    _site: Site | None
    _since: float
    _owner: object
    _state: ClaimState = PENDING
    _error: BaseException = attrs.field(init=False)
    _handle: threading.Lock = attrs.field(init=False)

    def _prepare_to_wait(self) -> None:
        """Create the wake-up handle, already held, so ``_wait`` blocks until ``_wake``."""
        handle = _new_handle()
        handle.acquire()
        self._handle = handle

    def _wake(self) -> None:
        """Wake the waiting thread. Called once, under the allocator's lock, after ``_state``."""
        self._handle.release()

    def _wait(self, deadline: float | None) -> bool:
        """Sleep until woken (``True``) or until the monotonic ``deadline`` passes (``False``).

        Called without the allocator's lock. A ``False`` only means the deadline passed: the
        caller must still look at ``state`` under the lock, as a grant may have raced it.
        """
        handle = self._handle
        if deadline is None:
            return handle.acquire()
        while True:
            remaining = deadline - _monotonic()
            if remaining <= 0:
                return False
            # Lock.acquire rejects timeouts above TIMEOUT_MAX; longer waits take several rounds.
            if handle.acquire(timeout=min(remaining, _TIMEOUT_MAX)):
                return True


def caller_site(depth: int) -> Site:
    """Where the code ``depth`` frames above the caller of this function is."""
    frame = sys._getframe(depth + 1)
    return (frame.f_code, frame.f_lasti)


def describe_site(site: Site | None) -> str | None:
    """``"path/to/file.py:42 in function"``, or ``None`` when no site was recorded."""
    if site is None:
        return None
    code, offset = site
    line = next(
        (line for start, end, line in code.co_lines() if start <= offset < end),
        code.co_firstlineno,
    )
    return f"{code.co_filename}:{line} in {code.co_name}"


def deadline_after(timeout: object) -> float | None:
    """The monotonic deadline ``timeout`` seconds from now; ``None`` means wait forever.

    ``timeout`` is ``None`` or a non-negative real number (``inf`` also means forever);
    anything else raises ``TypeError`` or ``ValueError``.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
    seconds = float(timeout)
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"timeout must be zero or more seconds, got {timeout!r}")
    if math.isinf(seconds):
        return None
    return _monotonic() + seconds
