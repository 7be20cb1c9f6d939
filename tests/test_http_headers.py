"""Reading what servers say: tables of real replies' headers, and garbage that must be ignored."""

from __future__ import annotations

import email.utils

import httpx
import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from allotment.http import read_announcement, retry_after
from allotment.http._headers import (
    parse_delay,
    parse_duration,
    parse_http_date,
    parse_rfc3339,
    relevant,
)

NOW = 1_700_000_000.0
"""2023-11-14T22:13:20Z: the Unix time the tables are read at."""

Headers = list[tuple[str, str]]

# (what it is, status, headers, the pause expected in seconds (None: none))
ANNOUNCEMENTS: list[tuple[str, int, Headers, float | None]] = [
    ("429 delta-seconds", 429, [("Retry-After", "120")], 120.0),
    ("503 delta-seconds", 503, [("retry-after", "5")], 5.0),
    ("429 zero", 429, [("Retry-After", "0")], None),
    ("429 IMF-fixdate", 429, [("Retry-After", "Tue, 14 Nov 2023 22:13:50 GMT")], 30.0),
    ("503 RFC 850 date", 503, [("Retry-After", "Tuesday, 14-Nov-23 22:14:20 GMT")], 60.0),
    ("503 asctime date", 503, [("Retry-After", "Tue Nov 14 22:13:30 2023")], 10.0),
    ("429 date in the past", 429, [("Retry-After", "Fri, 31 Dec 1999 23:59:59 GMT")], None),
    ("Retry-After on a 200 is not a pause", 200, [("Retry-After", "120")], None),
    ("Retry-After on a 301 is not a pause", 301, [("Retry-After", "120")], None),
    (
        "draft 12, one policy spent",
        200,
        [("RateLimit-Policy", '"burst";q=100;w=60'), ("RateLimit", '"burst";r=0;t=30')],
        30.0,
    ),
    (
        "draft 12, quota left",
        200,
        [("RateLimit-Policy", '"burst";q=100;w=60'), ("RateLimit", '"burst";r=50;t=30')],
        None,
    ),
    (
        "draft 12, two policies, the daily one spent",
        200,
        [
            ("RateLimit-Policy", '"burst";q=100;w=60, "daily";q=1000;w=86400'),
            ("RateLimit", '"burst";r=40;t=10, "daily";r=0;t=7200'),
        ],
        7200.0,
    ),
    (
        "draft 12, no reset: the policy's window",
        429,
        [("RateLimit-Policy", '"default";q=20;w=1'), ("RateLimit", '"default";r=0')],
        1.0,
    ),
    (
        "draft 12, two header lines",
        200,
        [("RateLimit", '"a";r=3;t=5'), ("RateLimit", '"b";r=0;t=9')],
        9.0,
    ),
    (
        "draft 12 with a partition key",
        200,
        [("RateLimit", '"peruser";r=0;t=4;pk=:cHsdsRA=:')],
        4.0,
    ),
    (
        "draft 12, spent, resets within the second (rounded down to 0)",
        429,
        [("RateLimit-Policy", '"default";q=20;w=1'), ("RateLimit", '"default";r=0;t=0')],
        1.0,
    ),
    (
        "RateLimit-Reset 0 with nothing left",
        200,
        [("RateLimit-Remaining", "0"), ("RateLimit-Reset", "0")],
        1.0,
    ),
    ("draft 7 dictionary", 200, [("RateLimit", "limit=100, remaining=0, reset=50")], 50.0),
    (
        "draft 7 dictionary, quota left",
        200,
        [("RateLimit", "limit=100, remaining=9, reset=5")],
        None,
    ),
    (
        "RateLimit-Limit/-Remaining/-Reset",
        200,
        [("RateLimit-Limit", "10"), ("RateLimit-Remaining", "0"), ("RateLimit-Reset", "7")],
        7.0,
    ),
    (
        "GitHub: a Unix time",
        403,
        [
            ("x-ratelimit-limit", "60"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", str(int(NOW) + 300)),
            ("x-ratelimit-used", "60"),
            ("x-ratelimit-resource", "core"),
        ],
        300.0,
    ),
    (
        "GitHub, quota left",
        200,
        [("x-ratelimit-remaining", "59"), ("x-ratelimit-reset", str(int(NOW) + 300))],
        None,
    ),
    (
        "Discord: reset-after in seconds",
        429,
        [
            ("X-RateLimit-Remaining", "0"),
            ("X-RateLimit-Reset", f"{NOW + 64.5:.3f}"),
            ("X-RateLimit-Reset-After", "64.57"),
        ],
        64.57,
    ),
    (
        "a Unix time in milliseconds",
        200,
        [("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", str(int(NOW * 1000) + 2500))],
        2.5,
    ),
    (
        "X-RateLimit delta-seconds",
        200,
        [("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", "12")],
        12.0,
    ),
    (
        "OpenAI: requests spent",
        200,
        [
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-remaining-tokens", "149984"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ],
        1.0,
    ),
    (
        "OpenAI: tokens spent",
        429,
        [
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ],
        360.0,
    ),
    (
        "OpenAI: milliseconds",
        200,
        [("x-ratelimit-remaining-requests", "0"), ("x-ratelimit-reset-requests", "20ms")],
        0.02,
    ),
    (
        "OpenAI: hours and minutes",
        200,
        [("x-ratelimit-remaining-tokens", "0"), ("x-ratelimit-reset-tokens", "1h30m")],
        5400.0,
    ),
    (
        "OpenAI: quota left",
        200,
        [("x-ratelimit-remaining-requests", "3"), ("x-ratelimit-reset-requests", "6m0s")],
        None,
    ),
    (
        "Anthropic: requests spent",
        200,
        [
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2023-11-14T22:14:00Z"),
            ("anthropic-ratelimit-tokens-remaining", "40000"),
            ("anthropic-ratelimit-tokens-reset", "2023-11-14T22:13:21Z"),
        ],
        40.0,
    ),
    (
        "Anthropic: input tokens spent, with an offset and a fraction",
        200,
        [
            ("anthropic-ratelimit-input-tokens-remaining", "0"),
            ("anthropic-ratelimit-input-tokens-reset", "2023-11-14T23:13:25.5+01:00"),
        ],
        5.5,
    ),
    (
        "Anthropic 429: Retry-After and a later reset; the longest wins",
        429,
        [
            ("retry-after", "15"),
            ("anthropic-ratelimit-output-tokens-remaining", "0"),
            ("anthropic-ratelimit-output-tokens-reset", "2023-11-14T22:13:40Z"),
        ],
        20.0,
    ),
    ("no rate-limit headers", 429, [("Content-Type", "text/plain")], None),
    (
        "a remaining without a reset says nothing of when",
        200,
        [("X-RateLimit-Remaining", "0")],
        None,
    ),
]

MALFORMED: list[tuple[str, Headers]] = [
    ("words", [("Retry-After", "soon")]),
    ("negative", [("Retry-After", "-5")]),
    ("exponent", [("Retry-After", "1e9999")]),
    ("huge", [("Retry-After", "9" * 400)]),
    ("not a number", [("Retry-After", "NaN")]),
    ("empty", [("Retry-After", "")]),
    ("blank", [("Retry-After", "   ")]),
    ("infinity", [("Retry-After", "\u221e")]),
    ("a date with no year", [("Retry-After", "Tue, 14 Nov 22:13:50 GMT")]),
    ("empty parameters", [("RateLimit", '"burst";r=;t=abc')]),
    ("unterminated string", [("RateLimit", '"burst;r=0;t=5')]),
    ("no item", [("RateLimit", ";;;,,,;r=0")]),
    ("policy with a bad window", [("RateLimit-Policy", '"a";w=x'), ("RateLimit", '"a";r=0')]),
    ("dictionary of words", [("RateLimit", "limit=a, remaining=b, reset=c")]),
    (
        "a bad RFC 3339 date",
        [
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2024-13-45T99:99:99Z"),
        ],
    ),
    (
        "an offset of a day",
        [
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2023-11-14T22:14:00+25:00"),
        ],
    ),
    (
        "an RFC 3339 date in words",
        [
            ("anthropic-ratelimit-tokens-remaining", "0"),
            ("anthropic-ratelimit-tokens-reset", "tomorrow"),
        ],
    ),
    (
        "a duration with no unit at the end",
        [
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "6m0"),
        ],
    ),
    (
        "a duration of unknown units",
        [
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "1x"),
        ],
    ),
    ("a unit alone", [("x-ratelimit-remaining-tokens", "0"), ("x-ratelimit-reset-tokens", "m")]),
    ("hex", [("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", "0x10")]),
    ("remaining in words", [("X-RateLimit-Remaining", "none"), ("X-RateLimit-Reset", "10")]),
]


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        pytest.param(status, headers, expected, id=what)
        for what, status, headers, expected in ANNOUNCEMENTS
    ],
)
def test_real_replies_announce_these_pauses(
    status: int, headers: Headers, expected: float | None
) -> None:
    announced = read_announcement(status, headers, NOW)
    if expected is None:
        assert announced is None
    else:
        assert announced is not None
        assert announced.seconds == pytest.approx(expected, abs=1e-6)
        assert announced.reason


