"""Who is alive, without TTLs: each backend holds an ``flock`` on a file of its own.

The kernel releases an ``flock`` the instant its holder dies, however it dies (SIGKILL
included). So a record naming ``(pid, nonce)`` whose file can be locked belongs to a dead
backend, for certain, and can be reclaimed at once. The nonce makes an identity unique even
when the kernel reuses the pid. The file is made and locked before the identity appears in
any record: a missing file is a dead owner too.

A forked child inherits the parent's open file (and so its lock): it closes that copy and
takes an identity of its own when it first uses the backend (``os.register_at_fork``).
Files are opened close-on-exec, so an exec'd child never holds them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets

import attrs

from ._directory import Directory

__all__ = ["Identity", "is_dead", "ring"]


@attrs.define(eq=False)
class Identity:
    """This backend's identity in one process: its locked liveness file and its doorbell.

    The doorbell is a FIFO opened read-write and non-blocking by its owner (so it never
    reads end-of-file); another process rings it by writing a byte. Opening it for writing
    fails with ``ENXIO`` once its owner is gone, which is one more sign of death."""

    pid: int
    nonce: int
    liveness_fd: int
    bell_fd: int

    @classmethod
    def take(cls, directory: Directory) -> Identity:
        pid = os.getpid()
        nonce = secrets.randbits(62)
        liveness_fd = directory.open_file(directory.process_path(pid, nonce))
        try:
            fcntl.flock(liveness_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            bell_path = directory.bell_path(pid, nonce)
            os.mkfifo(bell_path, directory.mode & 0o666)
            os.chmod(bell_path, directory.mode & 0o666)
            bell_fd = directory.open_file(bell_path, os.O_RDWR | os.O_NONBLOCK)
        except BaseException:
            os.close(liveness_fd)
            raise
        return cls(pid, nonce, liveness_fd, bell_fd)

    def forget_in_child(self) -> None:
        """In a forked child: drop the parent's copies (the parent keeps its lock)."""
        for fd in (self.liveness_fd, self.bell_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self, directory: Directory, *, keep_bell: bool = False) -> None:
        """Give up the identity: its records become a dead backend's, reclaimed by others.
        ``keep_bell``: the doorbell is left open (a doorbell thread that did not stop closes
        it when it ends)."""
        for path in (
            directory.bell_path(self.pid, self.nonce),
            directory.process_path(self.pid, self.nonce),
        ):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if keep_bell:
            os.close(self.liveness_fd)  # closing the liveness file releases its lock
        else:
            self.forget_in_child()


def is_dead(directory: Directory, pid: int, nonce: int) -> bool:
    """Whether the backend ``(pid, nonce)`` is gone: its liveness file is missing or
    lockable. Never blocks. A shared lock, so two checkers never see each other as alive
    for more than the instant of a check."""
    try:
        fd = os.open(directory.process_path(pid, nonce), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def ring(directory: Directory, pid: int, nonce: int) -> bool:
    """Ring the doorbell of ``(pid, nonce)``: ``False`` if nobody is there to hear it."""
    try:
        fd = os.open(
            directory.bell_path(pid, nonce),
            os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC,
        )
    except OSError as error:
        if error.errno in (errno.ENXIO, errno.ENOENT):
            return False
        raise
    try:
        os.write(fd, b"!")
    except BlockingIOError:
        pass  # the pipe is full of rings not yet read: one more changes nothing
    finally:
        os.close(fd)
    return True
