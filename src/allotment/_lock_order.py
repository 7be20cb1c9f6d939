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
(whoever releases them). An asyncio task holds what it acquired itself, apart from the other
tasks on its thread (and, from its creation, what the code that created it held): a task is
a caller of its own. A caller's list is pruned of released leases at each of its checked
acquisitions, and whenever it doubles, so it stays about as long as what the caller holds.
Edges are keyed by manager and forgotten once the manager is garbage-collected, so memory is
bounded by the live managers.

The graph's lock is taken only for bookkeeping, never while waiting, and never
together with a manager's lock.
"""

from __future__ import annotations

import collections
import contextvars
import os
import threading
import warnings
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

import attrs

from ._core import SectionLock, Site, describe_site
from ._errors import LockOrderViolation, LockOrderWarning

if TYPE_CHECKING:
    from ._lease import Lease

__all__ = [
    "LockOrderPolicy",
    "OrderEdge",
    "OrderNode",
    "check_order",
    "get_lock_order_policy",
    "new_node",
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
    for node in list(_nodes):
        node.apply_default(checked)
    return previous


def get_lock_order_policy() -> LockOrderPolicy:
    """The policy of managers created without ``lock_order=``."""
    return _default


@attrs.define(eq=False)
class OrderNode:
    """A manager as the checker sees it: identity, name, rank and the policy in force.

    ``policy`` is ``None`` when checking is off: the one test on a manager's hot path.
    """

    serial: int
    name: str
    rank: int
    own_policy: LockOrderPolicy | None
    """The manager's ``lock_order=``; ``None`` follows the global default."""
    policy: LockOrderPolicy | None = None

    @property
    def order_key(self) -> tuple[int, int]:
        return (self.rank, self.serial)

    def apply_default(self, default: LockOrderPolicy) -> None:
        policy = default if self.own_policy is None else self.own_policy
        self.policy = None if policy == "off" else policy


_nodes: weakref.WeakSet[OrderNode] = weakref.WeakSet()


def new_node(serial: int, name: str, rank: int, own_policy: LockOrderPolicy | None) -> OrderNode:
    """The node of a new manager, following the default policy from now on."""
    node = OrderNode(serial, name, rank, own_policy)
    # Registered before reading the default, so that a concurrent set_lock_order_policy()
    # either reaches this node or is read by it.
    _nodes.add(node)
    node.apply_default(_default)
    return node


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
    """Edges between managers, keyed by their serial numbers. ``lock`` guards everything but
    ``_dead``, which garbage-collection callbacks fill without taking the lock (they can run
    on a thread that holds it) and which the next check drains. ``lock`` is an ``RLock`` and
    its section is written out in the shape of "Releasing" in ``_core._section_lock`` (on 3.10
    a ``with`` block's exit can be skipped)."""

    lock: SectionLock = attrs.field(factory=lambda: cast("SectionLock", threading.RLock()))
    _edges: dict[int, dict[int, OrderEdge]] = attrs.field(factory=dict)
    _sources: dict[int, set[int]] = attrs.field(factory=dict)
    """The reverse index: for each manager, the managers with an edge into it."""
    _watched: set[int] = attrs.field(factory=set)
    """Managers with a finalizer that will report their collection to ``_dead``."""
    _dead: collections.deque[int] = attrs.field(factory=collections.deque)

    def known(self, held: int, acquired: int) -> bool:
        edges = self._edges.get(held)
        return edges is not None and acquired in edges

    def record(self, held: OrderNode, acquired: OrderNode, edge: OrderEdge) -> None:
        for node in (held, acquired):
            if node.serial not in self._watched:
                self._watched.add(node.serial)
                weakref.finalize(node, self._dead.append, node.serial)
        self._edges.setdefault(held.serial, {})[acquired.serial] = edge
        self._sources.setdefault(acquired.serial, set()).add(held.serial)

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


_Held = tuple[tuple["weakref.ref[Lease[Any]]", OrderNode, "Site | None"], ...]
"""What the current thread or task holds from checked managers: each lease weakly (a leak
must stay collectable), with its manager's node and where it was acquired."""

_graph = _OrderGraph()
_held: contextvars.ContextVar[tuple[_Held, int]] = contextvars.ContextVar(
    "allotment_held", default=((), 16)
)
"""The held leases, and the length at which to prune them (a caller that never makes a
checked acquisition, only tries, would otherwise keep every lease it ever took).

A context variable rather than a thread-local: each asyncio task runs in its own context, so
two tasks on one thread hold separately, as two threads do. A task starts with what its
creator held (contexts are copied), which stays its own: the value is an immutable tuple,
replaced, never mutated."""


