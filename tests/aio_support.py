"""Helpers for the asyncio tests: no plugin, each test runs its own loop with ``asyncio.run``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import allotment
from support import GENEROUS

_T = TypeVar("_T")


def run(main: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run ``main()`` on a fresh event loop (debug mode: slow callbacks and never-retrieved
    exceptions are reported)."""
    return asyncio.run(main(), debug=True)


async def until(predicate: Callable[[], bool], what: str, timeout: float = GENEROUS) -> None:
    """Poll ``predicate`` from a task, yielding to the loop between polls."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.0005)


async def queued(manager: allotment.ResourceManager[Any], count: int) -> None:
    """Return once ``count`` requests are queued on ``manager``."""
    await until(
        lambda: len(manager.statistics().waiters) == count,
        f"{count} request(s) are queued on {manager.name}",
    )


async def rate_queued(limiter: allotment.RateLimiter | allotment.WindowLimiter, count: int) -> None:
    await until(
        lambda: len(limiter.statistics().waiters) == count,
        f"{count} caller(s) are queued on {limiter.name}",
    )
