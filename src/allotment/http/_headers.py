"""What a server's reply says about when to send again: parsing only, no client, no clock.

A reply can ask the client to wait in several dialects; each becomes a duration in seconds
from now, and the longest one wins (headers only ever make a client slower):

- ``Retry-After`` on a 429 or a 503: delta-seconds or an HTTP-date (RFC 9110, 10.2.3).
- ``RateLimit`` / ``RateLimit-Policy`` (IETF httpapi draft 12): a list of quota policies,
  ``"burst";r=0;t=30``; a policy with nothing remaining pauses until its reset ``t`` (or, with
  no ``t``, for its window ``w`` from ``RateLimit-Policy``). The older dictionary form
  ``limit=100, remaining=0, reset=30`` is read too.
- ``RateLimit-Remaining`` / ``RateLimit-Reset`` (earlier drafts) and the common
  ``X-RateLimit-Remaining`` / ``X-RateLimit-Reset`` (delta-seconds, or a Unix time in seconds
  or milliseconds, as GitHub and others send), with ``X-RateLimit-Reset-After`` (seconds).
- OpenAI's ``x-ratelimit-remaining-requests`` / ``-tokens`` with resets written as durations
  (``6m0s``, ``20ms``, ``1h30m``).
- Anthropic's ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-remaining``
  with RFC 3339 resets (``2024-01-01T00:00:30Z``).

A header says to wait only when it says nothing is left (``remaining`` at or below zero) and
when (a reset). A reset of ``0`` whole seconds with nothing left means "within this second"
(servers round down) and reads as one second. A value that does not parse is ignored,
never raised: a server's typo must not fail the request that carried it. Every function here
returns ``None`` for "nothing usable".
"""

from __future__ import annotations

import datetime
import email.utils
import math
import re
from collections.abc import Iterable

import attrs

__all__ = [
    "Announcement",
    "parse_delay",
    "parse_duration",
    "parse_http_date",
    "parse_rfc3339",
    "read_announcement",
    "relevant",
]

_PREFIXES = ("retry-after", "ratelimit", "x-ratelimit", "anthropic-ratelimit")
_PAUSING_STATUSES = frozenset({429, 503})
_UNIX_SECONDS = 1_000_000_000.0
"""A reset at or above this (2001-09-09) is a Unix time, not a number of seconds."""
_UNIX_MILLISECONDS = 1_000_000_000_000.0
_NUMBER = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*")
_DELTA_SECONDS = re.compile(r"\s*(\d+(?:\.\d+)?)\s*")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_RFC3339 = re.compile(
    r"\s*(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?"
    r"([Zz]|[+-]\d{2}:\d{2})\s*"
)
_ANTHROPIC_KINDS = ("requests", "tokens", "input-tokens", "output-tokens")
_OPENAI_KINDS = ("requests", "tokens")


@attrs.frozen
class Announcement:
    """A server's request to send nothing for ``seconds`` from now, and which header said so."""

    seconds: float
    reason: str


def relevant(name: str) -> bool:
    """Whether a header (lower-case name) may ask for a pause: the filter applied to every
    reply, so a reply without such headers costs one ``startswith`` per header."""
    return name.startswith(_PREFIXES)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _number(text: str) -> float | None:
    match = _NUMBER.fullmatch(text)
    return None if match is None else _finite(float(match.group(1)))


def parse_http_date(text: str, now: float) -> float | None:
    """Seconds from ``now`` (a Unix time) until the HTTP-date ``text`` (IMF-fixdate, or the
    obsolete RFC 850 and asctime forms); ``None`` if it does not parse."""
    try:
        when = email.utils.parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" and the obsolete forms: HTTP dates are GMT
        when = when.replace(tzinfo=datetime.timezone.utc)
    try:
        return _finite(when.timestamp() - now)
    except (OverflowError, ValueError, OSError):
        return None


def parse_delay(text: str, now: float) -> float | None:
    """A ``Retry-After`` value: delta-seconds or an HTTP-date, as seconds from ``now`` (a
    Unix time); ``None`` if neither."""
    match = _DELTA_SECONDS.fullmatch(text)
    if match is not None:
        return _finite(float(match.group(1)))
    return parse_http_date(text, now)


def parse_duration(text: str) -> float | None:
    """A duration as OpenAI writes resets (Go's form: ``6m0s``, ``1.5s``, ``20ms``,
    ``1h30m``), or a plain number of seconds; ``None`` if neither."""
    stripped = text.strip()
    plain = _number(stripped)
    if plain is not None:
        return plain
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(stripped):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(stripped):
        return None
    return _finite(total)


def parse_rfc3339(text: str, now: float) -> float | None:
    """Seconds from ``now`` (a Unix time) until an RFC 3339 timestamp; ``None`` if it is not
    one. Written out rather than ``fromisoformat``, which reads ``Z`` only from 3.11."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    fraction, zone = match.group(7), match.group(8)
    offset = datetime.timedelta(0)
    if zone not in {"Z", "z"}:
        sign = -1 if zone[0] == "-" else 1
        offset = sign * datetime.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    try:
        # A leap second (60) is read as the last second of its minute.
        when = datetime.datetime(
            year, month, day, hour, minute, min(second, 59), tzinfo=datetime.timezone(offset)
        )
    except (ValueError, OverflowError):  # no such date, or an offset of a day or more
        return None
    seconds = when.timestamp() + (float(fraction) if fraction else 0.0)
    return _finite(seconds - now)


def _whole_seconds(value: float | None) -> float | None:
    """A reset in whole seconds, for a quota that is spent: ``0`` means "within the second"
    (servers round down), so it reads as one second, the field's resolution."""
    return 1.0 if value == 0 else value


