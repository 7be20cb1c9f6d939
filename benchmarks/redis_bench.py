"""Benchmarks: allotment's Redis backend, and other Python rate limiters on the same server.

    python benchmarks/redis_bench.py                 # full run (about two minutes)
    python benchmarks/redis_bench.py --quick         # seconds, for a smoke test
    python benchmarks/redis_bench.py --write docs/benchmarks.md   # also update the page

The script starts a private ``redis-server`` of its own (no persistence, no TCP port) on a
unix socket in a temporary directory, and stops it at the end, whatever happens. It needs
``redis-server`` on the PATH and the ``redis`` package; the other libraries are optional
(the ``bench`` dependency group installs them): any that does not import, or fails, gets a
row that says so, so the script runs with allotment alone.

Four measurements, all over that one socket. *Decisions*: the latency of one rate decision
(one round trip for every Redis limiter here), p50 and p99 per repeat, medians over repeats,
each repeat on a fresh limiter, the limiters interleaved; a ``PING`` gives the floor. *Leases*:
the same for an uncontended ``with pool.acquire(1): pass`` (two round trips). *Hand-off*:
this process holds the only unit of a Redis manager while a second process (started with
``spawn``) waits for it; the second process's time of waking less this one's time of
release, read on the system-wide monotonic clock; the baseline is the bare mechanism, an
``RPUSH`` to a process blocked in ``BLPOP``. *Memory*: what the server holds for a limit
after 10,000 grants (and for a manager with holders and waiters). Nothing here is
asserted: the figures are reported, not tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.metadata
import math
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import redis

import allotment
from allotment.redis import RedisBackend
from common import quiet_gc, run_section_script

SECTION = "## Redis"

RATE = 1_000_000
"""Units per second (and the burst) of the limiters timed for latency: none ever refuses."""
LEASE_CAPACITY = 4
HANDOFF_NAME = "bench:handoff"
BARE_KEY = "bench:bare"
"""The list the bare hand-off pushes to."""
HANDOFF_TARGET_MS = 20.0
LAST = 100
"""How many of the last grants of a memory fill are timed: the latency of a full limit."""
PEER_TIMEOUT = 30.0
"""Seconds the second process waits for a grant or a push before it gives up."""
SETTLE_SECONDS = 0.0002
"""How long this process sleeps between checks that the second process is asleep."""


# -- the server --------------------------------------------------------------------------------


def _server_binary() -> str:
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(found, os.X_OK):
        raise RuntimeError("no redis-server on this machine (apt-get install -y redis-server)")
    return found


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A private redis-server on a unix socket in a temporary directory: its socket's path.
    It is stopped on the way out, also on error."""
    with tempfile.TemporaryDirectory(prefix="allotment-bench-") as directory:
        path = os.path.join(directory, "redis.sock")
        with open(os.path.join(directory, "redis.log"), "wb") as log:
            process = subprocess.Popen(
                [
                    _server_binary(),
                    "--port", "0",
                    "--unixsocket", path,
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", directory,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            _wait_for_ping(path, process, os.path.join(directory, "redis.log"))
            yield path
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def _wait_for_ping(path: str, process: subprocess.Popen[bytes], log: str) -> None:
    deadline = time.monotonic() + 10.0
    client = redis.Redis(unix_socket_path=path, socket_timeout=1)
    try:
        while True:
            try:
                client.ping()
                return
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    with open(log, encoding="utf-8", errors="replace") as file:
                        tail = file.read()[-2000:]
                    raise RuntimeError(f"redis-server did not start:\n{tail}") from None
                time.sleep(0.005)
    finally:
        client.close()


@dataclass
class Server:
    """The running server, as the benchmark talks to it."""

    path: str
    client: redis.Redis
    backend: RedisBackend
    shared: dict[str, Any] = field(default_factory=dict)
    """Connections to the server a competitor keeps for the whole run."""
    names: Iterator[int] = field(default_factory=lambda: iter(range(1, 1 << 62)))

    def fresh(self, what: str) -> str:
        """A name (or key) no earlier limiter of the run has used."""
        return f"bench:{what}:{next(self.names)}"

    def info(self, part: str, item: str) -> Any:
        found: Any = self.client.info(part)
        return found[item]

    def limits_storage(self) -> Any:
        if "limits" not in self.shared:
            storage = importlib.import_module("limits.storage")
            self.shared["limits"] = storage.RedisStorage(f"redis+unix://{self.path}")
        return self.shared["limits"]


# -- what is timed -----------------------------------------------------------------------------


@dataclass
class Built:
    """One fresh limiter (or manager), seen through the call that is timed."""

    call: Callable[[], object]
    """One decision (``False`` would be a refusal: it raises instead)."""
    close: Callable[[], object] = lambda: None


@dataclass(frozen=True)
class Subject:
    """Something to time: a label (Markdown), what installs it, and how to build a fresh one
    (on the server, under a name of its own, for a limit of ``limit`` per ``per`` seconds)."""

    label: str
    distribution: str
    build: Callable[[Server, int, int], Built]


def _ping(server: Server, limit: int, per: int) -> Built:
    return Built(server.client.ping)


def _memory_rate(server: Server, limit: int, per: int) -> Built:
    limiter = allotment.RateLimiter(limit, per=per, burst=limit)
    return Built(limiter.try_acquire)


def _rate(server: Server, limit: int, per: int) -> allotment.RateLimiter:
    name = server.fresh("rate")
    return allotment.RateLimiter(limit, per=per, burst=limit, name=name, backend=server.backend)


def _rate_try(server: Server, limit: int, per: int) -> Built:
    return Built(_rate(server, limit, per).try_acquire)


def _rate_acquire(server: Server, limit: int, per: int) -> Built:
    return Built(_rate(server, limit, per).acquire)


def _window(server: Server, limit: int, per: int) -> Built:
    name = server.fresh("window")
    limiter = allotment.WindowLimiter(limit, per=per, name=name, backend=server.backend)
    return Built(limiter.try_acquire)


def _limits(strategy_name: str) -> Callable[[Server, int, int], Built]:
    def build(server: Server, limit: int, per: int) -> Built:
        limits = importlib.import_module("limits")
        strategies = importlib.import_module("limits.strategies")
        strategy = getattr(strategies, strategy_name)(server.limits_storage())
        item = limits.RateLimitItemPerSecond(limit, per)
        identifier = server.fresh(strategy_name)

        def hit() -> bool:
            return bool(strategy.hit(item, identifier))

        return Built(hit)

    return build


def _pyrate(limiter: Any) -> Built:
    def attempt() -> object:
        return limiter.try_acquire("bench", blocking=False)

    return Built(attempt, limiter.close)


def _pyrate_log(server: Server, limit: int, per: int) -> Built:
    pyrate = importlib.import_module("pyrate_limiter")
    rate = pyrate.Rate(limit, per * 1000)
    bucket = pyrate.RedisBucket.init([rate], server.client, server.fresh("pyrate-log"))
    return _pyrate(pyrate.Limiter(bucket))


def _pyrate_gcra(server: Server, limit: int, per: int) -> Built:
    pyrate = importlib.import_module("pyrate_limiter")
    rate = pyrate.Rate(limit, per * 1000, burst=limit)
    store = pyrate.RedisStateStore(server.client, server.fresh("pyrate-gcra"))
    return _pyrate(pyrate.Limiter(pyrate.StateBucket([rate], algorithm=pyrate.GCRA(), store=store)))


def _memory_pool(server: Server, limit: int, per: int) -> Built:
    pool = allotment.ResourceManager(LEASE_CAPACITY)

    def enter() -> None:
        with pool.acquire(1):
            pass

    return Built(enter, pool.close)


def _redis_pool(server: Server, limit: int, per: int) -> Built:
    name = server.fresh("pool")
    pool = allotment.ResourceManager(LEASE_CAPACITY, name=name, backend=server.backend)

    def enter() -> None:
        with pool.acquire(1):
            pass

    return Built(enter, pool.close)


def _redis_try(server: Server, limit: int, per: int) -> Built:
    """``pool.try_acquire(1)``, then its release: two round trips (``enter``, ``release``)."""
    pool = allotment.ResourceManager(
        LEASE_CAPACITY, name=server.fresh("try"), backend=server.backend
    )

    def attempt() -> None:
        lease = pool.try_acquire(1)
        if lease is None:
            raise RuntimeError("an uncontended try_acquire was refused")
        lease.release()

    return Built(attempt, pool.close)


def _on_a_loop(body: Callable[[], Any], close: Callable[[], object]) -> Built:
    """``body()`` (a coroutine) run to its end on one event loop kept for the repeat: each
    call costs the loop's own scheduling too (``run_until_complete``), not a new loop."""
    loop = asyncio.new_event_loop()

    def call() -> None:
        loop.run_until_complete(body())

    def finish() -> None:
        try:
            close()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())  # the loop's client closes
            loop.close()

    return Built(call, finish)


def _redis_pool_async(server: Server, limit: int, per: int) -> Built:
    pool = allotment.ResourceManager(
        LEASE_CAPACITY, name=server.fresh("pool-async"), backend=server.backend
    )

    async def enter() -> None:
        async with pool.acquire_async(1):
            pass

    return _on_a_loop(enter, pool.close)


def _redis_group_async(server: Server, limit: int, per: int) -> Built:
    """``async with acquire_all_async([(pool, 1), (api, 1)])``: one ``take-all``, one
    release (a single lease)."""
    pool = allotment.ResourceManager(
        LEASE_CAPACITY, name=server.fresh("group-async"), backend=server.backend
    )
    api = allotment.RateLimiter(
        10**9, per=1, name=server.fresh("group-async-api"), backend=server.backend
    )
    requests: list[Any] = [(pool, 1), (api, 1)]

    async def enter() -> None:
        async with allotment.acquire_all_async(requests):
            pass

    return _on_a_loop(enter, pool.close)


def _redis_group(*, limiter: bool) -> Callable[[Server, int, int], Built]:
    """``with acquire_all([(pool, 1), (api or other, 1)]): pass`` on Redis: one script
    takes every part, and one (or the lease's own) releases."""

    def build(server: Server, limit: int, per: int) -> Built:
        pool = allotment.ResourceManager(
            LEASE_CAPACITY, name=server.fresh("group"), backend=server.backend, rank=1
        )
        second: Any
        if limiter:
            second = allotment.RateLimiter(
                10**9, per=1, name=server.fresh("group-api"), backend=server.backend
            )
        else:
            second = allotment.ResourceManager(
                LEASE_CAPACITY, name=server.fresh("group-other"), backend=server.backend, rank=2
            )
        requests = [(pool, 1), (second, 1)]

        def enter() -> None:
            with allotment.acquire_all(requests):
                pass

        def close() -> None:
            pool.close()
            if not limiter:
                second.close()

        return Built(enter, close)

    return build


PING = Subject("redis-py `client.ping()`: one round trip, the floor", "redis", _ping)
DECISIONS = (
    PING,
    Subject("allotment `RateLimiter.try_acquire()`, in memory", "allotment", _memory_rate),
    Subject("allotment `RateLimiter.try_acquire()` (GCRA)", "allotment", _rate_try),
    Subject("allotment `RateLimiter.acquire()` (GCRA)", "allotment", _rate_acquire),
    Subject("allotment `WindowLimiter.try_acquire()` (sliding log)", "allotment", _window),
    Subject(
        "limits `MovingWindowRateLimiter.hit()`",
        "limits",
        _limits("MovingWindowRateLimiter"),
    ),
    Subject(
        "limits `SlidingWindowCounterRateLimiter.hit()`",
        "limits",
        _limits("SlidingWindowCounterRateLimiter"),
    ),
    Subject(
        "limits `FixedWindowRateLimiter.hit()`",
        "limits",
        _limits("FixedWindowRateLimiter"),
    ),
    Subject("pyrate-limiter `Limiter(RedisBucket)` (sliding log)", "pyrate-limiter", _pyrate_log),
    Subject(
        "pyrate-limiter `Limiter(StateBucket(GCRA, RedisStateStore))`",
        "pyrate-limiter",
        _pyrate_gcra,
    ),
)
LEASES = (
    PING,
    Subject("allotment `with pool.acquire(1): pass`, in memory", "allotment", _memory_pool),
    Subject("allotment `with pool.acquire(1): pass` on Redis", "allotment", _redis_pool),
    Subject(
        "allotment `pool.try_acquire(1)`, then `lease.release()`, on Redis (2 round trips)",
        "allotment",
        _redis_try,
    ),
    Subject(
        "allotment `async with pool.acquire_async(1): pass` on Redis, on one loop",
        "allotment",
        _redis_pool_async,
    ),
    Subject(
        "allotment `with acquire_all([(pool, 1), (limiter, 1)]): pass` on Redis (2 round trips)",
        "allotment",
        _redis_group(limiter=True),
    ),
    Subject(
        "allotment `with acquire_all([(pool, 1), (other, 1)]): pass` on Redis (2 round trips)",
        "allotment",
        _redis_group(limiter=False),
    ),
    Subject(
        "allotment `async with acquire_all_async([(pool, 1), (limiter, 1)]): pass` on Redis "
        "(2 round trips), on one loop",
        "allotment",
        _redis_group_async,
    ),
)
SUBJECTS = (*DECISIONS, *LEASES[1:])
"""Everything timed for latency, in one loop."""


# -- 1. and 2. latency of one call -------------------------------------------------------------


def _percentile(values: Sequence[int], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.floor(fraction * len(ordered)))]


