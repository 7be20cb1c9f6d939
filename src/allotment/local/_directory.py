"""The backend's directory: who may use it, where each file is, and the reboot rule.

Anyone who can write a state file can forge grants, so only the processes meant to share a
limit may touch it: the directory is made ``0700`` and its files ``0600`` unless the user
passes a mode (a group's, for workers under several users). A directory or file writable by
others, a file owned by another user (unless the mode shares with a group), or a symbolic
link where a file should be, is refused with :class:`PermissionError`.

State from before a reboot is meaningless (its clock and its processes are gone): the
directory records the boot id it was made under, and a directory from another boot is
emptied, under the directory's own ``flock``, by the first backend to open it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
import subprocess
import sys

import attrs

__all__ = ["Directory", "boot_id"]

_LINUX_BOOT_ID = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str:
    """This boot's id: Linux's ``boot_id``, or macOS's ``kern.boottime``."""
    if sys.platform.startswith("linux"):
        with open(_LINUX_BOOT_ID, encoding="ascii") as file:
            return file.read().strip()
    if sys.platform == "darwin":
        return subprocess.run(
            ["/usr/sbin/sysctl", "-n", "kern.boottime"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    raise OSError(f"allotment.LocalBackend cannot tell this platform's boot ({sys.platform})")


def _file_name(kind: str, name: str) -> str:
    digest = hashlib.blake2b(name.encode(), digest_size=16).hexdigest()
    return f"{kind}-{digest}"


@attrs.define(eq=False)
class Directory:
    """A checked directory. ``mode`` is the directory's; its files get it without the
    execute bits."""

    path: str
    mode: int
    shared_with_group: bool = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.shared_with_group = bool(self.mode & 0o070)
        if self.mode & 0o007:
            raise PermissionError(
                f"mode {self.mode:#o} would let every user of this host change the limits; "
                "give at most the owner and a group access"
            )
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.path, self.mode)
            os.chmod(self.path, self.mode)  # the umask may have narrowed it
        self.check(self.path, os.lstat(self.path), directory=True)
        os.makedirs(self.proc_path, mode=self.mode, exist_ok=True)
        self.check(self.proc_path, os.lstat(self.proc_path), directory=True)

    @property
    def proc_path(self) -> str:
        return os.path.join(self.path, "proc")

    def check(self, path: str, info: os.stat_result, *, directory: bool = False) -> None:
        """Refuse what another user could have made or could change."""
        if directory and not stat.S_ISDIR(info.st_mode):
            raise PermissionError(f"{path!r} is not a directory (a symbolic link is refused)")
        if not directory and not stat.S_ISREG(info.st_mode) and not stat.S_ISFIFO(info.st_mode):
            raise PermissionError(f"{path!r} is not a regular file (a symbolic link is refused)")
        if info.st_mode & 0o002:
            raise PermissionError(
                f"{path!r} is writable by every user of this host (mode "
                f"{stat.S_IMODE(info.st_mode):#o}): anyone could forge grants; make it "
                "writable by its owner (and a group) only"
            )
        if info.st_mode & 0o020 and not self.shared_with_group:
            raise PermissionError(
                f"{path!r} is writable by its group (mode {stat.S_IMODE(info.st_mode):#o}) "
                "but this backend was not given a group mode (mode=0o770 shares with the "
                "group)"
            )
        if info.st_uid != os.geteuid() and not self.shared_with_group:
            raise PermissionError(
                f"{path!r} is owned by another user (uid {info.st_uid}, this process runs as "
                f"{os.geteuid()}): refused, as its contents could be forged"
            )

    def open_file(self, path: str, flags: int = os.O_RDWR) -> int:
        """Open (making it if missing) a file of this directory, checked, never a link."""
        fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, self.mode & 0o666)
        try:
            info = os.fstat(fd)
            if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != self.mode & 0o666:
                with contextlib.suppress(OSError):  # freshly made: the umask narrowed it
                    if info.st_size == 0:
                        os.fchmod(fd, self.mode & 0o666)
                        info = os.fstat(fd)
            self.check(path, info)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def manager_path(self, name: str) -> str:
        return os.path.join(self.path, _file_name("manager", name))

    def meter_path(self, name: str) -> str:
        return os.path.join(self.path, _file_name("meter", name))

    def process_path(self, pid: int, nonce: int) -> str:
        return os.path.join(self.proc_path, f"{pid}.{nonce}")

    def bell_path(self, pid: int, nonce: int) -> str:
        return os.path.join(self.proc_path, f"{pid}.{nonce}.bell")

    def bells(self) -> list[tuple[int, int]]:
        """The ``(pid, nonce)`` of every doorbell in the directory (none if it is gone)."""
        try:
            names = os.listdir(self.proc_path)
        except OSError:
            return []
        found = []
        for name in names:
            pid, dot, rest = name.partition(".")
            nonce, dot2, suffix = rest.partition(".")
            if dot and dot2 and suffix == "bell" and pid.isdigit() and nonce.isdigit():
                found.append((int(pid), int(nonce)))
        return found

    def reset_if_rebooted(self, current: str) -> bool:
        """Empty the directory if its state is from another boot; ``True`` if it did. Under
        the directory's own lock (never taken by a manager's operation), whose descriptor is
        closed, releasing it, by a ``finally`` in this frame: no generator context manager,
        whose suspended frame would keep the lock if an exception landed as it entered."""
        lock_fd = self.open_file(os.path.join(self.path, "lock"))
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            fd = self.open_file(os.path.join(self.path, "boot"))
            try:
                recorded = os.read(fd, 4096).decode("ascii", "replace").strip()
                if recorded == current:
                    return False
                # No test inside the loop: on 3.13 its jump back would lie outside the try.
                for entry in filter(_is_state_file, os.listdir(self.path)):
                    os.unlink(os.path.join(self.path, entry))
                for entry in os.listdir(self.proc_path):
                    os.unlink(os.path.join(self.proc_path, entry))
                os.ftruncate(fd, 0)
                os.pwrite(fd, current.encode("ascii"), 0)
                return bool(recorded)
            finally:
                os.close(fd)
        finally:
            os.close(lock_fd)  # releases the lock


def _is_state_file(entry: str) -> bool:
    return entry.startswith(("manager-", "meter-"))
