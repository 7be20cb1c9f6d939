"""requests: a transport adapter, ``session.mount("https://", RequestsAdapter(policy))``.

The policy is entered in :meth:`RequestsAdapter.send`, before the connection is used. A reply
that is not streamed has its body read there (requests reads it right after anyway), and its
grant is released at once. A streamed one (``stream=True``) holds its grant until it is
closed (``response.close()``, or the end of a ``with`` block), as it holds its connection.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

import requests
import requests.adapters

from ._policy import Grant, HTTPRequest, Policy

__all__ = ["RequestsAdapter"]


def _describe(client_request: object) -> HTTPRequest:
    assert isinstance(client_request, requests.PreparedRequest)
    url = client_request.url or ""
    host = urllib.parse.urlsplit(url).hostname or ""
    return HTTPRequest(client_request.method or "GET", url, host, client_request)


class _HeldResponse(requests.Response):
    """A streamed reply that releases its request's grant when closed."""

    _grant: Grant

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._grant.release()


class RequestsAdapter(requests.adapters.HTTPAdapter):
    """A ``requests`` adapter that sends each request through ``policy``; other keyword
    arguments go to :class:`requests.adapters.HTTPAdapter` (``pool_maxsize``,
    ``max_retries``...). Raises :class:`~allotment.AcquireTimeout` before sending a request
    that cannot get its limits within the policy's timeout."""

    def __init__(self, policy: Policy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._policy = policy

    def send(  # noqa: PLR0917 - HTTPAdapter.send's signature
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send ``request`` through the policy, then as ``HTTPAdapter.send`` does."""
        policy = self._policy
        grant = policy.enter(request, _describe)
        try:
            response = super().send(
                request,
                stream=stream,
                timeout=timeout,
                verify=verify,
                cert=cert,
                proxies=None if proxies is None else dict(proxies),
            )
        except BaseException:
            grant.release()  # the rate stays spent: the request may have reached the server
            raise
        try:
            policy.observe(grant, response.status_code, response.headers.items(), response)
            if not stream:
                response.content  # noqa: B018 - read now, so the slot is free on return
                grant.release()
                return response
        except BaseException:
            grant.release()
            response.close()
            raise
        response.__class__ = _HeldResponse
        held: _HeldResponse = response  # type: ignore[assignment]
        held._grant = grant
        return held
