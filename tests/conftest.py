"""Test configuration: Hypothesis profiles and a guard against threads outliving a test."""

from __future__ import annotations

import gc
import os
import pathlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, settings

from allotment import LocalBackend
from allotment.redis import RedisBackend
from redis_support import RedisServer, block_round_trips_on_loops
from signal_support import raise_delivered

# Threaded examples take as long as their threads do: no per-example deadline. Hypothesis
# loads its built-in "ci" profile by itself when CI is set; extend it rather than replace it.
_slow_checks = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile(
    "ci", parent=settings.get_profile("ci"), deadline=None, suppress_health_check=_slow_checks
)
settings.register_profile("dev", deadline=None, suppress_health_check=_slow_checks)
settings.register_profile(
    "heavy", deadline=None, suppress_health_check=_slow_checks, max_examples=500
)
if os.environ.get("ALLOTMENT_STRESS") == "heavy":
    settings.load_profile("heavy")
elif os.environ.get("CI"):
    settings.load_profile("ci")
else:
    settings.load_profile("dev")


_FREE_THREADED = not getattr(sys, "_is_gil_enabled", lambda: True)()


@pytest.fixture(autouse=True)
def no_thread_outlives_the_test() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    for thread in set(threading.enumerate()) - before:
        thread.join(30)
        assert not thread.is_alive(), f"thread {thread.name} is still running after the test"
    if _FREE_THREADED:
        # A free-threaded build frees an object whose last reference another thread than
        # its creator dropped only when the creator (or a thread reusing its id) next
        # checks, or at a collection: a lease a test leaked would warn, from its finalizer,
        # in a later test. Collected here, it warns in the test that leaked it.
        gc.collect()
    from allotment import _events

    leftover = _events.observers
    for observer in leftover:
        _events.remove_observer(observer)
    assert not leftover, f"the test left observers installed: {leftover}"


@pytest.fixture
def sigusr1_raises() -> Iterator[None]:
    """SIGUSR1's handler raises ``signal_support.Delivered`` for the test's duration."""
    previous = signal.signal(signal.SIGUSR1, raise_delivered)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, previous)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server for the whole run (about 10 ms to start)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, which it may kill, pause (SIGSTOP) or restart."""
    private = RedisServer(tmp_path)
    private.start()
    yield private
    private.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the private server, which is emptied (and restarted, if a test stopped
    it) before the test."""
    redis_server.ensure_running()
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def redis_backend(redis_client: redis.Redis) -> Iterator[RedisBackend]:
    """A backend on the private server; closed (its keeper stopped) after the test."""
    backend = RedisBackend(redis_client, lease_ttl=30)
    yield backend
    backend.close()


@pytest.fixture
def local_backend(tmp_path: pathlib.Path) -> Iterator[LocalBackend]:
    """A backend in a fresh directory; closed (its doorbell thread stopped) after the test."""
    backend = LocalBackend(tmp_path / "limits")
    yield backend
    backend.close()


@pytest.fixture(params=["memory", "redis", "local"])
def backend(request: pytest.FixtureRequest) -> RedisBackend | LocalBackend | None:
    """Where a contract test's managers and limiters keep their state: in memory (``None``),
    on the private redis-server, or in a directory of this host."""
    if request.param == "memory":
        return None
    if request.param == "local":
        local: LocalBackend = request.getfixturevalue("local_backend")
        return local
    shared: RedisBackend = request.getfixturevalue("redis_backend")
    return shared


@pytest.fixture
def blocking_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """The detector of blocking round trips on a loop's thread (issue 18): the operations of
    the synchronous round trips made on a thread that runs an event loop (each also fails
    where it was made). Empty at the end of the test."""
    made = block_round_trips_on_loops(monkeypatch)
    yield made
    assert made == []
