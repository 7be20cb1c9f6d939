"""Lock-order checking: report acquisition orders that can deadlock, before they do.

Like Guava's ``CycleDetectingLockFactory`` or Linux lockdep, for counted resources. Each time a
thread acquires from a checked manager ``B`` while it holds a lease from a checked manager
``A``, that is an *edge* ``A -> B`` of a process-wide graph. An acquisition is reported when
its new edge

- closes a cycle (``B`` was held while ``A`` was acquired, by any thread, at any time): two
  threads taking the two orders at once can deadlock, even if this run never does; or
- goes against rank order (``B`` ranks below ``A``): ``acquire_all``, and any code that
  follows the ranks, takes ``B`` first.

Reports happen before the acquisition changes anything, so a ``"raise"`` policy stops the
program at the first inverted acquisition, deterministically, in a single thread. Under
``"warn"`` the edge is recorded and reported once; under ``"raise"`` it is not recorded, as the
acquisition did not happen.

Only acquisitions that can wait are checked: ``try_acquire`` and ``timeout=0`` cannot deadlock
(taking locks out of order with a try is the classic way to back off safely). Every lease
granted by a checked manager, however it was taken, counts as held.

What a thread *holds* is the leases it acquired from checked managers and has not released
(whoever releases them). A thread's list is pruned of released leases at each of its checked
acquisitions, and whenever it doubles, so it stays about as long as what the thread holds.
Edges are keyed by manager and forgotten once the manager is garbage-collected, so memory is
bounded by the live managers.

``_lock`` guards the graph; it is taken only for bookkeeping, never while waiting, and never
together with a manager's lock.
"""

from __future__ import annotations

import collections
import threading
import warnings
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs

from ._claims import GRANTED, Site, describe_site
from ._errors import LockOrderViolation, LockOrderWarning
from ._registry import live_managers

if TYPE_CHECKING:
    from ._lease import Lease
    from ._manager import ResourceManager

__all__ = [
    "LockOrderPolicy",
    "OrderEdge",
    "check_order",
    "get_lock_order_policy",
    "note_held",
    "parse_policy",
    "set_lock_order_policy",
]

LockOrderPolicy = Literal["raise", "warn", "off"]
_POLICIES: tuple[LockOrderPolicy, ...] = ("raise", "warn", "off")

_default: LockOrderPolicy = "off"


def parse_policy(policy: object) -> LockOrderPolicy:
    if policy not in _POLICIES:
        raise ValueError(f"lock_order must be 'raise', 'warn' or 'off', not {policy!r}")
    return policy


def set_lock_order_policy(policy: LockOrderPolicy) -> LockOrderPolicy:
    """Set the lock-order policy of every manager created without ``lock_order=``; return
    the previous one.

    Applies at once to live managers as well as to those created later. ``"raise"`` raises
    :class:`LockOrderViolation` from an acquisition that could deadlock, ``"warn"`` issues a
    :class:`LockOrderWarning` with the same text (once per pair of managers), and ``"off"``
    (the default) checks nothing and costs nothing.
    """
    global _default
    checked = parse_policy(policy)
    previous, _default = _default, checked
    for manager in live_managers():
        manager._apply_default_lock_order(checked)
    return previous


def get_lock_order_policy() -> LockOrderPolicy:
    """The policy of managers created without ``lock_order=``."""
    return _default


@attrs.frozen
class OrderEdge:
    """One observed nesting: ``held`` was held while ``acquired`` was acquired."""

    held: str
    """The name of the manager that was held."""
    acquired: str
    """The name of the manager acquired while it was held."""
    held_site: str | None
    """Where the held lease was acquired, if recorded."""
    acquired_site: str | None
    """Where the nested acquisition was made."""
    thread_name: str
    """The thread that nested them (the first time, for a recorded edge)."""

    def __str__(self) -> str:
        held_at = self.held_site or "an unrecorded site"
        acquired_at = self.acquired_site or "an unrecorded site"
        return (
            f"{self.held!r} -> {self.acquired!r}: thread {self.thread_name!r} held "
            f"{self.held!r} (acquired at {held_at}) while acquiring {self.acquired!r} "
            f"at {acquired_at}"
        )


