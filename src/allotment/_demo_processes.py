"""The multi-process part of ``python -m allotment demo``: worker processes share four GPUs
through a :class:`~allotment.LocalBackend` directory, queue in one FIFO across processes, and
one of them is SIGKILLed while it holds units, which the others get back at once.

The parent talks to each child over a pipe of its own (a killed child cannot leave a lock
held that the others need, as it could in a shared ``multiprocessing.Queue``), tells each when
to ask (so the queue order is the demo's, not the scheduler's), and waits for each request to
be queued by reading ``statistics()``. Every process reads the same clock (the system
clock's ``time.monotonic``: system-wide on Linux and macOS), so the hold intervals the
children report can be checked against the capacity."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait

import attrs

from ._clock import SYSTEM_CLOCK
from ._errors import UnsupportedByBackend
from ._manager import ResourceManager
from .local import LocalBackend

__all__ = ["Hold", "ProcessesDemo", "run_processes_demo"]

now = SYSTEM_CLOCK.now  # time.monotonic: one clock for every process of the host

GPUS = 4
POOL = "gpus"
TIMEOUT = 60.0
"""Generous bound (seconds) on every wait of the demo: a loaded machine is slow, not stuck."""


@attrs.frozen
class Hold:
    """One lease a process held, measured inside the hold on the host's one clock."""

    name: str
    units: int
    start: float
    end: float
    fencing_token: int | None


@attrs.frozen
class ProcessesDemo:
    """What the multi-process part saw; ``skipped`` says why it did not run, if it did not."""

    holds: tuple[Hold, ...] = ()
    most_held: int = 0
    """The most units the reported holds held at one instant (never above :data:`GPUS`)."""
    killed_pid: int | None = None
    reclaim_logs: tuple[str, ...] = ()
    """The ``allotment.local`` log lines of the reclaim, from whichever process made it."""
    available_after: int | None = None
    skipped: str | None = None


# What each child does, in the order the parent lets them ask: the holder takes three of the
# four GPUs and never gives them back (it is killed); "proc-2" asks for one while one is free,
# yet waits, since "proc-1" is ahead of it in the queue.
PLAN: tuple[tuple[str, int], ...] = (("holder", 3), ("proc-1", 2), ("proc-2", 1), ("proc-3", 4))
HOLD_SECONDS = 0.05


class _PipeHandler(logging.Handler):
    """Sends the ``allotment.local`` log lines of a process (the reclaim) to the parent."""

    def __init__(self, send: Callable[[object], None]) -> None:
        super().__init__(logging.INFO)
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        self._send(("log", record.getMessage()))


def _child(path: str, name: str, units: int, connection: Connection) -> None:
    """One worker process: open the backend, wait for the word, take ``units``, hold them a
    moment (or, for the holder, until it is killed), give them back."""
    lock = threading.RLock()  # the doorbell thread logs while the main thread may send

    def send(message: object) -> None:
        try:  # see "Releasing" in ``_core._section_lock``
            lock.acquire()
            connection.send(message)
        finally:
            try:  # noqa: SIM105 - suppress() is Python code: a check point before release
                lock.release()
            except RuntimeError:
                pass  # not taken: the exception came while waiting for the lock

    logger = logging.getLogger("allotment.local")
    logger.addHandler(_PipeHandler(send))
    logger.propagate = False
    backend = LocalBackend(path)
    pool = ResourceManager(GPUS, name=POOL, backend=backend)
    send(("ready", os.getpid()))
    connection.recv()  # the word to ask
    asked = now()
    with pool.acquire(units, timeout=TIMEOUT) as lease:
        start = now()
        send(("got", start, start - asked, lease.fencing_token))
        if name == "holder":
            connection.recv()  # never comes: the parent kills this process
        time.sleep(HOLD_SECONDS)
        end = now()
    send(("returned", end))
    backend.close()
    send(("done", None))
    connection.recv()  # the parent has read everything: exit


def run_processes_demo(print_line: Callable[[str], None] = print) -> ProcessesDemo:
    """Run the multi-process part (a few seconds: most of it starting the processes)."""
    started = now()

    def say(text: str) -> None:
        print_line(f"[{now() - started:6.3f}s] {text}")

    with tempfile.TemporaryDirectory(prefix="allotment-demo-") as directory:
        path = os.path.join(directory, "limits")
        try:
            backend = LocalBackend(path)
        except UnsupportedByBackend as error:
            print_line(f"processes: skipped, LocalBackend is not available here ({error})")
            return ProcessesDemo(skipped=str(error))
        try:
            return _run(backend, path, say, print_line)
        finally:
            backend.close()


def _run(
    backend: LocalBackend,
    path: str,
    say: Callable[[str], None],
    print_line: Callable[[str], None],
) -> ProcessesDemo:
    pool = ResourceManager(GPUS, name=POOL, backend=backend)
    context = multiprocessing.get_context("spawn")  # the same on Linux and macOS
    show = _Show(pool, say)
    processes: dict[str, multiprocessing.process.BaseProcess] = {}
    for name, units in PLAN:
        mine, theirs = context.Pipe()
        show.ends[name] = mine
        processes[name] = context.Process(
            target=_child, args=(path, name, units, theirs), name=name
        )
    parent_logger = logging.getLogger("allotment.local")
    handler = _PipeHandler(lambda message: show.handle("this process", message))
    parent_logger.addHandler(handler)
    try:
        print_line("")
        say(
            f"{len(PLAN)} processes share {GPUS} GPUs through a LocalBackend directory "
            "(no server); starting them"
        )
        for child in processes.values():
            child.start()
        show.until(lambda: len(show.pids) == len(PLAN), "start")
        killed_pid = _play(pool, show, processes["holder"], print_line)
        for end in show.ends.values():
            end.send("exit")
        for child in processes.values():
            child.join(TIMEOUT)
    finally:
        parent_logger.removeHandler(handler)
        for child in processes.values():
            if child.is_alive():  # pragma: no cover - only after an error above
                child.kill()
                child.join(TIMEOUT)
        for end in show.ends.values():
            end.close()
    most = most_held(show.holds)
    statistics = pool.statistics()
    print_line("")
    print_line(
        f"across the processes: at most {most} of {GPUS} GPUs held at once; afterwards "
        f"{statistics.available} of {GPUS} available, "
        f"{len(statistics.holders) + statistics.other_holders} holder(s)"
    )
    return ProcessesDemo(
        holds=tuple(show.holds),
        most_held=most,
        killed_pid=killed_pid,
        reclaim_logs=tuple(show.logs),
        available_after=statistics.available,
    )


