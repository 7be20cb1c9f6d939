"""A run as a Chrome trace event document (the JSON that https://ui.perfetto.dev opens).

- Every track is a "thread" of one process: one per thread or task that asked (more than
  one when its holds overlap out of nesting order, see ``_timeline.py``), named after it.
- A wait or a hold is a complete slice (``"ph": "X"``) named ``wait <manager>`` or
  ``hold <manager>``, its args saying what and how it ended.
- A hand-off is a flow (``"s"`` inside the slice that passed the units on, ``"f"`` bound
  to the hold it started).
- Each manager has a counter track (``"ph": "C"``): units in use and requests waiting.

Timestamps are microseconds from the first event.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._events import Event, EventOwner
from ._timeline import Interval, timeline_of

__all__ = ["trace_of"]

_PROCESS = 1
_NANOSECONDS_PER_MICROSECOND = 1000


def trace_of(events: Sequence[Event]) -> dict[str, Any]:
    """The trace document of ``events``."""
    timeline = timeline_of(events)
    origin = timeline.start

    def microseconds(t: int) -> float:
        return round((t - origin) / _NANOSECONDS_PER_MICROSECOND, 3)

    tracks: dict[tuple[EventOwner, int], int] = {}
    trace: list[dict[str, Any]] = [
        {"ph": "M", "pid": _PROCESS, "name": "process_name", "args": {"name": "allotment"}}
    ]
    for owner, lanes in sorted(timeline.lanes.items(), key=lambda item: str(item[0])):
        for lane in range(lanes):
            tid = len(tracks) + 1
            tracks[owner, lane] = tid
            label = str(owner) if lane == 0 else f"{owner} #{lane + 1}"
            trace.append(
                {
                    "ph": "M",
                    "pid": _PROCESS,
                    "tid": tid,
                    "name": "thread_name",
                    "args": {"name": label},
                }
            )
            trace.append(
                {
                    "ph": "M",
                    "pid": _PROCESS,
                    "tid": tid,
                    "name": "thread_sort_index",
                    "args": {"sort_index": tid},
                }
            )

    def track(interval: Interval) -> int:
        return tracks[interval.owner, interval.lane]

    for interval in timeline.intervals:
        trace.append(
            {
                "ph": "X",
                "pid": _PROCESS,
                "tid": track(interval),
                "name": f"{interval.kind} {interval.name}",
                "cat": interval.kind,
                "ts": microseconds(interval.start),
                "dur": round((interval.end - interval.start) / _NANOSECONDS_PER_MICROSECOND, 3),
                "args": {
                    "manager": interval.name,
                    "amount": interval.amount,
                    "request": interval.request,
                    "outcome": interval.outcome,
                },
            }
        )
    for number, hand_off in enumerate(timeline.hand_offs, 1):
        common = {"pid": _PROCESS, "name": "hand-off", "cat": "hand-off", "id": number}
        trace.append(
            {**common, "ph": "s", "tid": track(hand_off.source), "ts": microseconds(hand_off.at)}
        )
        # Just inside the hold it started, bound to the slice enclosing that point.
        target = hand_off.target
        inside = target.start + 1 if target.end > target.start + 1 else target.start
        trace.append(
            {**common, "ph": "f", "bp": "e", "tid": track(target), "ts": microseconds(inside)}
        )
    for counter in timeline.counters:
        values: dict[str, int] = {
            (f"{resource} in use" if resource != "units" else "in use"): units
            for resource, units in counter.in_use.items()
        }
        values["waiting"] = counter.waiting
        trace.append(
            {
                "ph": "C",
                "pid": _PROCESS,
                "name": counter.name,
                "ts": microseconds(counter.t),
                "args": values,
            }
        )
    return {"traceEvents": trace, "displayTimeUnit": "ms"}