def _reset_seconds(text: str, now: float) -> float | None:
    """A ``*-Reset`` value: delta-seconds, or a Unix time (seconds or milliseconds)."""
    value = _number(text)
    if value is None:
        return None
    if value >= _UNIX_MILLISECONDS:
        return value / 1000.0 - now
    if value >= _UNIX_SECONDS:
        return value - now
    return _whole_seconds(value)


def _split(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` outside double quotes (structured fields' strings)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for character in text:
        if escaped:
            escaped = False
        elif quoted and character == "\\":
            escaped = True
        elif character == '"':
            quoted = not quoted
        elif character == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(character)
    parts.append("".join(current))
    return parts


def _members(text: str) -> list[tuple[str, dict[str, str]]]:
    """A structured-field list: each member's item (unquoted) and its parameters."""
    members = []
    for member in _split(text, ","):
        item, *parameters = (piece.strip() for piece in _split(member, ";"))
        found: dict[str, str] = {}
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            found[name.strip().lower()] = value.strip()
        members.append((item.strip('"'), found))
    return members


def _ratelimit_field(value: str, policy: str | None) -> tuple[float, str] | None:
    """Draft 12's ``RateLimit`` (with its ``RateLimit-Policy`` for windows), or the older
    ``limit=, remaining=, reset=`` dictionary: the longest wait it announces."""
    windows: dict[str, float] = {}
    if policy is not None:
        for name, parameters in _members(policy):
            window = _number(parameters.get("w", ""))
            if window is not None:
                windows[name] = window
    longest: tuple[float, str] | None = None
    dictionary: dict[str, str] = {}
    for item, parameters in _members(value):
        key, equals, plain = item.partition("=")
        if equals:  # the older dictionary form: one figure per member
            dictionary[key.strip().lower()] = plain.strip()
            continue
        remaining = _number(parameters.get("r", ""))
        if remaining is None or remaining > 0:
            continue
        reset = _whole_seconds(
            _number(parameters.get("t", "")) if "t" in parameters else windows.get(item)
        )
        if reset is not None and (longest is None or reset > longest[0]):
            longest = (reset, f'RateLimit: "{item}" r={parameters.get("r")}')
    remaining = _number(dictionary.get("remaining", ""))
    reset = _whole_seconds(_number(dictionary.get("reset", "")))
    exhausted = remaining is not None and remaining <= 0
    if exhausted and reset is not None and (longest is None or reset > longest[0]):
        longest = (reset, f"RateLimit: remaining={dictionary['remaining']}")
    return longest


def _exhausted(values: list[str]) -> bool:
    """Some value of a ``remaining`` header (repeated headers come joined by commas) says
    nothing is left."""
    for value in values:
        for piece in value.split(","):
            remaining = _number(piece)
            if remaining is not None and remaining <= 0:
                return True
    return False


def _first(found: dict[str, list[str]], name: str) -> str | None:
    values = found.get(name)
    return values[0].split(",")[0] if values else None


def read_announcement(
    status: int, headers: Iterable[tuple[str, str]], now: float
) -> Announcement | None:
    """What a reply with ``status`` and ``headers`` (name and value pairs, any case) asks:
    the longest pause any of its headers announces, or ``None``. ``now`` is the Unix time,
    to read dates with. Never raises for any header value."""
    found: dict[str, list[str]] = {}
    for name, value in headers:
        lowered = name.lower()
        if lowered.startswith(_PREFIXES):
            found.setdefault(lowered, []).append(value)
    if not found:
        return None
    candidates: list[tuple[float | None, str]] = []

    retry = found.get("retry-after")
    if retry and status in _PAUSING_STATUSES:
        candidates.append((parse_delay(retry[0], now), f"{status} Retry-After: {retry[0]}"))

    ratelimit = found.get("ratelimit")
    if ratelimit:
        policy = found.get("ratelimit-policy")
        announced = _ratelimit_field(", ".join(ratelimit), ", ".join(policy) if policy else None)
        if announced is not None:
            candidates.append(announced)

    for prefix in ("ratelimit", "x-ratelimit"):
        remaining = found.get(f"{prefix}-remaining")
        if remaining and _exhausted(remaining):
            reset = _first(found, f"{prefix}-reset")
            after = _first(found, f"{prefix}-reset-after")
            if reset is not None:
                candidates.append((_reset_seconds(reset, now), f"{prefix}-reset: {reset}"))
            if after is not None:
                candidates.append((_number(after), f"{prefix}-reset-after: {after}"))

    for kind in _OPENAI_KINDS:
        remaining = found.get(f"x-ratelimit-remaining-{kind}")
        reset = _first(found, f"x-ratelimit-reset-{kind}")
        if remaining and reset is not None and _exhausted(remaining):
            candidates.append((parse_duration(reset), f"x-ratelimit-reset-{kind}: {reset}"))

    for kind in _ANTHROPIC_KINDS:
        remaining = found.get(f"anthropic-ratelimit-{kind}-remaining")
        reset = _first(found, f"anthropic-ratelimit-{kind}-reset")
        if remaining and reset is not None and _exhausted(remaining):
            candidates.append(
                (parse_rfc3339(reset, now), f"anthropic-ratelimit-{kind}-reset: {reset}")
            )

    usable = [(seconds, why) for seconds, why in candidates if seconds is not None and seconds > 0]
    if not usable:
        return None
    seconds, why = max(usable, key=lambda pair: pair[0])
    return Announcement(seconds, why)