def _reinitialise_after_fork() -> None:
    # The lock may have been copied held by a thread that does not exist in the child.
    _graph.lock = cast("SectionLock", threading.RLock())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinitialise_after_fork)


def note_held(lease: Lease[Any], node: OrderNode, site: Site | None) -> None:
    """Record that the current thread or task holds ``lease`` from the checked manager
    ``node``."""
    held, prune_at = _held.get()
    held = (*held, (weakref.ref(lease), node, site))
    if len(held) >= prune_at:
        # Amortised O(1): the limit doubles with what is really held.
        held = _still_held(held)
        prune_at = 2 * len(held) + 16
    _held.set((held, prune_at))


def _still_held(held: _Held) -> _Held:
    return tuple(entry for entry in held if _holds(entry[0]()))


def _holds(lease: Lease[Any] | None) -> bool:
    return lease is not None and not lease.released


def _currently_held() -> list[tuple[OrderNode, Site | None]]:
    """The current thread's or task's leases that still hold units, oldest first; prunes
    the rest."""
    held, prune_at = _held.get()
    if not held:
        return []
    kept = _still_held(held)
    if len(kept) != len(held):
        _held.set((kept, prune_at))
    return [(entry[1], entry[2]) for entry in kept]


def check_order(targets: Sequence[OrderNode], site: Site | None, stacklevel: int) -> None:
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
    predecessors: dict[int, tuple[OrderNode, Site | None]] = {}
    for node, held_at in held:
        # A manager whose checking was turned off since is invisible, like the others.
        if node.policy is not None and node.serial not in predecessors:
            predecessors[node.serial] = (node, held_at)
    new_edges = []
    for target in targets:
        if target.policy is not None:
            for serial, (holder, held_at) in predecessors.items():
                # Reading the graph without its lock is safe: a known edge is never removed
                # while both managers live, and these are alive.
                if serial != target.serial and not _graph.known(serial, target.serial):
                    new_edges.append((holder, held_at, target))
            predecessors.setdefault(target.serial, (target, site))
    if new_edges:
        _add_edges(new_edges, site, stacklevel + 1)


def _add_edges(
    new_edges: list[tuple[OrderNode, Site | None, OrderNode]],
    site: Site | None,
    stacklevel: int,
) -> None:
    """Record edges not seen before, reporting those that could deadlock (the slow path)."""
    acquired_at = describe_site(site)
    thread_name = threading.current_thread().name
    problems: list[tuple[LockOrderPolicy, str, OrderEdge, list[OrderEdge]]] = []
    lock = _graph.lock
    if lock._is_owned():
        # A signal handler or finalizer acquiring inside this thread's bookkeeping: the graph
        # is mid-change (iterated by the outer frame), so this check records nothing.
        return
    try:  # see "Releasing" in ``_core._section_lock``
        lock.acquire()
        _graph.forget_dead()
        for holder, held_site, target in new_edges:
            policy = target.policy
            assert policy is not None
            if _graph.known(holder.serial, target.serial):
                continue  # recorded by another thread meanwhile
            edge = OrderEdge(
                holder.name, target.name, describe_site(held_site), acquired_at, thread_name
            )
            cycle = _graph.path(target.serial, holder.serial)
            if cycle is None and target.order_key > holder.order_key:
                _graph.record(holder, target, edge)
                continue
            problems.append((policy, _describe(holder, target, edge, cycle), edge, cycle or []))
            if policy == "raise":
                break
            _graph.record(holder, target, edge)
    finally:
        try:  # noqa: SIM105 - suppress() is Python code: a check point before release
            lock.release()
        except RuntimeError:
            pass  # not taken: the exception came while waiting for the lock
    for policy, message, edge, cycle in problems:
        if policy == "raise":
            violation = LockOrderViolation(message)
            violation.edge = edge
            violation.cycle = (edge, *cycle) if cycle else ()
            raise violation
        warnings.warn(message, LockOrderWarning, stacklevel=stacklevel + 1)


def _describe(
    holder: OrderNode, target: OrderNode, edge: OrderEdge, cycle: list[OrderEdge] | None
) -> str:
    first, second = sorted((holder, target), key=lambda node: node.order_key)
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


def _rank_of(node: OrderNode) -> str:
    rank, serial = node.order_key
    return f"rank {rank}, created #{serial}"
