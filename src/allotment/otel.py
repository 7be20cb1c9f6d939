"""OpenTelemetry metrics for every manager and rate limiter: ``pip install "allotment[otel]"``.

::

    import allotment.otel
    allotment.otel.instrument()              # the global meter provider
    allotment.otel.instrument(meter_provider=provider)

The names mirror OpenTelemetry's semantic conventions for connection pools and rate limiting:

- ``allotment.pool.in_use`` (UpDownCounter, ``{unit}``): up at a grant, down at a release.
- ``allotment.pool.pending_requests`` (UpDownCounter, ``{request}``): up as a request
  queues, down as it ends.
- ``allotment.pool.wait_time`` (Histogram, ``s``): each grant's wait (0 if granted at once).
- ``allotment.pool.use_time`` (Histogram, ``s``): each lease's hold.
- ``allotment.pool.timeouts`` (Counter, ``{timeout}``): each acquisition that timed out.
- ``allotment.rate.requests`` (Counter, ``{request}``): each rate decision.
- ``allotment.rate.time_in_queue`` (Histogram, ``s``): each rate request that waited (in
  ``acquire_all``, each limiter's part, for as long as the group took).

Every measurement carries ``allotment.name`` (the manager's or limiter's name); the in-use
counter of a manager of named resources carries ``allotment.resource`` (one series per
resource); ``allotment.rate.requests`` and ``allotment.rate.time_in_queue`` carry
``allotment.rate.result`` (``allowed``, ``refused``, ``timeout``, ``cancelled``). A keyed
limiter's key becomes ``allotment.key`` only with ``key_attributes=True``: keys are
unbounded, and so would the series be.

Only the OpenTelemetry API is needed at run time; ``import allotment`` never imports it.
"""

from __future__ import annotations

import threading
from typing import Any

import attrs
from opentelemetry import metrics

from . import __version__
from ._events import Event, add_observer, remove_observer

__all__ = ["Instrumentation", "instrument"]

_QUEUED_RESULTS = frozenset({"rate_waited", "timed_out", "cancelled"})
"""The rate decisions that always queued (their wait is recorded, even a zero one)."""
_RATE_RESULTS = {
    "rate_allowed": "allowed",
    "rate_waited": "allowed",
    "rate_refused": "refused",
    "timed_out": "timeout",
    "cancelled": "cancelled",
}


