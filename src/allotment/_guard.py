"""Decorators: run a function only while holding what it needs.

``guard`` wraps a function so that each call first takes its parts (managers' units, limiters'
rate) through :func:`acquire_all`, all or nothing, and gives the managers' units back when the
call ends, however it ends. The rate stays spent once the call has started: the guarded work
ran. If the call never starts (an exception between the grant and the call), the rate is
refunded too.

Plain functions take their parts with :func:`acquire_all`; an ``async def`` stays a coroutine
function and takes them with :func:`acquire_all_async`, in the same queues as threads, with
the same rules. Generator and async generator functions are refused at decoration time: their
bodies run after the call returns, when nothing would be held.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, cast

from ._clock import SYSTEM_CLOCK, deadline_after
from ._multi import Request, acquire_all, acquire_all_async, validate_parts

__all__ = ["guard"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


def guard(
    *parts: Request, timeout: float | None = None
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

    On an ``async def`` the wrapper is a coroutine function too: each call awaits
    :func:`acquire_all_async` (the task waits in the same queues as threads, without
    blocking its loop), and a cancellation before the body starts refunds the rate.
    """
    if not parts:
        raise TypeError("guard() needs at least one (manager or limiter, amount) pair")
    requests = validate_parts(parts)
    deadline_after(SYSTEM_CLOCK, timeout)  # a bad timeout fails here, not at every call

    def decorate(function: Callable[_P, _T]) -> Callable[_P, _T]:
        if inspect.isasyncgenfunction(function):
            raise TypeError(
                f"{function.__qualname__} is an async generator function: its body runs "
                "after the call returns, when nothing would be held any more; guard the code "
                "that consumes it"
            )
        if inspect.iscoroutinefunction(function):
            return cast("Callable[_P, _T]", _guard_async(function, requests, timeout))
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


def _guard_async(
    function: Callable[_P, Awaitable[_T]], requests: list[tuple[Any, Any]], timeout: float | None
) -> Callable[_P, Coroutine[Any, Any, _T]]:
    @functools.wraps(function)
    async def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        group = None
        started = False
        try:
            group = await acquire_all_async(requests, timeout=timeout)
            started = True  # no cancellation lands before the body's first await
            return await function(*args, **kwargs)
        except BaseException:
            if group is not None and not started:
                group.refund()  # the call never ran: its rate was not used
            raise
        finally:
            if group is not None:
                group.release()

    return guarded
