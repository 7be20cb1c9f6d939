"""LocalBackend: managers and limiters shared by the processes of one host, with no server.

Each manager (and each limiter) is a fixed-layout state file in one directory, changed only
under ``flock`` (see ``_state_file`` and ``_layout``). Each backend object takes an identity
in that directory (``_liveness``): a liveness file it keeps locked for its lifetime, and a
doorbell. Its doorbell thread (``_bell``), started when it first has a waiter, wakes its
waiters when another process grants them, and reclaims the records of processes that die.

``_lock`` guards ``_files``, ``_meter_files`` (and their ``faces``), ``_identity``, ``_bell``,
``_closed`` and ``_lingering``; it is held only to look them up or make them, never across a
section of a state file.
"""

from __future__ import annotations

import contextlib
import fractions
import logging
import math
import os
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from .._backend import OnUnavailable
from .._clock import SYSTEM_CLOCK, Clock
from .._core import (
    Form,
    NamedForm,
    Pool,
    Quantity,
    RateMeter,
    SectionLock,
    Waiter,
    new_section_lock,
)
from .._errors import BackendUnavailable, UnsupportedByBackend
from . import _bell, _directory
from ._bell import Bell
from ._directory import Directory
from ._liveness import Identity, is_dead, ring
from ._meter import (
    GCRA,
    GCRA_WORDS,
    WINDOW,
    WINDOW_WORDS,
    LocalMeter,
    MeterFile,
    RuleLimits,
    gcra_take,
    window_take,
)
from ._pool import LocalPool, reap, settle
from ._state_file import StateFile, run_deferred

__all__ = ["LocalBackend"]

logger = logging.getLogger("allotment.local")

_backends: weakref.WeakSet[LocalBackend] = weakref.WeakSet()


