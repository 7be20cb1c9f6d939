"""The recorder: a bounded ring of events, to look at a run afterwards."""

from __future__ import annotations

import collections
import json
import os
import threading
from types import TracebackType

import attrs

from ._events import Event, Record, add_observer, emit, remove_observer

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
    drops the oldest (:attr:`dropped` counts them). Thread-safe; recording takes the
    recorder's own lock for an append, never a pool's.

    ::

        recorder = allotment.Recorder()
        with recorder:
            run_the_workload()
        recorder.export_trace("run.json")   # open in https://ui.perfetto.dev
    """

    capacity: int = attrs.field(default=100_000, validator=_positive_capacity)
    _ring: collections.deque[Record] = attrs.field(init=False)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _seen: int = attrs.field(init=False, default=0)

    @_ring.default
    def _ring_default(self) -> collections.deque[Record]:
        return collections.deque(maxlen=self.capacity)

    def record(self, record: Record) -> None:
        """Keep one event's record (what delivery calls: see ``_events.py``)."""
        with self._lock:
            self._ring.append(record)
            self._seen += 1

    def __call__(self, event: Event) -> None:
        """Keep ``event``: a recorder is also a plain observer, for other sources."""
        self.record(attrs.astuple(event, recurse=False))

    @property
    def events(self) -> tuple[Event, ...]:
        """The events kept, in the order they were delivered."""
        emit(None)  # events deferred by finalizers: delivered now
        with self._lock:
            records = list(self._ring)
        return tuple(Event(*record) for record in records)

    @property
    def dropped(self) -> int:
        """How many events were dropped to keep at most ``capacity``."""
        with self._lock:
            return self._seen - len(self._ring)

    def clear(self) -> None:
        """Forget every event kept, and the count of dropped ones."""
        with self._lock:
            self._ring.clear()
            self._seen = 0

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
        with self._lock:
            kept = len(self._ring)
            dropped = self._seen - kept
        return f"<allotment.Recorder {kept} event(s) kept of {self.capacity}, {dropped} dropped>"
