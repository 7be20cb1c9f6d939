"""What ``acquire_async`` returns: awaitable for the lease, and an async context manager.

``lease = await pool.acquire_async(2)`` and ``async with pool.acquire_async(2) as lease:``
both work, as ``open()``'s result is both a file and a context manager. The object is a
:class:`collections.abc.Coroutine` (it forwards ``send``, ``throw`` and ``close`` to the
coroutine that does the work), so ``asyncio.create_task``, ``TaskGroup.create_task``,
``wait_for`` and ``gather`` accept it like the coroutine of an ``async def``.

``async with`` adds no coroutine of its own: ``__aenter__`` hands out the working coroutine
(which notes its result here), and ``__aexit__`` releases at once and returns an awaitable
that is already done (in memory; a backend's release is a round trip, awaited on the loop).
Each coroutine frame costs a tenth of an uncontended acquisition.
"""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine, Generator
from types import TracebackType
from typing import Any, NoReturn, Protocol, TypeVar

__all__ = ["DONE", "Acquisition", "start_acquisition"]


class _Releasable(Protocol):
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> Awaitable[None]: ...

    def exits_async(self) -> bool:
        """Whether leaving needs round trips (a backend's), awaited on the loop."""
        ...


_Held = TypeVar("_Held", bound=_Releasable)


class _Done:
    """An awaitable that is already done (``await DONE`` is ``None`` at once)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return iter(())  # type: ignore[return-value]  # an iterator that stops at once


DONE = _Done()


class Acquisition(Coroutine[Any, Any, _Held]):
    """An acquisition in progress: ``await`` it for what it takes (a :class:`~allotment.Lease`
    or a :class:`~allotment.LeaseGroup`), or use it as ``async with``, which releases on exit.

    Await it once. An acquisition never awaited takes nothing, and Python warns about the
    never-awaited coroutine inside it, as for any ``async def``.
    """

    __slots__ = ("_coroutine", "held")

    _coroutine: Coroutine[Any, Any, _Held]
    held: _Held
    """What the acquisition took, once it did (set by the working coroutine)."""

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

    def __aenter__(self) -> Coroutine[Any, Any, _Held]:
        return self._coroutine

    def __enter__(self) -> NoReturn:
        # ``with`` instead of ``async with``: say so, rather than Python's generic "does not
        # support the context manager protocol". Nothing was taken: the coroutine never ran,
        # and closing it spares the "never awaited" warning.
        self._coroutine.close()
        raise TypeError(
            "acquire_async() and acquire_all_async() are for asyncio tasks: use 'async with', "
            "not 'with' (or 'await' them for the lease); in a thread, use acquire() or "
            "acquire_all()"
        )

    def __exit__(self, *exc_info: object) -> None:
        """Never reached: :meth:`__enter__` raises."""

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> Awaitable[None]:
        held = self.held
        if held.exits_async():  # a backend's round trips: on the loop, never blocking it
            return held.__aexit__(exc_type, exc_value, traceback)
        held.__exit__(exc_type, exc_value, traceback)
        return DONE

    @property
    def __name__(self) -> str:  # what a task's repr shows
        return str(getattr(self._coroutine, "__qualname__", "acquisition"))

    def __repr__(self) -> str:
        return f"<allotment.Acquisition of {self.__name__}>"


def start_acquisition(start: Any, *arguments: Any) -> Acquisition[Any]:
    """The ``Acquisition`` of the coroutine ``start(*arguments, acquisition)``, which sets
    ``acquisition.held`` to its result before returning it (``__aexit__`` releases that)."""
    made: Acquisition[Any] = Acquisition.__new__(Acquisition)
    made._coroutine = start(*arguments, made)
    return made
