"""What ``acquire_async`` returns: awaitable for the lease, and an async context manager.

``lease = await pool.acquire_async(2)`` and ``async with pool.acquire_async(2) as lease:``
both work, as ``open()``'s result is both a file and a context manager. The object is a
:class:`collections.abc.Coroutine` (it forwards ``send``, ``throw`` and ``close`` to the
coroutine that does the work), so ``asyncio.create_task``, ``TaskGroup.create_task``,
``wait_for`` and ``gather`` accept it like the coroutine of an ``async def``.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from types import TracebackType
from typing import Any, Protocol, TypeVar

__all__ = ["Acquisition"]


class _Releasable(Protocol):
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


_Held = TypeVar("_Held", bound=_Releasable)


class Acquisition(Coroutine[Any, Any, _Held]):
    """An acquisition in progress: ``await`` it for what it takes (a :class:`~allotment.Lease`
    or a :class:`~allotment.LeaseGroup`), or use it as ``async with``, which releases on exit.

    Await it once. An acquisition never awaited takes nothing, and Python warns about the
    never-awaited coroutine inside it, as for any ``async def``.
    """

    __slots__ = ("_coroutine", "_held")

    _coroutine: Coroutine[Any, Any, _Held]
    _held: _Held

    def __init__(self, coroutine: Coroutine[Any, Any, _Held]) -> None:
        self._coroutine = coroutine

    def __await__(self) -> Generator[Any, None, _Held]:
        return self._coroutine.__await__()

    def send(self, value: Any) -> Any:
        return self._coroutine.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        if val is None and tb is None:
            return self._coroutine.throw(typ)
        return self._coroutine.throw(typ, val, tb)  # the deprecated form, passed on as is

    def close(self) -> None:
        self._coroutine.close()

    async def __aenter__(self) -> _Held:
        held = await self._coroutine
        self._held = held
        return held

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._held.__exit__(exc_type, exc_value, traceback)

    @property
    def __name__(self) -> str:  # what a task's repr shows
        return str(getattr(self._coroutine, "__qualname__", "acquisition"))

    def __repr__(self) -> str:
        return f"<allotment.Acquisition of {self.__name__}>"