@attrs.define(eq=False)
class _OrderGraph:
    """Edges between managers, keyed by their serial numbers. ``_lock`` guards everything but
    ``_dead``, which garbage-collection callbacks fill without taking the lock (they can run
    on a thread that holds it) and which the next check drains."""

    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    _edges: dict[int, dict[int, OrderEdge]] = attrs.field(factory=dict)
    _sources: dict[int, set[int]] = attrs.field(factory=dict)
    """The reverse index: for each manager, the managers with an edge into it."""
    _watched: set[int] = attrs.field(factory=set)
    """Managers with a finalizer that will report their collection to ``_dead``."""
    _dead: collections.deque[int] = attrs.field(factory=collections.deque)

    def known(self, held: int, acquired: int) -> bool:
        edges = self._edges.get(held)
        return edges is not None and acquired in edges

    def record(
        self, held: ResourceManager[Any], acquired: ResourceManager[Any], edge: OrderEdge
    ) -> None:
        for manager in (held, acquired):
            if manager._serial not in self._watched:
                self._watched.add(manager._serial)
                weakref.finalize(manager, self._dead.append, manager._serial)
        self._edges.setdefault(held._serial, {})[acquired._serial] = edge
        self._sources.setdefault(acquired._serial, set()).add(held._serial)

    def path(self, start: int, goal: int) -> list[OrderEdge] | None:
        """The recorded edges of a path from ``start`` to ``goal``, or ``None``."""
        parents: dict[int, tuple[int, OrderEdge] | None] = {start: None}
        frontier = [start]
        while frontier:  # breadth first, so the reported cycle is a shortest one
            following = []
            for node in frontier:
                for successor, edge in self._edges.get(node, {}).items():
                    if successor in parents:
                        continue
                    parents[successor] = (node, edge)
                    if successor == goal:
                        edges = []
                        step = parents[goal]
                        while step is not None:
                            edges.append(step[1])
                            step = parents[step[0]]
                        return edges[::-1]
                    following.append(successor)
            frontier = following
        return None

    def forget_dead(self) -> None:
        while self._dead:
            serial = self._dead.popleft()
            self._watched.discard(serial)
            for target in self._edges.pop(serial, {}):
                self._sources.get(target, set()).discard(serial)
            for source in self._sources.pop(serial, set()):
                self._edges.get(source, {}).pop(serial, None)


@attrs.define
class _ThreadState:
    """What one thread holds from checked managers (weakly: a leak must stay collectable)."""

    held: list[weakref.ref[Lease[Any]]] = attrs.field(factory=list)
    prune_at: int = 16
    """Prune when the list grows this long: a thread that never makes a checked acquisition
    (only tries) would otherwise keep every lease it ever took."""


_graph = _OrderGraph()
_threads = threading.local()


def _state() -> _ThreadState:
    try:
        state: _ThreadState = _threads.state
    except AttributeError:
        state = _threads.state = _ThreadState()
    return state


def note_held(lease: Lease[Any]) -> None:
    """Record that the current thread holds ``lease`` from a checked manager."""
    state = _state()
    state.held.append(weakref.ref(lease))
    if len(state.held) >= state.prune_at:
        # Amortised O(1): the limit doubles with what is really held.
        state.prune_at = 2 * len(_currently_held()) + 16


def _currently_held() -> list[Lease[Any]]:
    """The current thread's leases that still hold units, oldest first; prunes the rest."""
    references = _state().held
    leases = []
    kept = []
    for reference in references:
        lease = reference()
        if lease is not None and lease._state is GRANTED:
            leases.append(lease)
            kept.append(reference)
    references[:] = kept
    return leases


