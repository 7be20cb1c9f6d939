"""Test configuration: Hypothesis profiles and a guard against threads outliving a test."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

# Threaded examples take as long as their threads do: no per-example deadline. Hypothesis
# loads its built-in "ci" profile by itself when CI is set; extend it rather than replace it.
_slow_checks = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile(
    "ci", parent=settings.get_profile("ci"), deadline=None, suppress_health_check=_slow_checks
)
settings.register_profile("dev", deadline=None, suppress_health_check=_slow_checks)
settings.register_profile(
    "heavy", deadline=None, suppress_health_check=_slow_checks, max_examples=500
)
if os.environ.get("ALLOTMENT_STRESS") == "heavy":
    settings.load_profile("heavy")
elif os.environ.get("CI"):
    settings.load_profile("ci")
else:
    settings.load_profile("dev")


@pytest.fixture(autouse=True)
def no_thread_outlives_the_test() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    for thread in set(threading.enumerate()) - before:
        thread.join(30)
        assert not thread.is_alive(), f"thread {thread.name} is still running after the test"
