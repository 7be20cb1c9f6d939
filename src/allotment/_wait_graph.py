"""The wait graph: who holds what and who waits for whom, across every live manager.

Nodes are threads and asyncio tasks (a task is a node of its own, apart from its loop's
thread and the other tasks on it: each waits or runs on its own). A thread or task queued on
a manager *waits for* every one holding units of it (any of them may release what it needs)
and every one queued ahead of it (strict FIFO serves those first). A waiter is *deadlocked*
when every node it can reach in this graph waits too: nobody it depends on is running, so
nobody will ever release. Cycles are what a deadlock looks like; the deadlocked set is the
precise answer.

Each manager is snapshotted under its own lock, one after the other, so the graph is not one
instant; a real deadlock does not change between snapshots, so it is always shown whole.
Waiters with a timeout leave when it expires, which can end an apparent deadlock.
"""

from __future__ import annotations

from typing import Any

import attrs

from ._manager import statistics_within
from ._registry import live_managers
from ._statistics import ManagerStatistics

__all__ = ["ThreadRef", "WaitEdge", "WaitGraph", "wait_graph"]


def _none_first(value: str | None) -> tuple[bool, str]:
    return (value is not None, value or "")


@attrs.frozen(order=True)
class ThreadRef:
    """A thread, or an asyncio task, in the graph, as the snapshots saw it.

    For a task, ``task_name`` is its name and ``name``/``ident`` are its loop's thread."""

    name: str
    ident: int | None
    task_name: str | None = attrs.field(default=None, order=_none_first)

    def __str__(self) -> str:
        if self.task_name is not None:
            return f"task {self.task_name!r} (thread {self.name!r})"
        return f"thread {self.name!r}"


@attrs.frozen
class WaitEdge:
    """``waiter`` is queued on ``manager`` and cannot be served before ``blocker`` moves."""

    waiter: ThreadRef
    blocker: ThreadRef
    manager: str
    """The name of the manager ``waiter`` is queued on."""
    reason: str
    """What ``blocker`` does there: ``"holds 2"`` or ``"is queued ahead for 1"``."""

    def __str__(self) -> str:
        return f"{self.waiter} waits on {self.manager!r}, where {self.blocker} {self.reason}"


@attrs.frozen
class WaitGraph:
    """A snapshot of holders and waiters across live managers, and the deadlocks in it.

    ``str()`` is a report meant for a person looking at a stuck program.
    """

    managers: tuple[ManagerStatistics[Any], ...]
    """Statistics of every live manager with holders or waiters, in creation order."""
    busy: tuple[str, ...]
    """Managers whose lock could not be taken in time (left out of the graph)."""
    edges: tuple[WaitEdge, ...]
    """Every waits-for relation: a queued thread and each thread it cannot be served before."""
    cycles: tuple[tuple[WaitEdge, ...], ...]
    """One cycle of edges for each group of threads that wait for each other."""
    deadlocked: tuple[ThreadRef, ...]
    """Waiting threads none of whose (direct or indirect) blockers is running."""

    def __str__(self) -> str:
        lines = [f"allotment wait graph: {len(self.managers)} manager(s) in use"]
        if self.busy:
            lines.append(f"  skipped (lock busy): {', '.join(map(repr, self.busy))}")
        lines.extend(str(stats) for stats in self.managers)
        if self.deadlocked:
            names = ", ".join(
                ref.name if ref.task_name is None else str(ref) for ref in self.deadlocked
            )
            lines.append(f"DEADLOCK: {names} wait only for each other")
        for number, cycle in enumerate(self.cycles, 1):
            lines.append(f"cycle {number}:")
            lines.extend(f"  {edge}" for edge in cycle)
        if not self.cycles:
            lines.append("no cycles: every waiting thread waits for a thread that can move")
        return "\n".join(lines)


