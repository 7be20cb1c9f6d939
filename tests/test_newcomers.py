"""What a newcomer gets wrong first gets a precise answer: a plain ``with`` on an asyncio
acquisition, and a lease dropped on the floor."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import allotment
from support import assert_idle


def _manager_acquisition(pool: allotment.ResourceManager[int]) -> Any:
    return pool.acquire_async(1)


def _group_acquisition(pool: allotment.ResourceManager[int]) -> Any:
    return allotment.acquire_all_async([(pool, 1)])


@pytest.mark.parametrize(
    "acquisition",
    [_manager_acquisition, _group_acquisition],
    ids=["acquire_async", "acquire_all_async"],
)
def test_with_instead_of_async_with_says_use_async_with(
    acquisition: Callable[[allotment.ResourceManager[int]], Any],
) -> None:
    pool = allotment.ResourceManager(2)

    async def main() -> None:
        with (
            pytest.raises(TypeError, match=r"use 'async with', not 'with'"),
            acquisition(pool),
        ):
            pytest.fail("entered")

    asyncio.run(main())  # and no "never awaited" warning (warnings are errors here)
    assert_idle(pool)
