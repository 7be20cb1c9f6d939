"""allotment.otel: the names, units and attributes, read back with the SDK's in-memory reader."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import allotment
from support import GENEROUS, Worker, wait_for_waiters

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import allotment.otel


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    memory = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[memory])
    instrumentation = allotment.otel.instrument(provider)
    yield memory
    instrumentation.close()
    provider.shutdown()


def _metrics(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        metric.name: metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


def _points(metric: Any) -> dict[frozenset[tuple[str, Any]], Any]:
    return {frozenset(point.attributes.items()): point for point in metric.data.data_points}


@contextlib.contextmanager
def _delivered(kind: str) -> Iterator[None]:
    """Wait, on leaving, until an event of ``kind`` has been delivered to every observer
    installed before (they are called in the order added). A queued request shows in
    ``statistics()`` as soon as it is queued, but its ``requested`` event is delivered after
    the section, a moment later: on a free-threaded build, often after the test looked."""
    seen = threading.Event()

    def note(event: allotment.Event) -> None:
        if event.kind == kind:
            seen.set()

    allotment.add_observer(note)
    try:
        yield
        assert seen.wait(GENEROUS), f"no {kind!r} event was delivered"
    finally:
        allotment.remove_observer(note)


def test_pool_metrics_names_units_and_attributes(reader: InMemoryMetricReader) -> None:
    node = allotment.ResourceManager({"gpu": 2, "ram_gb": 8}, name="node")
    held = node.acquire({"gpu": 2, "ram_gb": 4})
    waiter = Worker(lambda: node.acquire({"gpu": 1}, timeout=30).release())
    with _delivered("requested"):
        waiter.start()
    metrics = _metrics(reader)
    pending = _points(metrics["allotment.pool.pending_requests"])
    assert pending[frozenset({("allotment.name", "node")})].value == 1
    in_use = _points(metrics["allotment.pool.in_use"])
    gpu = frozenset({("allotment.name", "node"), ("allotment.resource", "gpu")})
    ram = frozenset({("allotment.name", "node"), ("allotment.resource", "ram_gb")})
    assert (in_use[gpu].value, in_use[ram].value) == (2, 4)
    held.release()
    waiter.join()
    with node.acquire({"gpu": 2}), pytest.raises(allotment.AcquireTimeout):
        node.acquire({"gpu": 1}, timeout=0)
    metrics = _metrics(reader)
    units = {name: metric.unit for name, metric in metrics.items()}
    assert units == {
        "allotment.pool.in_use": "{unit}",
        "allotment.pool.pending_requests": "{request}",
        "allotment.pool.wait_time": "s",
        "allotment.pool.use_time": "s",
        "allotment.pool.timeouts": "{timeout}",
    }
    name = frozenset({("allotment.name", "node")})
    assert _points(metrics["allotment.pool.pending_requests"])[name].value == 0
    assert _points(metrics["allotment.pool.wait_time"])[name].count == 3
    assert _points(metrics["allotment.pool.use_time"])[name].count == 3
    assert _points(metrics["allotment.pool.timeouts"])[name].value == 1
    in_use = _points(metrics["allotment.pool.in_use"])
    assert (in_use[gpu].value, in_use[ram].value) == (0, 0)


def test_rate_metrics_results_and_opt_in_keys() -> None:
    memory = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[memory])
    plain = allotment.otel.instrument(provider)
    limiter = allotment.RateLimiter(50, burst=1, name="api")
    keyed = allotment.KeyedRateLimiter(1, per=60, name="per-user")
    try:
        limiter.acquire()
        limiter.acquire()  # waits
        assert not limiter.try_acquire()
        with pytest.raises(allotment.AcquireTimeout):
            limiter.acquire(timeout=0)
        keyed.acquire("alice")
        metrics = _metrics(memory)
        requests = _points(metrics["allotment.rate.requests"])
        assert metrics["allotment.rate.requests"].unit == "{request}"
        assert metrics["allotment.rate.time_in_queue"].unit == "s"

        def key(name: str, result: str) -> frozenset[tuple[str, str]]:
            return frozenset({("allotment.name", name), ("allotment.rate.result", result)})

        assert requests[key("api", "allowed")].value == 2
        assert requests[key("api", "refused")].value == 1
        assert requests[key("api", "timeout")].value == 1
        # Keys are unbounded: not an attribute unless asked for.
        assert requests[key("per-user", "allowed")].value == 1
        queue = _points(metrics["allotment.rate.time_in_queue"])
        assert queue[key("api", "allowed")].count == 1
    finally:
        plain.close()
    keyed_reader = InMemoryMetricReader()
    keyed_provider = MeterProvider(metric_readers=[keyed_reader])
    with_keys = allotment.otel.instrument(keyed_provider, key_attributes=True)
    try:
        keyed.acquire("bob")
    finally:
        with_keys.close()
    requests = _points(_metrics(keyed_reader)["allotment.rate.requests"])
    assert set(requests) == {
        frozenset(
            {
                ("allotment.name", "per-user"),
                ("allotment.rate.result", "allowed"),
                ("allotment.key", "bob"),
            }
        )
    }
    provider.shutdown()
    keyed_provider.shutdown()


def test_instrument_validates_its_argument() -> None:
    with pytest.raises(TypeError):
        allotment.otel.instrument(key_attributes="yes")  # type: ignore[arg-type]


def test_a_rate_taken_in_acquire_all_records_its_time_in_queue(
    reader: InMemoryMetricReader,
) -> None:
    # The group waits on its manager; its rate is taken last: it waited as long.
    manager = allotment.ResourceManager(1, name="held")
    limiter = allotment.RateLimiter(1000, burst=10, name="grouped")
    held = manager.acquire(1)
    with allotment.Recorder() as recorder:
        waiter = Worker(
            lambda: allotment.acquire_all([(manager, 1), (limiter, 1)], timeout=GENEROUS)
        )
        waiter.start()
        wait_for_waiters(manager, 1)  # a group's parts are reported once it is taken
        held.release()
        group = waiter.outcome()
        assert isinstance(group, allotment.LeaseGroup)
        group.release()
    (allowed,) = [event for event in recorder.events if event.kind == "rate_allowed"]
    assert allowed.wait is not None
    assert allowed.wait > 0
    queue = _points(_metrics(reader)["allotment.rate.time_in_queue"])
    point = queue[frozenset({("allotment.name", "grouped"), ("allotment.rate.result", "allowed")})]
    assert point.count == 1
    assert point.sum == pytest.approx(allowed.wait)