def wait_graph(lock_timeout: float = 1.0) -> WaitGraph:
    """Snapshot every live manager and find the threads that wait for each other.

    Safe to call from a debugger, another thread or a signal handler: a manager whose lock
    belongs to the calling thread (a signal handler that interrupted its bookkeeping), or
    cannot be taken within ``lock_timeout`` seconds, is listed in ``busy`` instead of
    blocking. The registry of managers takes no lock at all.
    ``print(allotment.wait_graph())`` explains a hang.
    """
    managers = []
    busy = []
    for manager in live_managers():
        stats = statistics_within(manager, lock_timeout)
        if stats is None:
            busy.append(manager.name)
        elif stats.holders or stats.waiters:
            managers.append(stats)
    edges = _edges(managers)
    return WaitGraph(
        managers=tuple(managers),
        busy=tuple(busy),
        edges=tuple(edges),
        cycles=tuple(_cycles(edges)),
        deadlocked=tuple(sorted(_deadlocked(edges))),
    )


def _edges(managers: list[ManagerStatistics[Any]]) -> list[WaitEdge]:
    edges = []
    for stats in managers:
        holders = [
            (ThreadRef(holder.thread_name, holder.thread_id, holder.task_name), holder.amounts)
            for holder in stats.holders
        ]
        ahead: list[tuple[ThreadRef, Any]] = []
        for waiter in stats.waiters:
            thread = ThreadRef(waiter.thread_name, waiter.thread_id, waiter.task_name)
            for blocker, amounts in holders:
                edges.append(WaitEdge(thread, blocker, stats.name, f"holds {amounts!r}"))
            for blocker, requested in ahead:
                edges.append(
                    WaitEdge(thread, blocker, stats.name, f"is queued ahead for {requested!r}")
                )
            ahead.append((thread, waiter.requested))
    return edges


def _successors(edges: list[WaitEdge]) -> dict[ThreadRef, list[WaitEdge]]:
    successors: dict[ThreadRef, list[WaitEdge]] = {}
    for edge in edges:
        successors.setdefault(edge.waiter, []).append(edge)
    return successors


def _deadlocked(edges: list[WaitEdge]) -> set[ThreadRef]:
    """Waiting threads from which no running thread can be reached."""
    successors = _successors(edges)
    waiting = set(successors)
    # Walk backwards from the threads that are not waiting: whoever reaches them may move.
    predecessors: dict[ThreadRef, list[ThreadRef]] = {}
    for edge in edges:
        predecessors.setdefault(edge.blocker, []).append(edge.waiter)
    may_move = {edge.blocker for edge in edges if edge.blocker not in waiting}
    frontier = list(may_move)
    while frontier:
        thread = frontier.pop()
        for waiter in predecessors.get(thread, []):
            if waiter not in may_move:
                may_move.add(waiter)
                frontier.append(waiter)
    return waiting - may_move


def _cycles(edges: list[WaitEdge]) -> list[tuple[WaitEdge, ...]]:
    """One cycle through each strongly connected group of threads (self-waits included)."""
    successors = _successors(edges)
    cycles = []
    placed: set[ThreadRef] = set()
    for start in sorted(successors):
        if start in placed:
            continue
        cycle = _cycle_through(start, successors)
        if cycle is not None:
            cycles.append(cycle)
            placed.update(edge.waiter for edge in cycle)
    return cycles


def _cycle_through(
    start: ThreadRef, successors: dict[ThreadRef, list[WaitEdge]]
) -> tuple[WaitEdge, ...] | None:
    """A shortest cycle from ``start`` back to itself, or ``None``."""
    parents: dict[ThreadRef, WaitEdge | None] = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for thread in frontier:
            for edge in successors.get(thread, []):
                if edge.blocker == start:
                    path = [edge]
                    step = parents[thread]
                    while step is not None:
                        path.append(step)
                        step = parents[step.waiter]
                    return tuple(reversed(path))
                if edge.blocker not in parents:
                    parents[edge.blocker] = edge
                    following.append(edge.blocker)
        frontier = following
    return None
