"""Checked by ``mypy --strict`` (the project's configuration covers ``tests/``), never run:
each ``type: ignore`` below marks a call the type checker must reject, and an ignore that
is not needed is itself an error (``warn_unused_ignores``). ``test_typing.py`` runs mypy on
this file alone."""

from __future__ import annotations

from collections.abc import Mapping

import allotment


def parts_are_typed_by_face(
    pool: allotment.ResourceManager[int],
    node: allotment.ResourceManager[Mapping[str, int]],
    api: allotment.RateLimiter,
    window: allotment.WindowLimiter,
) -> None:
    # What is meant: an int for a plain manager, a mapping for a named one, an int cost.
    allotment.acquire_all([(pool, 1), (node, {"gpu": 1}), (api, 1), (window, 2)])
    allotment.try_acquire_all([(pool, 2), (node, {"gpu": 1, "ram": 4})])
    allotment.acquire_all_async([(node, {"gpu": 1}), (api, 1)])
    allotment.guard((pool, 1), (api, 1))
    requests: list[allotment.Request] = [(pool, 1)]
    requests.append((node, {"gpu": 1}))
    allotment.acquire_all(requests)

    # What the runtime refuses, the type checker refuses too.
    allotment.acquire_all([(pool, "x")])  # type: ignore[list-item]
    allotment.acquire_all([(node, 1)])  # type: ignore[list-item]
    allotment.acquire_all([(pool, {"gpu": 1})])  # type: ignore[list-item]
    allotment.acquire_all([(object(), 1)])  # type: ignore[list-item]
    allotment.acquire_all([(api, {"gpu": 1})])  # type: ignore[list-item]
    allotment.try_acquire_all([(node, 1)])  # type: ignore[list-item]
    allotment.acquire_all_async([(pool, "x")])  # type: ignore[list-item]
    allotment.guard((node, 1))  # type: ignore[arg-type]
    allotment.guard((object(), 1))  # type: ignore[arg-type]
    requests.append((node, 1))  # type: ignore[arg-type]
