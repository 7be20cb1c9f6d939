"""``with lock:`` never leaves a section's lock held, on any interpreter.

CPython 3.14 compiles ``with`` to a ``CALL`` of ``__enter__`` that checks the eval breaker once
a C ``__enter__`` returns, outside the block (gh-148874; 3.15 skips that check): an
asynchronous exception delivered there leaves the lock held for ever. The sections of the
package take their locks from ``new_section_lock``, whose ``__enter__`` is guarded there.

The exception is delivered deterministically: the test's thread holds the lock, the worker
blocks in ``with lock:``, an exception is made pending on it (``PyThreadState_SetAsyncExc``
does not interrupt a blocked acquire), and the lock is released: the worker takes it and meets
the pending exception at the first check point after its C ``acquire`` returned.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import Protocol

import pytest

import allotment
from allotment._core._section_lock import ENTRY_CAN_BE_INTERRUPTED, new_section_lock
from allotment.testing import ManualClock
from support import WITH_ENTRY_CHECKS, Worker, inject, wait_until


class Delivered(Exception):
    """The asynchronous exception of these tests."""


class _Lock(Protocol):
    """What the tests need of a lock (``threading.Lock``, ``RLock``, a section lock)."""

    def __enter__(self) -> bool: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> None: ...

    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...


def _enter_and_leave(lock: _Lock) -> None:
    with lock:
        time.monotonic()  # a check point inside the block


def _waits_to_enter(frame: FrameType | None) -> bool:
    """Whether a thread whose innermost frame is ``frame`` is past its last check point
    before taking the lock: at the ``with`` line, or in a Python ``__enter__`` past its
    first line."""
    if frame is None:
        return False
    code = _enter_and_leave.__code__
    if frame.f_code is code:
        return frame.f_lineno == code.co_firstlineno + 1
    return frame.f_code.co_name == "__enter__" and frame.f_lineno > frame.f_code.co_firstlineno


def _deliver_on_entry(lock: _Lock) -> bool:
    """Deliver :class:`Delivered` to a thread as it takes ``lock`` in ``with lock:``; whether
    the lock was left held once that thread ended."""
    lock.acquire()
    worker = Worker(lambda: _enter_and_leave(lock), name="entering")
    try:
        worker.start()
        wait_until(
            lambda: _waits_to_enter(sys._current_frames().get(worker.ident or 0)),
            "the worker waits for the lock",
        )
        inject(worker, Delivered)
    finally:
        lock.release()
    worker.join()
    assert isinstance(worker.error, Delivered), worker.error
    taken = lock.acquire(blocking=False)
    if taken:
        lock.release()
    return not taken


@pytest.mark.skipif(not hasattr(sys, "_current_frames"), reason="needs sys._current_frames")
def test_the_gap_leaves_a_plain_lock_held_exactly_where_with_checks_on_entry() -> None:
    """The interpreter as the envelope sweeps model it (``WITH_ENTRY_CHECKS``)."""
    assert _deliver_on_entry(threading.RLock()) == WITH_ENTRY_CHECKS
    assert _deliver_on_entry(threading.Lock()) == WITH_ENTRY_CHECKS


def test_the_section_lock_is_guarded_wherever_with_checks_on_entry() -> None:
    assert ENTRY_CAN_BE_INTERRUPTED or not WITH_ENTRY_CHECKS


@pytest.mark.skipif(not hasattr(sys, "_current_frames"), reason="needs sys._current_frames")
def test_an_exception_as_with_enters_leaves_a_section_lock_free() -> None:
    lock = new_section_lock()
    assert not _deliver_on_entry(lock)
    # Still a working RLock, re-entrant and exact about its owner.
    with lock:
        assert lock._is_owned()
        with lock:
            pass
        assert lock._is_owned()
    assert not lock._is_owned()


@pytest.mark.skipif(not hasattr(sys, "_current_frames"), reason="needs sys._current_frames")
def test_an_exception_as_with_enters_leaves_a_manual_clocks_lock_free() -> None:
    """``ManualClock`` guards its readings with a section lock too: a held one would hang
    every later ``advance``."""
    clock = ManualClock()
    assert not _deliver_on_entry(clock._lock)
    clock.advance(1.0)
    assert clock.now() == 1.0


# -- the locks of a LocalBackend ---------------------------------------------------------------

LOCAL_PACKAGE = Path(allotment.__file__).parent / "local"


def _local_locks(backend: allotment.LocalBackend) -> dict[str, _Lock]:
    """Every lock that guards state in a LocalBackend and the objects it made (white box)."""
    manager = allotment.ResourceManager(1, name="locks", backend=backend)
    limiter = allotment.RateLimiter(10, per=1, name="locks", backend=backend)
    backend.start_bell()  # makes the doorbell (and this backend's identity)
    meter = limiter._meter
    assert meter is not None
    [state_file] = backend._files.values()
    [meter_file] = backend._meter_files.values()
    bell = backend._bell
    assert bell is not None
    del manager
    return {
        "the backend's": backend._lock,
        "a manager's state file's": state_file.mutex,
        "a limiter's file's": meter_file.mutex,
        "a limiter's meter's": meter._lock,  # type: ignore[attr-defined]
        "the doorbell's": bell._lock,
    }


@pytest.mark.skipif(sys.platform == "win32", reason="LocalBackend is POSIX only")
def test_every_lock_of_a_local_backend_is_a_section_lock(
    local_backend: allotment.LocalBackend,
) -> None:
    section_lock = type(new_section_lock())
    for what, lock in _local_locks(local_backend).items():
        assert type(lock) is section_lock, f"{what} lock is a {type(lock).__name__}"


@pytest.mark.skipif(not hasattr(sys, "_current_frames"), reason="needs sys._current_frames")
@pytest.mark.skipif(sys.platform == "win32", reason="LocalBackend is POSIX only")
def test_an_exception_as_with_enters_leaves_every_lock_of_a_local_backend_free(
    local_backend: allotment.LocalBackend,
) -> None:
    for what, lock in _local_locks(local_backend).items():
        assert not _deliver_on_entry(lock), f"{what} lock was left held"


def test_the_local_backend_makes_no_plain_lock_anywhere() -> None:
    """Not even after a fork, where each lock is made anew: every one comes from
    ``new_section_lock``."""
    plain = re.compile(r"threading\.(R?Lock)\b|allocate_lock|_thread\.RLock")
    found = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted(LOCAL_PACKAGE.glob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if plain.search(line)
    ]
    assert not found, found
