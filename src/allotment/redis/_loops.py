"""One ``redis.asyncio`` client per event loop, so that a task's round trips never block its
loop: a stalled server stalls only the tasks waiting for it.

Each client is made from the backend's connection settings (the address or unix socket,
database, credentials, client name and TLS of the client the user passed, whatever its
kind), with the backend's timeouts and no retries, and has the backend's three scripts
registered on it. It is closed with its loop: a started async generator, registered with the
loop as every async generator is, closes it when the loop shuts its async generators down
(``asyncio.run`` does, before closing the loop). A client found on a loop that was closed
without that is closed by the next access from any loop, or by :meth:`LoopClients.close`,
from outside its loop: its sockets are closed directly.

``_lock`` guards ``_clients``; it is never held across an await. Each section is written out
in the shape of "Releasing" in ``_core._section_lock`` (on 3.10 a ``with`` block's exit can be
skipped); an ``RLock``, so that the release in the ``finally`` is its own test of ownership.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import AsyncGenerator
from typing import Any

import attrs
import redis
import redis.asyncio
import redis.asyncio.connection
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

__all__ = ["LoopClient", "LoopClients"]

_ASYNC_CLASSES: dict[str, type[redis.asyncio.connection.AbstractConnection]] = {
    "UnixDomainSocketConnection": redis.asyncio.UnixDomainSocketConnection,
    "Connection": redis.asyncio.Connection,
    "SSLConnection": redis.asyncio.SSLConnection,
}


def _accepted(kind: type[object]) -> set[str]:
    names: set[str] = set()
    for klass in kind.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            names |= set(inspect.signature(init).parameters)
    return names


@attrs.define(eq=False)
class LoopClient:
    """The client of one loop, and its scripts by name (``manager``, ``gcra``, ``window``)."""

    loop: asyncio.AbstractEventLoop
    client: redis.asyncio.Redis
    scripts: dict[str, Any]
    closer: AsyncGenerator[None, None] | None = None
    """Kept here: the loop holds its async generators only weakly."""
    abandoned: bool = False
    """Its loop closed without shutting its async generators down: nothing to await on."""

    def abandon(self) -> None:
        """From outside its (closed) loop: close the sockets, and finish the closer
        synchronously, so that its finalizer never asks the closed loop for a task."""
        self.abandoned = True
        _close_sockets(self.client)
        closer, self.closer = self.closer, None
        if closer is not None:
            closing = closer.aclose()
            try:
                closing.send(None)
            except StopIteration:
                pass
            except RuntimeError:  # never started: nothing to finish
                closing.close()


@attrs.define(eq=False)
class LoopClients:
    """The per-loop clients of one backend."""

    _kind: type[redis.asyncio.connection.AbstractConnection]
    _settings: dict[str, Any]
    _timeout: float
    _sources: dict[str, str]
    _clients: dict[asyncio.AbstractEventLoop, LoopClient] = attrs.field(factory=dict)
    _lock: threading.RLock = attrs.field(factory=threading.RLock)

    @classmethod
    def like(
        cls, connection_class: type[object], settings: dict[str, Any], timeout: float,
        sources: dict[str, str],
    ) -> LoopClients:  # fmt: skip
        kind = _ASYNC_CLASSES[connection_class.__name__]
        accepted = _accepted(kind)
        return cls(kind, {k: v for k, v in settings.items() if k in accepted}, timeout, sources)

    def for_running_loop(self) -> LoopClient:
        """The running loop's client (made on first use)."""
        loop = asyncio.get_running_loop()
        lock = self._lock
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            found = self._clients.get(loop)
            closed = [c for other, c in self._clients.items() if other.is_closed()]
            for gone in closed:
                del self._clients[gone.loop]
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        for gone in closed:
            gone.abandon()
        if found is not None:
            return found
        made = self._make(loop)
        lock = self._lock
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            found = self._clients.setdefault(loop, made)
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        if found is not made:  # another thread raced us onto this loop: keep one
            _close_sockets(made.client)
            return found
        closer = _closing(self, made)
        made.closer = closer
        # Started as a task: the loop's first-iteration hook registers it for shutdown.
        task = loop.create_task(_start(closer))
        task.add_done_callback(_retrieve)
        return made

    def _make(self, loop: asyncio.AbstractEventLoop) -> LoopClient:
        connections = redis.asyncio.ConnectionPool(
            connection_class=self._kind,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            retry=AsyncRetry(NoBackoff(), 0),
            health_check_interval=0,
            decode_responses=False,
            protocol=2,
            **self._settings,
        )
        client = redis.asyncio.Redis(connection_pool=connections)
        scripts = {name: client.register_script(source) for name, source in self._sources.items()}
        return LoopClient(loop, client, scripts)

    def forget(self, made: LoopClient) -> None:
        lock = self._lock
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            if self._clients.get(made.loop) is made:
                del self._clients[made.loop]
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock

    def after_fork_in_child(self) -> None:
        """The child has none of the parent's loops running: forget their clients (their
        sockets are the parent's)."""
        self._lock = threading.RLock()
        self._clients = {}

    def close(self) -> None:
        """Close every loop's client: on its loop if it runs (and is not this thread's),
        else its sockets directly."""
        lock = self._lock
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            clients = list(self._clients.values())
            self._clients.clear()
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock
        for made in clients:
            loop = made.loop
            if loop.is_closed():
                made.abandon()
            elif _running_loop() is loop:
                task = loop.create_task(_aclose(made.client))
                task.add_done_callback(_retrieve)
            elif loop.is_running():
                with contextlib.suppress(RuntimeError):  # closed meanwhile
                    asyncio.run_coroutine_threadsafe(_aclose(made.client), loop)
            else:
                made.abandon()


async def _closing(owner: LoopClients, made: LoopClient) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        owner.forget(made)
        if not made.abandoned:
            await _aclose(made.client)


async def _aclose(client: redis.asyncio.Redis) -> None:
    # The pool is ours, passed in: the client's aclose() alone would leave it open.
    await client.aclose()
    await client.connection_pool.disconnect()


async def _start(closer: AsyncGenerator[None, None]) -> None:
    await closer.__anext__()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _close_sockets(client: redis.asyncio.Redis) -> None:
    """Close the sockets of a client whose loop is gone (no await is possible any more):
    each transport's socket, so that nothing is left to the collector."""
    pool = client.connection_pool
    connections = [
        *getattr(pool, "_available_connections", ()),
        *getattr(pool, "_in_use_connections", ()),
    ]
    for connection in connections:
        writer = getattr(connection, "_writer", None)
        transport = getattr(writer, "transport", None)
        if transport is not None:
            with contextlib.suppress(RuntimeError):  # marks it closing, then asks the loop
                transport.close()
        sock = getattr(transport, "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
            transport._sock = None  # type: ignore[union-attr]
        connection._reader = None
        connection._writer = None
