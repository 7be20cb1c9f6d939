"""The parts of ``acquire_all``, ``try_acquire_all`` and ``guard`` are typed by face: mypy
rejects an amount of the wrong form, as the runtime does (see ``typing_parts.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).parent


@pytest.mark.timeout(600)
def test_mypy_rejects_parts_of_the_wrong_form_and_accepts_the_right_ones() -> None:
    pytest.importorskip("mypy", reason="mypy is in the lint group")
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            str(_TESTS.parent / "pyproject.toml"),
            str(_TESTS / "typing_parts.py"),
        ],
        capture_output=True,
        text=True,
        cwd=_TESTS.parent,
        env={**os.environ, "MYPY_FORCE_COLOR": "0"},
        check=False,
    )
    # Every marked call must be an error (else "unused type: ignore"), and nothing else.
    assert finished.returncode == 0, finished.stdout + finished.stderr
