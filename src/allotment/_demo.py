"""The first part of ``python -m allotment demo``: threads, and asyncio tasks on an event loop
of their own, sharing a GPU node in one queue, narrated (the processes: ``_demo_processes``)."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Mapping

from ._clock import SYSTEM_CLOCK
from ._manager import ResourceManager

__all__ = ["run_demo"]

now = SYSTEM_CLOCK.now

NODE = {"gpu": 4, "ram_gb": 64}


def run_demo(
    workers: int = 6,
    jobs_per_worker: int = 3,
    seed: int = 7,
    print_line: Callable[[str], None] = print,
    tasks: int = 2,
) -> ResourceManager[Mapping[str, int]]:
    """Run the demo and return its (closed) manager; everything printed goes to ``print_line``.

    ``workers`` threads and ``tasks`` asyncio tasks (on one event loop, in a thread of its own)
    each run ``jobs_per_worker`` jobs."""
    node = ResourceManager(dict(NODE), name="gpu-node")
    started = now()
    print_lock = threading.RLock()  # an owner: its release is its own test (see say)
    waits: dict[str, list[float]] = {}

    def say(text: str) -> None:
        try:  # see "Releasing" in ``_core._section_lock``
            print_lock.acquire()
            print_line(f"[{now() - started:6.3f}s] {text}")
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                print_lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock

    def worker(name: str, rng: random.Random, barrier: threading.Barrier) -> None:
        barrier.wait()
        for job in range(jobs_per_worker):
            # One job in each worker's second round wants the whole node: watch it wait its
            # turn while smaller requests queue behind it instead of overtaking it.
            if job == 1 and name == "worker-1":
                request = dict(NODE)
            else:
                request = {"gpu": rng.randint(1, 2), "ram_gb": rng.choice([8, 16, 24])}
            asked = now()
            with node.acquire(request, timeout=30) as lease:
                waited = now() - asked
                waits.setdefault(name, []).append(waited)
                say(f"{name} got {lease.amounts} after waiting {waited:.3f}s")
                time.sleep(rng.uniform(0.02, 0.08))
                if lease.amounts["ram_gb"] > 8:
                    lease.release({"ram_gb": 8})  # done with part of its memory early
            say(f"{name} returned its lease")

    async def task(name: str, rng: random.Random) -> None:
        for _ in range(jobs_per_worker):
            request = {"gpu": 1, "ram_gb": rng.choice([8, 16])}
            asked = now()
            # The same queue as the threads: the loop never blocks while the task waits.
            async with node.acquire_async(request, timeout=30) as lease:
                waited = now() - asked
                waits.setdefault(name, []).append(waited)
                say(f"{name} (asyncio) got {lease.amounts} after waiting {waited:.3f}s")
                await asyncio.sleep(rng.uniform(0.02, 0.08))
            say(f"{name} returned its lease")

    def event_loop(seeds: list[float], barrier: threading.Barrier) -> None:
        async def main() -> None:
            await asyncio.gather(
                *(
                    asyncio.create_task(task(f"task-{n}", random.Random(s)), name=f"task-{n}")
                    for n, s in enumerate(seeds)
                )
            )

        barrier.wait()
        asyncio.run(main())

    rng = random.Random(seed)
    barrier = threading.Barrier(workers + 2)
    threads = [
        threading.Thread(
            target=worker,
            args=(f"worker-{n}", random.Random(rng.random()), barrier),
            name=f"worker-{n}",
        )
        for n in range(workers)
    ]
    seeds = [rng.random() for _ in range(tasks)]
    threads.append(threading.Thread(target=event_loop, args=(seeds, barrier), name="event-loop"))
    for thread in threads:
        thread.start()
    say(
        f"{workers} worker threads and {tasks} asyncio tasks start, {jobs_per_worker} jobs "
        f"each, on {NODE}"
    )
    barrier.wait()
    time.sleep(0.05)
    say("a look at the node while it is busy (who holds what, who waits for what):")
    for line in str(node.statistics()).splitlines():
        print_line(f"          {line}")
    for thread in threads:
        thread.join()
    node.close()
    print_line("")
    print_line("waiting per worker and task (first come, first served; nobody starves):")
    for name in sorted(waits):
        times = waits[name]
        print_line(
            f"  {name}: {len(times)} jobs, waited {sum(times):.3f}s in all, "
            f"longest {max(times):.3f}s"
        )
    print_line("")
    print_line("final statistics:")
    for line in str(node.statistics()).splitlines():
        print_line(f"  {line}")
    return node
