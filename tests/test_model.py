"""Model-based test: the manager against a plain sequential model, step by step.

Hypothesis drives a single thread through every non-blocking operation (acquire with
``timeout=0``, ``try_acquire``, partial and full releases, resize, close, and bad input) and
checks after each step that the manager's statistics equal what the model predicts.
"""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import allotment
from support import check_invariants

NAMES = ("a", "b", "c")
counts = st.integers(min_value=0, max_value=6)


class ManagerModel(RuleBasedStateMachine):
    """Subclasses pick the manager's form: one unnamed resource, or several named ones."""

    named = True
    fairness: allotment.Fairness = "strict"

    def __init__(self) -> None:
        super().__init__()
        self.manager: allotment.ResourceManager[Any]
        self.capacity: dict[str, int] = {}
        self.leases: list[tuple[allotment.Lease[Any], dict[str, int]]] = []
        self.closed = False

    # -- the model ------------------------------------------------------------------------

    def public(self, amounts: dict[str, int]) -> Any:
        if self.named:
            return {name: count for name, count in amounts.items() if count}
        return amounts[""]

    def in_use(self) -> dict[str, int]:
        total = dict.fromkeys(self.capacity, 0)
        for _, held in self.leases:
            for name, count in held.items():
                total[name] += count
        return total

    def outcome(self, request: dict[str, int]) -> str:
        if self.closed:
            return "closed"
        if any(count > self.capacity[name] for name, count in request.items()):
            return "too large"
        in_use = self.in_use()
        fits = all(
            count <= self.capacity[name] - in_use[name] for name, count in request.items() if count
        )
        return "granted" if fits else "busy"

    # -- rules ----------------------------------------------------------------------------

    @initialize(data=st.data())
    def create(self, data: st.DataObject) -> None:
        if self.named:
            names = data.draw(st.lists(st.sampled_from(NAMES), min_size=1, unique=True))
            self.capacity = {name: data.draw(counts, label=name) for name in names}
            self.manager = allotment.ResourceManager(dict(self.capacity), fairness=self.fairness)
        else:
            self.capacity = {"": data.draw(counts)}
            self.manager = allotment.ResourceManager(self.capacity[""], fairness=self.fairness)

    def draw_request(self, data: st.DataObject) -> dict[str, int]:
        positive = st.integers(min_value=1, max_value=8)
        if not self.named:
            return {"": data.draw(positive, label="amount")}
        names = data.draw(st.lists(st.sampled_from(sorted(self.capacity)), min_size=1, unique=True))
        return {name: data.draw(positive, label=name) for name in names}

    @rule(data=st.data(), use_try=st.booleans())
    def acquire_without_waiting(self, data: st.DataObject, use_try: bool) -> None:
        request = self.draw_request(data)
        expected = self.outcome(request)
        amount = self.public(request)
        try:
            lease = (
                self.manager.try_acquire(amount)
                if use_try
                else self.manager.acquire(amount, timeout=0)
            )
        except allotment.ManagerClosed:
            assert expected == "closed"
            return
        except allotment.ExceedsCapacity:
            assert expected == "too large"
            return
        except allotment.AcquireTimeout:
            assert expected == "busy"
            assert not use_try
            return
        if lease is None:
            assert expected == "busy"
            assert use_try
            return
        assert expected == "granted"
        assert lease.amounts == amount
        self.leases.append((lease, {name: count for name, count in request.items() if count}))

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def release_part(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.leases) - 1), label="lease")
        lease, held = self.leases[index]
        part = self.draw_request(data)
        fits = all(count <= held.get(name, 0) for name, count in part.items())
        try:
            lease.release(self.public(part))
        except allotment.ReleaseExceedsHeld:
            assert not fits
            return
        assert fits
        for name, count in part.items():
            held[name] -= count
            if not held[name]:
                del held[name]
        if not held:
            del self.leases[index]
            assert lease.released

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), twice=st.booleans())
    def release_all(self, data: st.DataObject, twice: bool) -> None:
        index = data.draw(st.integers(0, len(self.leases) - 1), label="lease")
        lease, _ = self.leases.pop(index)
        lease.release()
        if twice:
            lease.release()  # idempotent
        assert lease.released

    @rule(data=st.data())
    def resize(self, data: st.DataObject) -> None:
        if self.named:
            names = data.draw(
                st.lists(st.sampled_from(sorted(self.capacity)), min_size=0, unique=True)
            )
            change = {name: data.draw(counts, label=name) for name in names}
            new: Any = change
        else:
            change = {"": data.draw(counts, label="capacity")}
            new = change[""]
        try:
            self.manager.resize(new)
        except allotment.ManagerClosed:
            assert self.closed
            return
        assert not self.closed
        self.capacity.update(change)

    @rule()
    def close(self) -> None:
        self.manager.close()
        self.closed = True

    @rule(
        bad=st.one_of(
            st.integers(max_value=0),
            st.booleans(),
            st.floats(),
            st.text(max_size=2),
            st.dictionaries(st.text(max_size=2), st.integers(-2, 2), max_size=3),
        )
    )
    def bad_input_changes_nothing(self, bad: object) -> None:
        before = self.manager.statistics()
        for call in (self.manager.try_acquire, self.manager.acquire):
            try:
                lease = call(bad)
            except (allotment.InvalidAmount, allotment.InvalidAmountType, allotment.ManagerClosed):
                pass
            else:  # a valid mapping after all, such as {"a": 1}
                assert lease is None or isinstance(bad, dict)
                if lease is not None:
                    lease.release()
        after = self.manager.statistics()
        assert (after.capacity, after.in_use, after.closed) == (
            before.capacity,
            before.in_use,
            before.closed,
        )

    # -- what must hold after every step --------------------------------------------------

    @invariant()
    def statistics_match_the_model(self) -> None:
        stats = self.manager.statistics()
        check_invariants(stats)
        in_use = self.in_use()
        if self.named:
            assert stats.capacity == self.capacity
            assert stats.in_use == in_use
        else:
            assert stats.capacity == self.capacity[""]
            assert stats.in_use == in_use[""]
        assert stats.closed == self.closed
        assert stats.waiters == ()

        def normal(amount: Any) -> Any:
            return sorted(amount.items()) if isinstance(amount, dict) else amount

        assert sorted(normal(h.amounts) for h in stats.holders) == sorted(
            normal(self.public(held)) for _, held in self.leases
        )

    def teardown(self) -> None:
        for lease, _ in self.leases:
            lease.release()
        if hasattr(self, "manager"):
            stats = self.manager.statistics()
            assert (stats.holders, stats.available) == ((), stats.capacity)


class NamedResourcesModel(ManagerModel):
    named = True


class OneResourceModel(ManagerModel):
    named = False


TestNamedResources = NamedResourcesModel.TestCase
TestOneResource = OneResourceModel.TestCase
TestNamedResources.settings = settings(stateful_step_count=40)
TestOneResource.settings = settings(stateful_step_count=40)


class BoundedNamedResourcesModel(ManagerModel):
    """Bounded fairness changes nothing for one thread: nobody queues, so nobody is
    overtaken."""

    named = True
    fairness = "bounded"


TestBoundedNamedResources = BoundedNamedResourcesModel.TestCase
TestBoundedNamedResources.settings = settings(stateful_step_count=40)
