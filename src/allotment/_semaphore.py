"""FIFO-fair drop-in replacements for ``threading.Semaphore`` and ``threading.BoundedSemaphore``."""

from __future__ import annotations

import operator
from types import TracebackType

import attrs

from ._allocator import Allocator
from ._amounts import ScalarForm
from ._claims import deadline_after

__all__ = ["BoundedSemaphore", "Semaphore"]


@attrs.define(eq=False, init=False, repr=False)
class Semaphore:
    """A counter of permits with the API of :class:`threading.Semaphore`, granted in FIFO order.

    Change ``threading.Semaphore`` to ``allotment.Semaphore`` and nothing else needs to change;
    what you gain is a fairness promise. ``threading.Semaphore`` wakes *some* waiter, which must
    then compete with newcomers for the permit; here the releasing thread hands the permit to
    the longest-waiting thread, and an ``acquire`` (blocking or not) never overtakes a waiting
    thread. It runs on the same allocator as :class:`ResourceManager`.

    As with the standard library, :meth:`release` may be called by any thread and may raise the
    counter above its initial value; use :class:`BoundedSemaphore` to forbid that, or a
    :class:`ResourceManager` for releases tied to what each caller took.

    Differences from :mod:`threading`, all for inputs it accepts but mishandles: ``value`` and
    ``n`` must be integers (``TypeError`` otherwise), a ``timeout`` of NaN raises ``ValueError``,
    and an infinite ``timeout`` waits forever instead of raising ``OverflowError``.
    """

    _allocator: Allocator
    _limit: int | None
    """The most permits there may be, or ``None``: set by BoundedSemaphore."""

    def __init__(self, value: int = 1) -> None:
        value = operator.index(value)
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        self._allocator = Allocator(ScalarForm(), value, None, track_holders=False)
        self._limit = None

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take one permit; return ``True`` once taken, ``False`` if not taken.

        With ``blocking`` true (the default), wait until the permit is handed to this thread,
        for at most ``timeout`` seconds if it is given; a ``timeout`` of zero or less does not
        wait. With ``blocking`` false, never wait; passing a ``timeout`` then is a
        ``ValueError``. Either way, a permit is never taken while another thread waits for one.
        """
        if not blocking:
            if timeout is not None:
                raise ValueError("can't specify timeout for non-blocking acquire")
            return self._allocator.take(1, None, False, None)
        if timeout is None:
            return self._allocator.take(1, None, True, None)
        if timeout <= 0:  # as in threading: try once without waiting
            return self._allocator.take(1, None, False, None)
        return self._allocator.take(1, None, True, deadline_after(timeout))

    __enter__ = acquire

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def release(self, n: int = 1) -> None:
        """Add ``n`` permits, handing them to waiting threads in the order they arrived.

        A :class:`BoundedSemaphore` raises ``ValueError`` instead, changing nothing, if that
        would take the counter above its initial value.
        """
        if type(n) is not int:
            n = operator.index(n)
        if n < 1:
            raise ValueError("n must be one or more")
        if not self._allocator.give(n, self._limit):
            raise ValueError("Semaphore released too many times")

    @property
    def _value(self) -> int:
        # The counter threading.Semaphore keeps under this name; some code and tests read it.
        available = self._allocator.snapshot().available
        assert isinstance(available, int)
        return available

    def __repr__(self) -> str:
        return f"<allotment.{type(self).__qualname__} at {id(self):#x}: value={self._value}>"


@attrs.define(eq=False, init=False, repr=False)
class BoundedSemaphore(Semaphore):
    """A :class:`Semaphore` that refuses to be released above its initial value.

    The API of :class:`threading.BoundedSemaphore`: :meth:`release` raises ``ValueError`` if it
    would raise the counter above the initial value, which usually reveals a bug.
    """

    def __init__(self, value: int = 1) -> None:
        super().__init__(value)
        self._limit = operator.index(value)

    def __repr__(self) -> str:
        return (
            f"<allotment.{type(self).__qualname__} at {id(self):#x}: "
            f"value={self._value}/{self._limit}>"
        )
