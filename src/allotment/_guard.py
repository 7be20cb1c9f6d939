"""Decorators: run a function only while holding what it needs.

``guard`` wraps a function so that each call first takes its parts (managers' units, limiters'
rate) through :func:`acquire_all`, all or nothing, and gives the managers' units back when the
call ends, however it ends. The rate stays spent once the call has started: the guarded work
ran. If the call never starts (an exception between the grant and the call), the rate is
refunded too.

Written for two kinds of functions: plain ones now, and coroutine functions once the asyncio
front-end lands, which will wrap ``async def`` with the same parts and the same rules; until
then a coroutine function is refused at decoration time rather than guarded wrongly.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from ._clock import SYSTEM_CLOCK, deadline_after
from ._multi import acquire_all, validate_parts

__all__ = ["guard"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


def guard(
    *parts: tuple[Any, Any], timeout: float | None = None
) -> Callable[[Callable[_P, _T]], Callable[_P, _T]]:
    """A decorator: every call takes ``parts`` (``(manager, amount)`` and ``(limiter, cost)``
    pairs) through :func:`acquire_all` before it runs, and gives the managers' units back when
    it returns or raises.

    ::

        @allotment.guard((gpus, 1), (api, 1), timeout=30)
        def infer(batch): ...

    The wrapper keeps the function's name, docstring and signature (``functools.wraps``), and
    works on methods. ``timeout`` bounds each call's wait (:class:`AcquireTimeout` if it
    passes; nothing is held or spent then). The parts are validated when decorating.
    """
    if not parts:
        raise TypeError("guard() needs at least one (manager or limiter, amount) pair")
    requests = validate_parts(parts)
    deadline_after(SYSTEM_CLOCK, timeout)  # a bad timeout fails here, not at every call

    def decorate(function: Callable[_P, _T]) -> Callable[_P, _T]:
        if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
            raise TypeError(
                f"{function.__qualname__} is a coroutine function; guarding async def needs "
                "the asyncio front-end (acquire_async), which allotment does not have yet"
            )
        if inspect.isgeneratorfunction(function):
            raise TypeError(
                f"{function.__qualname__} is a generator function: its body runs after the "
                "call returns, when nothing would be held any more; guard the code that "
                "consumes it, or a function that runs the whole iteration"
            )

        @functools.wraps(function)
        def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            group = None
            started = False
            try:
                group = acquire_all(requests, timeout=timeout)
                started = True
                return function(*args, **kwargs)
            except BaseException:
                if group is not None and not started:
                    group.refund()  # the call never ran: its rate was not used
                raise
            finally:
                if group is not None:
                    group.release()

        return guarded

    return decorate
