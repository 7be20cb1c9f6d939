"""One manager's state file, mapped, and the section that changes it.

A section holds, in this order, the file's in-process mutex (threads of one process share
the open file, and an ``flock`` does not exclude them from each other) and the file's
``flock(LOCK_EX)`` (other processes), only for the decode, the change in memory and the
write of the next copy: never while anyone waits, sleeps, logs or rings a doorbell.

The ``flock`` is taken inside the ``try`` whose ``finally`` drops it: an exception landing
anywhere (Ctrl-C right after ``flock`` returns) leaves no lock behind, since unlocking an
unlocked file does nothing.

The mutex also guards the descriptor and the mapping: they are used only under it, so that
``close`` (the backend's, under the mutex) never unmaps a view that another thread is reading
and never leaves a number that a later ``flock`` could aim at another file.

The mutex is a section lock (``_core._section_lock``): on 3.14 a plain lock's ``with`` can be
interrupted after taking it and before the block (CPython gh-148874), leaving it held for
ever. It is re-entrant, but nothing re-enters it: a release from a finalizer or a signal
handler landing inside a section or bookkeeping is deferred (``inside``).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import attrs

from .._clock import SYSTEM_CLOCK
from .._core import SectionLock, new_section_lock
from .._errors import BackendConflict, BackendUnavailable, ReentrantCall, UnsupportedByBackend
from ._directory import Directory
from ._layout import (
    MAGIC,
    CorruptState,
    Known,
    State,
    check_header,
    file_size,
    header,
    read_known,
    read_state,
    write_state,
)

if TYPE_CHECKING:
    from .._core import Ticket, Waiter
    from ._pool import LocalPool

__all__ = [
    "StateFile",
    "check_linked",
    "closed_error",
    "defer",
    "first_token",
    "inside",
    "run_deferred",
]

_R = TypeVar("_R")


@attrs.define(eq=False)
class StateFile:
    """The mapped file of the manager ``name``; one per name in each backend, shared by
    every face of that name in this process (so their tickets share one mutex)."""

    name: str
    path: str
    resources: int
    fd: int
    _map: mmap.mmap
    view: memoryview
    mutex: SectionLock = attrs.field(factory=new_section_lock)
    waiting: dict[int, tuple[LocalPool, Ticket]] = attrs.field(factory=dict)
    """The queued tickets of this backend on this file, by record id (guarded by ``mutex``)."""
    unusable: Callable[[StateFile, BackendUnavailable], None] | None = None
    """Told when a section finds the file damaged or removed (after the mutex is released):
    the backend refuses its waiters on it and rings the other processes' doorbells, so that
    nobody waits for ever on a file nobody can use."""
    known: Known | None = None
    """The copy this process last read or wrote (guarded by ``mutex``): while the file still
    holds it byte for byte, a section decodes it without checksumming it again."""
    closed: bool = False
    """Set by the backend's ``close`` (under ``mutex``): every section is refused from then
    on but those that only give back (``gives_back``), so that no grant is ever written for
    an identity given up, whose records any process may reclaim."""
    mapped: bool = True
    """Whether ``fd`` and the mapping are still open (guarded by ``mutex``): ``close`` gives
    them back once the backend's records are reclaimed. A give-back section on a closed and
    unmapped file finds nothing (``change(None)``): nothing of this backend is left in it."""

    @classmethod
    def open(cls, directory: Directory, path: str, name: str, resources: int) -> StateFile:
        fd = directory.open_file(path)
        try:
            size = file_size(resources)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.fstat(fd).st_size
                if current >= 32:
                    words = struct.unpack("<4q", os.pread(fd, 32, 0))
                    if words[0] == MAGIC and words[2] != resources:
                        raise BackendConflict(
                            f"{name!r} already exists in this LocalBackend with {words[2]} "
                            f"resource(s); this process declared {resources}. Declare the "
                            "same, or use another name"
                        )
                if current == 0:
                    os.ftruncate(fd, size)
                    os.pwrite(fd, header(resources), 0)
                elif current != size:
                    raise _corrupt(name, path, f"its size is {current} bytes, not {size}")
                mapped = mmap.mmap(fd, size)
                view = memoryview(mapped)
                try:
                    check_header(view, resources)
                except CorruptState as error:
                    view.release()
                    mapped.close()
                    raise _corrupt(name, path, str(error)) from None
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(fd)
            raise
        return cls(name, path, resources, fd, mapped, view)

    def check_resources(self, name: str, resources: int) -> None:
        if resources != self.resources:
            raise BackendConflict(
                f"{name!r} already exists in this LocalBackend with {self.resources} "
                f"resource(s); this process declared {resources}. Declare the same, or use "
                "another name"
            )

    def reopen_in_child(self, directory: Directory) -> None:
        """In a forked child: the inherited descriptor shares the parent's ``flock`` (a lock
        belongs to the open file, not the process), so the child opens the file again."""
        self.mutex = new_section_lock()
        self.waiting.clear()
        self.known = None
        old_fd = self.fd
        fresh = StateFile.open(directory, self.path, self.name, self.resources)
        self.fd, self._map, self.view = fresh.fd, fresh._map, fresh.view
        os.close(old_fd)  # the parent's mapping stays valid in the parent

    def section(
        self,
        change: Callable[[State | None], tuple[_R, State | None]],
        then: Callable[[_R], None] | None = None,
        *,
        grants: bool = False,
        gives_back: bool = False,
        settle: Callable[[State], None] | None = None,
        wake: Callable[[], None] | None = None,
    ) -> _R:
        """Run ``change`` on the current state under both locks; write the state it returns
        (``None``: nothing to write). ``change`` must not wait, block or call out. ``then``
        gets the result once the ``flock`` is released, still under the mutex: this
        process's bookkeeping of what was written (plain stores), in the same turn.
        ``grants``: the change may take units or change the capacity, which a file removed
        from outside must refuse (see ``check_linked``); a release or withdrawal still gives
        back to the processes that share the removed file. ``gives_back``: the change only
        gives back (a release, a withdrawal, a reclaim), which a closed backend still runs
        (see ``closed``); every other section of a closed one raises ``closed_error``.

        The hand-off is part of the section, so that no exception can leave a grant written
        and its waiter asleep: ``settle(state)`` (under the mutex, after ``then``) settles
        this backend's waiters from the state as the file has it (read, or written), and
        ``wake()`` (after the mutex, in a ``finally``) wakes and rings whom it granted. An
        exception that cuts the section short after the write (or anywhere) makes it settle
        again from the file itself, and one that cuts ``wake`` short makes it run again:
        both are idempotent (a spurious wake-up or ring is harmless).

        Refused (:class:`ReentrantCall`) on a thread already inside a section or bookkeeping:
        a finalizer or a signal handler there would otherwise run a section of its own under
        the same ``flock`` (the kernel's lock is the open file's, not the thread's) and
        unlock it under the interrupted one."""
        if _here.depth:
            raise _reentered(self.name)
        try:
            with self.mutex:
                _here.depth += 1
                try:
                    if self.closed and (not gives_back or not self.mapped):
                        if not gives_back:
                            raise closed_error(self.name)
                        result = change(None)[0]  # finds nothing: close reclaimed it all
                        if then is not None:
                            then(result)
                        return result
                    try:
                        fcntl.flock(self.fd, fcntl.LOCK_EX)
                        if grants:
                            check_linked(self.fd, self.name, self.path)
                        state = self._read()
                        result, changed = change(state)
                        if changed is not None:
                            write_state(self.view, changed, self.resources)
                            self.known = changed.known
                            state = changed
                    finally:
                        fcntl.flock(self.fd, fcntl.LOCK_UN)
                    if then is not None:
                        then(result)
                    if settle is not None and state is not None:
                        settle(state)
                    return result
                except BaseException:
                    if settle is not None and self.waiting and self.mapped:
                        self._settle_from_file(settle)
                    raise
                finally:
                    _here.depth -= 1
        except BackendUnavailable as error:
            if self.unusable is not None:
                self.unusable(self, error)
            raise
        finally:
            if wake is not None:
                try:
                    wake()
                except BaseException:
                    wake()
                    raise

    def _read(self) -> State | None:
        """The state, under both locks: the copy known to this process if the file still
        holds it, else read and checksummed (and known from now on)."""
        state = read_known(self.view, self.resources, self.known)
        if state is not None:
            return state
        try:
            state = read_state(self.view, self.resources)
        except CorruptState as error:
            self.known = None
            raise _corrupt(self.name, self.path, str(error)) from None
        self.known = None if state is None else state.known
        return state

    def _settle_from_file(self, settle: Callable[[State], None]) -> None:
        """Under the mutex, on a section's way out by an exception: ``settle`` from what the
        file holds (the state in memory may be a change that was never written)."""
        try:
            try:  # the flock inside the try that drops it, as in a section
                fcntl.flock(self.fd, fcntl.LOCK_EX)
                state = read_state(self.view, self.resources)
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        except CorruptState:
            return  # damaged: every caller gets the error from its next section
        if state is not None:
            settle(state)

    def bookkeep(self, work: Callable[[], _R]) -> _R:
        """``work()`` under the file's mutex: this process's bookkeeping of its tickets
        (plain stores), marked as a section is, so that a finalizer landing in it defers its
        release. A function, not a generator context manager: an exception delivered as a
        generator's ``__enter__`` returns would leave the mutex held by the suspended
        generator until it is collected."""
        with self.mutex:
            _here.depth += 1
            try:
                return work()
            finally:
                _here.depth -= 1

    def shut(self, *, wait: bool = True) -> list[Waiter]:
        """Refuse, from now on, every section but those that give back (``closed``), and
        refuse this backend's queued tickets with ``closed_error`` (no grant can reach them
        any more); returns their waiters, for the caller to wake once out of the mutex.
        ``wait=False``: if another thread holds the mutex, only the flag is set (a plain
        store, which every section begun after the holder's sees) and nobody is refused."""
        mutex = self.mutex
        if mutex._is_owned():  # this very thread is in a section (close() from a finalizer
            self.closed = True  # or a signal handler): busy, as if another held it
            return []
        try:
            if not mutex.acquire(wait):
                self.closed = True
                return []
            _here.depth += 1
            try:
                self.closed = True
                error = closed_error(self.name)
                woken = []
                for pool, ticket in self.waiting.values():
                    woken.append(ticket.waiter)
                    pool.refuse_with(ticket, error)
                self.waiting.clear()
                return woken
            finally:
                _here.depth -= 1
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                mutex.release()
            except RuntimeError:
                pass  # not acquired: busy

    def close(self, *, wait: bool = True) -> bool:
        """Unmap the file and close its descriptor, under the mutex (no other thread can be
        reading them). Idempotent. ``wait=False``: ``False`` if another thread holds the
        mutex (the file is then left open: a thread stuck in a section still uses it)."""
        mutex = self.mutex
        if mutex._is_owned():  # in a section of this very thread: never unmapped under it
            return False
        try:
            if not mutex.acquire(wait):
                return False
            _here.depth += 1  # a finalizer's release landing here is deferred
            try:
                self.closed = True
                if self.mapped:
                    self.mapped = False
                    self.known = None
                    self.view.release()
                    self._map.close()
                    os.close(self.fd)
                return True
            finally:
                _here.depth -= 1
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                mutex.release()
            except RuntimeError:
                pass  # not acquired: busy


class _Here(threading.local):
    depth: int = 0
    """Sections and bookkeeping blocks (of any file) this thread is in."""
    deferred: list[Callable[[], None]]

    def __init__(self) -> None:
        self.deferred = []


_here = _Here()


def inside() -> bool:
    """Whether this thread is inside a section or bookkeeping of any state file: a release
    from a finalizer or a signal handler there is deferred (never a second ``flock`` under
    the first, never a deadlock on the mutex)."""
    return _here.depth > 0


def defer(work: Callable[[], None]) -> None:
    _here.deferred.append(work)


def run_deferred() -> None:
    """Run what re-entered, once this thread is out of every section."""
    deferred = _here.deferred
    while deferred and _here.depth == 0:
        deferred.pop(0)()


def _reentered(name: str) -> ReentrantCall:
    return ReentrantCall(
        f"cannot use {name!r} from inside a section or bookkeeping of this LocalBackend on this "
        "thread (a finalizer or signal handler ran there)"
    )


def closed_error(name: str) -> UnsupportedByBackend:
    return UnsupportedByBackend(
        f"this LocalBackend was closed: {name!r} can no longer be used through it (open the "
        "directory again with a new LocalBackend)"
    )


def check_linked(fd: int, name: str, path: str) -> None:
    """Refuse a state file removed from outside (its directory deleted, or the file): the
    processes that open the name from now on make a new file, and a grant from this one would
    no longer bind them. Checked by the sections that grant, not by those that give back."""
    if os.fstat(fd).st_nlink == 0:
        raise BackendUnavailable(
            f"the state file of {name!r} ({path}) was removed while in use: the processes "
            "that share it would no longer see each other. It is refused; close this "
            "LocalBackend and open the directory again"
        )


def _corrupt(name: str, path: str, why: str) -> BackendUnavailable:
    return BackendUnavailable(
        f"the state file of {name!r} ({path}) is damaged: {why}. It is refused, never "
        "trusted; stop the processes that use it and remove the file to start afresh"
    )


def first_token() -> int:
    """The first fencing token of a new file: the wall clock in nanoseconds, so tokens keep
    increasing across a reset (a reboot) as long as the clock does."""
    return max(1, SYSTEM_CLOCK.wall_ns())
