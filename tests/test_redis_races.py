"""The Redis backend's races, each widened by a hook the test installs (never a sleep in the
library): a poll that overtakes an ``enter``, the server killed under queued waiters (threads
and tasks), a reply lost after a release ran."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
import redis

import allotment
from allotment.redis import RedisBackend
from allotment.testing import ManualClock
from redis_support import RedisServer
from support import Worker, wait_until


def _queued(client: redis.Redis, name: str) -> int:
    return int(client.llen(f"allotment:{{{name}}}:queue"))


def _available(client: redis.Redis, name: str) -> str:
    value: Any = client.hget(f"allotment:{{{name}}}:cfg", "avail")
    return bytes(value or b"").decode()


def test_a_poll_that_overtakes_an_enter_does_not_judge_it(
    redis_backend: RedisBackend, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keeper's backstop runs after the waiter is registered here and before its
    ``enter`` reaches the server (the hook runs it in exactly that gap): it must not take the
    server's "unknown id" for a dropped request. The grant then arrives, and the lease is
    renewed."""
    pool = allotment.ResourceManager(1, name="overtaken", backend=redis_backend)
    holder = pool.acquire(1)
    original = RedisBackend.run_script
    polled = threading.Event()

    def poll_first(
        self: RedisBackend, script: Any, keys: Sequence[str], args: Sequence[object], name: str
    ) -> Any:
        if args[0] == "enter" and threading.current_thread() is waiter and not polled.is_set():
            self._poll_waiters()  # the keeper's once-a-second check, in the gap
            polled.set()
        return original(self, script, keys, args, name)

    monkeypatch.setattr(RedisBackend, "run_script", poll_first)
    waiter = Worker(lambda: pool.acquire(1, timeout=30))
    waiter.start()
    assert polled.wait(30)
    wait_until(lambda: _queued(redis_client, "overtaken") == 1, "the waiter is queued")
    redis_backend._poll_waiters()  # now confirmed: asked about, and still queued
    assert waiter.error is None
    holder.release()
    waiter.join(30)
    assert waiter.error is None, waiter.error
    lease = waiter.result
    assert isinstance(lease, allotment.Lease)
    assert not lease.released
    assert lease.fencing_token is not None
    assert any(ticket is lease._ticket for _, ticket in redis_backend._held.values())
    lease.release()