def _timed(call: Callable[[], object], number: int) -> list[int]:
    """Nanoseconds of each of ``number`` calls; a refusal raises."""
    clock = time.perf_counter_ns
    samples = []
    for _ in range(number):
        started = clock()
        answer = call()
        samples.append(clock() - started)
        if answer is False:
            raise RuntimeError("a call was refused")
    return samples


def _failure(error: Exception) -> str:
    if isinstance(error, ImportError):
        return f"not installed ({error.name or error})"
    return f"failed: {type(error).__name__}: {error}".replace("|", "/").replace("\n", " ")


@dataclass(frozen=True)
class Latency:
    """Medians over the repeats of each repeat's percentiles, in nanoseconds, and of the
    server's time per call, in microseconds; or why not."""

    p50: float | None = None
    p99: float | None = None
    server_us: float | None = None
    error: str | None = None


WARM_UP = 20
"""Untimed calls on each fresh limiter first: the connection, the script's first load."""
TOP_LEVEL = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_ping")
"""The commands the timed calls send (the commands a script runs are counted apart)."""


def _server_usec(server: Server) -> int:
    """Microseconds the server has spent executing the commands the timed calls send."""
    found: Any = server.client.info("commandstats")
    return sum(int(found[name]["usec"]) for name in TOP_LEVEL if name in found)


