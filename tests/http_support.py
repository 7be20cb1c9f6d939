"""The tests' side of ``http_server.py``: start it in a process of its own, read its log,
and check that nothing was sent inside a pause a server announced."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import attrs

__all__ = ["Recorder", "arrivals", "running_server"]


@contextlib.contextmanager
def running_server() -> Iterator[str]:
    """The server's base URL while it runs, in a child process."""
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("http_server.py"))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def arrivals(base: str, name: str) -> list[dict[str, object]]:
    """The server's log of one limit (read with the standard library, not a client under
    test)."""
    with urllib.request.urlopen(f"{base}/log/{name}", timeout=10) as reply:
        log: list[dict[str, object]] = json.loads(reply.read())
    return log


@attrs.define
class Recorder:
    """What a client did, recorded on both sides of the policy. Each request is stamped
    ``started`` on the caller's side, before it reaches the policy (carried to the wire side
    in the ``X-Started`` header), and ``sent`` on the wire side, after the policy let it
    through; each refusal is stamped on the caller's side once the policy has read it:
    ``(when the caller got it, the end of the server's window)``.

    Lists are appended from many threads (``list.append`` is atomic)."""

    sent: list[tuple[float, float]] = attrs.Factory(list)
    refusals: list[tuple[float, float]] = attrs.Factory(list)
    statuses: list[int] = attrs.Factory(list)

    @staticmethod
    def started() -> str:
        return repr(time.monotonic())

    def on_send(self, started: str | None) -> None:
        assert started is not None
        self.sent.append((float(started), time.monotonic()))

    def on_reply(self, status: int, window_end: str | None) -> None:
        self.statuses.append(status)
        if status in {429, 503}:
            assert window_end is not None
            self.refusals.append((time.monotonic(), float(window_end)))

    def sent_inside_pauses(self, slack: float = 0.0) -> list[tuple[float, float]]:
        """Requests that reached the policy after a refusal was known and were sent before
        the window it announced ended: none may exist. Requests that reached the policy
        before that may have been let through before the pause began: they were in flight,
        and are not counted. ``slack`` forgives that much of the end (an HTTP-date is read
        on the wall clock, which may differ from the monotonic one by that much)."""
        return [
            (started, sent)
            for received, end in self.refusals
            for started, sent in self.sent
            if started >= received and sent < end - slack
        ]