@attrs.define(eq=False, init=False)
class LocalBackend:
    """Managers and rate limiters shared by every process of this host that opens the same
    directory: no server, the standard library only (POSIX: Linux and macOS).

    ``path`` is a directory, made if missing, with ``mode`` (default ``0o700``: this user
    only; ``0o770`` shares with the directory's group). A directory or file that others could
    write, or that another user owns, is refused (:class:`PermissionError`). State from an
    earlier boot of the host is discarded when the directory is opened.
    """

    path: str
    _directory: Directory
    _lock: SectionLock
    _files: dict[str, StateFile]
    _meter_files: dict[str, MeterFile]
    _identity: Identity | None
    _bell: Bell | None
    _closed: bool
    _lingering: list[StateFile | MeterFile]
    """Files a close left open, their mutex held by a stuck thread (guarded by ``_lock``)."""

    def __init__(self, path: str | os.PathLike[str], *, mode: int = 0o700) -> None:
        if type(mode) is not int or not 0 <= mode <= 0o777:
            raise ValueError(f"mode must be permission bits such as 0o700, not {mode!r}")
        if not mode & 0o700 == 0o700:
            raise ValueError(f"mode {mode:#o} must give the owner read, write and search")
        self.path = os.fspath(path)
        self._directory = Directory(self.path, mode)
        self._directory.reset_if_rebooted(_directory.boot_id())
        self._lock = new_section_lock()
        self._files = {}
        self._meter_files = {}
        self._identity = None
        self._bell = None
        self._closed = False
        self._lingering = []
        _backends.add(self)

    def __repr__(self) -> str:
        return f"<allotment.LocalBackend {self.path!r}>"

    # -- the Backend seam ----------------------------------------------------------------------

    def manager_pool(self, name: str, form: Form[Any], capacity: Quantity, clock: Clock) -> Pool:
        resources = len(form.names) if isinstance(form, NamedForm) else 1
        file = self._file(name, resources)
        return LocalPool(form, self, name, capacity, clock.now, file)

    def gcra_meter(
        self,
        name: str,
        interval_ns: fractions.Fraction,
        burst: int,
        key: str | None,
        on_unavailable: OnUnavailable | None,
    ) -> RateMeter:
        """The meter of a GCRA named ``name`` (of one of its keys, for a keyed limiter),
        on the host's monotonic clock. Each unit's interval is rounded up to a whole
        nanosecond: never looser. ``on_unavailable`` (default ``"raise"``) is what its
        decisions do when the limit's file cannot be used (damaged, or removed from outside),
        as on Redis when the server cannot be reached."""
        interval = math.ceil(interval_ns)
        file_name = f"gcra\x00{name}" if key is None else f"gcra\x00{name}\x00{key}"
        file = self._meter_file(file_name, GCRA, GCRA_WORDS)
        meter = LocalMeter(
            file, gcra_take, (interval, burst), RuleLimits(burst), _describe_gcra, name,
            SYSTEM_CLOCK.now, on_unavailable or "raise",
        )  # fmt: skip
        if key is None:
            meter.declare()
        self._add_face(file, meter)
        return meter

    def window_meter(
        self, name: str, limit: int, per: fractions.Fraction, on_unavailable: OnUnavailable | None
    ) -> RateMeter:
        """The meter of a sliding window named ``name``, on the host's monotonic clock
        (``on_unavailable`` as for a GCRA)."""
        window = math.ceil(per * 1_000_000_000)
        file = self._meter_file(f"window\x00{name}", WINDOW, WINDOW_WORDS)
        meter = LocalMeter(
            file, window_take, (limit, window), RuleLimits(limit), _describe_window, name,
            SYSTEM_CLOCK.now, on_unavailable or "raise",
        )  # fmt: skip
        meter.declare()
        self._add_face(file, meter)
        return meter

    def _add_face(self, file: MeterFile, meter: LocalMeter) -> None:
        with self._lock:  # never beside the close's listing (a set cannot grow under it)
            file.faces.add(meter)

    def _meter_file(self, file_name: str, kind: int, words: int) -> MeterFile:
        with self._lock:
            self._check_open()
            file = self._meter_files.get(file_name)
            if file is None:
                path = self._directory.meter_path(file_name)
                file = MeterFile.open(self._directory, path, file_name, kind, words)
                self._meter_files[file_name] = file
        return file

    # -- files, identity, doorbell -------------------------------------------------------------

    def _file(self, name: str, resources: int) -> StateFile:
        with self._lock:
            self._check_open()
            file = self._files.get(name)
            if file is None:
                file = StateFile.open(
                    self._directory, self._directory.manager_path(name), name, resources
                )
                file.unusable = self._unusable
                self._files[name] = file
        file.check_resources(name, resources)
        return file

    def _check_open(self) -> None:
        if self._closed:
            raise UnsupportedByBackend("this LocalBackend was closed")

    def me(self) -> tuple[int, int]:
        identity = self._identity
        if identity is None:
            with self._lock:
                identity = self._identity
                if identity is None:
                    self._check_open()  # never a new identity, left behind, once closed
                    identity = Identity.take(self._directory)
                    self._identity = identity
        return identity.pid, identity.nonce

    def ring(self, pid: int, nonce: int) -> None:
        ring(self._directory, pid, nonce)

    def _the_bell(self) -> Bell | None:
        """The doorbell thread's object, made if need be; ``None`` once closed (never a new
        thread then: the close refuses and wakes every waiter itself)."""
        self.me()
        with self._lock:
            if self._closed:
                return None
            bell = self._bell
            if bell is None:
                assert self._identity is not None
                bell = Bell(self._identity, self._rung, self._died, self._is_dead)
                self._bell = bell
        return bell

    def start_bell(self) -> None:
        bell = self._the_bell()
        if bell is not None:
            bell.start()

    def watch(self, others: set[tuple[int, int]]) -> None:
        bell = self._the_bell() if others else None
        if bell is not None:
            bell.watch(others)

    def unwatched(self, others: set[tuple[int, int]]) -> set[tuple[int, int]]:
        bell = self._bell
        return others if bell is None else bell.unwatched(others)

    def _is_dead(self, pid: int, nonce: int) -> bool:
        return is_dead(self._directory, pid, nonce)

    def reap_dead(self, candidates: set[tuple[int, int]]) -> bool:
        """Reclaim the records of those ``candidates`` that are dead, everywhere in this
        backend's files; ``True`` if any was."""
        dead = {identity for identity in candidates if self._is_dead(*identity)}
        if dead:
            self._reap(dead)
        return bool(dead)

    def _reap(self, dead: set[tuple[int, int]]) -> None:
        with self._lock:
            files = list(self._files.values())
        for file in files:
            _unless_unusable(reap, file, self, dead)
        for pid, nonce in dead:
            for path in (
                self._directory.bell_path(pid, nonce),
                self._directory.process_path(pid, nonce),
            ):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def _unusable(self, file: StateFile, error: BackendUnavailable) -> None:
        """``file`` is damaged or removed: refuse this backend's waiters on it with the
        error, and ring every other backend of the directory, whose doorbell threads then
        find it so and refuse theirs (a backend with no waiter there looks no further)."""

        def refuse() -> list[Waiter]:
            woken = []
            for pool, ticket in file.waiting.values():
                woken.append(ticket.waiter)
                pool.refuse_with(ticket, error)
            file.waiting.clear()
            return woken

        for waiter in file.bookkeep(refuse):
            waiter.wake()
        me = self.me()
        for identity in self._directory.bells():
            if identity != me:
                with contextlib.suppress(OSError):
                    self.ring(*identity)

    def _rung(self) -> None:
        """The doorbell rang: settle this backend's waiters from the files."""
        with self._lock:
            files = [file for file in self._files.values() if file.waiting]
        for file in files:
            _unless_unusable(settle, file, self)

    def _died(self, pid: int, nonce: int) -> None:
        self._reap({(pid, nonce)})

    def close(self) -> None:
        """Stop the doorbell thread, refuse this backend's waiters, give up its identity and
        close its files. Idempotent.

        In this order: each state file is shut (under its mutex: every later section of it
        is refused with :class:`UnsupportedByBackend` but those that only give back), and
        this backend's waiters on it are refused with that error and woken; every meter file
        is closed and its sleepers woken (their ``poll`` raises that error); what the
        backend still holds or asks for is reclaimed, as if its process had died (a lease
        held across the close is lost: its release finds nothing to give back); the
        identity is given up; and the state files are closed (unmapped, their descriptors
        closed, under their mutexes). No grant can be written for the identity once given
        up, whose records every process may reclaim.

        If the doorbell thread does not stop in time it is stuck in a section (waiting for
        a state file's ``flock`` held by a stopped process, say), perhaps holding a file's
        mutex: the reaps, which would wait behind it, are skipped (giving up the identity
        makes this backend's records a dead backend's, reclaimed by the next section of any
        process), a file whose mutex is busy is marked closed but left open (never unmapped
        under a thread that may be reading it; a later ``close`` closes it if it is free
        then), and the warning comes last, so that ``-W error`` cannot leave the backend
        half closed."""
        with self._lock:
            closed, self._closed = self._closed, True
            lingering, self._lingering = self._lingering, []
            bell, self._bell = self._bell, None
            files = list(self._files.values())
            meter_files = list(self._meter_files.values())
        if closed:  # again: what a stuck thread kept open is closed if it is free now
            self._close_files(lingering, wait=False)
            return
        stopped = bell is None or bell.stop()
        for file in files:
            for waiter in file.shut(wait=stopped):
                waiter.wake()
        self._close_files(meter_files, wait=stopped)
        with self._lock:
            meters = [meter for meter_file in meter_files for meter in meter_file.faces]
        for meter in meters:
            meter.wake_closed()
        identity = self._identity
        if identity is not None:
            if stopped:
                for file in files:
                    with contextlib.suppress(BackendUnavailable):  # a damaged file stays so
                        reap(file, self, {(identity.pid, identity.nonce)})
            identity.close(self._directory, keep_bell=not stopped)
        self._close_files(files, wait=stopped)
        run_deferred()  # what a finalizer deferred while a file's close held its mutex
        if not stopped:
            warnings.warn(
                f"the doorbell thread of a LocalBackend did not stop within {_bell.STOP_TIMEOUT} "
                "s: what it was doing is stuck (a section waiting for a state file's flock "
                "held by a stopped process, say). It is left running, as a daemon thread, "
                "and ends at its next turn; this backend is closed without it, and what it "
                "held is reclaimed by the next section of any process",
                RuntimeWarning,
                stacklevel=2,
            )

    def _close_files(self, files: Sequence[StateFile | MeterFile], *, wait: bool) -> None:
        """Close ``files``; ``wait=False``: those whose mutex a thread holds are kept, for
        a later :meth:`close` to try again."""
        busy = [file for file in files if not file.close(wait=wait)]
        with self._lock:
            self._lingering += busy

    def _after_fork_in_child(self) -> None:
        """The child shares the parent's open files, hence its ``flock``s: it reopens its
        state files and takes an identity of its own when it first needs one. A closed
        backend is left alone: nothing in the child may use it."""
        if self._closed:
            return
        self._lock = new_section_lock()
        if self._identity is not None:
            self._identity.forget_in_child()
            self._identity = None
        if self._bell is not None:
            self._bell.forget_in_child()
            self._bell = None
        for file in self._files.values():
            file.reopen_in_child(self._directory)
        for meter_file in self._meter_files.values():
            meter_file.reopen_in_child(self._directory)


def _unless_unusable(work: Callable[..., None], file: StateFile, *args: Any) -> None:
    """``work(file, *args)`` for the doorbell thread, which serves every file of the
    backend: a file that cannot be used (damaged, removed) is logged and passed over, never
    allowed to stop the thread (its own callers get the error from their next section); one
    of a backend closed meanwhile is passed over in silence."""
    try:
        work(file, *args)
    except BackendUnavailable as error:
        logger.warning("%s", error)
    except UnsupportedByBackend:
        pass  # the backend was closed meanwhile: the close refused and woke its waiters


def _describe_gcra(settings: tuple[int, int]) -> str:
    interval, burst = settings
    for seconds in (1, 60, 3600):
        units = fractions.Fraction(seconds * 1_000_000_000, interval)
        if units.denominator == 1:
            return f"{units} per {seconds} s, burst {burst}"
    return f"1 per {interval / 1e9:g} s, burst {burst}"


def _describe_window(settings: tuple[int, int]) -> str:
    limit, window = settings
    return f"{limit} per {window / 1e9:g} s"


def _reinitialise_after_fork() -> None:
    for backend in list(_backends):
        backend._after_fork_in_child()


os.register_at_fork(after_in_child=_reinitialise_after_fork)
