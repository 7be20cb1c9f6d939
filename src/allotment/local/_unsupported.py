"""LocalBackend where the platform has no ``flock`` (Windows): refused when made."""

from __future__ import annotations

import os
import sys

from .._errors import UnsupportedByBackend

__all__ = ["LocalBackend"]


class LocalBackend:
    """Needs POSIX (Linux, macOS): ``flock``, ``mmap`` of a shared file, FIFOs."""

    def __init__(self, path: str | os.PathLike[str], *, mode: int = 0o700) -> None:
        raise UnsupportedByBackend(
            f"allotment.LocalBackend needs a POSIX system (Linux or macOS), not {sys.platform}: "
            "use allotment.redis.RedisBackend"
        )
