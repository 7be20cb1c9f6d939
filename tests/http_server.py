"""A rate-limited HTTP server for the tests, run in its own process: ``python http_server.py``
prints its port, then serves on 127.0.0.1 until its stdin closes.

Each path ``/limit/<name>`` is one limit, a fixed window counted from that name's first
request: ``?limit=50&window=1&style=retry``. Over the limit it refuses, as ``style`` says:

- ``retry``: 429 with ``Retry-After`` in whole seconds (rounded up to the window's end);
- ``date``: 503 with ``Retry-After`` as an HTTP-date (the window's end, rounded up to a second);
- ``fields``: 429; every reply carries ``RateLimit-Policy`` and ``RateLimit`` (draft 12),
  its reset rounded up to whole seconds (``&round=down``: rounded down).

Every reply to ``/limit/`` also says, in ``X-Window-End``, when its window ends on the
server's ``CLOCK_MONOTONIC`` (the same clock as the tests' ``time.monotonic``, in every
process). ``/log/<name>`` returns, as JSON, each request's arrival time (``CLOCK_MONOTONIC``),
and status. ``/stream`` replies 200 with a 4 KB body, most of it ``?hold=`` seconds late;
``/plain`` with ``ok``.
"""

from __future__ import annotations

import email.utils
import http.server
import json
import math
import sys
import threading
import time
import urllib.parse

_lock = threading.Lock()
_windows: dict[str, list[float]] = {}
"""name -> [start of the current window, requests counted in it]."""
_logs: dict[str, list[dict[str, object]]] = {}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms delayed ACK

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        arrived = time.monotonic()
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/plain":
            self._reply(200, {}, b"ok")
        elif url.path == "/stream":
            self._stream(float(query.get("hold", "0.5")))
        elif url.path.startswith("/log/"):
            with _lock:
                body = json.dumps(_logs.get(url.path[5:], [])).encode()
            self._reply(200, {"Content-Type": "application/json"}, body)
        elif url.path.startswith("/limit/"):
            self._limit(url.path[7:], query, arrived)
        else:
            self._reply(404, {}, b"no such path")

    def _stream(self, hold: float) -> None:
        """4 KB, of which the last 3 KB come ``hold`` seconds after the first: until then no
        client has the whole body, so none can have released the reply on its own."""
        self.send_response(200)
        self.send_header("Content-Length", "4096")
        self.end_headers()
        self.wfile.write(b"x" * 1024)
        self.wfile.flush()
        time.sleep(hold)
        self.wfile.write(b"x" * 3072)

    def _limit(self, name: str, query: dict[str, str], arrived: float) -> None:
        limit = int(query.get("limit", "50"))
        window = float(query.get("window", "1"))
        style = query.get("style", "retry")
        with _lock:
            state = _windows.setdefault(name, [arrived, 0])
            passed = math.floor((arrived - state[0]) / window)
            if passed > 0:
                state[0] += passed * window
                state[1] = 0
            state[1] += 1
            count, end = int(state[1]), state[0] + window
            allowed = count <= limit
            status = 200 if allowed else (503 if style == "date" else 429)
            _logs.setdefault(name, []).append({
                "arrived": arrived,
                "status": status,
            })  # fmt: skip
        left = end - time.monotonic()
        headers = {"X-Window-End": repr(end)}
        if style == "fields":
            headers["RateLimit-Policy"] = f'"window";q={limit};w={math.ceil(window)}'
            # Rounded up, or down as some servers do (then 0 in a window's last second).
            reset = int(left) if query.get("round") == "down" else max(1, math.ceil(left))
            headers["RateLimit"] = f'"window";r={max(0, limit - count)};t={reset}'
        elif not allowed and style == "retry":
            headers["Retry-After"] = str(max(1, math.ceil(left)))
        elif not allowed and style == "date":
            headers["Retry-After"] = email.utils.formatdate(
                math.ceil(time.time() + left), usegmt=True
            )
        self._reply(status, headers, b"ok" if allowed else b"slow down")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that closes a kept-alive connection is not an error worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


def main() -> None:
    server = _Server(("127.0.0.1", 0), _Handler)
    print(server.server_address[1], flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()  # the test process holds the other end: serve until it closes
    server.shutdown()


if __name__ == "__main__":
    main()
