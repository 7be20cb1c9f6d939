"""FIFO-fair drop-in replacements for ``threading.Semaphore`` and ``threading.BoundedSemaphore``."""

from __future__ import annotations

import itertools
import operator
import threading
from types import TracebackType

import attrs

from . import _events
from ._clock import SYSTEM_CLOCK, Clock, deadline_after
from ._core import Fairness, MemoryPool, Pool, Quantity, ScalarForm, Ticket, fairness_policy
from ._errors import UnsupportedByBackend
from ._observed_semaphore import Grants, acquire_observed, release_observed
from ._waiters import await_grant, new_thread_waiter

__all__ = ["BoundedSemaphore", "Semaphore", "parts_of"]

_current_thread = threading.current_thread
_serial_numbers = itertools.count(1)


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

    Observers (:func:`allotment.add_observer`) get its events under its :attr:`name`, as a
    manager's (see ``docs/observing.md``).
    """

    _pool: Pool
    _clock: Clock
    _limit: int | None
    """The most permits there may be, or ``None``: set by BoundedSemaphore."""
    _memory: MemoryPool
    """The same pool, as what it always is for a semaphore: in memory, whose ``give`` takes a
    receipt."""
    _name: str
    _grants: Grants
    """Its observed grants not yet given back, for its ``released`` events."""

    def __init__(
        self,
        value: int = 1,
        *,
        clock: Clock | None = None,
        backend: object = None,
        fairness: Fairness = "strict",
        fairness_bound: float | None = None,
        name: str | None = None,
    ) -> None:
        """``clock`` measures timeouts (default: the system's monotonic clock). A semaphore
        lives in this process: ``backend`` is refused (:class:`UnsupportedByBackend`); share
        a :class:`ResourceManager` instead. ``fairness`` and ``fairness_bound`` are those of
        :class:`ResourceManager`: with ``fairness="bounded"`` an ``acquire`` may take a free
        permit ahead of waiting threads while the longest-waiting one has waited less than
        ``fairness_bound`` seconds (default 0.001), as ``threading.Semaphore`` always lets
        it. ``name`` is what its events are reported under (default ``Semaphore-<n>``, or
        ``BoundedSemaphore-<n>``)."""
        if backend is not None:
            raise UnsupportedByBackend(
                "a Semaphore lives in this process: for permits shared across processes, use "
                "ResourceManager(n, name=..., backend=...)"
            )
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__} ({name!r})")
        value = operator.index(value)
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        policy = fairness_policy(fairness, fairness_bound)
        self._clock = SYSTEM_CLOCK if clock is None else clock
        # No capacity and no records of holders: a semaphore's release adds permits.
        pool = MemoryPool(ScalarForm(), None, value, policy, self._clock.now, holders=None)
        self._pool = pool
        self._memory = pool
        self._limit = None
        serial = next(_serial_numbers)
        self._name = f"{type(self).__name__}-{serial}" if name is None else name
        self._grants = Grants()

    @property
    def name(self) -> str:
        """What its events are reported under."""
        return self._name

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take one permit; return ``True`` once taken, ``False`` if not taken.

        With ``blocking`` true (the default), wait until the permit is handed to this thread,
        for at most ``timeout`` seconds if it is given; a ``timeout`` of zero or less does not
        wait. With ``blocking`` false, never wait; passing a ``timeout`` then is a
        ``ValueError``. Either way, a permit is never taken while another thread waits for one.
        """
        deadline = None
        if timeout is not None:
            if not blocking:
                raise ValueError("can't specify timeout for non-blocking acquire")
            if timeout <= 0:  # as in threading: try once without waiting
                blocking = False
            else:
                deadline = deadline_after(self._clock, timeout)  # rejects NaN, before anything
        if _events.observers:
            return acquire_observed(self, blocking, timeout is not None, deadline)
        receipt: list[Quantity] = []
        try:
            if self._pool.take(1, receipt):
                return True
        except BaseException:
            if receipt:  # taken, but the permit never reached this frame's return
                self._pool.give(1, None)
            raise
        if not blocking:
            return False
        return self._wait_for_permit(deadline)

    def _wait_for_permit(self, deadline: float | None) -> bool:
        # Only a permit that must be waited for gets a record: the queue needs one.
        pool = self._pool
        ticket = Ticket(1, _current_thread(), None, self._clock.now())
        try:
            return pool.enter(ticket, new_thread_waiter) or await_grant(
                pool, ticket, self._clock, deadline
            )
        except BaseException:
            # Interrupted anywhere, even as the permit arrived: hand it on.
            pool.release(ticket, None)
            raise

    __enter__ = acquire

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # release(1), written out: the call would add about a fifteenth to a with-block. A
        # subclass that overrides release() gets _exit_through_release instead.
        # One try covers both paths: 3.10 checks at the jump to the observed branch, so that
        # branch starts inside it. An exception before the give decided (the receipt says
        # whether it did) gives again, plainly, as Lease.__exit__ releases again.
        receipt: list[bool | None] = [None]
        try:
            if not _events.observers:
                given = self._memory.give(1, self._limit, receipt)
            else:
                given = release_observed(self, 1, receipt)
        except BaseException:
            if receipt[0] is None:
                self._memory.give(1, self._limit, receipt)
            raise
        if not given:
            raise ValueError("Semaphore released too many times")

    def _exit_through_release(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def __init_subclass__(cls, **kwargs: object) -> None:
        # As with threading.Semaphore, leaving a with-block calls the subclass's release().
        super().__init_subclass__(**kwargs)
        if cls.release is not Semaphore.release and "__exit__" not in cls.__dict__:
            cls.__exit__ = Semaphore._exit_through_release  # type: ignore[method-assign]

    def release(self, n: int = 1) -> None:
        """Add ``n`` permits, handing them to waiting threads in the order they arrived.

        A :class:`BoundedSemaphore` raises ``ValueError`` instead, changing nothing, if that
        would take the counter above its initial value.
        """
        if type(n) is not int:
            n = operator.index(n)
        if n < 1:
            raise ValueError("n must be one or more")
        if _events.observers:
            if not release_observed(self, n, [None]):
                raise ValueError("Semaphore released too many times")
            return
        if not self._pool.give(n, self._limit):
            raise ValueError("Semaphore released too many times")

    @property
    def _value(self) -> int:
        # The counter threading.Semaphore keeps under this name; some code and tests read it.
        # A plain read, never the lock: it is used from reprs and debuggers.
        available = self._pool.available
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

    def __init__(
        self,
        value: int = 1,
        *,
        clock: Clock | None = None,
        backend: object = None,
        fairness: Fairness = "strict",
        fairness_bound: float | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            value,
            clock=clock,
            backend=backend,
            fairness=fairness,
            fairness_bound=fairness_bound,
            name=name,
        )
        self._limit = operator.index(value)

    def __repr__(self) -> str:
        return (
            f"<allotment.{type(self).__qualname__} at {id(self):#x}: "
            f"value={self._value}/{self._limit}>"
        )


def parts_of(semaphore: Semaphore) -> tuple[MemoryPool, Clock, int | None, Grants]:
    """A semaphore's pool, clock, limit and observed grants (for its observed paths)."""
    return semaphore._memory, semaphore._clock, semaphore._limit, semaphore._grants