def latencies(
    server: Server, subjects: Sequence[Subject], repeats: int, number: int
) -> dict[str, Latency]:
    """Per subject: p50 and p99 of ``number`` calls on a fresh limiter, and the server's
    mean time per call (from ``INFO commandstats``), the median of each over ``repeats``
    repeats, the subjects interleaved. A subject that fails is not retried."""
    samples: dict[str, list[tuple[float, float, float]]] = {s.label: [] for s in subjects}
    errors: dict[str, str] = {}
    with quiet_gc():
        for _ in range(repeats):
            for subject in subjects:
                if subject.label in errors:
                    continue
                try:
                    built = subject.build(server, RATE, 1)
                except Exception as error:
                    errors[subject.label] = _failure(error)
                    continue
                try:
                    _timed(built.call, WARM_UP)
                    before = _server_usec(server)
                    found = _timed(built.call, number)
                    spent = (_server_usec(server) - before) / number
                except Exception as error:
                    errors[subject.label] = _failure(error)
                    continue
                finally:
                    built.close()
                samples[subject.label].append(
                    (_percentile(found, 0.5), _percentile(found, 0.99), spent)
                )
    return {
        label: Latency(error=errors[label])
        if label in errors
        else Latency(
            statistics.median(p50 for p50, _, _ in found),
            statistics.median(p99 for _, p99, _ in found),
            statistics.median(spent for _, _, spent in found),
        )
        for label, found in samples.items()
    }


