"""httpx: a transport for ``httpx.Client`` and one for ``httpx.AsyncClient``.

Each wraps another transport (``httpx.HTTPTransport()`` / ``httpx.AsyncHTTPTransport()``
unless given one): the policy is entered before the wrapped transport sends, the reply's
headers are observed when it returns, and the grant rides on the reply's byte stream, so it
is released when httpx closes the stream: after reading the body for ``client.get()``, when
the ``with client.stream(...)`` block ends for a streamed one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx

from ._policy import Grant, HTTPRequest, Policy

__all__ = ["AsyncHTTPXTransport", "HTTPXTransport"]


def _describe(client_request: object) -> HTTPRequest:
    assert isinstance(client_request, httpx.Request)
    url = client_request.url
    return HTTPRequest(client_request.method, str(url), url.host, client_request)


class _HeldStream(httpx.SyncByteStream):
    """A reply's body that releases its request's grant when closed."""

    def __init__(self, stream: httpx.SyncByteStream, grant: Grant) -> None:
        self._stream = stream
        self._grant = grant

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._stream)

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._grant.release()


class _AsyncHeldStream(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, grant: Grant) -> None:
        self._stream = stream
        self._grant = grant

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._stream.__aiter__()

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            await self._grant.release_async()


class HTTPXTransport(httpx.BaseTransport):
    """An ``httpx`` transport that sends each request through ``policy``:
    ``httpx.Client(transport=HTTPXTransport(policy))``. Raises
    :class:`~allotment.AcquireTimeout` before sending a request that cannot get its limits
    within the policy's timeout."""

    def __init__(self, policy: Policy, transport: httpx.BaseTransport | None = None) -> None:
        self._policy = policy
        self._transport = httpx.HTTPTransport() if transport is None else transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the policy and the wrapped transport."""
        policy = self._policy
        grant = policy.enter(request, _describe)
        try:
            response = self._transport.handle_request(request)
        except BaseException:
            grant.release()  # the rate stays spent: the request may have reached the server
            raise
        try:
            policy.observe(grant, response.status_code, response.headers.multi_items(), response)
            stream = response.stream
            assert isinstance(stream, httpx.SyncByteStream)
            response.stream = _HeldStream(stream, grant)
        except BaseException:
            grant.release()
            response.close()
            raise
        return response

    def close(self) -> None:
        """Close the wrapped transport."""
        self._transport.close()


class AsyncHTTPXTransport(httpx.AsyncBaseTransport):
    """:class:`HTTPXTransport` for ``httpx.AsyncClient``; tasks wait in the same lines as
    threads."""

    def __init__(self, policy: Policy, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._policy = policy
        self._transport = httpx.AsyncHTTPTransport() if transport is None else transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the policy and the wrapped transport."""
        policy = self._policy
        grant = await policy.enter_async(request, _describe)
        try:
            response = await self._transport.handle_async_request(request)
        except BaseException:
            await grant.release_async()
            raise
        try:
            policy.observe(grant, response.status_code, response.headers.multi_items(), response)
            stream = response.stream
            assert isinstance(stream, httpx.AsyncByteStream)
            response.stream = _AsyncHeldStream(stream, grant)
        except BaseException:
            await grant.release_async()
            await response.aclose()
            raise
        return response

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._transport.aclose()
