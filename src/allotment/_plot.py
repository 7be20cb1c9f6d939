"""A run as a picture: one row per thread or task, its waits and holds, the hand-offs between
them, and each manager's use below. Needs matplotlib (``pip install "allotment[plot]"``);
imported only when a picture is asked for."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ._events import Event, EventOwner
from ._timeline import Timeline, timeline_of

__all__ = ["plot_events"]

_SECONDS = 1e9
_HOLD_COLOURS = ("#2f6db5", "#d9822b", "#3a9d5d", "#8e5cb8", "#c4453c", "#5f7f8f")
_WAIT_COLOUR = "#d8d8d8"


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(
            'Recorder.plot needs matplotlib: pip install "allotment[plot]"'
        ) from error
    matplotlib.use("Agg")  # files only: never a window
    from matplotlib import pyplot

    return pyplot


def plot_events(
    events: Sequence[Event], path: str | os.PathLike[str], *, title: str | None = None
) -> None:
    """Draw ``events`` into the image file ``path``."""
    pyplot = _matplotlib()
    timeline = timeline_of(events)
    rows = _rows(timeline)
    names = sorted({interval.name for interval in timeline.intervals})
    colour = {name: _HOLD_COLOURS[i % len(_HOLD_COLOURS)] for i, name in enumerate(names)}
    managers = sorted({counter.name for counter in timeline.counters})
    height = 1.2 + 0.38 * max(len(rows), 1) + 1.9 * len(managers)
    figure, axes = pyplot.subplots(
        1 + len(managers),
        1,
        sharex=True,
        figsize=(11, height),
        gridspec_kw={"height_ratios": [max(len(rows), 1) * 0.38 + 0.6] + [1.9] * len(managers)},
        squeeze=False,
    )
    lanes_axis = axes[0][0]
    origin = timeline.start

    def seconds(t: int) -> float:
        return (t - origin) / _SECONDS

    for interval in timeline.intervals:
        row = rows[interval.owner, interval.lane]
        left, width = seconds(interval.start), seconds(interval.end) - seconds(interval.start)
        if interval.kind == "wait":
            lanes_axis.barh(
                row,
                width,
                left=left,
                height=0.5,
                color=_WAIT_COLOUR,
                edgecolor="#9a9a9a",
                linewidth=0.6,
                hatch="///",
            )
        else:
            lanes_axis.barh(
                row,
                width,
                left=left,
                height=0.7,
                color=colour[interval.name],
                edgecolor="white",
                linewidth=0.6,
            )
            label = _label(interval.amount)
            # About 0.95 % of the axis per character, with a margin, at 7 points: label what fits.
            if width > 0.0095 * len(label) * max(seconds(timeline.end), 1e-9):
                lanes_axis.text(
                    left + width / 2,
                    row,
                    label,
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white",
                )
    for hand_off in timeline.hand_offs:
        source = rows[hand_off.source.owner, hand_off.source.lane]
        target = rows[hand_off.target.owner, hand_off.target.lane]
        lanes_axis.annotate(
            "",
            xy=(seconds(hand_off.target.start), target),
            xytext=(seconds(hand_off.at), source),
            arrowprops={
                "arrowstyle": "->",
                "color": "#b22222",
                "linewidth": 0.9,
                "shrinkA": 0,
                "shrinkB": 2,
            },
        )
    lanes_axis.set_yticks(list(rows.values()))
    lanes_axis.set_yticklabels(
        [str(owner) if lane == 0 else f"{owner} #{lane + 1}" for owner, lane in rows],
        fontsize=8,
    )
    lanes_axis.invert_yaxis()
    lanes_axis.grid(axis="x", color="#eeeeee")
    lanes_axis.set_axisbelow(True)
    lanes_axis.set_title(title or "who waited (grey) and who held what (colour), and hand-offs")
    handles = [
        pyplot.Rectangle(
            (0, 0), 1, 1, color=_WAIT_COLOUR, ec="#9a9a9a", hatch="///", label="waiting in line"
        )
    ]
    handles += [
        pyplot.Rectangle((0, 0), 1, 1, color=colour[name], label=f"holding {name}")
        for name in names
    ]
    handles.append(
        pyplot.Line2D(
            [0],
            [0],
            color="#b22222",
            linewidth=0.9,
            marker=">",
            markersize=4,
            label="hand-off: a release grants the next in line",
        )
    )
    lanes_axis.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False
    )
    for index, name in enumerate(managers, 1):
        _plot_counters(axes[index][0], timeline, name, seconds)
    axes[-1][0].set_xlabel("seconds since the first event")
    figure.tight_layout()
    figure.savefig(os.fspath(path), dpi=130)
    pyplot.close(figure)


def _plot_counters(axis: Any, timeline: Timeline, name: str, seconds: Any) -> None:
    counters = [counter for counter in timeline.counters if counter.name == name]
    times = [seconds(counter.t) for counter in counters] + [seconds(timeline.end)]
    resources = sorted({resource for counter in counters for resource in counter.in_use})
    capacity = next((counter.capacity for counter in reversed(counters) if counter.capacity), None)
    for index, resource in enumerate(resources):
        values = [counter.in_use.get(resource, 0) for counter in counters]
        limit = (capacity or {}).get(resource)
        share = [value / limit for value in values] if limit else values
        label = f"{resource} in use" if resource != "units" else "in use"
        if limit:
            label += f" (of {limit})"
        axis.step(
            times,
            [*share, share[-1]],
            where="post",
            label=label,
            color=_HOLD_COLOURS[index % len(_HOLD_COLOURS)],
            linewidth=1.2,
        )
    waiting = [counter.waiting for counter in counters]
    twin = axis.twinx()
    twin.step(
        times,
        [*waiting, waiting[-1]],
        where="post",
        color="#777777",
        linestyle="--",
        linewidth=1.0,
        label="requests waiting",
    )
    twin.set_ylabel("waiting", fontsize=8)
    twin.set_ylim(bottom=0, top=max([*waiting, 1]) * 1.15)
    axis.set_ylim(0, 1.1 if capacity else None)
    axis.set_ylabel(f"{name}\nshare in use" if capacity else f"{name}\nin use", fontsize=8)
    lines = axis.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    axis.legend(
        lines[0] + more[0],
        lines[1] + more[1],
        loc="upper left",
        bbox_to_anchor=(1.06, 1.0),
        fontsize=8,
        frameon=False,
    )
    axis.grid(axis="x", color="#eeeeee")


def _rows(timeline: Timeline) -> dict[tuple[EventOwner, int], int]:
    rows: dict[tuple[EventOwner, int], int] = {}
    for owner, lanes in sorted(timeline.lanes.items(), key=lambda item: _order(item[0])):
        for lane in range(lanes):
            rows[owner, lane] = len(rows)
    return rows


def _order(owner: EventOwner) -> tuple[int, str]:
    return (owner.task is not None, str(owner))


def _label(amount: Any) -> str:
    if isinstance(amount, dict):
        return " ".join(f"{key}:{value}" for key, value in amount.items())
    return str(amount)