# -- 3. cross-process hand-off -----------------------------------------------------------------


def _now_ns() -> int:
    """The system-wide monotonic clock (on Linux, the same in every process)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _handoff_peer(path: str, connection: Connection) -> None:
    """The second process: on ``"lease"``, wait in ``acquire(1)`` and answer the time the
    grant woke it (after releasing the unit); on ``"bare"``, the same in ``BLPOP``."""
    client = redis.Redis(unix_socket_path=path)
    backend = RedisBackend(client, lease_ttl=30)
    try:
        pool = allotment.ResourceManager(1, name=HANDOFF_NAME, backend=backend)
        connection.send("ready")
        while (mode := connection.recv()) is not None:
            if mode == "lease":
                lease = pool.acquire(1, timeout=PEER_TIMEOUT)
                woke = _now_ns()
                lease.release()
            else:
                if client.blpop([BARE_KEY], timeout=PEER_TIMEOUT) is None:
                    raise RuntimeError("nothing was pushed")
                woke = _now_ns()
            connection.send(woke)
    except Exception as error:
        connection.send(f"{type(error).__name__}: {error}")
    finally:
        backend.close()
        client.close()


def _answer(connection: Connection) -> int:
    if not connection.poll(PEER_TIMEOUT + 5):
        raise RuntimeError("the second process did not answer")
    answer = connection.recv()
    if not isinstance(answer, int):
        raise RuntimeError(f"the second process failed: {answer}")
    return answer


def _asleep(pid: int) -> bool:
    """Every thread of process ``pid`` is asleep ("S" in /proc); true where /proc cannot
    tell (not Linux)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/stat", encoding="ascii") as file:
                text = file.read()
        except OSError:
            continue  # the thread ended
        if text[text.rindex(")") + 2] != "S":
            return False
    return True


