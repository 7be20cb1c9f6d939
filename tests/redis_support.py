"""A private redis-server for the tests: started on a unix socket in a temporary directory,
with no persistence, and stopped (or killed and restarted) by the tests that need it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import redis

from allotment.redis import RedisBackend

if TYPE_CHECKING:
    import pytest

__all__ = ["RedisServer", "block_round_trips_on_loops", "counting_round_trips", "server_binary"]


def server_binary() -> str:
    """redis-server, or valkey-server if that is what the machine has (ALLOTMENT_REDIS_SERVER
    names another)."""
    chosen = os.environ.get("ALLOTMENT_REDIS_SERVER")
    for candidate in (chosen, "redis-server", "valkey-server"):
        if candidate and shutil.which(candidate):
            return candidate
    raise RuntimeError(
        "no redis-server on this machine: install it (apt-get install -y redis-server); "
        ".ci/run does"
    )


@attrs.define
class RedisServer:
    """One redis-server process, on ``directory/redis.sock``."""

    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def path(self) -> str:
        return str(self.directory / "redis.sock")

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                server_binary(),
                "--port", "0",
                "--unixsocket", self.path,
                "--unixsocketperm", "700",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
                "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        client = redis.Redis(unix_socket_path=self.path, socket_timeout=1)
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.exceptions.ConnectionError:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.005)
        finally:
            client.close()

    def ensure_running(self) -> None:
        """Start the server again if a test stopped or killed it."""
        if self.process is None or self.process.poll() is not None:
            self.start()

    @contextlib.contextmanager
    def module_client(self) -> Iterator[redis.Redis]:
        """A client for a module's tests (the server running), the server emptied after."""
        self.ensure_running()
        client = self.client()
        try:
            yield client
        finally:
            client.flushall()
            client.close()

    def kill(self) -> None:
        """SIGKILL: the server's data is lost (there is no persistence)."""
        process = self.process
        if process is not None:
            process.kill()
            process.wait(10)
            self.process = None
        Path(self.path).unlink(missing_ok=True)

    def pause(self) -> None:
        """SIGSTOP: a hung server, which accepts connections and never answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        process = self.process
        if process is not None:
            process.send_signal(signal.SIGCONT)
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=self.path)

    def flush(self) -> None:
        """Empty the server (with a client closed at once: an open socket left to the
        collector warns)."""
        with self.client() as client:
            client.flushall()


def counting_round_trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The operations of the synchronous round trips (``RedisBackend.run_script``) made from
    now on, in order."""
    ran: list[str] = []
    original = RedisBackend.run_script

    def run(
        self: RedisBackend, script: Any, keys: Sequence[str], args: Sequence[object], name: str
    ) -> Any:
        ran.append(str(args[0]))
        return original(self, script, keys, args, name)

    monkeypatch.setattr(RedisBackend, "run_script", run)
    return ran


def block_round_trips_on_loops(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """From now on a synchronous round trip made on a thread that runs an event loop fails
    (``AssertionError``), and its operation is noted in the list returned."""
    made: list[object] = []
    real = RedisBackend.run_script

    def guarded(
        self: RedisBackend, script: Any, keys: Sequence[str], args: Sequence[object], name: str
    ) -> Any:
        if asyncio._get_running_loop() is not None:
            made.append(args[0])
            raise AssertionError(f"a blocking round trip ({args[0]}) on an event loop's thread")
        return real(self, script, keys, args, name)

    monkeypatch.setattr(RedisBackend, "run_script", guarded)
    return made