def test_a_poll_that_overtakes_a_tasks_enter_does_not_judge_it(
    redis_backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same gap for a task (its ``enter`` on its loop's client): the keeper's backstop
    runs after the waiter is registered and before its ``enter`` is sent."""
    from allotment.redis import _backend

    pool = allotment.ResourceManager(1, name="overtaken-task", backend=redis_backend)
    holder = pool.acquire(1)
    polled: list[bool] = []

    async def poll_first(args: Sequence[object]) -> None:
        if args[0] == "enter" and not polled:
            polled.append(True)
            await asyncio.to_thread(redis_backend._poll_waiters)  # the keeper's check, here

    monkeypatch.setattr(_backend, "_round_trip_hook", poll_first)

    async def main() -> allotment.Lease[int]:
        waiting = asyncio.create_task(pool.acquire_async(1, timeout=30))
        while not redis_backend._heard:
            await asyncio.sleep(0.001)
        await asyncio.to_thread(redis_backend._poll_waiters)  # confirmed: still queued
        await asyncio.to_thread(holder.release)
        return await waiting

    lease = asyncio.run(main())
    assert polled
    assert not lease.released
    assert lease.fencing_token is not None
    assert any(ticket is lease._ticket for _, ticket in redis_backend._held.values())
    lease.release()


def test_a_poll_answered_after_a_withdrawal_does_not_judge_it(
    redis_backend: RedisBackend, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keeper's backstop reads a confirmed waiter's id; the waiter's deadline then
    passes and its withdrawal runs on the server before the backstop's ``status`` (the
    hooks hold each side in exactly that order, the manual clock says when the deadline
    passes). The server's "unknown id" is the withdrawal's own doing: the caller gets its
    ``AcquireTimeout``, not a ``BackendUnavailable`` saying the server dropped it."""
    clock = ManualClock()
    pool = allotment.ResourceManager(1, name="withdrawn", backend=redis_backend, clock=clock)
    holder = pool.acquire(1)
    polling, withdrawn, judged = threading.Event(), threading.Event(), threading.Event()
    original = RedisBackend.run_script

    def ordered(
        self: RedisBackend, script: Any, keys: Sequence[str], args: Sequence[object], name: str
    ) -> Any:
        current = threading.current_thread()
        if args[0] == "status" and current is poller:
            polling.set()
            assert withdrawn.wait(30)  # the withdrawal reaches the server first
        reply = original(self, script, keys, args, name)
        if args[0] == "withdraw" and current is waiter:
            withdrawn.set()
            assert judged.wait(30)  # its answer is handled after the poll's
        return reply

    waiter = Worker(lambda: pool.acquire(1, timeout=5), name="waiter")
    waiter.start()
    wait_until(lambda: clock.sleepers == 1, "the waiter sleeps on the clock")
    wait_until(lambda: len(redis_backend._heard) == 1, "the server confirmed the waiter")
    monkeypatch.setattr(RedisBackend, "run_script", ordered)

    def poll() -> None:
        try:
            redis_backend._poll_waiters()  # the keeper's once-a-second check
        finally:
            judged.set()

    poller = Worker(poll, name="poller")
    poller.start()
    assert polling.wait(30)  # the poll read the waiter's id, and its status is not sent yet
    clock.advance(6)
    poller.join(30)
    assert poller.error is None, poller.error
    waiter.join(30)
    assert isinstance(waiter.error, allotment.AcquireTimeout), waiter.error
    monkeypatch.undo()
    assert _queued(redis_client, "withdrawn") == 0
    holder.release()
    assert _available(redis_client, "withdrawn") == "1"


def _acquire_in_a_task(pool: allotment.ResourceManager[int]) -> object:
    async def main() -> object:
        return await pool.acquire_async(1)

    return asyncio.run(main())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("outage", ["stopped", "killed"])
def test_a_stopped_or_killed_server_fails_queued_waiters_then_recovers(
    server: RedisServer, outage: str
) -> None:
    """Waiters queued behind a holder (a thread and a task with no timeout, one with a long
    timeout) when the server is stopped (SIGSTOP: it accepts connections and never answers;
    the keeper's checks time out) or SIGKILLed end with ``BackendUnavailable`` within
    ``waiter_ttl`` plus a few round trips. A stopped server, once it runs again with its
    data, takes the holder's release and the waiters' withdrawals; a killed one is restarted
    empty, the release retried by the keeper, never raised. Either way new grants work, with
    rising fencing tokens."""
    stopped = outage == "stopped"
    name = "stops" if stopped else "dies"
    waiter_ttl, timeout = 3.0, 0.5
    backend = RedisBackend(server.client(), lease_ttl=30, waiter_ttl=waiter_ttl, timeout=timeout)
    client = server.client()
    try:
        pool = allotment.ResourceManager(1, name=name, backend=backend)
        holder = pool.acquire(1)
        before = holder.fencing_token
        assert before is not None
        waiters = [
            Worker(lambda: pool.acquire(1), name="thread-waiter"),
            Worker(lambda: _acquire_in_a_task(pool), name="task-waiter"),
            Worker(lambda: pool.acquire(1, timeout=60), name="timed-waiter"),
        ]
        for waiter in waiters:
            waiter.start()
        wait_until(lambda: _queued(client, name) == 3, "three waiters are queued")
        if stopped:
            server.pause()
        else:
            client.close()
            server.kill()
        failed = time.monotonic()
        for waiter in waiters:
            waiter.join(60)
            assert not waiter.is_alive(), f"{waiter.name} still waits on a {outage} server"
        took = time.monotonic() - failed
        for waiter in waiters:
            assert isinstance(waiter.error, allotment.BackendUnavailable), waiter.error
            assert f"'{name}'" in str(waiter.error)
        # The documented bound: waiter_ttl + 2 * timeout + 2 s (generous here).
        assert took < waiter_ttl + 2 * timeout + 2 + 10
        if stopped:
            server.resume()
            holder.release()
            wait_until(lambda: _queued(client, name) == 0, "the waiters' withdrawals arrived")
        else:
            holder.release()  # the server is gone: retried by the keeper, never raised
            server.start()  # empty: the server lost everything
        with pool.acquire(1, timeout=30) as lease:
            after = lease.fencing_token
        assert after is not None
        assert after > before
        if stopped:
            assert _available(client, name) == "1"  # nothing left held or queued
    finally:
        if stopped:
            server.resume()
        backend.close()
        client.close()


def _losing_replies(
    monkeypatch: pytest.MonkeyPatch, lose: Any, lost: list[tuple[object, ...]]
) -> None:
    """Every round trip for which ``lose(args)`` is true runs on the server, then its reply
    is lost (``BackendUnavailable``, as from a connection that dropped after sending); each
    is noted in ``lost``."""
    original = RedisBackend.run_script

    def run(
        self: RedisBackend, script: Any, keys: Sequence[str], args: Sequence[object], name: str
    ) -> Any:
        reply = original(self, script, keys, args, name)
        if lose(args):
            lost.append(tuple(args))
            raise allotment.BackendUnavailable("the reply was lost (the test's hook)")
        return reply

    monkeypatch.setattr(RedisBackend, "run_script", run)


def test_a_partial_release_retried_after_a_lost_reply_is_applied_once(
    redis_backend: RedisBackend, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = allotment.ResourceManager(5, name="partial", backend=redis_backend)
    lease = pool.acquire(4)
    lost: list[tuple[object, ...]] = []
    _losing_replies(
        monkeypatch, lambda args: args[0] == "release" and args[7] != "" and not lost, lost
    )
    with pytest.raises(allotment.BackendUnavailable):
        lease.release(1)  # ran on the server; the answer never came
    assert len(lost) == 1
    assert _available(redis_client, "partial") == "2"
    lease.release(1)  # the caller's retry: the same release, not a second one
    assert _available(redis_client, "partial") == "2"
    assert lease.amounts == 3
    lease.release(2)  # another amount: released once, after it
    assert _available(redis_client, "partial") == "4"
    assert lease.amounts == 1
    # A lost reply, then another amount: the lost one is settled first, then this one.
    lost.clear()
    pool_lease = pool.acquire(3)
    assert _available(redis_client, "partial") == "1"
    with pytest.raises(allotment.BackendUnavailable):
        pool_lease.release(1)
    pool_lease.release(2)
    assert _available(redis_client, "partial") == "4"
    assert pool_lease.amounts == 0
    assert pool_lease.released
    lease.release()
    assert _available(redis_client, "partial") == "5"


def test_a_lease_released_in_many_parts_keeps_a_bounded_record_on_the_server(
    redis_backend: RedisBackend, redis_client: redis.Redis
) -> None:
    # Only one partial release is ever in flight (a pending one is retried first), and ids
    # count up: the server needs the last one applied, not all of them.
    pool = allotment.ResourceManager(1_000, name="parts", backend=redis_backend)
    lease = pool.acquire(1_000)
    sizes = []
    for _ in range(400):
        lease.release(1)
        value: Any = redis_client.hvals("allotment:{parts}:holders")[0]
        sizes.append(len(value))
    assert sizes[-1] == sizes[100]
    assert lease.amounts == 600
    assert _available(redis_client, "parts") == "400"
    lease.release()
    assert _available(redis_client, "parts") == "1000"


def test_a_full_release_whose_reply_was_lost_is_not_repeated_or_reported_lost(
    redis_backend: RedisBackend, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = allotment.ResourceManager(2, name="full", backend=redis_backend)
    first, second = pool.acquire(1), pool.acquire(1)
    lost: list[tuple[object, ...]] = []
    _losing_replies(monkeypatch, lambda args: args[0] == "release" and not lost, lost)
    first.release()  # ran; the answer was lost: the keeper retries, nothing raises
    assert first.released
    first.release()
    assert _available(redis_client, "full") == "1"
    wait_until(lambda: not redis_backend._retries, "the keeper's retry found it released")
    assert _available(redis_client, "full") == "1"
    second.release()
    assert _available(redis_client, "full") == "2"


def test_a_group_release_whose_reply_was_lost_is_retried_and_applied_once(
    redis_backend: RedisBackend, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one-script release of a group (``release-all``) runs, and its answer is lost:
    nothing raises, the leases read released, and the keeper's retry by id finds them
    released (nothing is given back twice, nothing is reported lost)."""
    pool = allotment.ResourceManager(2, name="group-lost", backend=redis_backend, rank=1)
    other = allotment.ResourceManager(2, name="group-lost-b", backend=redis_backend, rank=2)
    kept = pool.acquire(1)
    group = allotment.acquire_all([(pool, 1), (other, 2)])
    lost: list[tuple[object, ...]] = []
    _losing_replies(monkeypatch, lambda args: args[0] == "release-all" and not lost, lost)
    group.release()
    assert len(lost) == 1
    assert group.released
    assert (_available(redis_client, "group-lost"), _available(redis_client, "group-lost-b")) == (
        "1",
        "2",
    )
    wait_until(lambda: not redis_backend._retries, "the keeper's retries found them released")
    assert (_available(redis_client, "group-lost"), _available(redis_client, "group-lost-b")) == (
        "1",
        "2",
    )
    group.release()  # idempotent
    kept.release()
    assert _available(redis_client, "group-lost") == "2"


def test_one_manager_failing_in_the_keeper_leaves_the_others_served(
    redis_backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manager whose poll and renewal fail for a reason of its own (a conflicting
    declaration) must not stop the keeper from polling the other managers' waiters and
    renewing their leases: those would be refused, and lost, after their TTLs."""
    from allotment.redis._pool import RedisPool

    broken = allotment.ResourceManager(1, name="keeper-broken", backend=redis_backend)
    healthy = allotment.ResourceManager(1, name="keeper-healthy", backend=redis_backend)
    held = [broken.acquire(1), healthy.acquire(1)]

    def waiting_on(pool: allotment.ResourceManager[int]) -> Worker:
        return Worker(lambda: pool.acquire(1, timeout=30))

    waiters = [waiting_on(broken), waiting_on(healthy)]
    for waiter in waiters:
        waiter.start()
    wait_until(lambda: len(redis_backend._heard) == 2, "both waiters are confirmed")
    served: list[tuple[str, str]] = []

    def failing(action: Any, what: str) -> Any:
        def run(self: RedisPool, rids: Sequence[str]) -> None:
            if self.name == "keeper-broken":
                raise allotment.BackendConflict("declared elsewhere with capacity 2")
            served.append((what, self.name))
            action(self, rids)

        return run

    monkeypatch.setattr(RedisPool, "poll", failing(RedisPool.poll, "poll"))
    monkeypatch.setattr(RedisPool, "renew", failing(RedisPool.renew, "renew"))
    for run in (redis_backend._poll_waiters, redis_backend._renew_leases):
        run()  # the manager's own failure is logged, not raised
    assert served == [("poll", "keeper-healthy"), ("renew", "keeper-healthy")]
    monkeypatch.undo()
    for lease in held:
        lease.release()
    for waiter in waiters:
        waiter.join(30)
        assert waiter.error is None, waiter.error
        assert isinstance(waiter.result, allotment.Lease)
        waiter.result.release()


def test_a_task_cancelled_during_its_enter_leaves_no_orphan(
    redis_backend: RedisBackend, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task cancelled while its ``enter`` is in flight: redis-py drops that connection and
    the caller's release goes out on another, so it may reach the server first and find
    nothing, and the ``enter`` run after it (here the hook holds the ``enter`` while the
    cancellation is handled, then the test runs it as the server would). The keeper releases
    the id again a poll later: the server forgets it, instead of holding the unit for
    ``lease_ttl``."""
    from allotment.redis import _backend

    pool = allotment.ResourceManager(1, name="orphan", backend=redis_backend)
    sent: list[str] = []

    async def hold_the_enter(args: Sequence[object]) -> None:
        if args[0] == "enter":
            sent.append(str(args[6]))
            await asyncio.Event().wait()  # in flight until cancelled

    monkeypatch.setattr(_backend, "_round_trip_hook", hold_the_enter)

    async def main() -> None:
        task = asyncio.create_task(pool.acquire_async(1))
        while not sent:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    monkeypatch.setattr(_backend, "_round_trip_hook", None)
    # The enter reaches the server after the caller's release: granted to nobody.
    code, _ = pool._pool._call("enter", sent[0], "1", 0)  # type: ignore[attr-defined]
    assert code == 1
    assert _available(redis_client, "orphan") == "0"
    wait_until(lambda: _available(redis_client, "orphan") == "1", "the keeper released it")


def test_partial_releases_of_one_lease_racing_from_two_threads(
    redis_backend: RedisBackend, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threads release parts of one lease at once (the hook lets both round trips be in
    flight together, if the backend allows it), and one reply is lost: each release gives
    back exactly its own units, once. Partial releases of one lease take turns."""
    pool = allotment.ResourceManager(6, name="parts-race", backend=redis_backend)
    lease = pool.acquire(6)
    together = threading.Barrier(2)
    lost = threading.Event()
    original = RedisBackend.run_script

    def both_in_flight(
        self: RedisBackend, script: Any, keys: Sequence[str], args: Sequence[object], name: str
    ) -> Any:
        partial = args[0] == "release" and len(args) > 8 and args[8] != ""
        if partial:
            # One at a time: the other waits for its turn, not here (the barrier breaks).
            with contextlib.suppress(threading.BrokenBarrierError):
                together.wait(1.0)
        reply = original(self, script, keys, args, name)
        if partial and threading.current_thread().name == "first" and not lost.is_set():
            lost.set()
            raise allotment.BackendUnavailable("the reply was lost (after the server ran it)")
        return reply

    monkeypatch.setattr(RedisBackend, "run_script", both_in_flight)

    def release_two() -> None:
        for _ in range(2):
            try:
                lease.release(1)
            except allotment.BackendUnavailable:
                lease.release(1)  # the caller's retry: the same release, applied once

    workers = [Worker(release_two, name="first"), Worker(release_two, name="second")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
        assert worker.error is None, worker.error
    assert lost.is_set()
    assert lease.amounts == 2
    assert _available(redis_client, "parts-race") == "4"
    lease.release()
    assert _available(redis_client, "parts-race") == "6"
