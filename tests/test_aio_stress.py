"""Stress: hundreds of tasks and dozens of threads on one manager, cancellations injected.

Hypothesis writes a script for every task and every thread; the tasks run on one event loop,
the threads beside it, all on one manager of named resources. A canceller cancels tasks at
generated moments (while queued, as a grant arrives, while holding), a watcher task checks the
invariants after every step of the loop, and at the end every unit must be back, every task
finished and every thread done.

``ALLOTMENT_STRESS=heavy`` runs many more examples.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

import allotment
from support import GENEROUS, assert_idle, check_invariants, start, switch_interval

HEAVY = os.environ.get("ALLOTMENT_STRESS") == "heavy"
EXAMPLES = 100 if HEAVY else 10
CAPACITY = {"gpu": 4, "ram": 16}


@attrs.frozen
class Step:
    request: dict[str, int]
    how: str  # "with", "timeout", "try", "zero"
    timeout: float
    hold: int  # loop iterations (tasks) or switches (threads) to hold for


def _step(rng: random.Random) -> Step:
    names = rng.sample(sorted(CAPACITY), rng.randint(1, 2))
    return Step(
        request={name: rng.randint(1, CAPACITY[name]) for name in names},
        how=rng.choice(["with", "with", "timeout", "try", "zero"]),
        timeout=rng.choice([0.0005, 0.002, 0.02]),
        hold=rng.randint(0, 3),
    )


@attrs.frozen
class Workload:
    tasks: list[list[Step]]
    threads: list[list[Step]]
    cancel_at: dict[int, int]
    """Task index -> loop iterations after its start at which it is cancelled."""


@st.composite
def workloads(draw: st.DrawFn) -> Workload:
    """Hundreds of scripts are too much data to draw one choice at a time (Hypothesis would
    overrun its buffer): it draws the sizes and a seed, and the scripts follow from those."""
    task_count = draw(st.integers(100, 300 if HEAVY else 200))
    thread_count = draw(st.integers(12, 40 if HEAVY else 24))
    cancelled_share = draw(st.sampled_from([0.0, 0.1, 0.33]))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))

    def script() -> list[Step]:
        return [_step(rng) for _ in range(rng.randint(1, 3))]

    tasks = [script() for _ in range(task_count)]
    threads = [script() for _ in range(thread_count)]
    cancelled = rng.sample(range(task_count), int(task_count * cancelled_share))
    return Workload(tasks, threads, {index: rng.randint(0, 12) for index in sorted(cancelled)})


async def run_task_script(
    manager: allotment.ResourceManager[Any], script: list[Step], tally: dict[str, int]
) -> None:
    for step in script:
        if step.how == "try":
            lease = manager.try_acquire(step.request)
            if lease is None:
                tally["refused"] += 1
                continue
            with lease:
                for _ in range(step.hold):
                    await asyncio.sleep(0)
            tally["granted"] += 1
            continue
        timeout = {"with": GENEROUS, "timeout": step.timeout, "zero": 0}[step.how]
        try:
            async with manager.acquire_async(step.request, timeout=timeout):
                for _ in range(step.hold):
                    await asyncio.sleep(0)
        except allotment.AcquireTimeout:
            tally["timed out"] += 1
        else:
            tally["granted"] += 1


def run_thread_script(
    manager: allotment.ResourceManager[Any], script: list[Step], tally: dict[str, int]
) -> None:
    rng = random.Random(len(script))
    for step in script:
        timeout = {"with": GENEROUS, "timeout": step.timeout, "zero": 0, "try": 0}[step.how]
        try:
            with manager.acquire(step.request, timeout=timeout):
                for _ in range(step.hold):
                    if rng.random() < 0.5:
                        threading.Event().wait(0.0001)
        except allotment.AcquireTimeout:
            with tally_lock:
                tally["thread timed out"] += 1
        else:
            with tally_lock:
                tally["thread granted"] += 1


tally_lock = threading.Lock()


@settings(max_examples=EXAMPLES)
@given(workloads())
def test_tasks_and_threads_with_cancellations_keep_every_invariant(workload: Workload) -> None:
    manager = allotment.ResourceManager(CAPACITY, name="stressed")
    tally: dict[str, int] = dict.fromkeys(
        ["granted", "refused", "timed out", "cancelled", "thread granted", "thread timed out"],
        0,
    )

    cancelled: set[int] = set()

    async def main() -> None:
        stop_watching = asyncio.Event()

        async def watcher() -> None:
            while not stop_watching.is_set():
                check_invariants(manager.statistics())
                await asyncio.sleep(0)

        watching = asyncio.create_task(watcher())
        threads = [
            start(run_thread_script, manager, script, tally, name=f"thread-{index}")
            for index, script in enumerate(workload.threads)
        ]
        tasks = [
            asyncio.create_task(run_task_script(manager, script, tally), name=f"task-{index}")
            for index, script in enumerate(workload.tasks)
        ]

        async def cancel_later(task: asyncio.Task[None], after: int) -> None:
            for _ in range(after):
                await asyncio.sleep(0)
            task.cancel()

        cancellers = [
            asyncio.create_task(cancel_later(tasks[index], after))
            for index, after in workload.cancel_at.items()
        ]
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), GENEROUS)
        await asyncio.gather(*cancellers)
        for index, result in enumerate(results):
            if isinstance(result, asyncio.CancelledError):
                tally["cancelled"] += 1
                cancelled.add(index)
            elif result is not None:
                raise result
        for thread in threads:
            await asyncio.to_thread(thread.outcome)
        stop_watching.set()
        await watching

    with switch_interval(1e-5):
        asyncio.run(main())
    assert_idle(manager)
    finished = tally["granted"] + tally["refused"] + tally["timed out"]
    completed_steps = sum(
        len(script) for index, script in enumerate(workload.tasks) if index not in cancelled
    )
    assert completed_steps <= finished <= sum(len(script) for script in workload.tasks)
    assert cancelled <= set(workload.cancel_at)
    assert tally["thread granted"] + tally["thread timed out"] == sum(
        len(script) for script in workload.threads
    )