@pytest.mark.parametrize("headers", [pytest.param(h, id=what) for what, h in MALFORMED])
@pytest.mark.parametrize("status", [200, 429, 503])
def test_malformed_headers_are_ignored(status: int, headers: Headers) -> None:
    assert read_announcement(status, headers, NOW) is None


def test_a_malformed_header_leaves_a_good_one_its_say() -> None:
    headers = [("Retry-After", "soon"), ("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", "8")]
    announced = read_announcement(429, headers, NOW)
    assert announced is not None
    assert announced.seconds == 8.0


_NAMES = st.sampled_from(
    [
        "Retry-After",
        "RateLimit",
        "RateLimit-Policy",
        "RateLimit-Remaining",
        "RateLimit-Reset",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
        "X-RateLimit-Reset-After",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
    ]
)
_VALUES = st.one_of(
    st.text(max_size=40),
    st.text(alphabet='0123456789-+.:;,="TZ smhu', max_size=30),
    st.from_regex(r"-?\d{1,30}(\.\d{0,5})?", fullmatch=True),
)


@given(
    status=st.sampled_from([200, 429, 503]),
    headers=st.lists(st.tuples(_NAMES, _VALUES), max_size=6),
    now=st.floats(min_value=0, max_value=4e9),
)
def test_no_header_value_ever_raises_and_no_pause_is_negative(
    status: int, headers: Headers, now: float
) -> None:
    announced = read_announcement(status, headers, now)
    if announced is not None:
        assert announced.seconds > 0
        assert announced.seconds < float("inf")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("6m0s", 360.0), ("1s", 1.0), ("0.5s", 0.5), ("20ms", 0.02), ("1h30m", 5400.0),
     ("250us", 0.00025), ("3", 3.0), ("1m30.5s", 90.5)],
)  # fmt: skip
def test_durations_read_as_go_writes_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_dates_are_read_against_the_time_given() -> None:
    date = email.utils.formatdate(NOW + 42, usegmt=True)
    assert parse_http_date(date, NOW) == 42.0
    assert parse_delay(date, NOW) == 42.0
    assert parse_rfc3339("2023-11-14T22:13:20z", NOW) == 0.0


def test_the_filter_keeps_every_dialect_and_nothing_else() -> None:
    for _, _, headers, _ in ANNOUNCEMENTS:
        for name, _ in headers:
            if name.lower() not in {"content-type"} and not name.lower().endswith(
                ("-limit", "-used", "-resource", "limit-requests", "limit-tokens")
            ):
                assert relevant(name.lower()), name
    assert not relevant("content-length")
    assert not relevant("date")


def test_retry_after_reads_any_clients_response() -> None:
    request = httpx.Request("GET", "http://example.invalid/")
    assert retry_after(httpx.Response(429, headers={"Retry-After": "7"}, request=request)) == 7.0
    assert retry_after(httpx.Response(429, request=request)) is None
    assert (
        retry_after(httpx.Response(429, headers={"Retry-After": "soon"}, request=request)) is None
    )
    past = httpx.Response(503, headers={"Retry-After": "Fri, 31 Dec 1999 23:59:59 GMT"})
    assert retry_after(past) == 0.0
    reply = requests.Response()
    reply.headers["retry-after"] = "3"
    assert retry_after(reply) == 3.0
