"""The handler-entry tests' signal: SIGUSR1 made pending by the C call that raises.

``itertools.starmap`` over ``os.kill`` signals this process and then fails, both inside one C
call, so nothing checks for signals between the two: the raise leaves the section's body with
SIGUSR1 pending, and the handler the ``sigusr1_raises`` fixture (``conftest.py``) installs
raises :class:`Delivered` at the next check point.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

__all__ = ["NEEDS_SIGUSR1", "Delivered", "interrupted", "raise_delivered", "signal_and_raise"]

NEEDS_SIGUSR1 = pytest.mark.skipif(
    not hasattr(signal, "SIGUSR1") or threading.current_thread() is not threading.main_thread(),
    reason="needs SIGUSR1 and the main thread (signal handlers run there)",
)


class Delivered(Exception):
    """What the signal handler raises."""


def raise_delivered(signum: int, frame: FrameType | None) -> None:
    raise Delivered


def signal_and_raise(*_: object) -> Any:
    """Make SIGUSR1 pending and raise ``TypeError``, both inside one C call."""
    pid = os.getpid()
    list(itertools.starmap(os.kill, [(pid, signal.SIGUSR1), (pid, "x")]))
    raise AssertionError("os.kill accepted a string")  # pragma: no cover


def interrupted(call: Callable[[], object]) -> None:
    """Run ``call``, which must be cut short by the signal handler's exception (on 3.10,
    at the handler's entry) or by the ``TypeError`` under it."""
    with pytest.raises((Delivered, TypeError)):
        call()
