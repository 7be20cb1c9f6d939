"""The demo's multi-process part: worker processes share a LocalBackend pool, queue in one
FIFO, a SIGKILLed holder's units are reclaimed (and the reclaim logged), and the capacity is
never exceeded."""

from __future__ import annotations

import sys

import pytest

import allotment
from allotment import _demo_processes
from allotment.__main__ import main
from allotment._demo_processes import GPUS, PLAN, Hold, most_held, run_processes_demo

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="LocalBackend is POSIX only")


@posix_only
@pytest.mark.timeout(300)
def test_the_processes_share_the_gpus_and_get_a_killed_holders_back() -> None:
    lines: list[str] = []
    seen = run_processes_demo(lines.append)
    text = "\n".join(lines)
    assert seen.skipped is None
    assert seen.killed_pid is not None
    assert f"SIGKILL to the holder (pid {seen.killed_pid})" in text
    # The reclaim was logged, by whichever process noticed first, with the dead one's pid.
    assert any(
        "reclaimed 1 holder(s)" in log and f"process {seen.killed_pid}" in log
        for log in seen.reclaim_logs
    ), seen.reclaim_logs
    assert "allotment.local in " in text
    assert "proc-1 was granted " in text
    holds = {hold.name: hold for hold in seen.holds}
    assert sorted(holds) == sorted(name for name, _ in PLAN)
    assert {name: hold.units for name, hold in holds.items()} == dict(PLAN)
    # One FIFO across processes: granted in the order they asked (fencing tokens increase
    # with every grant), proc-2's single GPU after proc-1 although one was free when it asked.
    tokens = [holds[name].fencing_token or 0 for name, _ in PLAN]
    assert all(token > 0 for token in tokens)
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == len(tokens)
    assert "proc-2 asks for 1 GPU(s) with 1 free, yet it queues" in text
    # The waiters got the holder's units only after it was killed; proc-3 (all four) only
    # after proc-1 and proc-2 gave theirs back.
    killed_at = holds["holder"].end
    assert all(holds[name].start > killed_at for name in ("proc-1", "proc-2", "proc-3"))
    assert holds["proc-3"].start >= max(holds["proc-1"].end, holds["proc-2"].end)
    assert seen.most_held == GPUS
    assert f"at most {GPUS} of {GPUS} GPUs held at once" in text
    assert seen.available_after == GPUS
    assert f"afterwards {GPUS} of {GPUS} available, 0 holder(s)" in text


def test_most_held_counts_overlaps_and_a_hand_off_at_one_instant() -> None:
    holds = [Hold("a", 3, 0.0, 2.0, 1), Hold("b", 2, 1.0, 3.0, 2), Hold("c", 1, 3.0, 4.0, 3)]
    assert most_held(holds) == 5  # a and b overlap: what the demo's check would catch
    assert most_held([Hold("a", 4, 0.0, 1.0, 1), Hold("b", 4, 1.0, 2.0, 2)]) == 4
    assert most_held([]) == 0


def test_where_the_local_backend_refuses_the_part_is_skipped_with_a_clear_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(path: str) -> allotment.LocalBackend:
        raise allotment.UnsupportedByBackend("LocalBackend needs POSIX (Linux or macOS)")

    monkeypatch.setattr(_demo_processes, "LocalBackend", refuse)
    lines: list[str] = []
    seen = run_processes_demo(lines.append)
    assert seen.skipped is not None
    assert "POSIX" in seen.skipped
    assert seen.holds == ()
    assert lines == [
        "processes: skipped, LocalBackend is not available here "
        "(LocalBackend needs POSIX (Linux or macOS))"
    ]


def test_the_command_line_can_leave_the_processes_out(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--workers", "2", "--jobs", "2", "--tasks", "0", "--no-processes"]) == 0
    out = capsys.readouterr().out
    assert "final statistics:" in out
    assert "LocalBackend" not in out