def _settle(pid: int, ready: Callable[[], bool]) -> None:
    """Return once ``ready()`` holds and every thread of the second process is asleep."""
    deadline = time.monotonic() + PEER_TIMEOUT
    while True:
        time.sleep(SETTLE_SECONDS)
        if ready() and _asleep(pid):
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the second process did not settle")


def _one_blocked(server: Server) -> bool:
    return int(server.info("clients", "blocked_clients")) == 1


def _lease_round(
    server: Server, pool: allotment.ResourceManager[int], connection: Connection, pid: int
) -> tuple[int, int]:
    """This process holds the unit; the peer queues for it (the queue in Redis holds it, the
    peer's keeper is blocked on its wake-up list, its threads asleep); release. Nanoseconds
    to the peer's waking, and to the return of the release call here."""
    queue_key = f"{server.backend.prefix}:{{{HANDOFF_NAME}}}:queue"
    # Free (the peer released it before answering). timeout=0: a blocking acquire would
    # wake this process's keeper, which would sit in a BLPOP slice for half a second.
    lease = pool.acquire(1, timeout=0)
    connection.send("lease")
    _settle(pid, lambda: server.client.llen(queue_key) == 1 and _one_blocked(server))
    released = _now_ns()
    lease.release()
    returned = _now_ns()
    return _answer(connection) - released, returned - released


def _bare_round(server: Server, connection: Connection, pid: int) -> int:
    connection.send("bare")
    _settle(pid, lambda: _one_blocked(server))
    pushed = _now_ns()
    server.client.rpush(BARE_KEY, b"go")
    return _answer(connection) - pushed


@dataclass
class Handoff:
    """Nanoseconds per round."""

    ours: list[int] = field(default_factory=list)
    """From this process's release to the peer's waking."""
    call: list[int] = field(default_factory=list)
    """From this process's release to the return of its release call."""
    bare: list[int] = field(default_factory=list)
    """From this process's push to the peer's waking."""


def handoff(server: Server, rounds: int) -> Handoff:
    """Allotment's hand-off to another process and the bare mechanism's, alternating round
    by round; two untimed rounds of each first."""
    context = multiprocessing.get_context("spawn")
    mine, theirs = context.Pipe()
    pool = allotment.ResourceManager(1, name=HANDOFF_NAME, backend=server.backend)
    peer = context.Process(target=_handoff_peer, args=(server.path, theirs), daemon=True)
    peer.start()
    found = Handoff()
    try:
        if not mine.poll(60) or mine.recv() != "ready":
            raise RuntimeError("the second process did not start")
        assert peer.pid is not None
        with quiet_gc():
            for index in range(rounds + 2):
                lease_ns, call_ns = _lease_round(server, pool, mine, peer.pid)
                bare_ns = _bare_round(server, mine, peer.pid)
                if index >= 2:
                    found.ours.append(lease_ns)
                    found.call.append(call_ns)
                    found.bare.append(bare_ns)
        mine.send(None)
        peer.join(10)
    finally:
        if peer.is_alive():
            peer.terminate()
            peer.join(10)
        pool.close()
    return found


