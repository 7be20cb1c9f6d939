"""The policy and the pause, without a client: a pause is a move of the limiters' time (kept
in Redis for a shared limit), one shared deadline of the policy's own, and only ever later."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from typing import Any

import pytest

import allotment
from allotment.http import Grant, HTTPRequest, Policy
from allotment.redis import RedisBackend
from allotment.testing import ManualClock
from support import Worker, wait_until

pytestmark = pytest.mark.timeout(60)


def _request(host: str = "api.example") -> HTTPRequest:
    return HTTPRequest("GET", f"https://{host}/v1", host, None)


def _describe(client_request: object) -> HTTPRequest:
    assert isinstance(client_request, HTTPRequest)
    return client_request


def _enter(policy: Policy, request: HTTPRequest | None = None) -> Grant:
    return policy.enter(request or _request(), _describe)


# -- the meters: nothing before the pause's end, the line kept -------------------------------


def test_a_paused_gcra_allows_nothing_before_the_end_then_one_then_its_rate() -> None:
    clock = ManualClock()
    limiter = allotment.RateLimiter(10, per=1, burst=5, clock=clock)
    policy = Policy(limiter, clock=clock)
    policy.pause(2, "test")
    assert not limiter.try_acquire()
    clock.advance(1.999)
    assert not limiter.try_acquire()
    clock.advance(0.001)
    assert limiter.try_acquire()
    assert not limiter.try_acquire()  # the bucket refills from the end of the pause
    clock.advance(0.1)
    assert limiter.try_acquire()


def test_a_paused_window_allows_nothing_before_the_end() -> None:
    clock = ManualClock()
    limiter = allotment.WindowLimiter(5, per=1, clock=clock)
    assert limiter.try_acquire(2)
    policy = Policy(limiter, clock=clock)
    policy.pause(3)
    for _ in range(3):
        assert not limiter.try_acquire()
        clock.advance(0.999)
    clock.advance(0.003)
    assert limiter.try_acquire(5)
    assert not limiter.try_acquire()


def test_waiters_keep_their_places_in_line_across_a_pause() -> None:
    clock = ManualClock()
    limiter = allotment.RateLimiter(1, per=1, burst=1, clock=clock)
    assert limiter.try_acquire()
    order: list[str] = []

    def take(name: str) -> None:
        limiter.acquire()
        order.append(name)

    workers = []
    for name in "abc":
        worker = Worker(functools.partial(take, name), name=name)
        worker.start()
        workers.append(worker)
        queued = len(workers)
        wait_until(lambda: len(limiter.statistics().waiters) == queued, "queued")  # noqa: B023
    Policy(limiter, clock=clock).pause(10)
    wait_until(lambda: clock.sleepers == 3, "the waiters sleep")
    clock.advance(9.999)  # the first was due at 1 s: its tick moved to 10 s
    wait_until(lambda: clock.sleepers == 3, "the waiters sleep again")
    assert order == []
    for _ in range(3):
        clock.advance(1)
        wait_until(lambda: len(order) + clock.sleepers >= 3, "one more is allowed")
    for worker in workers:
        worker.join()
        assert worker.error is None
    assert order == ["a", "b", "c"]


@pytest.mark.parametrize("kind", ["gcra", "window"])
def test_a_pause_holds_on_every_backend_and_for_every_process_sharing_it(
    backend: RedisBackend | allotment.LocalBackend | None, kind: str
) -> None:
    def make(on: RedisBackend | allotment.LocalBackend | None) -> Any:
        if kind == "gcra":
            return allotment.RateLimiter(100, per=1, burst=10, backend=on, name="paused")
        return allotment.WindowLimiter(10, per=1, backend=on, name="paused")

    limiter = make(backend)
    assert limiter.try_acquire()
    started = time.monotonic()
    Policy(limiter).pause(0.4)
    assert not limiter.try_acquire()
    if backend is not None:
        # Another process: its own connection and backend, the same state in Redis.
        other: RedisBackend | allotment.LocalBackend
        if isinstance(backend, RedisBackend):
            other = RedisBackend(backend.client, lease_ttl=30)
        else:
            other = allotment.LocalBackend(backend.path)
        try:
            assert not make(other).try_acquire()
        finally:
            other.close()
    limiter.acquire(timeout=30)
    assert time.monotonic() - started >= 0.4


def test_a_keyed_limiter_pauses_the_key_that_was_told() -> None:
    clock = ManualClock()
    hosts = allotment.KeyedRateLimiter(10, per=1, burst=2, clock=clock)
    policy = Policy(hosts, key=lambda request: request.host, clock=clock, timeout=0)
    grant = _enter(policy, _request("a.example"))
    policy.observe(grant, 429, [("Retry-After", "5")], None)
    assert not hosts.try_acquire("a.example")
    assert hosts.try_acquire("b.example")  # the limiter's other keys are not paused...
    with pytest.raises(allotment.AcquireTimeout, match="paused"):
        _enter(policy, _request("b.example"))  # ...but the whole policy is
    clock.advance(5)
    assert hosts.try_acquire("a.example")


# -- the policy's own deadline ---------------------------------------------------------------


def test_a_concurrency_policy_waits_out_a_pause_holding_its_slot() -> None:
    clock = ManualClock()
    slots = allotment.ResourceManager(1, clock=clock)
    policy = Policy(slots, clock=clock)
    policy.pause(3, "maintenance")
    worker = Worker(lambda: _enter(policy))
    worker.start()
    wait_until(lambda: clock.sleepers == 1, "the request waits out the pause")
    assert slots.statistics().available == 0  # it holds its slot while it waits
    clock.advance(2.9)
    wait_until(lambda: clock.sleepers == 1, "it sleeps again")
    clock.advance(0.1)
    worker.join()
    assert worker.error is None
    grant = worker.result
    assert isinstance(grant, Grant)
    grant.release()
    assert grant.released
    assert slots.statistics().available == 1


def test_tasks_wait_out_a_pause_too() -> None:
    clock = ManualClock()
    policy = Policy(allotment.ResourceManager(2, clock=clock), clock=clock)
    policy.pause(1)

    async def main() -> None:
        entering = asyncio.ensure_future(policy.enter_async(_request(), _describe))
        while clock.sleepers == 0:
            await asyncio.sleep(0)
        assert not entering.done()
        clock.advance(1)
        grant = await entering
        grant.release()

    asyncio.run(main())


def test_a_cancelled_task_gives_back_what_it_took() -> None:
    clock = ManualClock()
    slots = allotment.ResourceManager(1, clock=clock)
    policy = Policy(slots, clock=clock)
    policy.pause(60)

    async def main() -> None:
        entering = asyncio.ensure_future(policy.enter_async(_request(), _describe))
        while clock.sleepers == 0:
            await asyncio.sleep(0)
        entering.cancel()
        with pytest.raises(asyncio.CancelledError):
            await entering

    asyncio.run(main())
    assert slots.statistics().available == 1


def test_a_deadline_inside_a_pause_refuses_at_once_holding_nothing() -> None:
    clock = ManualClock()
    slots = allotment.ResourceManager(1, clock=clock)
    limiter = allotment.RateLimiter(5, per=1, clock=clock)
    policy = Policy(slots, limiter, clock=clock, timeout=2)
    policy.pause(5, "server asked")
    with pytest.raises(allotment.AcquireTimeout, match="server asked"):
        _enter(policy)
    assert slots.statistics().available == 1
    assert limiter.statistics().allowed == 0
    assert policy.statistics().refused == 1


def test_a_refused_keyed_part_refunds_the_rest() -> None:
    clock = ManualClock()
    slots = allotment.ResourceManager(1, clock=clock)
    api = allotment.RateLimiter(5, per=1, burst=5, clock=clock)
    hosts = allotment.KeyedRateLimiter(1, per=60, burst=1, clock=clock)
    policy = Policy(slots, api, hosts, key=lambda request: request.host, clock=clock, timeout=0)
    _enter(policy).release()
    with pytest.raises(allotment.AcquireTimeout):
        _enter(policy)
    assert slots.statistics().available == 1
    assert api.statistics().allowed == 1  # the second one's rate was given back


def _shapes(clock: ManualClock, rate_clock: ManualClock) -> dict[str, tuple[Any, ...]]:
    slots = allotment.ResourceManager(2, clock=clock)
    api = allotment.RateLimiter(5, per=1, burst=5, clock=rate_clock)
    window = allotment.WindowLimiter(5, per=1, clock=rate_clock)
    hosts = allotment.KeyedRateLimiter(1, per=60, burst=1, clock=rate_clock)
    return {
        "simple": (slots, api),
        "keyed only": (hosts,),
        "simple and keyed": (slots, api, hosts),
        "group and keyed": (slots, api, window, hosts),
    }


def _assert_all_given_back(parts: tuple[Any, ...]) -> None:
    for part in parts:
        if isinstance(part, allotment.ResourceManager):
            assert part.statistics().available == 2
        elif isinstance(part, allotment.KeyedRateLimiter):
            assert part.try_acquire("api.example")  # its one unit was given back
        else:
            assert part.statistics().allowed == 0


@pytest.mark.parametrize("shape", ["keyed only", "simple and keyed", "group and keyed"])
def test_a_pause_extended_past_the_deadline_refunds_the_keyed_rate(shape: str) -> None:
    # The limiters keep their own clock, past the pause they were told of: they grant at
    # once, and the request then waits out the policy's own deadline, holding their rate.
    # (The extension moves the plain limiters' time too, so only the keyed rate can show.)
    clock, rate_clock = ManualClock(), ManualClock()
    parts = _shapes(clock, rate_clock)[shape]
    policy = Policy(*parts, key=lambda request: request.host, clock=clock, timeout=2)
    policy.pause(1, "first")
    rate_clock.advance(1)
    worker = Worker(lambda: _enter(policy))
    worker.start()
    wait_until(lambda: clock.sleepers == 1, "the request took its parts and waits out the pause")
    policy.pause(5, "extended")  # now past the request's deadline
    clock.advance(1)
    worker.join()
    assert isinstance(worker.error, allotment.AcquireTimeout)
    assert policy.statistics().refused == 1  # counted once
    plain = (allotment.RateLimiter, allotment.WindowLimiter)
    _assert_all_given_back(tuple(part for part in parts if not isinstance(part, plain)))


@pytest.mark.parametrize("shape", ["simple", "keyed only", "simple and keyed", "group and keyed"])
def test_a_task_cancelled_in_a_pause_refunds_every_rate_taken(shape: str) -> None:
    clock, rate_clock = ManualClock(), ManualClock()
    parts = _shapes(clock, rate_clock)[shape]
    key = None if shape == "simple" else (lambda request: request.host)
    policy = Policy(*parts, key=key, clock=clock)
    policy.pause(1)
    rate_clock.advance(1)  # the limiters grant at once; the policy's deadline holds

    async def main() -> None:
        task = asyncio.ensure_future(policy.enter_async(_request(), _describe))
        while clock.sleepers == 0:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    _assert_all_given_back(parts)


# -- a server's pause is bounded ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (429, [("Retry-After", "864000")]),
        (503, [("Retry-After", "9" * 300)]),
        (200, [("RateLimit-Remaining", "0"), ("RateLimit-Reset", "864000")]),
        (200, [("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset-After", "9" * 300)]),
    ],
)
def test_an_announced_pause_is_clamped_to_max_pause(
    status: int, headers: list[tuple[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    limiter = allotment.RateLimiter(10, per=1, burst=5, clock=clock)
    hosts = allotment.KeyedRateLimiter(1, per=1, burst=1, clock=clock)
    policy = Policy(limiter, hosts, key=lambda request: request.host, clock=clock, max_pause=60)
    grant = _enter(policy)
    with caplog.at_level("WARNING", logger="allotment.http"):
        policy.observe(grant, status, headers, None)
    grant.release()
    assert policy.statistics().pause_remaining == 60
    warnings = [record for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 1, [record.getMessage() for record in warnings]
    message = warnings[0].getMessage()
    assert "max_pause, 60.0 s" in message
    assert str(float(headers[-1][1])) in message  # the announced value
    assert not limiter.try_acquire()
    assert not hosts.try_acquire("api.example")
    clock.advance(59.999)
    assert not limiter.try_acquire()
    assert not hosts.try_acquire("api.example")
    clock.advance(0.001)
    assert limiter.try_acquire()
    assert hosts.try_acquire("api.example")


def test_the_default_max_pause_is_an_hour_and_a_shorter_pause_is_kept() -> None:
    clock = ManualClock()
    policy = Policy(allotment.ResourceManager(1), clock=clock)
    grant = _enter(policy)
    policy.observe(grant, 429, [("Retry-After", "864000")], None)
    assert policy.statistics().pause_remaining == 3600
    policy.observe(grant, 429, [("Retry-After", "7200")], None)  # clamped: no later
    assert policy.statistics().pause_remaining == 3600
    grant.release()
    other = Policy(allotment.ResourceManager(1), clock=clock, max_pause=10)
    grant = _enter(other)
    other.observe(grant, 429, [("Retry-After", "5")], None)
    assert other.statistics().pause_remaining == 5
    grant.release()


# -- only slower, never faster ---------------------------------------------------------------


def test_a_pause_only_ever_moves_later_and_is_counted_once() -> None:
    clock = ManualClock()
    policy = Policy(allotment.ResourceManager(1, clock=clock), clock=clock)
    grant = _enter(policy)
    policy.observe(grant, 429, [("Retry-After", "10")], None)
    policy.observe(grant, 429, [("Retry-After", "2")], None)  # a shorter one changes nothing
    statistics = policy.statistics()
    assert statistics.pauses == 1
    assert statistics.pause_remaining == 10
    assert statistics.paused_seconds == 10
    assert statistics.last_pause_reason == "429 Retry-After: 10"
    assert statistics.server_refusals == 2
    clock.advance(4)
    policy.observe(grant, 503, [("Retry-After", "10")], None)  # extends: still one pause
    statistics = policy.statistics()
    assert statistics.pauses == 1
    assert statistics.paused_seconds == 14
    clock.advance(20)
    policy.pause(1)
    assert policy.statistics().pauses == 2
    grant.release()


def test_headers_announcing_quota_left_never_loosen_the_limits() -> None:
    clock = ManualClock()
    limiter = allotment.RateLimiter(1, per=1, burst=1, clock=clock)
    policy = Policy(limiter, clock=clock, timeout=0)
    grant = _enter(policy)
    generous = [
        ("RateLimit", '"default";r=1000000;t=1'),
        ("X-RateLimit-Remaining", "1000000"),
        ("Retry-After", "0"),
    ]
    policy.observe(grant, 200, generous, None)
    with pytest.raises(allotment.AcquireTimeout):
        _enter(policy)
    assert policy.statistics().pauses == 0


def test_malformed_headers_never_reach_the_request_path() -> None:
    policy = Policy(allotment.ResourceManager(1))
    grant = _enter(policy)
    policy.observe(grant, 429, [("Retry-After", "soon"), ("RateLimit", '";;"r=0')], None)
    assert policy.statistics().pauses == 0
    assert not grant.released
    grant.release()


# -- hooks and validation --------------------------------------------------------------------


def test_cost_key_and_charge_hooks() -> None:
    clock = ManualClock()
    tokens = allotment.RateLimiter(100, per=1, burst=100, clock=clock)
    seen: list[object] = []

    def charge(response: object) -> int:
        seen.append(response)
        return 30

    policy = Policy(tokens, cost=lambda request: len(request.host), charge=charge, clock=clock)
    grant = _enter(policy, _request("abcde"))
    assert grant.request is not None
    assert grant.request.host == "abcde"
    policy.observe(grant, 200, [], "the response")
    assert seen == ["the response"]
    statistics = tokens.statistics()
    assert statistics.allowed_units == 5
    assert statistics.charged == 30


def test_a_charge_that_raises_releases_the_grant() -> None:
    slots = allotment.ResourceManager(1)

    def charge(response: object) -> int:
        raise KeyError("usage")

    policy = Policy(slots, charge=charge)
    grant = _enter(policy)
    with pytest.raises(KeyError):
        policy.observe(grant, 200, [], None)
    assert grant.released


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ((), {}, TypeError),
        (("a string",), {}, TypeError),
        ((allotment.KeyedRateLimiter(1, per=1),), {}, TypeError),
        ((allotment.ResourceManager(1),), {"timeout": -1}, ValueError),
        ((allotment.ResourceManager(1),), {"timeout": float("nan")}, ValueError),
        (((allotment.ResourceManager(1), 2),), {}, allotment.ExceedsCapacity),
        (((allotment.RateLimiter(1, per=1), 0),), {}, allotment.InvalidAmount),
        (((allotment.KeyedRateLimiter(1, per=1), 5),), {"key": str}, allotment.ExceedsBurst),
    ],
)
def test_bad_policies_are_refused_when_made(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        Policy(*args, **kwargs)


@pytest.mark.parametrize("max_pause", [0, -1, float("nan"), float("inf"), "5", True, None])
def test_bad_max_pauses_are_refused(max_pause: Any) -> None:
    with pytest.raises(ValueError, match="max_pause must be a positive finite number"):
        Policy(allotment.ResourceManager(1), max_pause=max_pause)


@pytest.mark.parametrize("seconds", [-1, float("nan"), float("inf"), "5", True])
def test_bad_pauses_are_refused(seconds: Any) -> None:
    policy = Policy(allotment.ResourceManager(1))
    with pytest.raises(ValueError, match="seconds"):
        policy.pause(seconds)
    assert policy.statistics().pauses == 0


def test_threads_share_one_pause() -> None:
    policy = Policy(allotment.ResourceManager(8))
    policy.pause(0.3)
    started = time.monotonic()
    finished: list[float] = []
    barrier = threading.Barrier(8)

    def run() -> None:
        barrier.wait()
        _enter(policy).release()
        finished.append(time.monotonic())

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(finished) == 8
    assert min(finished) - started >= 0.3
    assert policy.statistics().requests == 8
