"""Benchmark: what allotment.http adds to an HTTP request that no limit holds back.

    python benchmarks/http_bench.py                 # full run (about a minute), prints the report
    python benchmarks/http_bench.py --quick         # seconds, for a smoke test
    python benchmarks/http_bench.py --write docs/benchmarks.md   # also update the page

The server is the tests' stdlib one (``tests/http_server.py``) in a process of its own on
127.0.0.1; each client keeps one connection alive to it. One thread (one task) sends ``GET
/plain`` in batches; each batch is timed as a whole with ``time.perf_counter_ns()``, and a
client's figure is the median batch's microseconds per request. The clients alternate batch
by batch (plain, then each policy), so the machine's drift falls on all of them alike. The
limits never hold a request back: a rate limiter of a billion per second, a manager of 64.

*Policy alone* times what the policy does per request without a client or a server: enter,
observe the reply's headers (no rate-limit headers: the common case), release: the cost added
to every request, whatever the network costs. Nothing here is asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import requests

import allotment
from allotment.http import (
    AsyncHTTPXTransport,
    HTTPRequest,
    HTTPXTransport,
    Policy,
    RequestsAdapter,
)
from common import quiet_gc, run_section_script

SECTION = "## HTTP clients"
SERVER = Path(__file__).resolve().parent.parent / "tests" / "http_server.py"
TARGET = 0.15
"""The added cost per unthrottled request, as a share of a plain httpx request."""


@contextlib.contextmanager
def _server() -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, str(SERVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        yield f"http://127.0.0.1:{int(process.stdout.readline())}/plain"
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=10)


def _policies() -> dict[str, Callable[[], Policy]]:
    return {
        "RateLimiter": lambda: Policy(allotment.RateLimiter(10**9, per=1, burst=10**6)),
        "ResourceManager": lambda: Policy(allotment.ResourceManager(64)),
        "both": lambda: Policy(
            allotment.RateLimiter(10**9, per=1, burst=10**6), allotment.ResourceManager(64)
        ),
    }


def _per_request(run: Callable[[int], None], batch: int) -> float:
    started = time.perf_counter_ns()
    run(batch)
    return (time.perf_counter_ns() - started) / batch / 1000


def _interleaved(
    runs: dict[str, Callable[[int], None]], batch: int, rounds: int
) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run(batch)  # warm: connections open, caches filled
    with quiet_gc():
        for _ in range(rounds):
            for name, run in runs.items():
                samples[name].append(_per_request(run, batch))
    return {name: statistics.median(values) for name, values in samples.items()}


def _sync_runs(url: str) -> tuple[dict[str, Callable[[int], None]], list[Callable[[], None]]]:
    runs: dict[str, Callable[[int], None]] = {}
    closers: list[Callable[[], None]] = []

    def sending(client: httpx.Client | requests.Session) -> Callable[[int], None]:
        def run(count: int) -> None:
            for _ in range(count):
                client.get(url).content  # noqa: B018 - read the body, as callers do

        return run

    plain = httpx.Client()
    runs["httpx, plain"] = sending(plain)
    closers.append(plain.close)
    for name, make in _policies().items():
        client = httpx.Client(transport=HTTPXTransport(make()))
        runs[f"httpx, Policy({name})"] = sending(client)
        closers.append(client.close)
    session = requests.Session()
    runs["requests, plain"] = sending(session)
    closers.append(session.close)
    limited = requests.Session()
    limited.mount("http://", RequestsAdapter(_policies()["both"]()))
    runs["requests, Policy(both)"] = sending(limited)
    closers.append(limited.close)
    return runs, closers


async def _async_figures(url: str, batch: int, rounds: int) -> dict[str, float]:
    plain = httpx.AsyncClient()
    limited = httpx.AsyncClient(transport=AsyncHTTPXTransport(_policies()["both"]()))
    clients = {"httpx.AsyncClient, plain": plain, "httpx.AsyncClient, Policy(both)": limited}
    samples: dict[str, list[float]] = {name: [] for name in clients}
    for client in clients.values():
        for _ in range(batch):
            await client.get(url)
    with quiet_gc():
        for _ in range(rounds):
            for name, client in clients.items():
                started = time.perf_counter_ns()
                for _ in range(batch):
                    await client.get(url)
                samples[name].append((time.perf_counter_ns() - started) / batch / 1000)
    for client in clients.values():
        await client.aclose()
    return {name: statistics.median(values) for name, values in samples.items()}


def _policy_alone(batch: int, rounds: int) -> dict[str, float]:
    request = HTTPRequest("GET", "http://127.0.0.1/plain", "127.0.0.1", None)
    headers = [("server", "BaseHTTP/0.6 Python/3"), ("date", "x"), ("content-length", "2")]

    def describe(client_request: object) -> HTTPRequest:
        return request

    def cycling(policy: Policy) -> Callable[[int], None]:
        def run(count: int) -> None:
            enter, observe = policy.enter, policy.observe
            for _ in range(count):
                grant = enter(request, describe)
                observe(grant, 200, headers, None)
                grant.release()

        return run

    runs = {f"Policy({name})": cycling(make()) for name, make in _policies().items()}
    return _interleaved(runs, batch, rounds)


def report(quick: bool) -> str:
    batch, rounds = (50, 5) if quick else (200, 21)
    with _server() as url:
        runs, closers = _sync_runs(url)
        try:
            sync = _interleaved(runs, batch, rounds)
        finally:
            for close in closers:
                close()
        asynchronous = asyncio.run(_async_figures(url, batch, rounds))
    alone = _policy_alone(batch * 10, rounds)
    plain = sync["httpx, plain"]
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("httpx", "requests", "aiohttp")
    )
    lines = [
        f"Produced by `python benchmarks/http_bench.py` on {time.strftime('%Y-%m-%d')}, Python "
        f"{platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores; "
        f"allotment {allotment.__version__}, {versions}. The server is the tests' stdlib "
        "server on 127.0.0.1, in its own process. Microseconds per request, the median batch "
        f"of {batch} over {rounds} rounds, clients interleaved; the limits never hold a "
        "request back. Timings on a shared machine move from run to run: read the ratios.",
        "",
        "| client | µs per request | added µs | added, share of plain httpx |",
        "| --- | ---: | ---: | ---: |",
    ]
    baselines = {"httpx": plain, "requests": sync["requests, plain"]}
    baselines["httpx.AsyncClient"] = asynchronous["httpx.AsyncClient, plain"]
    for name, figure in [*sync.items(), *asynchronous.items()]:
        base = baselines[name.split(",")[0]]
        added = figure - base
        share = "—" if "plain" in name else f"{added / plain:+.1%}"
        lines.append(f"| {name} | {figure:.1f} | {added:+.1f} | {share} |")
    lines += [
        "",
        f"*Policy alone* (enter, observe a reply without rate-limit headers, release; median "
        f"batch of {batch * 10}), and its share of one plain httpx request (target: at most "
        f"{TARGET:.0%}):",
        "",
        "| policy | µs per request | share of plain httpx |",
        "| --- | ---: | ---: |",
    ]
    for name, figure in alone.items():
        lines.append(f"| {name} | {figure:.2f} | {figure / plain:.1%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_section_script(__doc__, SECTION, "http_bench.py", report)
