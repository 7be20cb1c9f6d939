"""A run as intervals: who waited and who held what, when, and who handed what to whom.

Built from events alone (the trace and the plot both draw it). Each request that queued
has a *wait* from ``requested`` to its end (``granted``, ``timed_out``, ``cancelled``,
``refused``); each grant has a *hold* from ``granted`` to the release that left the lease
empty (or the last event seen, if it is still held). A ``granted`` event's ``handed_by``
gives a *hand-off*: from the slice of the request that passed the units on (the hold it
was releasing, or the wait it withdrew) to the hold it started.

The counters count a release when its call began and a grant when its call returned, so
each counted holding lies within the true one: what they show in use never exceeds the
capacity (as long as the capacity does not shrink below what is in use).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from ._events import Event, EventOwner

__all__ = ["Counter", "HandOff", "Interval", "Timeline", "timeline_of"]

_ENDS_WAIT = frozenset({"granted", "timed_out", "cancelled", "refused"})


@attrs.define(eq=False)
class Interval:
    """A wait or a hold of one request (``t`` in nanoseconds on the events' clock)."""

    kind: str  # "wait" or "hold"
    name: str
    owner: EventOwner
    request: int
    start: int
    end: int
    amount: Any
    outcome: str
    """How a wait ended (``granted``, ``timed_out``, ...), how a hold ended (``released``,
    ``leaked``, ``lost``, ``open``)."""
    lane: int = 0
    """Which of its owner's tracks it is drawn on (0 unless holds overlap out of order)."""


@attrs.frozen
class HandOff:
    """Units passed from ``source`` (the releasing or withdrawing request's interval, at
    ``at``) to ``target`` (the hold it started)."""

    source: Interval
    at: int
    target: Interval


@attrs.frozen
class Counter:
    """One manager's figures from ``t`` on: units in use (per resource for named
    resources), requests waiting."""

    name: str
    t: int
    in_use: dict[str, int]
    waiting: int
    capacity: dict[str, int] | None


@attrs.frozen
class Timeline:
    intervals: tuple[Interval, ...]
    hand_offs: tuple[HandOff, ...]
    counters: tuple[Counter, ...]
    start: int
    end: int
    lanes: dict[EventOwner, int]
    """How many tracks each owner needs."""


def _as_resources(amount: Any) -> dict[str, int]:
    if isinstance(amount, dict):
        return {str(key): int(value) for key, value in amount.items()}
    if isinstance(amount, int):
        return {"units": amount}
    return {}


def timeline_of(events: Sequence[Event]) -> Timeline:
    """The intervals, hand-offs and counters of ``events`` (those of managers; a rate
    limiter's events have no holds)."""
    ordered = sorted((event for event in events if not event.limiter), key=lambda event: event.t_ns)
    start = ordered[0].t_ns if ordered else 0
    end = ordered[-1].t_ns if ordered else 0
    waits: dict[int, Interval] = {}
    holds: dict[int, Interval] = {}
    intervals: list[Interval] = []
    releases: dict[int, list[Event]] = {}
    grants: list[tuple[Event, Interval]] = []
    for event in ordered:
        kind = event.kind
        if kind == "requested":
            wait = Interval(
                "wait",
                event.name,
                event.owner,
                event.request,
                event.t_ns,
                end,
                event.amount,
                "open",
            )
            waits[event.request] = wait
            intervals.append(wait)
        elif kind in _ENDS_WAIT:
            pending = waits.pop(event.request, None)
            if pending is not None:
                pending.end = event.t_ns
                pending.outcome = kind
            if kind == "granted":
                hold = Interval(
                    "hold",
                    event.name,
                    event.owner,
                    event.request,
                    event.t_ns,
                    end,
                    event.amount,
                    "open",
                )
                holds[event.request] = hold
                intervals.append(hold)
                grants.append((event, hold))
        elif kind in {"released", "lost"}:
            releases.setdefault(event.request, []).append(event)
            if kind == "lost" or _is_empty(event.remaining):
                open_hold = holds.pop(event.request, None)
                if open_hold is not None:
                    open_hold.end = event.t_ns
                    open_hold.outcome = event.reason if event.reason == "leaked" else kind
    hand_offs = _hand_offs(grants, releases, intervals)
    lanes = _assign_lanes(intervals)
    return Timeline(
        tuple(intervals), tuple(hand_offs), tuple(_counters(ordered)), start, end, lanes
    )


def _is_empty(remaining: Any) -> bool:
    return not remaining


def _hand_offs(
    grants: list[tuple[Event, Interval]],
    releases: dict[int, list[Event]],
    intervals: list[Interval],
) -> list[HandOff]:
    by_request: dict[int, list[Interval]] = {}
    for interval in intervals:
        by_request.setdefault(interval.request, []).append(interval)
    found: list[HandOff] = []
    for grant, target in grants:
        source_request = grant.handed_by
        if source_request is None or source_request not in by_request:
            continue
        candidates = by_request[source_request]
        # The release call that handed the units on began before this grant was reported;
        # the latest such release is the one.
        earlier = [
            release for release in releases.get(source_request, []) if release.t_ns <= grant.t_ns
        ]
        if earlier:
            release = earlier[-1]
            hold = next((i for i in candidates if i.kind == "hold"), None)
            if hold is None:
                continue
            # The arrow leaves the hold where the release began, or just inside its end.
            at = min(release.t_ns, hold.end - 1) if hold.end > hold.start else hold.start
            found.append(HandOff(hold, at, target))
            continue
        wait = next((i for i in candidates if i.kind == "wait"), None)
        if wait is not None and wait.end <= grant.t_ns and wait.end > wait.start:
            found.append(HandOff(wait, wait.end - 1, target))  # a withdrawal let it through
    return found


def _assign_lanes(intervals: list[Interval]) -> dict[EventOwner, int]:
    """Give each interval a lane of its owner so that each lane's intervals nest."""
    stacks: dict[EventOwner, list[list[int]]] = {}
    for interval in sorted(intervals, key=lambda i: (i.start, -i.end)):
        lanes = stacks.setdefault(interval.owner, [])
        for index, stack in enumerate(lanes):
            while stack and stack[-1] <= interval.start:
                stack.pop()
            if not stack or interval.end <= stack[-1]:
                stack.append(interval.end)
                interval.lane = index
                break
        else:
            lanes.append([interval.end])
            interval.lane = len(lanes) - 1
    return {owner: len(lanes) for owner, lanes in stacks.items()}


def _counters(ordered: list[Event]) -> list[Counter]:
    in_use: dict[str, dict[str, int]] = {}
    waiting: dict[str, int] = {}
    queued: set[int] = set()
    capacity: dict[str, dict[str, int]] = {}
    found: list[Counter] = []
    for event in ordered:
        name = event.name
        if event.capacity is not None:
            capacity[name] = _as_resources(event.capacity)
        use = in_use.setdefault(name, {})
        kind = event.kind
        if kind == "requested":
            queued.add(event.request)
            waiting[name] = waiting.get(name, 0) + 1
        elif kind in _ENDS_WAIT:
            if event.request in queued:
                queued.discard(event.request)
                waiting[name] = waiting.get(name, 0) - 1
            if kind == "granted":
                for resource, units in _as_resources(event.amount).items():
                    use[resource] = use.get(resource, 0) + units
        elif kind in {"released", "lost"}:
            returned = event.amount
            if kind == "lost":
                returned = event.amount
            for resource, units in _as_resources(returned).items():
                # Never below nothing: a semaphore's release may add permits nobody took,
                # and a lease granted before the recording began gives back units never seen.
                use[resource] = max(use.get(resource, 0) - units, 0)
        elif kind != "resized":
            continue
        found.append(Counter(name, event.t_ns, dict(use), waiting.get(name, 0), capacity.get(name)))
    return found
