"""The doorbell thread: one per backend in a process, started when it first has a waiter.

It sleeps in ``poll`` on two kinds of file, never on a timer:

- its **doorbell** (a FIFO): another process rang it after granting (or refusing) one of
  this backend's waiters in a state file; the thread reads the grants from the files and
  wakes those waiters (a thread's lock, a task's future through its loop);
- a **pidfd** (Linux) per other backend whose records stand before one of this backend's
  waiters: it becomes readable the moment that process is gone (SIGKILL included), and the
  thread reclaims the dead backend's records at once, which grants the waiters they held up.

Where there is no ``pidfd_open`` (macOS), the thread re-checks the watched backends' liveness
files every ``FALLBACK_POLL`` seconds instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable

import attrs

from .._core import SectionLock, new_section_lock
from ._liveness import Identity

__all__ = ["FALLBACK_POLL", "STOP_TIMEOUT", "Bell"]

logger = logging.getLogger("allotment.local")

FALLBACK_POLL = 0.05
STOP_TIMEOUT = 10.0
"""How long ``stop`` waits for the thread (seconds) before it warns and goes on."""


@attrs.define(eq=False)
class Bell:
    identity: Identity
    on_ring: Callable[[], None]
    """Settle this backend's waiters from the files."""
    on_death: Callable[[int, int], None]
    """Reclaim the records of the dead backend ``(pid, nonce)`` everywhere."""
    is_dead: Callable[[int, int], bool]
    _lock: SectionLock = attrs.field(init=False, factory=new_section_lock)
    _to_watch: set[tuple[int, int]] = attrs.field(init=False, factory=set)
    _watched: dict[int, tuple[int, int]] = attrs.field(init=False, factory=dict)
    """pidfd (or a negative key where there is none) to the backend it watches."""
    _watching: set[tuple[int, int]] = attrs.field(init=False, factory=set)
    _stopping: bool = attrs.field(init=False, default=False)
    _finished: bool = attrs.field(init=False, default=False)
    _owns_bell: bool = attrs.field(init=False, default=False)
    """Set by a ``stop`` that gave up on the thread: the thread closes the doorbell itself
    when it ends (closed under it, its number could be reused by another file it would then
    read)."""
    _thread: threading.Thread | None = attrs.field(init=False, default=None)

    def start(self) -> None:
        with self._lock:
            if self._thread is not None or self._stopping:
                return
            thread = threading.Thread(target=self._run, name="allotment-local-bell", daemon=True)
            self._thread = thread
        thread.start()

    def watch(self, others: set[tuple[int, int]]) -> None:
        """Watch these backends until they die; the thread takes them on at its next turn."""
        with self._lock:
            new = others - self._watching
            if not new:
                return
            self._to_watch |= new
            self._watching |= new
        self._ring_self()

    def unwatched(self, others: set[tuple[int, int]]) -> set[tuple[int, int]]:
        """Those of ``others`` whose death this thread will not report by itself."""
        with self._lock:
            return others - self._watching

    def _ring_self(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.identity.bell_fd, b".")

    def stop(self) -> bool:
        """Stop the thread; ``False`` if it did not stop within ``STOP_TIMEOUT``: then the
        thread closes the doorbell when it ends (the caller must not), and the caller says
        so (:meth:`LocalBackend.close` warns, once it has closed everything else)."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._ring_self()
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(STOP_TIMEOUT)
        with self._lock:
            if self._finished:
                return True
            self._owns_bell = True
        return False

    def forget_in_child(self) -> None:
        """In a forked child: the thread did not survive the fork; its pidfds are the
        parent's."""
        for fd in self._watched:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._watched.clear()
        self._watching.clear()
        self._to_watch.clear()
        self._thread = None
        self._lock = new_section_lock()
        self._stopping = True

    def _run(self) -> None:
        poller = select.poll()
        bell_fd = self.identity.bell_fd
        poller.register(bell_fd, select.POLLIN)
        try:
            # The loop's body ends with a plain call and its tests live in the callees: the
            # compiler then covers the back edge with this try (see tests/test_back_edges.py;
            # 3.14 also inlines all() and any() of a generator as loops).
            while True:
                fallback_ms = self._fallback_ms()
                events = poller.poll(fallback_ms)
                # Empty the pipe before looking at the flags: a ring written after this
                # read stays in the pipe for the next poll. Read after the look, it would
                # swallow the ring of a stop() that set its flag just after it: the thread
                # would then poll for ever (seen on a loaded machine).
                rang = self._drain(bell_fd, events)
                with self._lock:
                    if self._stopping:
                        return
                    taking, self._to_watch = self._to_watch, set()
                self._serve(poller, bell_fd, events, taking, rang, polling=fallback_ms is not None)
        except BaseException:  # never silently: a waiter would then wait for its timeout
            logger.exception("the doorbell thread of a LocalBackend stopped")
            raise
        finally:
            for fd in self._watched:
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._watched.clear()
            with self._lock:
                self._finished = True
                if self._owns_bell:
                    with contextlib.suppress(OSError):
                        os.close(bell_fd)

    def _fallback_ms(self) -> int | None:
        """How long a wait may last without a look at the processes watched without a pidfd
        (``None``: every one has a pidfd, the kernel tells)."""
        if all(fd >= 0 for fd in self._watched):
            return None
        return int(FALLBACK_POLL * 1000)

    def _serve(
        self,
        poller: select.poll,
        bell_fd: int,
        events: list[tuple[int, int]],
        taking: set[tuple[int, int]],
        rang: bool,
        *,
        polling: bool,
    ) -> None:
        """One wake-up of the thread: watch the new processes, reclaim the dead, and answer
        a ring (``rang``: the pipe had one, now read)."""
        for identity in taking:
            self._add_watch(poller, identity)
        dead = [fd for fd, event in events if fd != bell_fd and event]
        if polling:
            dead += [fd for fd, who in self._watched.items() if fd < 0 and self.is_dead(*who)]
        for fd in dead:
            self._dead(poller, fd)
        if rang:
            self.on_ring()

    @staticmethod
    def _drain(bell_fd: int, events: list[tuple[int, int]]) -> bool:
        """Read what rang the doorbell, if anything did (``True``)."""
        if not any(fd == bell_fd for fd, _ in events):
            return False
        with contextlib.suppress(BlockingIOError):
            os.read(bell_fd, 4096)
        return True

    def _add_watch(self, poller: select.poll, identity: tuple[int, int]) -> None:
        pidfd_open = getattr(os, "pidfd_open", None)
        fd: int | None = None
        if pidfd_open is not None:
            try:
                fd = pidfd_open(identity[0])
            except ProcessLookupError:
                fd = None
            except OSError:  # not permitted, or a kernel without it: the fallback poll
                fd = -1 - len(self._watched)
        else:
            fd = -1 - len(self._watched)
        if fd is not None:
            self._watched[fd] = identity
            if fd >= 0:
                poller.register(fd, select.POLLIN)
        # Opened first, checked second: if the pid was reused before the open, the
        # liveness file says so now (and a death after this check makes the pidfd ready).
        if self.is_dead(*identity):
            if fd is not None:
                self._unwatch(poller, fd)
            self._report_death(identity)

    def _unwatch(self, poller: select.poll, fd: int) -> tuple[int, int]:
        identity = self._watched.pop(fd)
        if fd >= 0:
            poller.unregister(fd)
            os.close(fd)
        with self._lock:
            self._watching.discard(identity)
        return identity

    def _dead(self, poller: select.poll, fd: int) -> None:
        if fd not in self._watched:
            return
        self._report_death(self._unwatch(poller, fd))

    def _report_death(self, identity: tuple[int, int]) -> None:
        with self._lock:
            self._watching.discard(identity)
        self.on_death(*identity)
