"""aiohttp (3.12 or later): a client middleware,
``aiohttp.ClientSession(middlewares=(aiohttp_middleware(policy),))``.

The policy is entered before the request is sent (once per request, redirects included),
and the reply's headers are observed when they arrive. The grant is released when the
reply's connection is released or closed: when its body has been read to the end, or the
reply is released or closed (``async with session.get(...)`` does both). A reply dropped
before that is not closed when aiohttp finalises it: its grant is dropped unreleased then,
and its leases warn as leaked leases do (their units return).
"""

from __future__ import annotations

import asyncio
import sys
import weakref

import aiohttp

from .._errors import AcquireTimeout
from ._policy import Grant, HTTPRequest, Policy

__all__ = ["aiohttp_middleware"]


def _describe(client_request: object) -> HTTPRequest:
    assert isinstance(client_request, aiohttp.ClientRequest)
    url = client_request.url
    return HTTPRequest(client_request.method, str(url), client_request.host, client_request)


if sys.version_info < (3, 11):

    class _Refused(AcquireTimeout, asyncio.TimeoutError):
        """On Python 3.10 aiohttp wraps every ``OSError`` but ``asyncio.TimeoutError`` (not
        yet the built-in ``TimeoutError``) in ``ClientOSError``: a refusal that is both
        reaches the caller as the ``AcquireTimeout`` it is."""

    def _as_refusal(error: AcquireTimeout) -> AcquireTimeout:
        refused = _Refused(*error.args)
        refused.manager = error.manager
        return refused.with_traceback(error.__traceback__)

else:

    def _as_refusal(error: AcquireTimeout) -> AcquireTimeout:
        return error


def _released(reply: weakref.ref[aiohttp.ClientResponse], grant: Grant) -> None:
    """The reply's connection went back: a closed reply's grant is released; one that was
    never closed is being finalised (or its session closed under it), a leak."""
    response = reply()
    if response is not None and response.closed:
        grant.release()
    else:
        grant.abandon()


def aiohttp_middleware(policy: Policy) -> aiohttp.ClientMiddlewareType:
    """A client middleware that sends each request through ``policy``. Raises
    :class:`~allotment.AcquireTimeout` before sending a request that cannot get its limits
    within the policy's timeout."""

    async def limit(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        try:
            grant = await policy.enter_async(request, _describe)
        except AcquireTimeout as error:
            refusal = _as_refusal(error)
            if refusal is error:
                raise
            raise refusal from None
        try:
            response = await handler(request)
        except BaseException:
            await grant.release_async()  # the rate stays spent: it may have reached the server
            raise
        try:
            policy.observe(grant, response.status, response.headers.items(), response)
        except BaseException:
            response.close()
            raise
        connection = response.connection
        if connection is None:
            await grant.release_async()  # the body was empty, or already read: nothing held
        else:
            reply = weakref.ref(response)
            connection.add_callback(lambda: _released(reply, grant))
        return response

    return limit