# -- 4. memory ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Memory:
    """What the server held after the fill; or why not."""

    keys: int = 0
    usage: int = 0
    """``MEMORY USAGE key SAMPLES 0``, summed over the keys."""
    last_us: float | None = None
    """The median latency of the last grants of the fill, in microseconds."""
    error: str | None = None


def _keys_usage(server: Server) -> tuple[int, int]:
    keys = list(server.client.scan_iter(count=1000))
    usage = sum(int(server.client.memory_usage(key, samples=0) or 0) for key in keys)
    return len(keys), usage


def fill(server: Server, subject: Subject, units: int, per: int) -> Memory:
    """On an empty server: a fresh limit of ``units`` per ``per`` seconds, ``units`` grants
    (the last ``LAST`` timed), and what the server holds then."""
    server.client.flushall()
    try:
        built = subject.build(server, units, per)
    except Exception as error:
        return Memory(error=_failure(error))
    try:
        _timed(built.call, units - LAST)
        last = _timed(built.call, LAST)
        keys, usage = _keys_usage(server)
    except Exception as error:
        return Memory(error=_failure(error))
    finally:
        built.close()
    return Memory(keys, usage, _percentile(last, 0.5) / 1e3)


def busy_manager(server: Server, capacity: int, leases: int, waiters: int) -> Memory:
    """On an empty server: a manager of ``capacity`` units held by ``leases`` leases (in
    equal parts) while ``waiters`` threads wait in ``acquire(1)``; then all is released."""
    server.client.flushall()
    name = server.fresh("busy")
    queue_key = f"{server.backend.prefix}:{{{name}}}:queue"
    pool = allotment.ResourceManager(capacity, name=name, backend=server.backend)
    held = [pool.acquire(capacity // leases) for _ in range(leases)]
    errors: list[str] = []

    def wait() -> None:
        try:
            pool.acquire(1, timeout=PEER_TIMEOUT).release()
        except Exception as error:
            errors.append(_failure(error))

    threads = [threading.Thread(target=wait, daemon=True) for _ in range(waiters)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + PEER_TIMEOUT
        while server.client.llen(queue_key) < waiters:
            if time.monotonic() > deadline or errors:
                raise RuntimeError(errors[0] if errors else "the waiters did not queue")
            time.sleep(0.01)
        keys, usage = _keys_usage(server)
    except Exception as error:
        return Memory(error=_failure(error))
    finally:
        for lease in held:
            lease.release()
        for thread in threads:
            thread.join(PEER_TIMEOUT)
        pool.close()
    if errors:
        return Memory(error=errors[0])
    return Memory(keys, usage)


MEMORY_SUBJECTS = (
    Subject("allotment `WindowLimiter` (sliding log)", "allotment", _window),
    Subject("allotment `RateLimiter` (GCRA)", "allotment", _rate_try),
    Subject("limits `MovingWindowRateLimiter`", "limits", _limits("MovingWindowRateLimiter")),
    Subject(
        "limits `SlidingWindowCounterRateLimiter`",
        "limits",
        _limits("SlidingWindowCounterRateLimiter"),
    ),
    Subject("limits `FixedWindowRateLimiter`", "limits", _limits("FixedWindowRateLimiter")),
    Subject("pyrate-limiter `RedisBucket` (sliding log)", "pyrate-limiter", _pyrate_log),
    Subject("pyrate-limiter `StateBucket(GCRA, RedisStateStore)`", "pyrate-limiter", _pyrate_gcra),
)
MEMORY_PER = 60
"""Seconds of the limits filled: the fill never spans a whole window."""
BUSY_LEASES = 100
BUSY_WAITERS = 100


# -- the report --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    repeats: int
    number: int
    rounds: int
    units: int

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:
            return cls(3, 300, 20, 1_000)
        return cls(9, 1_000, 400, 10_000)


def _us(value: float | None) -> str:
    return "—" if value is None else f"{value / 1e3:,.1f}"


def _verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def _latency_rows(found: dict[str, Latency], base: float | None) -> list[str]:
    rows = []
    for label, latency in found.items():
        if latency.error is not None:
            rows.append(f"| {label} | {latency.error} | — | — | — |")
            continue
        ratio = "—" if base is None or latency.p50 is None else f"{latency.p50 / base:.2f}x"
        spent = latency.server_us
        server_us = "—" if spent is None or spent == 0 else f"{spent:,.1f}"
        rows.append(
            f"| {label} | {_us(latency.p50)} | {_us(latency.p99)} | {ratio} | {server_us} |"
        )
    return rows


def decisions_part(found: dict[str, Latency], settings: Settings) -> list[str]:
    base = found[PING.label].p50
    return [
        "### One rate decision",
        "",
        f"One thread; a limit of {RATE:,} per second (burst {RATE:,}) so that no call is "
        "refused or waits; microseconds per call, read with `time.perf_counter_ns()` around "
        f"each. Each repeat times {settings.number:,} calls on a fresh limiter (a new name or "
        f"key, after {WARM_UP} untimed calls), so a sliding log holds at most "
        f"{settings.number + WARM_UP:,} entries; the p50 and p99 of each repeat, the median "
        f"of each over {settings.repeats} repeats, the limiters interleaved. Every Redis "
        "limiter here decides in one `EVALSHA` round trip; limits on its own `RedisStorage` "
        "(`redis+unix://` URI), the others on one `redis.Redis` client of the socket. "
        "Ratios are to the `PING`'s p50. *Server µs*: the server's own time per call, the "
        "`usec` of `EVALSHA`, `EVAL` and `PING` in `INFO commandstats` before and after a "
        "repeat's timed calls, over their number (a mean), the median over the repeats: "
        "the rest of a call's latency is the client's and the socket's.",
        "",
        "| call | p50 µs | p99 µs | p50 ratio to `PING` | server µs |",
        "| --- | ---: | ---: | ---: | ---: |",
        *_latency_rows(found, base),
    ]


def leases_part(found: dict[str, Latency], settings: Settings) -> list[str]:
    base = found[PING.label].p50
    return [
        "### Lease acquire and release",
        "",
        f"One thread; a manager of capacity {LEASE_CAPACITY}, uncontended; microseconds per "
        "`with pool.acquire(1): pass` (on Redis: an `enter` and a `release` script, two round "
        "trips), measured as above and in the same loop, interleaved with the limiters (the "
        "`PING` row is the same): a fresh manager each repeat. The async rows run each call "
        "to its end with `loop.run_until_complete` on one event loop per repeat (its round "
        "trips on the loop's own `redis.asyncio` client), so they include the loop's "
        "scheduling; each `acquire_all` row is one `take-all` script and one release.",
        "",
        "| call | p50 µs | p99 µs | p50 ratio to `PING` | server µs |",
        "| --- | ---: | ---: | ---: | ---: |",
        *_latency_rows(found, base),
    ]


def handoff_part(found: Handoff, settings: Settings) -> list[str]:
    rows = [
        ("bare: `RPUSH` to a process blocked in `BLPOP`", found.bare),
        ("allotment: `lease.release()` to the peer's `pool.acquire(1)` returning", found.ours),
        ("of which: `lease.release()` to its own return", found.call),
    ]
    base = _percentile(found.bare, 0.5)
    p50_ms = _percentile(found.ours, 0.5) / 1e6
    return [
        "### Cross-process hand-off",
        "",
        "This process holds the only unit of a Redis manager of capacity one; a second "
        "process (started with `spawn`) waits in `pool.acquire(1)`. Once the manager's queue "
        "in Redis holds it (`LLEN`), the server counts one blocked client (the peer's keeper "
        "in `BLPOP` on its wake-up list) and every thread of the peer is asleep (S in "
        "`/proc`), this process reads `time.clock_gettime_ns(CLOCK_MONOTONIC)`, system-wide, "
        "and releases; the peer reads the same clock when `acquire` returns. The baseline is "
        "the bare mechanism in the same steps: the peer blocks in `BLPOP`, this process reads "
        "the clock and `RPUSH`es. The last row is the releasing call alone, as this "
        "process sees it (one round trip: the script that grants the peer and pushes its "
        "wake-up). "
        f"{settings.rounds:,} rounds of each, alternating, after two untimed ones; "
        "microseconds.",
        "",
        "| hand-off | p50 µs | p99 µs | p50 ratio |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| {label} | {_us(_percentile(samples, 0.5))} | {_us(_percentile(samples, 0.99))} "
            f"| {_percentile(samples, 0.5) / base:.2f}x |"
            for label, samples in rows
        ),
        "",
        f"- Target: allotment's p50 at most {HANDOFF_TARGET_MS:g} ms: "
        f"{_verdict(p50_ms <= HANDOFF_TARGET_MS)} ({p50_ms:.2f} ms).",
    ]


def _bytes(value: int) -> str:
    return f"{value:,}"


def memory_part(found: dict[str, Memory], busy: Memory, settings: Settings) -> list[str]:
    units = settings.units
    lines = [
        f"### Redis memory per {units:,} units",
        "",
        f"On an emptied server (`FLUSHALL`): a fresh limit of {units:,} units per "
        f"{MEMORY_PER} s, then {units:,} single-unit grants, all allowed. *Bytes*: "
        "`MEMORY USAGE key SAMPLES 0` (every element counted) summed over the keys the "
        "server holds then. (`INFO`'s `used_memory` is no help at this scale: every "
        "connection's buffers move it by tens of kilobytes.) *Last grants*: the median "
        f"latency of the last {LAST} grants, with the limit all but full. The last row is a "
        "manager instead: its keys while the leases are held and the threads queued.",
        "",
        "| state | keys | bytes | bytes per unit | last grants p50 µs |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, memory in found.items():
        if memory.error is not None:
            lines.append(f"| {label} | {memory.error} | — | — | — |")
            continue
        last = "—" if memory.last_us is None else f"{memory.last_us:,.1f}"
        lines.append(
            f"| {label} | {memory.keys} | {_bytes(memory.usage)} | "
            f"{memory.usage / units:,.1f} | {last} |"
        )
    state = (
        f"allotment `ResourceManager({units:,})`: {BUSY_LEASES} leases of "
        f"{units // BUSY_LEASES:,}, {BUSY_WAITERS} threads queued in `acquire(1)`"
    )
    if busy.error is not None:
        lines.append(f"| {state} | {busy.error} | — | — | — |")
    else:
        lines.append(f"| {state} | {busy.keys} | {_bytes(busy.usage)} | — | — |")
    return lines


def _version(name: str) -> str | None:
    try:
        return f"{name} {importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return None


def _versions() -> str:
    names = ("allotment", "redis", "limits", "pyrate-limiter")
    return ", ".join(found for name in names if (found := _version(name)) is not None)


def report(quick: bool) -> str:
    """The figures, in Markdown, without the section's heading."""
    settings = Settings.for_mode(quick)
    with redis_server() as path:
        client = redis.Redis(unix_socket_path=path)
        backend = RedisBackend(client, lease_ttl=30)
        server = Server(path, client, backend)
        try:
            version = server.info("server", "redis_version")
            timed = latencies(server, SUBJECTS, settings.repeats, settings.number)
            decisions = {subject.label: timed[subject.label] for subject in DECISIONS}
            leases = {subject.label: timed[subject.label] for subject in LEASES}
            handed = handoff(server, settings.rounds)
            memory = {
                subject.label: fill(server, subject, settings.units, MEMORY_PER)
                for subject in MEMORY_SUBJECTS
            }
            busy = busy_manager(server, settings.units, BUSY_LEASES, BUSY_WAITERS)
        finally:
            backend.close()
            client.close()
            for shared in server.shared.values():
                with contextlib.suppress(Exception):
                    shared.storage.close()
    intro = [
        "Produced by `python benchmarks/redis_bench.py" + (" --quick" if quick else "") + "`"
        f" on {time.strftime('%Y-%m-%d')}, Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} cores; Redis {version}, private to the run, "
        f"on a unix socket, without persistence; {_versions()}. Timings on a shared machine "
        "move from run to run: read the ratios, not the digits.",
    ]
    parts = [
        intro,
        decisions_part(decisions, settings),
        leases_part(leases, settings),
        handoff_part(handed, settings),
        memory_part(memory, busy, settings),
    ]
    return "\n\n".join("\n".join(part) for part in parts) + "\n"


def main() -> None:
    description = __doc__.splitlines()[0] if __doc__ else None
    run_section_script(description, SECTION, "redis_bench.py", report)


if __name__ == "__main__":
    main()
