"""What a newcomer gets wrong first gets a precise answer: a plain ``with`` on an asyncio
acquisition, and a lease dropped on the floor."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import allotment
from support import GENEROUS, assert_idle


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


_BARE_STATEMENT = """\
import allotment

pool = allotment.ResourceManager(1, name="api")


def call_the_api():
    pool.acquire(1)  # meant as api.acquire(): the lease is dropped at once
    return pool.statistics().available


assert call_the_api() == 1
"""


@pytest.mark.timeout(60)
def test_a_lease_dropped_at_once_warns_by_default_at_the_users_line(tmp_path: Path) -> None:
    script = tmp_path / "newcomer.py"
    script.write_text(_BARE_STATEMENT)
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("PYTHON")
    }
    # Python's default warning filters: no -W, no PYTHONWARNINGS, no -X dev.
    finished = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=GENEROUS,
        check=True,
    )
    line = _BARE_STATEMENT.splitlines().index(
        "    pool.acquire(1)  # meant as api.acquire(): the lease is dropped at once"
    )
    assert f"{script}:{line + 1}: LeakedLeaseWarning: a lease of 1 from 'api'" in (
        finished.stderr
    ), finished.stderr
    assert "_pool.py" not in finished.stderr