@attrs.define(eq=False, repr=False)
class Instrumentation:
    """The observer that :func:`instrument` installs; :meth:`close` removes it.

    ``_queued`` (guarded by ``_lock``) holds the requests that queued and have not ended,
    so that ``pending_requests`` goes down exactly once for each that went up: at most one
    entry per request waiting now.
    """

    _meter: metrics.Meter
    _key_attributes: bool
    _in_use: Any = attrs.field(init=False)
    _pending: Any = attrs.field(init=False)
    _wait_time: Any = attrs.field(init=False)
    _use_time: Any = attrs.field(init=False)
    _timeouts: Any = attrs.field(init=False)
    _rate_requests: Any = attrs.field(init=False)
    _time_in_queue: Any = attrs.field(init=False)
    _queued: set[int] = attrs.field(init=False, factory=set)
    _lock: threading.RLock = attrs.field(init=False, factory=threading.RLock)
    """Guards ``_queued``. Its sections are written out in the shape of "Releasing" in
    ``_core._section_lock``; an ``RLock``, so that the release is its own test of ownership."""

    def __attrs_post_init__(self) -> None:
        meter = self._meter
        self._in_use = meter.create_up_down_counter(
            "allotment.pool.in_use", unit="{unit}", description="Units granted and not released"
        )
        self._pending = meter.create_up_down_counter(
            "allotment.pool.pending_requests",
            unit="{request}",
            description="Requests waiting in a manager's queue",
        )
        self._wait_time = meter.create_histogram(
            "allotment.pool.wait_time", unit="s", description="Time from request to grant"
        )
        self._use_time = meter.create_histogram(
            "allotment.pool.use_time", unit="s", description="Time from grant to release"
        )
        self._timeouts = meter.create_counter(
            "allotment.pool.timeouts",
            unit="{timeout}",
            description="Acquisitions that timed out",
        )
        self._rate_requests = meter.create_counter(
            "allotment.rate.requests",
            unit="{request}",
            description="Rate limiter decisions, by result",
        )
        self._time_in_queue = meter.create_histogram(
            "allotment.rate.time_in_queue",
            unit="s",
            description="Time a rate request waited in line, by result",
        )

    def __call__(self, event: Event) -> None:
        if event.limiter:
            self._rate(event)
        else:
            self._pool(event)

    def _pool(self, event: Event) -> None:
        kind = event.kind
        name = {"allotment.name": event.name}
        if kind == "requested":
            lock = self._lock
            try:  # see "Releasing" in ``_core._section_lock``
                lock.acquire()
                self._queued.add(event.request)
            finally:
                try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                    lock.release()
                except RuntimeError:
                    pass  # not taken: the exception came while waiting for the lock
            self._pending.add(1, name)
            return
        if kind in {"granted", "timed_out", "cancelled", "refused"}:
            lock = self._lock
            try:  # see "Releasing" in ``_core._section_lock``
                lock.acquire()
                queued = event.request in self._queued
                self._queued.discard(event.request)
            finally:
                try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                    lock.release()
                except RuntimeError:
                    pass  # not taken: the exception came while waiting for the lock
            if queued:
                self._pending.add(-1, name)
        if kind == "granted":
            self._add_in_use(event.amount, 1, name)
            if event.wait is not None:
                self._wait_time.record(event.wait, name)
        elif kind in {"released", "lost"}:
            self._add_in_use(event.amount, -1, name)
            if not event.remaining and event.hold is not None:
                self._use_time.record(event.hold, name)
        elif kind == "timed_out":
            self._timeouts.add(1, name)

    def _add_in_use(self, amount: object, sign: int, name: dict[str, str]) -> None:
        if isinstance(amount, dict):
            for resource, units in amount.items():
                self._in_use.add(sign * units, {**name, "allotment.resource": resource})
        elif isinstance(amount, int):
            self._in_use.add(sign * amount, name)

    def _rate(self, event: Event) -> None:
        result = _RATE_RESULTS.get(event.kind)
        if result is None:
            return  # a charge: no decision
        attributes: dict[str, str] = {"allotment.name": event.name}
        if self._key_attributes and event.key is not None:
            attributes["allotment.key"] = str(event.key)
        with_result = {**attributes, "allotment.rate.result": result}
        self._rate_requests.add(1, with_result)
        wait = event.wait
        # An allowance that did not wait says 0.0 (a group's part: the group's wait).
        if wait is not None and (wait > 0 or event.kind in _QUEUED_RESULTS):
            self._time_in_queue.record(wait, with_result)

    def close(self) -> None:
        """Stop measuring (the instruments stay, with what they measured)."""
        remove_observer(self)

    def __repr__(self) -> str:
        return "<allotment.otel.Instrumentation>"


def instrument(
    meter_provider: metrics.MeterProvider | None = None, *, key_attributes: bool = False
) -> Instrumentation:
    """Measure every manager and rate limiter of the process into ``meter_provider`` (the
    global one if ``None``); returns the observer, whose ``close()`` stops it.

    ``key_attributes=True`` adds a keyed limiter's key (``str(key)``) as ``allotment.key``
    to its measurements. Each call installs one more observer: call it once per provider.
    """
    if type(key_attributes) is not bool:
        raise TypeError(f"key_attributes must be True or False, not {key_attributes!r}")
    provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
    meter = provider.get_meter("allotment", __version__)
    instrumentation = Instrumentation(meter, key_attributes)
    add_observer(instrumentation)
    return instrumentation