@attrs.define
class _Show:
    """The parent's side: the children's pipes, and what their messages told so far."""

    pool: ResourceManager[int]
    say: Callable[[str], None]
    ends: dict[str, Connection] = attrs.field(factory=dict)
    """The pipes still open (a killed child's is dropped)."""
    pids: dict[str, int] = attrs.field(factory=dict)
    starts: dict[str, tuple[float, int | None]] = attrs.field(factory=dict)
    holds: list[Hold] = attrs.field(factory=list)
    done: set[str] = attrs.field(factory=set)
    logs: list[str] = attrs.field(factory=list)

    def handle(self, name: str, message: object) -> None:
        assert isinstance(message, tuple), message
        kind, units = message[0], dict(PLAN).get(name, 0)
        if kind == "ready":
            self.pids[name] = message[1]
        elif kind == "log":
            self.logs.append(str(message[1]))
            self.say(f"  allotment.local in {name} logged: {message[1]}")
        elif kind == "got":
            start, waited, token = message[1:]
            self.starts[name] = (start, token)
            self.say(
                f"{name} (pid {self.pids[name]}) got {units} GPU(s) after waiting "
                f"{waited:.3f}s, fencing token {_short(token)}"
            )
        elif kind == "returned":
            start, token = self.starts[name]
            self.holds.append(Hold(name, units, start, message[1], token))
            self.say(f"{name} returned its lease")
        else:
            assert kind == "done", message
            self.done.add(name)

    def until(self, condition: Callable[[], bool], what: str) -> None:
        """Serve the children's messages until ``condition`` holds."""
        deadline = now() + TIMEOUT
        while not condition():
            remaining = deadline - now()
            if remaining <= 0:
                raise TimeoutError(f"the demo's processes did not {what} in {TIMEOUT} s")
            # A short timeout: some conditions are on the pool's file, not on a message.
            for end in wait(list(self.ends.values()), timeout=min(remaining, 0.005)):
                assert isinstance(end, Connection)
                name = next(n for n, e in self.ends.items() if e is end)
                self.handle(name, end.recv())


def _play(
    pool: ResourceManager[int],
    show: _Show,
    holder: multiprocessing.process.BaseProcess,
    print_line: Callable[[str], None],
) -> int:
    """Let the children ask in turn, kill the holder, and serve the rest to the end; return
    the killed pid."""
    say, units = show.say, dict(PLAN)
    show.ends["holder"].send("ask")
    show.until(lambda: "holder" in show.starts, "let the holder take its GPUs")
    for queued, (name, asked) in enumerate(PLAN[1:], 1):
        free = pool.statistics().available
        ahead = (
            ", yet it queues behind the others: one FIFO across processes"
            if (queued > 1 and free >= asked)
            else ""
        )
        say(f"{name} asks for {asked} GPU(s) with {free} free{ahead or ': it waits'}")
        show.ends[name].send("ask")
        show.until(_queued(pool, queued), f"queue {name}")
    say("the pool seen from the parent process (the holders and waiters are in the children):")
    for line in str(pool.statistics()).splitlines():
        print_line(f"          {line}")
    assert holder.pid is not None
    holder_end = show.ends.pop("holder")
    killed = now()
    os.kill(holder.pid, signal.SIGKILL)
    say(f"SIGKILL to the holder (pid {holder.pid}) while it holds {units['holder']} GPUs")
    holder.join(TIMEOUT)
    holder_end.close()
    start, token = show.starts["holder"]
    show.holds.append(Hold("holder", units["holder"], start, killed, token))
    show.until(lambda: "proc-1" in show.starts, "reclaim the killed holder's GPUs")
    granted = show.starts["proc-1"][0] - killed
    say(f"proc-1 was granted {1000 * granted:.1f} ms after the SIGKILL: no lease TTL to wait out")
    show.until(lambda: len(show.done) == len(PLAN) - 1, "return their leases")
    return holder.pid


def _queued(pool: ResourceManager[int], count: int) -> Callable[[], bool]:
    return lambda: pool.statistics().other_waiters >= count


def _short(token: int | None) -> str:
    """A fencing token's last digits: they start from the wall clock in nanoseconds."""
    return "none" if token is None else f"...{token % 1_000_000:06d}"


def most_held(holds: list[Hold] | tuple[Hold, ...]) -> int:
    """The most units the holds held at one instant (an end before a start at the same
    instant: a hand-off)."""
    moments = sorted(
        [(hold.start, 1, hold.units) for hold in holds]
        + [(hold.end, 0, -hold.units) for hold in holds]
    )
    held = most = 0
    for _, _, change in moments:
        held += change
        most = max(most, held)
    return most
