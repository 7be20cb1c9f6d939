"""The demo runs, narrates, and leaves every unit back."""

from __future__ import annotations

import subprocess
import sys

import pytest

from allotment.__main__ import main
from allotment._demo import run_demo
from support import assert_idle


def test_demo_narrates_and_returns_everything() -> None:
    lines: list[str] = []
    node = run_demo(workers=4, jobs_per_worker=2, seed=1, print_line=lines.append, tasks=2)
    text = "\n".join(lines)
    assert "4 worker threads and 2 asyncio tasks start, 2 jobs each" in text
    assert "worker-1 got {'gpu': 4, 'ram_gb': 64}" in text  # the whole node, in its turn
    assert text.count(" got ") == 8 + 4
    assert text.count(" (asyncio) got ") == 4
    assert "waiting per worker" in text
    assert "final statistics:" in text
    assert node.closed
    stats = node.statistics()
    assert stats.holders == ()
    assert stats.waiters == ()
    assert stats.available == stats.capacity


def test_demo_command_line() -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "allotment",
            "demo",
            "--workers",
            "3",
            "--jobs",
            "2",
            "--tasks",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "final statistics:" in completed.stdout
    assert completed.stderr == ""


def test_demo_rejects_nonsense_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--workers", "1"])
    assert "at least 2 workers" in capsys.readouterr().err


def test_assert_idle_helper_sees_a_busy_manager() -> None:
    import allotment

    pool = allotment.ResourceManager(2)
    with pool.acquire(1), pytest.raises(AssertionError):
        assert_idle(pool)
