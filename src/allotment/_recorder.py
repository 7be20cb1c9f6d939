"""The recorder: a bounded ring of events, to look at a run afterwards."""

from __future__ import annotations

import collections
import itertools
import json
import os
import threading
from types import TracebackType

import attrs

from ._events import Event, Record, Sink, add_observer, emit, event_of, remove_observer

__all__ = ["Recorder"]


def _positive_capacity(instance: object, attribute: object, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"capacity must be a positive int, not {value!r}")
    if value < 1:
        raise ValueError(f"capacity must be at least 1, got {value!r}")


@attrs.define(eq=False, repr=False)
class Recorder:
    """Keeps the last ``capacity`` events of every manager and rate limiter of the process.

    Install it with :func:`allotment.add_observer` (or for a block, ``with recorder:``);
    then :attr:`events` is what happened, oldest first, and :meth:`export_trace` and
    :meth:`plot` show it. Memory is bounded: once ``capacity`` events are kept, each new one
    drops the oldest (:attr:`dropped` counts them). Thread-safe; recording is an append to
    a bounded deque, never a lock.

    ::

        recorder = allotment.Recorder()
        with recorder:
            run_the_workload()
        recorder.export_trace("run.json")   # open in https://ui.perfetto.dev
    """

    capacity: int = attrs.field(default=100_000, validator=_positive_capacity)
    _ring: collections.deque[Record] = attrs.field(init=False)
    _ticks: itertools.count[int] = attrs.field(init=False, factory=itertools.count)
    """Ticked once per record appended to the ring, and once per read of the total."""
    _reads: int = attrs.field(init=False, default=0)
    """How many numbers the readers took from ``_ticks`` (under ``_reading``)."""
    _forgotten: int = attrs.field(init=False, default=0)
    """The total appended when :meth:`clear` last ran (under ``_reading``)."""
    _reading: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _sink: Sink = attrs.field(init=False)

    @_ring.default
    def _ring_default(self) -> collections.deque[Record]:
        return collections.deque(maxlen=self.capacity)

    @_sink.default
    def _sink_default(self) -> Sink:
        # Two C calls per event: the bounded ring drops the oldest record by itself, and
        # the counter counts every record appended.
        return (self._ring.append, self._ticks.__next__)

    @property
    def sink(self) -> Sink:
        """Where delivery puts each record (see ``_events.py``)."""
        return self._sink

    def __call__(self, event: Event) -> None:
        """Keep ``event``: a recorder is also a plain observer, for other sources."""
        append, tick = self._sink
        append(attrs.astuple(event, recurse=False))
        tick()

    @property
    def events(self) -> tuple[Event, ...]:
        """The events kept, in the order they were delivered."""
        emit(None)  # events deferred by finalizers: delivered now
        return tuple(map(event_of, list(self._ring)))

    @property
    def dropped(self) -> int:
        """How many events were dropped to keep at most ``capacity``.

        Every record is appended to the ring, then ticks the counter: what was appended
        since :meth:`clear`, less what the ring keeps, is what the bounded ring dropped.
        Exact once recording has stopped; while records arrive it may be off by the few
        that are between their append and their tick.
        """
        with self._reading:
            return self._appended() - self._forgotten - len(self._ring)

    def _appended(self) -> int:
        """How many records were ever appended (under ``_reading``). The only way to read
        a counter is to take its next number, so each read takes one, and subtracts the
        numbers the reads took. Each append and each tick is one C call, atomic under the
        GIL; on free-threaded builds ``deque.append`` holds the deque's own lock and a
        counter's next is a compare-and-swap (CPython gh-117657), so no tick is lost."""
        taken = next(self._ticks)
        self._reads += 1
        return taken - (self._reads - 1)

    def clear(self) -> None:
        """Forget every event kept, and the count of dropped ones."""
        with self._reading:
            self._forgotten = self._appended()
            self._ring.clear()

    def __enter__(self) -> Recorder:
        add_observer(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        remove_observer(self)

    def export_trace(self, path: str | os.PathLike[str]) -> None:
        """Write the events as a Chrome trace event JSON file, for https://ui.perfetto.dev
        (or ``chrome://tracing``).

        One track per thread or task, with a slice per wait (``wait <name>``) and per hold
        (``hold <name>``); an arrow from each release (or withdrawal) to each grant it
        handed the units to; a counter track per manager (units in use, requests waiting),
        which never shows more in use than the capacity. A thread or task that holds
        several leases released out of order gets more than one track, so that every
        track's slices nest.
        """
        from ._trace import trace_of

        document = trace_of(self.events)
        with open(path, "w", encoding="utf-8") as file:
            json.dump(document, file, indent=None, separators=(",", ":"))

    def plot(self, path: str | os.PathLike[str], *, title: str | None = None) -> None:
        """Draw the timeline (who waited and who held what, when) into an image file
        (``.png``, ``.svg``, ``.pdf``: what matplotlib writes). Needs matplotlib
        (``pip install "allotment[plot]"``)."""
        from ._plot import plot_events

        plot_events(self.events, path, title=title)

    def __repr__(self) -> str:
        kept, dropped = len(self._ring), self.dropped
        return f"<allotment.Recorder {kept} event(s) kept of {self.capacity}, {dropped} dropped>"
