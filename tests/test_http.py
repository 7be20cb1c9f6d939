"""allotment.http against a real server: the stdlib one in ``http_server.py``, in a process of
its own on 127.0.0.1, through the real clients (httpx, requests, aiohttp; nothing mocked)."""

from __future__ import annotations

import asyncio
import gc
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import httpx
import pytest
import requests

import allotment
from allotment.http import (
    AsyncHTTPXTransport,
    HTTPXTransport,
    Policy,
    RequestsAdapter,
    aiohttp_middleware,
)
from http_support import Recorder, arrivals, running_server

pytestmark = pytest.mark.timeout(120)

_names = itertools.count()


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with running_server() as url:
        yield url


def _limit_url(base: str, style: str, limit: int = 50, window: float = 1) -> tuple[str, str]:
    name = f"{style}-{next(_names)}"
    return name, f"{base}/limit/{name}?limit={limit}&window={window}&style={style}"


# -- recording around the policy -------------------------------------------------------------


class _WireSide(httpx.BaseTransport):
    """Inside the policy's transport: what reaches this was let through."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        # httpx's default pool, but connections never expire: httpcore checks a connection's
        # expiry time and compares it unlocked, and on a free-threaded build another thread
        # can clear it in between (TypeError: float > None, seen on 3.13t with 32 threads).
        limits = httpx.Limits(
            max_connections=100, max_keepalive_connections=20, keepalive_expiry=None
        )
        self._inner = httpx.HTTPTransport(limits=limits)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._recorder.on_send(request.headers.get("x-started"))
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


class _AsyncWireSide(httpx.AsyncBaseTransport):
    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._recorder.on_send(request.headers.get("x-started"))
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _httpx_client(policy: Policy, recorder: Recorder) -> httpx.Client:
    def on_request(request: httpx.Request) -> None:
        request.headers["x-started"] = recorder.started()

    def on_reply(response: httpx.Response) -> None:
        recorder.on_reply(response.status_code, response.headers.get("x-window-end"))

    return httpx.Client(
        transport=HTTPXTransport(policy, _WireSide(recorder)),
        event_hooks={"request": [on_request], "response": [on_reply]},
        limits=httpx.Limits(max_connections=200),
    )


def _async_httpx_client(policy: Policy, recorder: Recorder) -> httpx.AsyncClient:
    async def on_request(request: httpx.Request) -> None:
        request.headers["x-started"] = recorder.started()

    async def on_reply(response: httpx.Response) -> None:
        recorder.on_reply(response.status_code, response.headers.get("x-window-end"))

    return httpx.AsyncClient(
        transport=AsyncHTTPXTransport(policy, _AsyncWireSide(recorder)),
        event_hooks={"request": [on_request], "response": [on_reply]},
        limits=httpx.Limits(max_connections=200),
    )


class _RecordingAdapter(RequestsAdapter):
    """``send`` stamps the request before the policy; ``add_headers`` runs inside
    ``HTTPAdapter.send``, after the policy, before sending."""

    recorder: Recorder

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        request.headers["X-Started"] = self.recorder.started()
        return super().send(request, *args, **kwargs)

    def add_headers(self, request: requests.PreparedRequest, **kwargs: Any) -> None:
        started = request.headers.get("X-Started")
        self.recorder.on_send(started if isinstance(started, str) else None)


def _requests_session(policy: Policy, recorder: Recorder) -> requests.Session:
    session = requests.Session()
    adapter = _RecordingAdapter(policy, pool_maxsize=64)
    adapter.recorder = recorder
    session.mount("http://", adapter)

    def on_reply(response: requests.Response, *args: object, **kwargs: object) -> None:
        recorder.on_reply(response.status_code, response.headers.get("x-window-end"))

    session.hooks["response"].append(on_reply)
    return session


def _aiohttp_session(policy: Policy, recorder: Recorder) -> aiohttp.ClientSession:
    async def callers_side(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        request.headers["X-Started"] = recorder.started()
        response = await handler(request)
        recorder.on_reply(response.status, response.headers.get("x-window-end"))
        return response

    async def wire_side(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        recorder.on_send(request.headers.get("X-Started"))
        return await handler(request)

    return aiohttp.ClientSession(
        middlewares=(callers_side, aiohttp_middleware(policy), wire_side),
        connector=aiohttp.TCPConnector(limit=200),
    )


def _run_threads(count: int, work: Callable[[], None]) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run() -> None:
        try:
            start.wait()
            work()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def _check_pauses(recorder: Recorder, policy: Policy, workers: int, slack: float = 0.0) -> None:
    """The server refused (so the test tested something), the policy paused each time,
    and nothing was sent inside a pause once the refusal was known."""
    assert recorder.refusals, "the server never refused: the test did not reach its limit"
    assert recorder.sent_inside_pauses(slack) == []
    statistics = policy.statistics()
    assert statistics.pauses >= 1
    assert statistics.server_refusals == len(recorder.refusals)
    assert statistics.last_pause_reason is not None
    assert statistics.refused == 0
    # The refusals of one window: the one that found it spent, and those already in flight.
    windows = {end for _, end in recorder.refusals}
    assert len(recorder.refusals) <= len(windows) * workers


def _server_side_in_flight_bound(base: str, name: str, workers: int) -> None:
    """Seen from the server: after each refusal, at most ``workers`` requests (those
    already on their way) arrive before its window ends."""
    log = arrivals(base, name)
    refused_at = [entry for entry in log if entry["status"] != 200]
    for refusal in refused_at:
        arrived = float(refusal["arrived"])  # type: ignore[arg-type]
        later = [entry for entry in log if float(entry["arrived"]) > arrived]  # type: ignore[arg-type]
        # The window of this refusal ends at the next 200 (the server admits at once then).
        inside = [entry for entry in later if entry["status"] != 200]
        ok_after = [entry for entry in later if entry["status"] == 200]
        if ok_after:
            first_ok = float(ok_after[0]["arrived"])  # type: ignore[arg-type]
            inside = [entry for entry in inside if float(entry["arrived"]) < first_ok]  # type: ignore[arg-type]
        assert len(inside) < workers


# -- pauses ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param(lambda: (allotment.RateLimiter(10_000, per=1, burst=100),), id="rate"),
        pytest.param(lambda: (allotment.ResourceManager(32),), id="concurrency"),
    ],
)
def test_httpx_threads_send_nothing_inside_a_retry_after_pause(
    base: str, parts: Callable[[], tuple[Any, ...]]
) -> None:
    policy = Policy(*parts())
    recorder = Recorder()
    name, url = _limit_url(base, "retry")
    with _httpx_client(policy, recorder) as client:

        def work() -> None:
            for _ in range(6):
                client.get(url)

        _run_threads(32, work)
    _check_pauses(recorder, policy, 32)
    _server_side_in_flight_bound(base, name, 32)


def test_requests_threads_send_nothing_inside_a_503_http_date_pause(base: str) -> None:
    policy = Policy(allotment.RateLimiter(10_000, per=1, burst=100))
    recorder = Recorder()
    name, url = _limit_url(base, "date")
    with _requests_session(policy, recorder) as session:

        def work() -> None:
            for _ in range(6):
                session.get(url)

        _run_threads(32, work)
    # An HTTP-date is read on the wall clock, the window's end on the monotonic one.
    _check_pauses(recorder, policy, 32, slack=0.01)
    assert any(status == 503 for status in recorder.statuses)
    _server_side_in_flight_bound(base, name, 32)


def test_tasks_and_threads_share_one_policy_and_its_pause(base: str) -> None:
    policy = Policy(allotment.RateLimiter(10_000, per=1, burst=100), allotment.ResourceManager(64))
    recorder = Recorder()
    name, url = _limit_url(base, "retry")
    with _httpx_client(policy, recorder) as client:

        def work() -> None:
            for _ in range(5):
                client.get(url)

        async def tasks() -> None:
            async with _async_httpx_client(policy, recorder) as async_client:

                async def one() -> None:
                    for _ in range(5):
                        await async_client.get(url)

                await asyncio.gather(*(one() for _ in range(48)))

        threads = threading.Thread(target=_run_threads, args=(8, work))
        threads.start()
        asyncio.run(tasks())
        threads.join()
    _check_pauses(recorder, policy, 56)
    _server_side_in_flight_bound(base, name, 56)


def test_aiohttp_tasks_send_nothing_inside_a_pause(base: str) -> None:
    policy = Policy(allotment.ResourceManager(32))
    recorder = Recorder()
    name, url = _limit_url(base, "retry")

    async def main() -> None:
        async with _aiohttp_session(policy, recorder) as session:

            async def one() -> None:
                for _ in range(6):
                    async with session.get(url) as response:
                        await response.read()

            await asyncio.gather(*(one() for _ in range(32)))

    asyncio.run(main())
    _check_pauses(recorder, policy, 32)
    _server_side_in_flight_bound(base, name, 32)


@pytest.mark.parametrize("rounding", ["up", "down"])
def test_ratelimit_fields_alone_keep_refusals_to_those_in_flight(base: str, rounding: str) -> None:
    policy = Policy(allotment.RateLimiter(10_000, per=1, burst=100))
    recorder = Recorder()
    name, url = _limit_url(base, "fields", limit=20)
    url += f"&round={rounding}"
    with _httpx_client(policy, recorder) as client:

        def work() -> None:
            for _ in range(5):
                client.get(url)

        _run_threads(16, work)
    statistics = policy.statistics()
    assert statistics.pauses >= 1
    assert statistics.last_pause_reason is not None
    assert "RateLimit" in statistics.last_pause_reason
    assert recorder.sent_inside_pauses() == []
    # At most one refusal per request in flight when the quota ran out, per window.
    windows = {float(entry["arrived"]) // 1 for entry in arrivals(base, name)}  # type: ignore[arg-type]
    assert len(recorder.refusals) <= 16 * len(windows)
    assert recorder.statuses.count(200) >= 20


def test_a_policy_at_the_servers_rate_is_never_refused(base: str) -> None:
    limiter = allotment.RateLimiter(50, per=1, burst=1)
    policy = Policy(limiter)
    recorder = Recorder()
    _, url = _limit_url(base, "retry", limit=52)
    started = time.monotonic()
    with _httpx_client(policy, recorder) as client:

        def work() -> None:
            while time.monotonic() - started < 4:
                client.get(url)

        _run_threads(8, work)
    elapsed = time.monotonic() - started
    assert recorder.refusals == []
    assert policy.statistics().server_refusals == 0
    sent = len(recorder.sent)
    # GCRA's bound: never more than burst + rate * time.
    assert sent <= 1 + 50 * (elapsed + 0.05)
    # The limiter, not the client, sets the pace (generous: a loaded machine wakes late).
    assert sent >= 0.8 * 50 * 4


# -- streamed replies hold their slots -------------------------------------------------------


def test_httpx_streamed_replies_hold_their_slots_until_closed(base: str) -> None:
    slots = allotment.ResourceManager(2)
    policy = Policy(slots, timeout=0.05)
    with httpx.Client(transport=HTTPXTransport(policy)) as client:
        first = client.send(client.build_request("GET", f"{base}/stream"), stream=True)
        second = client.send(client.build_request("GET", f"{base}/stream"), stream=True)
        assert slots.statistics().available == 0
        with pytest.raises(allotment.AcquireTimeout):
            client.get(f"{base}/plain")
        assert policy.statistics().refused == 1
        first.close()
        assert client.get(f"{base}/plain").text == "ok"
        second.read()
        second.close()
        assert slots.statistics().available == 2


def test_async_httpx_streamed_replies_hold_their_slots_until_closed(base: str) -> None:
    slots = allotment.ResourceManager(2)
    policy = Policy(slots, timeout=0.05)

    async def main() -> None:
        async with httpx.AsyncClient(transport=AsyncHTTPXTransport(policy)) as client:
            first = await client.send(client.build_request("GET", f"{base}/stream"), stream=True)
            second = await client.send(client.build_request("GET", f"{base}/stream"), stream=True)
            assert slots.statistics().available == 0
            with pytest.raises(allotment.AcquireTimeout):
                await client.get(f"{base}/plain")
            await first.aclose()
            assert (await client.get(f"{base}/plain")).text == "ok"
            await second.aclose()
        assert slots.statistics().available == 2

    asyncio.run(main())


def test_requests_streamed_replies_hold_their_slots_until_closed(base: str) -> None:
    slots = allotment.ResourceManager(2)
    policy = Policy(slots, timeout=0.05)
    with requests.Session() as session:
        session.mount("http://", RequestsAdapter(policy))
        first = session.get(f"{base}/stream", stream=True)
        second = session.get(f"{base}/stream", stream=True)
        assert slots.statistics().available == 0
        with pytest.raises(allotment.AcquireTimeout):
            session.get(f"{base}/plain")
        first.close()
        assert session.get(f"{base}/plain").text == "ok"
        assert slots.statistics().available == 1  # a reply that is not streamed gave its slot back
        with second:
            assert len(second.content) == 4096
        assert slots.statistics().available == 2


def test_aiohttp_streamed_replies_hold_their_slots_until_closed(base: str) -> None:
    slots = allotment.ResourceManager(2)
    policy = Policy(slots, timeout=0.05)

    async def main() -> None:
        async with aiohttp.ClientSession(middlewares=(aiohttp_middleware(policy),)) as session:
            first = await session.get(f"{base}/stream")
            second = await session.get(f"{base}/stream")
            assert slots.statistics().available == 0
            with pytest.raises(allotment.AcquireTimeout):
                await session.get(f"{base}/plain")
            first.release()
            async with session.get(f"{base}/plain") as third:
                assert await third.text() == "ok"
            assert slots.statistics().available == 1
            assert len(await second.read()) == 4096  # read to the end: the slot returns
            assert slots.statistics().available == 2
            second.release()

    asyncio.run(main())


def test_a_streamed_reply_dropped_open_warns_like_a_leaked_lease(base: str) -> None:
    slots = allotment.ResourceManager(1, name="api-slots")
    policy = Policy(slots)
    with httpx.Client(transport=HTTPXTransport(policy)) as client:
        response = client.send(client.build_request("GET", f"{base}/stream"), stream=True)
        assert slots.statistics().available == 0
        leaked = "api-slots.*garbage-collected while still held"
        with pytest.warns(allotment.LeakedLeaseWarning, match=leaked):  # noqa: PT031 - the del is what warns
            del response
            gc.collect()
        assert slots.statistics().available == 1


def test_an_aiohttp_reply_dropped_open_warns_like_a_leaked_lease(base: str) -> None:
    slots = allotment.ResourceManager(1, name="api-slots")
    policy = Policy(slots)

    async def main() -> None:
        # aiohttp's connection refers to an open reply: it is collectable once its session
        # closed, as the connection it holds is.
        session = aiohttp.ClientSession(middlewares=(aiohttp_middleware(policy),))
        response = await session.get(f"{base}/stream")
        assert slots.statistics().available == 0
        with pytest.warns((ResourceWarning, allotment.LeakedLeaseWarning)) as warned:  # noqa: PT031
            del response
            await session.close()
            gc.collect()
        # aiohttp warns of its connection, and the lease of its own.
        leaks = [
            str(w.message) for w in warned if issubclass(w.category, allotment.LeakedLeaseWarning)
        ]
        assert len(leaks) == 1
        assert "'api-slots'" in leaks[0]
        assert slots.statistics().available == 1

    asyncio.run(main())


# -- refused before sending ------------------------------------------------------------------


def test_a_request_that_cannot_get_its_limits_in_time_is_never_sent(base: str) -> None:
    limiter = allotment.RateLimiter(1, per=60, burst=1)
    policy = Policy(limiter, timeout=0.05)
    name, url = _limit_url(base, "retry", limit=1000)
    with httpx.Client(transport=HTTPXTransport(policy)) as client:
        assert client.get(url).status_code == 200
        with pytest.raises(allotment.AcquireTimeout):
            client.get(url)
    assert len(arrivals(base, name)) == 1
    assert policy.statistics().refused == 1


def test_a_pause_past_the_deadline_refuses_at_once_and_sends_nothing(base: str) -> None:
    policy = Policy(allotment.ResourceManager(4), timeout=10)
    name, url = _limit_url(base, "retry", limit=1000)
    policy.pause(30, "maintenance")
    with requests.Session() as session:
        session.mount("http://", RequestsAdapter(policy))
        started = time.monotonic()
        with pytest.raises(allotment.AcquireTimeout, match="maintenance"):
            session.get(url)
        assert time.monotonic() - started < 5  # refused without waiting for the timeout
    assert arrivals(base, name) == []


def test_an_async_client_never_blocks_its_loop_on_a_redis_round_trip(
    base: str, redis_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every way a grant goes back in a task (the body closed, the send failed, a part
    # refused after another was taken) uses the loop's own client, as acquire does.
    from allotment.redis import RedisBackend

    blocking: list[object] = []
    original = RedisBackend.run_script

    def run(self: RedisBackend, script: Any, keys: Any, args: Any, name: str) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            blocking.append(args[0])
        return original(self, script, keys, args, name)

    monkeypatch.setattr(RedisBackend, "run_script", run)
    slots = allotment.ResourceManager(2, name="http-async-slots", backend=redis_backend)
    rate = allotment.RateLimiter(1, per=60.0)
    policy = Policy(slots, rate, timeout=0.2)

    async def main() -> None:
        async with httpx.AsyncClient(transport=AsyncHTTPXTransport(policy)) as client:
            assert (await client.get(f"{base}/plain")).status_code == 200
            with pytest.raises(allotment.AcquireTimeout):
                await client.get(f"{base}/plain")  # the slot taken, then the rate refused
        failing = httpx.AsyncClient(
            transport=AsyncHTTPXTransport(Policy(slots), httpx.AsyncHTTPTransport(retries=0))
        )
        async with failing:
            with pytest.raises(httpx.ConnectError):
                await failing.get("http://127.0.0.1:9/")

    asyncio.run(main())
    assert blocking == []
    assert slots.statistics().available == 2
