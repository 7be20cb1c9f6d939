"""``python -m allotment demo``: see the library at work."""

from __future__ import annotations

import argparse
import sys

from ._demo import run_demo
from ._demo_processes import run_processes_demo
from ._recorder import Recorder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m allotment")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="threads and asyncio tasks contend for a GPU node, then processes share GPUs "
        "through a LocalBackend; see who got what",
    )
    demo.add_argument("--workers", type=int, default=6, help="threads (default 6)")
    demo.add_argument("--tasks", type=int, default=2, help="asyncio tasks (default 2)")
    demo.add_argument("--jobs", type=int, default=3, help="jobs per thread or task (default 3)")
    demo.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    demo.add_argument(
        "--trace", metavar="PATH", help="write the run as a trace to open in ui.perfetto.dev"
    )
    demo.add_argument("--plot", metavar="PATH", help="draw the run's timeline (needs matplotlib)")
    demo.add_argument(
        "--no-processes",
        dest="processes",
        action="store_false",
        help="skip the part where worker processes share GPUs through a LocalBackend",
    )
    arguments = parser.parse_args(argv)
    if arguments.workers < 2 or arguments.jobs < 2 or arguments.tasks < 0:
        parser.error("the demo needs at least 2 workers and 2 jobs each, and 0 tasks or more")
    recorder = Recorder()
    if arguments.trace is None and arguments.plot is None:
        run_demo(arguments.workers, arguments.jobs, arguments.seed, tasks=arguments.tasks)
    else:
        with recorder:
            run_demo(arguments.workers, arguments.jobs, arguments.seed, tasks=arguments.tasks)
    if arguments.processes:
        # Not recorded: a trace is of one process, and the children's events stay theirs.
        run_processes_demo()
    if arguments.trace is not None:
        if arguments.processes:
            print("the trace and the picture show the threads and tasks, not the processes")
        recorder.export_trace(arguments.trace)
        print(f"wrote {arguments.trace}: open it in https://ui.perfetto.dev")
    if arguments.plot is not None:
        recorder.plot(arguments.plot, title="python -m allotment demo: who waited, who held")
        print(f"wrote {arguments.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