def check_order(
    targets: Sequence[ResourceManager[Any]], site: Site | None, stacklevel: int
) -> None:
    """Check, before the current thread acquires from ``targets`` in this order (one manager
    for ``acquire``, several for ``acquire_all``), that no edge this creates can deadlock.

    Targets whose policy is off are skipped. Raises :class:`LockOrderViolation` or warns,
    according to the policy of the manager being acquired; ``stacklevel`` points the warning
    at the caller's acquisition.
    """
    held = _currently_held()
    if not held and len(targets) == 1:
        return
    # What the thread holds, one entry per manager (its oldest lease), then what acquire_all
    # takes first, which is held while it takes the rest.
    predecessors: dict[int, tuple[ResourceManager[Any], Site | None]] = {}
    for lease in held:
        manager = lease.manager
        # A manager whose checking was turned off since is invisible, like the others.
        if manager._order_policy is not None and manager._serial not in predecessors:
            predecessors[manager._serial] = (manager, lease._site)
    new_edges = []
    for target in targets:
        if target._order_policy is not None:
            for serial, (holder, held_at) in predecessors.items():
                # Reading the graph without its lock is safe: a known edge is never removed
                # while both managers live, and these are alive.
                if serial != target._serial and not _graph.known(serial, target._serial):
                    new_edges.append((holder, held_at, target))
            predecessors.setdefault(target._serial, (target, site))
    if new_edges:
        _add_edges(new_edges, site, stacklevel + 1)


def _add_edges(
    new_edges: list[tuple[ResourceManager[Any], Site | None, ResourceManager[Any]]],
    site: Site | None,
    stacklevel: int,
) -> None:
    """Record edges not seen before, reporting those that could deadlock (the slow path)."""
    acquired_at = describe_site(site)
    thread_name = threading.current_thread().name
    problems: list[tuple[LockOrderPolicy, str, OrderEdge, list[OrderEdge]]] = []
    with _graph._lock:
        _graph.forget_dead()
        for holder, held_site, target in new_edges:
            policy = target._order_policy
            assert policy is not None
            if _graph.known(holder._serial, target._serial):
                continue  # recorded by another thread meanwhile
            edge = OrderEdge(
                holder.name, target.name, describe_site(held_site), acquired_at, thread_name
            )
            cycle = _graph.path(target._serial, holder._serial)
            if cycle is None and target._order_key > holder._order_key:
                _graph.record(holder, target, edge)
                continue
            problems.append((policy, _describe(holder, target, edge, cycle), edge, cycle or []))
            if policy == "raise":
                break
            _graph.record(holder, target, edge)
    for policy, message, edge, cycle in problems:
        if policy == "raise":
            violation = LockOrderViolation(message)
            violation.edge = edge
            violation.cycle = (edge, *cycle) if cycle else ()
            raise violation
        warnings.warn(message, LockOrderWarning, stacklevel=stacklevel + 1)


def _describe(
    holder: ResourceManager[Any],
    target: ResourceManager[Any],
    edge: OrderEdge,
    cycle: list[OrderEdge] | None,
) -> str:
    first, second = sorted((holder, target), key=lambda manager: manager._order_key)
    advice = (
        f"Take {first.name!r} before {second.name!r} everywhere (rank order), or both at once "
        "with allotment.acquire_all()"
    )
    if cycle is not None:
        lines = [
            f"lock-order violation: acquiring {target.name!r} while holding {holder.name!r} "
            "closes a cycle; threads taking these managers in opposite orders can deadlock:",
            f"  now:        {edge}",
        ]
        lines.extend(f"  first seen: {recorded}" for recorded in cycle)
        lines.append(advice + ".")
        return "\n".join(lines)
    return (
        f"lock-order violation: acquiring {target.name!r} ({_rank_of(target)}) while holding "
        f"{holder.name!r} ({_rank_of(holder)}) goes against rank order; a thread taking them "
        f"in rank order, as acquire_all() does, can deadlock with this one:\n"
        f"  now:        {edge}\n"
        f"{advice}, or give the managers ranks (rank=) that declare the order you use."
    )


def _rank_of(manager: ResourceManager[Any]) -> str:
    rank, serial = manager._order_key
    return f"rank {rank}, created #{serial}"
