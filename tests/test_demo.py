"""The demo runs, narrates, and leaves every unit back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.timeout(300)
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
    if sys.platform != "win32":  # then the processes part ran too, its reclaim logged
        assert "through a LocalBackend directory" in completed.stdout
        assert "logged: reclaimed 1 holder(s)" in completed.stdout
        assert "GPUs held at once; afterwards 4 of 4 available" in completed.stdout
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


@pytest.mark.timeout(300)
def test_the_demo_writes_its_trace_and_its_picture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    from test_events import check_trace

    trace, picture = tmp_path / "demo.json", tmp_path / "demo.png"
    assert main(["demo", "--trace", str(trace), "--plot", str(picture)]) == 0
    document = json.loads(trace.read_text(encoding="utf-8"))
    counts = check_trace(document, {"gpu-node": {"gpu": 4, "ram_gb": 64}})
    assert counts["holds"] == 6 * 3 + 2 * 3
    assert counts["hand_offs"] > 0
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "ui.perfetto.dev" in out
    assert "show the threads and tasks, not the processes" in out
