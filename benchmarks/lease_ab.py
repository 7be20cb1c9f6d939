"""The uncontended lease and named request of two source trees, in one process, interleaved.

    git archive cbde51b src | tar -x -C /tmp/base
    PYTHONPATH=src python benchmarks/lease_ab.py /tmp/base/src 31

The tree given (its ``allotment`` package) is copied to a temporary directory as
``allotment_base`` and imported beside the ``allotment`` on the path, so that both are timed
against the same ``threading.Semaphore`` in each repeat (the machine's load moves between runs;
the ratio within a repeat is steadier). Prints, per case, the median over the repeats of
``with x: pass`` (5,000 each) and the median of the per-repeat ratio to threading's.
"""

from __future__ import annotations

import gc
import shutil
import statistics
import sys
import tempfile
import threading
import timeit
from collections.abc import Callable
from pathlib import Path
from types import ModuleType


def _cases(module: ModuleType, tag: str) -> dict[str, Callable[[], None]]:
    pool = module.ResourceManager(1)
    node = module.ResourceManager({"gpu": 4, "ram_gb": 64})

    def lease() -> None:
        with pool.acquire(1):
            pass

    def named() -> None:
        with node.acquire({"gpu": 1, "ram_gb": 8}):
            pass

    return {f"lease {tag}": lease, f"named {tag}": named}


def main() -> None:
    base_tree, repeats = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 31
    scratch = Path(tempfile.mkdtemp())
    shutil.copytree(base_tree / "allotment", scratch / "allotment_base")
    sys.path.insert(0, str(scratch))
    import allotment_base  # type: ignore[import-not-found]

    import allotment

    plain = threading.Semaphore()

    def with_threading() -> None:
        with plain:
            pass

    cases = {
        "threading": with_threading,
        **_cases(allotment_base, "base"),
        **_cases(allotment, "new"),
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    gc.disable()
    for _ in range(repeats):
        for name, case in cases.items():
            samples[name].append(timeit.timeit(case, number=5000) / 5000 * 1e9)
    gc.enable()
    shutil.rmtree(scratch)
    print(sys.version.split()[0])
    for name, values in samples.items():
        ratio = statistics.median(a / b for a, b in zip(values, samples["threading"], strict=True))
        print(f"  {name:12s} {statistics.median(values):6.0f} ns  {ratio:.2f}x")


if __name__ == "__main__":
    main()
