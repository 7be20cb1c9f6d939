"""Several processes on one LocalBackend directory: a SIGKILLed holder's units reach a
waiter of another process, kill -9 storms leave the state exact, and a soak with a watcher
never sees the capacity exceeded."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import allotment
from allotment.local._layout import GRANTED, State
from local_workers import churn, hammer, hold_forever
from support import wait_until

spawn = multiprocessing.get_context("spawn")
fast: Any
if "forkserver" in multiprocessing.get_all_start_methods():
    # Children forked from a server that has imported allotment: 150 of them in seconds.
    forkserver = multiprocessing.get_context("forkserver")
    forkserver.set_forkserver_preload(["allotment", "local_workers"])
    fast = forkserver
else:  # pragma: no cover - macOS has it too
    fast = spawn


def _state(backend: allotment.LocalBackend, name: str) -> State:
    file = backend._files[name]
    state = file.section(lambda current: (current, None))
    assert state is not None
    return state


def _exact(state: State) -> None:
    """The file's invariant: available == capacity - what the holders hold."""
    held = [0] * len(state.capacity)
    for record in state.records:
        if record.kind == GRANTED:
            held = [h + u for h, u in zip(held, record.units, strict=True)]
    assert state.available == [c - h for c, h in zip(state.capacity, held, strict=True)]
    assert all(h <= c for h, c in zip(held, state.capacity, strict=True))


def _kill(process: Any) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.join(30)


@pytest.mark.timeout(120)
def test_a_sigkilled_holder_of_everything_hands_its_units_to_a_waiter_of_another_process(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "limits")
    backend = allotment.LocalBackend(path)
    try:
        pool = allotment.ResourceManager(4, name="gpus", backend=backend)
        held = spawn.Event()
        holder = spawn.Process(target=hold_forever, args=(path, "gpus", 4, 4, held))
        holder.start()
        assert held.wait(60)
        assert pool.try_acquire(1) is None
        granted: list[float] = []

        def wait() -> None:
            with pool.acquire(4, timeout=60):
                granted.append(time.monotonic())

        waiter = threading.Thread(target=wait)
        waiter.start()
        wait_until(lambda: _state(backend, "gpus").records[-1].kind != GRANTED, "the waiter queued")
        # The waiter's doorbell thread watches the holder (a pidfd): no poll, no TTL.
        wait_until(lambda: backend._bell is not None and bool(backend._bell._watched), "it watches")
        killed = time.monotonic()
        _kill(holder)
        waiter.join(30)
        assert granted, "the waiter was not granted"
        print(f"granted {1000 * (granted[0] - killed):.2f} ms after the SIGKILL")
        _exact(_state(backend, "gpus"))
        assert pool.statistics().available == 4
    finally:
        backend.close()


@pytest.mark.timeout(120)
def test_a_sigkilled_holder_hands_its_units_to_a_task(tmp_path: Path) -> None:
    path = str(tmp_path / "limits")
    backend = allotment.LocalBackend(path)
    try:
        pool = allotment.ResourceManager(4, name="gpus", backend=backend)
        held = spawn.Event()
        holder = spawn.Process(target=hold_forever, args=(path, "gpus", 4, 3, held))
        holder.start()
        assert held.wait(60)

        async def main() -> int:
            waiting = asyncio.ensure_future(pool.acquire_async(2, timeout=60))
            await asyncio.sleep(0)
            while _state(backend, "gpus").records[-1].kind == GRANTED:
                await asyncio.sleep(0.001)
            _kill(holder)
            lease = await waiting
            async with lease:
                return lease.amounts

        assert asyncio.run(main()) == 2
        _exact(_state(backend, "gpus"))
    finally:
        backend.close()


@pytest.mark.timeout(300)
def test_150_sigkills_mid_acquire_release_and_try_leave_the_state_exact(tmp_path: Path) -> None:
    path = str(tmp_path / "limits")
    backend = allotment.LocalBackend(path)
    capacity = 3
    try:
        pool = allotment.ResourceManager(capacity, name="storm", backend=backend)
        chooser = random.Random(21)
        running: list[Any] = []
        kills = 0
        seed = 0
        watching = True
        seen: list[State] = []

        def watch() -> None:
            while watching:
                state = _state(backend, "storm")
                _exact(state)
                seen.append(state)
                time.sleep(0.001)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            while kills < 150:
                while len(running) < 6:
                    seed += 1
                    started = fast.Event()
                    child = fast.Process(
                        target=churn, args=(path, "storm", capacity, seed, started)
                    )
                    child.start()
                    assert started.wait(60)
                    running.append(child)
                time.sleep(chooser.random() / 50)  # somewhere in the middle of its work
                victim = running.pop(chooser.randrange(len(running)))
                _kill(victim)
                kills += 1
            for child in running:
                _kill(child)
        finally:
            watching = False
            watcher.join(30)
        assert len(seen) > 10
        # Every unit is recoverable at once: the dead are reclaimed by the next request.
        lease = pool.try_acquire(capacity)
        assert lease is not None
        lease.release()
        state = _state(backend, "storm")
        _exact(state)
        assert state.available == [capacity]
        assert state.records == []
    finally:
        backend.close()


def _overlaps(holds: list[Any], capacity: int) -> int:
    events = sorted(
        [(start, units) for start, _, units, _ in holds]
        + [(end, -units) for _, end, units, _ in holds],
        key=lambda e: (e[0], e[1]),
    )
    level = most = 0
    for _, change in events:
        level += change
        most = max(most, level)
    return most


@pytest.mark.timeout(300)
def test_a_soak_of_four_processes_with_a_watcher_never_exceeds_the_capacity(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "limits")
    backend = allotment.LocalBackend(path)
    capacity = 5
    try:
        allotment.ResourceManager(capacity, name="soak", backend=backend)
        watching = True
        checks = [0]

        def watch() -> None:
            while watching:
                _exact(_state(backend, "soak"))
                checks[0] += 1

        watcher = threading.Thread(target=watch)
        watcher.start()
        logs = [tmp_path / f"log-{index}.json" for index in range(4)]
        children = [
            fast.Process(target=hammer, args=(path, "soak", capacity, str(log), (3, 60, index)))
            for index, log in enumerate(logs)
        ]
        try:
            for child in children:
                child.start()
            for child in children:
                child.join(240)
                assert child.exitcode == 0
        finally:
            watching = False
            watcher.join(30)
        holds: list[Any] = []
        for log in logs:
            report = json.loads(log.read_text())
            assert report["errors"] == []
            holds += report["holds"]
        assert len(holds) == 4 * 3 * 60
        assert _overlaps(holds, capacity) <= capacity
        tokens = [token for _, _, _, token in holds]
        assert len(set(tokens)) == len(tokens)
        assert checks[0] > 10
        state = _state(backend, "soak")
        _exact(state)
        assert state.records == []
    finally:
        backend.close()
