"""Events: what managers and rate limiters tell observers, and how it reaches them.

An *observer* is any callable taking an :class:`Event`. Observers are process-wide and live
in :data:`observers`, a module-level tuple that :func:`add_observer` and
:func:`remove_observer` replace whole (under :data:`_registry_lock`), so that a read needs no
lock and the hot paths of every face pay one falsy check while nobody observes.

Delivery rules:

- **After the critical section.** A face emits an event once the pool or meter call that
  decided it has returned, so no observer ever runs under a pool's lock: it may call
  ``statistics()``, another pool, or the same pool, and deadlock nothing.
- **What an observer does is not observed.** Events emitted on a thread while it is
  delivering are dropped, so an observer that acquires a pool cannot feed itself forever.
- **A raising observer is removed.** Its exception is logged (logger ``allotment``) and it
  gets no further events; the others still get this one.

A face builds a *record* (a plain tuple in :class:`Event`'s field order, a fifth of the cost
of the frozen object) and hands it to :func:`emit`. Sinks that keep records as they are (a
:class:`~allotment.Recorder`) take the tuple; the frozen :class:`Event` is built once, only
if some other observer is installed.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import itertools
import logging
import threading
from collections.abc import Callable, Hashable
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

from ._clock import SYSTEM_CLOCK

__all__ = [
    "KINDS",
    "Event",
    "EventKind",
    "EventOwner",
    "Observer",
    "Record",
    "RecordSink",
    "Sink",
    "add_observer",
    "callables",
    "current_owner",
    "defer",
    "deferred",
    "emit",
    "event_of",
    "handing",
    "new_request_id",
    "now_ns",
    "observers",
    "owner_of",
    "remove_observer",
    "sinks",
    "solo",
    "thread_owner",
    "thread_owners",
]

logger = logging.getLogger("allotment")

EventKind = Literal[
    "requested",
    "granted",
    "released",
    "timed_out",
    "cancelled",
    "refused",
    "resized",
    "rate_allowed",
    "rate_refused",
    "rate_waited",
    "charged",
    "lost",
    "reclaimed",
    "paused",
]
KINDS: frozenset[str] = frozenset(EventKind.__args__)  # type: ignore[attr-defined]
"""Every kind an :class:`Event` may have. ``reclaimed`` (a dead process's units taken back)
and ``paused`` (a server asked for a pause) are defined for backends that report them."""

now_ns = SYSTEM_CLOCK.now_ns
"""The events' timeline: the system's monotonic clock in nanoseconds, one for every pool
(a manager's own clock, a manual one in tests, measures its waits and holds)."""


@attrs.frozen
class EventOwner:
    """The thread, and the asyncio task if any, that asked: one track of a trace."""

    thread: str
    thread_id: int | None
    task: str | None = None
    task_id: int | None = None
    """``id()`` of the task while it lived: tells apart two tasks given the same name."""

    def __str__(self) -> str:
        if self.task is None:
            return self.thread
        return f"{self.task} (task on {self.thread})"


@attrs.frozen
class Event:
    """One thing that happened to a manager or a rate limiter.

    ``kind`` says what (:data:`KINDS`); ``name`` is the manager's or limiter's name;
    ``t_ns`` when, on the system's monotonic clock in nanoseconds (for a release, when the
    call began: the units are free by the time it returns); ``owner`` the thread (and task)
    that asked. ``amount`` is in the face's own form: an int, or a dict of named resources,
    for a manager (for ``resized``: the new capacity); a cost for a rate limiter.

    ``request`` ties the events of one request together (``requested``, then ``granted``,
    then each ``released``); 0 where there is no request (``resized``, ``charged``).
    ``wait`` is the seconds waited (``granted``, ``timed_out``, ``cancelled``, ``refused``,
    ``rate_waited``), ``hold`` the seconds held (``released``), both on the face's clock.
    ``remaining`` is what a released lease still holds (``0``/``{}`` when it is done).
    ``handed_by`` (``granted`` after a wait) is the request whose release, or withdrawal,
    handed the units over under the lock: the FIFO hand-off (``None`` if unknown, e.g.
    another process released). ``capacity`` is the manager's capacity at the time (``None``
    for limiters), ``key`` a keyed limiter's key, ``limiter`` whether it is a rate limiter's
    event, ``reason`` the exception's class name of a refusal or a lost lease.
    """

    kind: EventKind
    name: str
    t_ns: int
    owner: EventOwner
    amount: Any
    request: int = 0
    wait: float | None = None
    hold: float | None = None
    remaining: Any = None
    handed_by: int | None = None
    capacity: Any = None
    key: Hashable | None = None
    limiter: bool = False
    reason: str | None = None


Record = tuple[Any, ...]
"""An event's fields as a plain tuple, in :class:`Event`'s order (all fourteen); or, for a
record only a :class:`~allotment.Recorder` keeps (put in its ring by a hot path), a
*compact* one: a function first, which makes the full record of the rest, when the
recorder's events are read."""


def event_of(record: Record) -> Event:
    """The frozen event of a record, full or compact."""
    if type(record[0]) is str:
        return Event(*record)
    return Event(*record[0](*record[1:]))


Observer = Callable[[Event], object]


Sink = tuple[Callable[[Record], None], Callable[[], object]]
"""How a recorder takes records: an append (a bounded deque's) and a tick (a counter's),
both C calls, so that recording costs no Python frame."""


@runtime_checkable
class RecordSink(Protocol):
    """An observer that keeps records as tuples (a :class:`~allotment.Recorder`)."""

    def __call__(self, event: Event) -> object: ...

    @property
    def sink(self) -> Sink:
        """Where delivery puts each record, after the section, like an observer."""
        ...


observers: tuple[Observer, ...] = ()
"""Every observer, in the order added. Replaced whole, never mutated: read it bare."""
sinks: tuple[Sink, ...] = ()
"""The recorders' sinks (part of ``observers``): replaced whole, with it."""
callables: tuple[Observer, ...] = ()
"""The other observers, which take frozen events: replaced whole, with it."""
solo: Sink | None = None
"""The one recorder's sink while it is the only observer, else ``None``: the hot paths then
append and tick with no loop. Replaced with the others."""
_registry_lock = threading.RLock()
"""Guards replacing :data:`observers` and the tuples split from it. Its two sections are
written out in the shape of "Releasing" in ``_core._section_lock`` (a ``with`` block's exit
can be skipped on 3.10); an ``RLock``, so that the release is its own test of ownership."""


class _Delivering(threading.local):
    active = False


_delivering = _Delivering()

handing: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "allotment_handing", default=None
)
"""The request on whose behalf this thread or task is in a pool call that may hand units
on (a release, a withdrawal): read by the waiters it wakes, after the lock."""

new_request_id = itertools.count(1).__next__
"""A number for a request's events, unique in the process (a C call). Not a range iterator:
on a free-threaded build two threads can draw the same number from one of those (seen on
3.13t), while ``itertools.count`` stays atomic."""


def add_observer(observer: Observer) -> None:
    """Deliver every later event of every manager and rate limiter of this process to
    ``observer`` (any callable taking an :class:`Event`), after the section that decided
    it, on the thread that made it happen. Adding one already installed does nothing.

    Raises ``TypeError`` for something that is not callable.
    """
    global observers  # noqa: PLW0603 - replaced whole, read bare
    if not callable(observer):
        raise TypeError(f"an observer must be callable, not {observer!r}")
    try:  # see "Releasing" in ``_core._section_lock``
        _registry_lock.acquire()
        if observer in observers:
            return
        # The split first, then the tuple the faces check: a face that sees an observer
        # finds where to deliver.
        _split((*observers, observer))
        observers = (*observers, observer)
    finally:
        try:  # noqa: SIM105 - suppress() is Python code: a check point before release
            _registry_lock.release()
        except RuntimeError:
            pass  # not taken: the exception came while waiting for the lock


def remove_observer(observer: Observer) -> None:
    """Stop delivering events to ``observer``; events it is being given now still arrive.
    Removing one that is not installed does nothing."""
    global observers  # noqa: PLW0603 - replaced whole, read bare
    try:  # see "Releasing" in ``_core._section_lock``
        _registry_lock.acquire()
        if observer not in observers:
            return
        remaining = tuple(other for other in observers if other != observer)
        observers = remaining
        _split(remaining)
        if not remaining:
            # Records deferred for the observers gone: not for the next one installed.
            deferred.clear()
    finally:
        try:  # noqa: SIM105 - suppress() is Python code: a check point before release
            _registry_lock.release()
        except RuntimeError:
            pass  # not taken: the exception came while waiting for the lock


def _split(installed: tuple[Observer, ...]) -> None:
    """Set :data:`sinks`, :data:`callables` and :data:`solo` for ``installed`` (under
    ``_registry_lock``)."""
    global sinks, callables, solo  # noqa: PLW0603 - replaced whole, read bare
    kept = tuple(item.sink for item in installed if isinstance(item, RecordSink))
    others = tuple(item for item in installed if not isinstance(item, RecordSink))
    # ``solo`` first off, last on: a face that reads it set finds ``sinks`` agreeing.
    solo = None
    sinks, callables = kept, others
    if len(kept) == 1 and not others:
        solo = kept[0]


deferred: collections.deque[Record] = collections.deque()
"""Records made where no observer may run (a finalizer, which can run inside any section):
delivered by the next :func:`emit`, on whichever thread makes it."""


def defer(record: Record) -> None:
    """Queue a record for the next delivery; safe anywhere, a finalizer included. With no
    observer installed (the last one removed since the event began) it is dropped: the
    next observer installed must not get events of what it never saw begin."""
    if observers:
        deferred.append(record)


def emit(record: Record | None) -> None:
    """Deliver one event (and any deferred ones before it) to every observer; ``None``
    delivers only the deferred ones. Call it only outside every pool's section.

    With recorders alone this is two C calls per recorder: they run no user code, so
    nothing they do can be observed and no guard is needed.
    """
    if callables or deferred or record is None:
        _emit_guarded(record)
        return
    for append, tick in sinks:
        append(record)
        tick()


def _emit_guarded(record: Record | None) -> None:
    state = _delivering
    if state.active:
        return  # an observer's own doings: not observed
    state.active = True
    try:
        while deferred:
            try:
                earlier = deferred.popleft()
            except IndexError:  # another thread took it
                break
            _deliver_all(earlier)
        if record is not None:
            _deliver_all(record)
    finally:
        state.active = False


def _deliver_all(record: Record) -> None:
    for append, tick in sinks:
        append(record)
        tick()
    if callables:
        event = Event(*record)
        for observer in callables:
            try:
                observer(event)
            except Exception:
                logger.exception(
                    "allotment observer %r raised on a %r event of %r; it is removed",
                    observer,
                    record[0],
                    record[1],
                )
                remove_observer(observer)


thread_owners = threading.local()
"""Each thread's own :class:`EventOwner`, as ``owner`` once made (:func:`thread_owner`)."""
_current_thread = threading.current_thread
_running_loop = asyncio._get_running_loop  # the C accessor: never raises


def thread_owner() -> EventOwner:
    """The calling thread's owner: made once, with the name the thread had then."""
    try:
        return thread_owners.owner  # type: ignore[no-any-return]
    except AttributeError:
        thread = _current_thread()
        cached = thread_owners.owner = EventOwner(thread.name, thread.ident)
        return cached


def owner_of(thread: threading.Thread, task: Any) -> EventOwner:
    """The owner of a request made by ``thread`` (and ``task``, if not ``None``). A
    thread's own is made once, with the name the thread had then."""
    if task is None:
        if thread is _current_thread():
            try:
                return thread_owners.owner  # type: ignore[no-any-return]
            except AttributeError:
                cached = thread_owners.owner = EventOwner(thread.name, thread.ident)
                return cached
        return EventOwner(thread.name, thread.ident)
    return EventOwner(thread.name, thread.ident, task.get_name(), id(task))


def current_owner() -> EventOwner:
    """The thread, and task if one is running on it, that calls."""
    loop = _running_loop()
    task = None
    if loop is not None:
        task = asyncio.current_task(loop)
    return owner_of(threading.current_thread(), task)
