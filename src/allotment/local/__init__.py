"""Managers and limiters shared by the processes of one host, with no server.

``import allotment`` stays importable everywhere: on a platform without ``flock`` (Windows)
:class:`LocalBackend` refuses to be made, with a clear error.
"""

from __future__ import annotations

import sys

if sys.platform == "win32":
    from ._unsupported import LocalBackend
else:
    from ._backend import LocalBackend

__all__ = ["LocalBackend"]
