"""The demo behind ``python -m allotment demo``: threads sharing a GPU node, narrated."""

from __future__ import annotations

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
) -> ResourceManager[Mapping[str, int]]:
    """Run the demo and return its (closed) manager; everything printed goes to ``print_line``."""
    node = ResourceManager(dict(NODE), name="gpu-node")
    started = now()
    print_lock = threading.Lock()
    waits: dict[str, list[float]] = {}

    def say(text: str) -> None:
        with print_lock:
            print_line(f"[{now() - started:6.3f}s] {text}")

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

    rng = random.Random(seed)
    barrier = threading.Barrier(workers + 1)
    threads = [
        threading.Thread(
            target=worker,
            args=(f"worker-{n}", random.Random(rng.random()), barrier),
            name=f"worker-{n}",
        )
        for n in range(workers)
    ]
    for thread in threads:
        thread.start()
    say(f"{workers} workers start, {jobs_per_worker} jobs each, on {NODE}")
    barrier.wait()
    time.sleep(0.05)
    say("a look at the node while it is busy (who holds what, who waits for what):")
    for line in str(node.statistics()).splitlines():
        print_line(f"          {line}")
    for thread in threads:
        thread.join()
    node.close()
    print_line("")
    print_line("waiting per worker (first come, first served; nobody starves):")
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
