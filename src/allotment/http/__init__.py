"""allotment.http: limit outbound HTTP requests, and listen to the server's replies.

>>> import allotment
>>> from allotment.http import Policy
>>> policy = Policy(allotment.RateLimiter(50, per=1), allotment.ResourceManager(8), timeout=30)

Then give the policy to a client: ``httpx.Client(transport=HTTPXTransport(policy))``,
``httpx.AsyncClient(transport=AsyncHTTPXTransport(policy))``,
``requests.Session().mount("https://", RequestsAdapter(policy))``, or
``aiohttp.ClientSession(middlewares=(aiohttp_middleware(policy),))``. Each client is an
optional dependency (``allotment[httpx]``, ``[requests]``, ``[aiohttp]``), imported only
when its adapter is first used: ``import allotment.http`` imports none of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .._clock import wall_time
from ._headers import Announcement, parse_delay, read_announcement
from ._policy import Grant, HTTPRequest, Policy, PolicyStatistics

if TYPE_CHECKING:
    from ._aiohttp import aiohttp_middleware
    from ._httpx import AsyncHTTPXTransport, HTTPXTransport
    from ._requests import RequestsAdapter

__all__ = [
    "Announcement",
    "AsyncHTTPXTransport",
    "Grant",
    "HTTPRequest",
    "HTTPXTransport",
    "Policy",
    "PolicyStatistics",
    "RequestsAdapter",
    "aiohttp_middleware",
    "read_announcement",
    "retry_after",
]

_ADAPTERS = {
    "AsyncHTTPXTransport": "._httpx",
    "HTTPXTransport": "._httpx",
    "RequestsAdapter": "._requests",
    "aiohttp_middleware": "._aiohttp",
}


def retry_after(response: Any) -> float | None:
    """Seconds to wait before retrying, from ``response``'s ``Retry-After`` header
    (delta-seconds or an HTTP-date; a date already past gives ``0.0``), for any client's
    response (anything with a case-insensitive ``headers.get``). ``None`` if the header is
    absent or malformed: never raises for a header value.

    For retry libraries: ``stamina``, ``tenacity`` or ``httpx-retries`` can wait this long
    before trying again; the policy itself never retries."""
    value = response.headers.get("retry-after")
    if not isinstance(value, str):
        return None
    seconds = parse_delay(value, wall_time())
    return None if seconds is None else max(0.0, seconds)


def __getattr__(name: str) -> Any:
    module = _ADAPTERS.get(name)
    if module is None:
        raise AttributeError(f"module 'allotment.http' has no attribute {name!r}")
    found = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = found
    return found


def __dir__() -> list[str]:
    return sorted(__all__)
