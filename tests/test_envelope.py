"""An exception or a re-entrant call at any point where CPython can deliver one, inside any
public operation, leaves every manager sound.

Two sweeps run each public operation once per *check point* of its own code, on a fresh
manager each time:

- the **exception sweep** raises :class:`Injected` at the k-th check point, as Ctrl-C or
  ``PyThreadState_SetAsyncExc`` would;
- the **re-entry sweep** calls back into the manager there, as a finalizer or a signal handler
  would: ``repr`` (never blocks, never raises), ``statistics()`` and ``try_acquire`` (work, or
  raise :class:`allotment.ReentrantCall`), and a full release of another lease (returns at once;
  its units are back before the outer operation returns).

After every run: the caller got :class:`Injected` or a normal result; what it got is given back;
seen from another thread, no lock is left held (a wedged lock would hang everyone), the
statistics hold their invariants, and everything is idle again; no warning was issued (a leaked
lease warns); a fresh acquire and release work.

Where the check points are. Every instruction that the frames of the allotment package run is
reported (by ``sys.settrace`` with ``f_trace_opcodes`` up to 3.11, from 3.12 by a
``sys.monitoring`` tool of the sweep's own: see `_INSTRUCTIONS_MONITORED`), and ``sys.setprofile``
reports the C functions they call.
CPython delivers asynchronous exceptions and runs signal handlers only where its eval loop
checks the "eval breaker", which for the interpreter running the tests is:

- the start of a frame (``RESUME`` from 3.11, the loop head on 3.10), and of a function outside
  the package called straight from it (what it raises there leaves the call): raised at the
  frame's 'call' event, before its first instruction;
- right after a call returns (``CALL``, ``CALL_KW``, ``CALL_FUNCTION_EX``; on 3.10
  ``CALL_FUNCTION``, ``CALL_FUNCTION_KW``, ``CALL_METHOD``). From 3.11 the caller checks only
  when it did not run the callee's frame itself (C code, a class, a ``functools.partial``); a
  plain Python function or method checks in its own frame instead, so there the point, labelled
  "after a call into Python", stands for 3.10, where every call checks on return, and for "the
  callee raised after doing its work";
- a backward jump (``JUMP_BACKWARD``; on 3.11 also a taken ``POP_JUMP_BACKWARD_IF_*``; on 3.10
  ``JUMP_ABSOLUTE`` and a taken ``POP_JUMP_IF_FALSE`` or ``POP_JUMP_IF_TRUE``, either way);
  from 3.13 checked *before* the jump, so raised at the jump's own 'opcode' event and belonging
  to the jump (whose handler may not be its target's), before 3.13 after it;
- on 3.10 only, the first instruction of an exception handler; and 3.10 never checks right
  before ``SETUP_FINALLY``, ``SETUP_WITH``, ``BEFORE_ASYNC_WITH`` or ``YIELD_FROM``;
- ``with`` entering: up to 3.13 ``BEFORE_WITH`` (``SETUP_WITH`` on 3.10) calls ``__enter__``
  without a check; 3.14 calls it with a ``CALL`` right after ``LOAD_SPECIAL``, which checks
  after a C ``__enter__`` returns, outside the block (CPython gh-148874), and 3.15 does not.
  Probed on the running interpreter (``support.WITH_ENTRY_CHECKS``), not assumed from its
  version.

The exception is raised at the next instruction's 'opcode' event. From 3.11 the handler of an
exception is looked up by the offset of the instruction that raised it, and CPython raises from
the call or jump instruction itself: where the next instruction has another handler (the exit
sequence of ``with lock: return f()`` is outside the block), a call raises as it returns instead
(at its ``c_return`` profile event, or its traced callee's 'return' event). Nothing is injected
between two instructions CPython runs without a check (two plain stores).
"""

from __future__ import annotations

import contextlib
import dis
import functools
import gc
import itertools
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any

import pytest

import allotment
from allotment._core._section_lock import SectionLock, new_section_lock
from support import (
    GENEROUS,
    WITH_ENTRY_CHECKS,
    Worker,
    assert_idle,
    check_invariants,
    frozen_gc,
    wait_until,
)

if TYPE_CHECKING:
    from _typeshed import TraceFunction


class Injected(Exception):
    """Raised by the sweep at a check point."""


# -- check points ----------------------------------------------------------------------------

_PY310 = sys.version_info < (3, 11)
_CHECKS_BEFORE_JUMPING = sys.version_info >= (3, 13)
"""From 3.13 a backward jump checks before it jumps: what it raises belongs to the jump (whose
handler may differ from its target's: see tests/test_back_edges.py); before, after."""

_INSTRUCTIONS_MONITORED = sys.version_info >= (3, 12)
"""Whether the traced frames' instructions come from a ``sys.monitoring`` tool of the sweep's
own rather than from ``f_trace_opcodes``. From 3.13 legacy opcode tracing is switched on and
off per code object, for every thread at once: an instruction event that reaches a thread with
no trace function (a queued helper, the Redis keeper, running the same function untraced)
switches it off for that code (``sys_trace_instruction_func`` in CPython's
``Python/legacy_tracing.c``), and a traced frame of it then reports no more instructions until
its next 'call' or 'return' event switches it back on. A tool's local events stay on until the
tool itself turns them off, and its callback passes over the other threads' instructions."""

_monitoring: Any = None
if sys.version_info >= (3, 12):
    _monitoring = sys.monitoring

_CALLS = frozenset(
    {"CALL", "CALL_KW", "CALL_FUNCTION", "CALL_FUNCTION_KW", "CALL_FUNCTION_EX", "CALL_METHOD"}
) & frozenset(dis.opmap)
"""Calls whose instruction checks the eval breaker once the call has returned (not
``CALL_INTRINSIC_*``, which run a fixed C helper and never check)."""

_LOOPS = frozenset({"JUMP_BACKWARD", "JUMP_ABSOLUTE"}) & frozenset(dis.opmap)
"""Unconditional jumps that check (``JUMP_ABSOLUTE`` is 3.10's, and checks either way)."""

if _PY310:
    _TAKEN_JUMPS = frozenset({"POP_JUMP_IF_FALSE", "POP_JUMP_IF_TRUE"})
    _UNCHECKED_BEFORE = frozenset(
        {"SETUP_FINALLY", "SETUP_WITH", "BEFORE_ASYNC_WITH", "YIELD_FROM"}
    )
else:
    # 3.11's backward conditional jumps; from 3.12 conditional jumps only go forward.
    _TAKEN_JUMPS = frozenset(name for name in dis.opmap if name.startswith("POP_JUMP_BACKWARD_"))
    _UNCHECKED_BEFORE = frozenset()

_PACKAGE = os.path.dirname(os.path.realpath(allotment.__file__)) + os.sep
_ROOT = os.path.dirname(os.path.dirname(_PACKAGE.rstrip(os.sep)))
_in_package_cache: dict[CodeType, bool] = {}


def in_package(code: CodeType) -> bool:
    """Whether ``code`` is allotment's own (a file under ``src/allotment``)."""
    inside = _in_package_cache.get(code)
    if inside is None:
        inside = os.path.realpath(code.co_filename).startswith(_PACKAGE)
        _in_package_cache[code] = inside
    return inside


Handler = tuple[int, int, bool] | None
"""An exception table entry's handler (target, stack depth, push lasti), or ``None``."""


class _Bytecode:
    """What the sweep needs of a code object, by instruction offset (an ``EXTENDED_ARG``
    prefix stands for the instruction it extends)."""

    _cache: dict[CodeType, _Bytecode] = {}  # noqa: RUF012 -- a cache shared on purpose

    def __init__(self, code: CodeType) -> None:
        self.opname: dict[int, str] = {}
        self.following: dict[int, int] = {}
        """The offset of the next instruction."""
        instructions = list(dis.get_instructions(code))
        self.with_entries: set[int] = set()
        """The calls of ``__enter__`` (``__aenter__``) from 3.14: a ``CALL`` right after
        ``LOAD_SPECIAL``. A C ``__enter__`` checks as it returns only where
        ``WITH_ENTRY_CHECKS`` (3.14 without the fix of gh-148874), and what it raises there
        leaves the ``with`` unentered; a Python one checks in its own frame only (3.10 called
        it from ``SETUP_WITH``, which never checks on return)."""
        prefixes: list[int] = []
        for index, instruction in enumerate(instructions):
            if (
                instruction.opname in _CALLS
                and index > 0
                and instructions[index - 1].opname == "LOAD_SPECIAL"
            ):
                self.with_entries.add(instruction.offset)
            start = getattr(instruction, "start_offset", instruction.offset)
            prefixes.extend(range(start, instruction.offset + 1, 2))
            if instruction.opname == "EXTENDED_ARG":
                continue
            following = -1
            if index + 1 < len(instructions):
                after = instructions[index + 1]
                following = getattr(after, "start_offset", after.offset)
            for offset in prefixes:
                self.opname[offset] = instruction.opname
                self.following[offset] = following
            prefixes = []
        # From 3.11 an exception is handled by the exception table entry of the instruction
        # that raised it. A check point is reached by the instruction that checks (the call,
        # the jump) but the sweep raises at the next one: the same, unless the two are handled
        # differently (a ``return f()`` inside ``with``: the exit sequence after the call is
        # outside the block). Such a call raises as it returns instead (see `_FrameTracer`).
        self._entries: list[tuple[int, int, Handler]] = [
            (entry.start, entry.end, (entry.target, entry.depth, entry.lasti))
            for entry in getattr(dis.Bytecode(code), "exception_entries", ())
        ]
        self.raises_as_it_returns: set[int] = {
            offset
            for offset, name in self.opname.items()
            if name in _CALLS and not self.same_handler(offset, self.following[offset])
        }

    @classmethod
    def of(cls, code: CodeType) -> _Bytecode:
        bytecode = cls._cache.get(code)
        if bytecode is None:
            bytecode = cls._cache[code] = cls(code)
        return bytecode

    def handler(self, offset: int) -> Handler:
        for start, end, handler in self._entries:
            if start <= offset < end:
                return handler
        return None

    def same_handler(self, first: int, second: int) -> bool:
        return self.handler(first) == self.handler(second)

    def check_after(self, previous: int, offset: int, python_callee: bool) -> str | None:
        """What kind of check point ``offset`` is, reached right after ``previous``."""
        name = self.opname.get(previous)
        if name in _CALLS:
            if offset != self.following[previous]:
                return None  # the call raised: the handler is reached without a check (3.11+)
            if previous in self.with_entries and (python_callee or not WITH_ENTRY_CHECKS):
                return None
            return "after a call into Python" if python_callee else "after a call"
        if name in _LOOPS:
            return None if _CHECKS_BEFORE_JUMPING else "jump target"
        if name in _TAKEN_JUMPS and offset != self.following[previous]:
            return "jump target"
        return None


class _FrameTracer:
    """The local trace function of one traced frame: finds its check points.

    A call in ``raises_as_it_returns`` counts (and acts) as it returns: at the ``c_return``
    profile event of a C function, or the ``return`` event of a traced Python callee. An
    exception raised there leaves the call instruction itself, as CPython's would.
    """

    __slots__ = (
        "_bytecode",
        "_previous",
        "_raised",
        "_run",
        "c_call",
        "counted",
        "pending",
        "python_callee",
    )

    def __init__(self, run: Run, code: CodeType) -> None:
        self._run = run
        self._bytecode = _Bytecode.of(code)
        self._previous = -1
        self._raised = False
        self.python_callee = False
        """A Python frame was entered since this frame's last instruction."""
        self.pending = -1
        """The offset of the call in ``raises_as_it_returns`` being made, else -1."""
        self.c_call = False
        """The pending call is a call of a C function (its Python returns are callbacks)."""
        self.counted = False
        """The pending call's check point was counted as it returned."""

    def trace(self, frame: FrameType, event: str, arg: object) -> TraceFunction | None:
        run = self._run
        if run.stopped:
            return None
        if event == "opcode":
            offset = frame.f_lasti
            previous, self._previous = self._previous, offset
            bytecode = self._bytecode
            kind: str | None = None
            if previous < 0:
                pass  # the entry was counted at the 'call' event
            elif self._raised:
                kind = "exception handler" if _PY310 else None
            else:
                kind = bytecode.check_after(previous, offset, self.python_callee)
            if (
                kind is None
                and _CHECKS_BEFORE_JUMPING
                and not self._raised
                and bytecode.opname.get(offset) in _LOOPS
            ):
                # Raised at the jump's own 'opcode' event, the exception belongs to the jump,
                # as CPython's does: the same handler by construction.
                previous, kind = offset, "backward jump"
            counted = self.counted
            self._raised = self.python_callee = self.c_call = self.counted = False
            self.pending = offset if offset in bytecode.raises_as_it_returns else -1
            if kind is None or counted or bytecode.opname.get(offset) in _UNCHECKED_BEFORE:
                return self.trace
            if bytecode.same_handler(previous, offset):
                run.point(frame, kind)
            else:
                run.unfaithful.add(f"{_describe(frame)} ({kind})")
        elif event == "exception":
            # 3.10 reports the StopIteration that ends a for loop; that is no handler.
            self._raised = self._bytecode.opname.get(frame.f_lasti) != "FOR_ITER"
        elif event == "return":
            run.forget(frame)
            if self._previous < 0:
                run.unreported.add(_describe(frame))
            caller = frame.f_back
            if (
                caller is not None
                and not self._raised
                and (tracer := run.tracer_of(caller)) is not None
                and tracer.returning(caller)
            ):
                run.point(caller, "after a call into Python")
        return self.trace

    def in_pending_call(self, frame: FrameType) -> bool:
        """Whether ``frame`` (this tracer's) is inside its pending call (``f_lasti`` may be
        at the call's last inline cache entry)."""
        pending = self.pending
        return 0 <= pending <= frame.f_lasti < self._bytecode.following[pending]

    def at_with_entry(self) -> bool:
        """Whether the pending call is a ``with`` statement's call of ``__enter__``."""
        return self.pending in self._bytecode.with_entries

    def returning(self, frame: FrameType) -> bool:
        """Whether a Python callee returning now completes this frame's pending call (not a
        Python ``__enter__``: it checks in its own frame only)."""
        if self.c_call or self.counted or not self.in_pending_call(frame):
            return False
        if self.at_with_entry():
            return False
        self.counted = True
        return True


class Run:
    """One traced call: counts the check points and acts at the ``target``-th one."""

    def __init__(
        self,
        target: int,
        action: Callable[[Run], None],
        traced: Callable[[CodeType], bool] = in_package,
    ) -> None:
        self.target = target
        self.count = 0
        self.points: list[str] = []
        """Each check point reached, in order: ``"file:line in function (kind)"``."""
        self.fired: str | None = None
        """The point where the action ran, if the run reached ``target`` points."""
        self.stopped = False
        """The action raised: nothing more is counted."""
        self.unreported: set[str] = set()
        """Traced frames that returned without reporting an instruction (must be none)."""
        self.unfaithful: set[str] = set()
        """Check points the sweep cannot raise at as CPython would (passed over)."""
        self.calling: str | None = None
        """The re-entrant call in progress (to explain a hang)."""
        self.failures: list[str] = []
        """What the re-entrant calls did wrong."""
        self.outcomes: dict[str, int] = {}
        """How the re-entrant calls ended: ``"ok"`` or ``"ReentrantCall"``, counted."""
        self._action = action
        self._traced = traced
        self._tracers: dict[FrameType, _FrameTracer] = {}
        self._instructions: _Instructions | None = None

    def trace(self, frame: FrameType, event: str, arg: object) -> TraceFunction | None:
        """The global trace function: sees every new frame ('call' events)."""
        if self.stopped:
            return None
        back = frame.f_back
        caller = None if back is None else self._tracers.get(back)
        if caller is not None:
            caller.python_callee = True
        code = frame.f_code
        if self._traced(code):
            tracer = _FrameTracer(self, code)
            self._tracers[frame] = tracer
            frame.f_trace = tracer.trace
            frame.f_trace_lines = False
            if self._instructions is not None:
                self._instructions.report(code)
            else:
                frame.f_trace_opcodes = True
            first = frame.f_lasti + 2 if frame.f_lasti >= 0 else 0
            if _Bytecode.of(code).opname.get(first) not in _UNCHECKED_BEFORE:
                # Raised here, before the first instruction, an exception is handled as one
                # raised by RESUME (3.11+) or at the loop head (3.10).
                self.point(frame, "entry")
            return tracer.trace
        if caller is not None:
            # Not traced itself, but its first instruction checks, and what it raises leaves
            # the call in the traced caller.
            assert back is not None
            self.point(back, f"entry of the callee {code.co_name}")
        return None

    def profile(self, frame: FrameType, event: str, arg: object) -> None:
        """The profile function: sees C functions called and returning."""
        if self.stopped or not event.startswith("c_"):
            return
        tracer = self._tracers.get(frame)
        if tracer is None or tracer.counted or not tracer.in_pending_call(frame):
            return
        if event == "c_call":
            tracer.c_call = True
        elif event == "c_return" and tracer.c_call:
            if not WITH_ENTRY_CHECKS and tracer.at_with_entry():
                return  # a C __enter__ returns without a check (3.15; up to 3.13 no CALL)
            tracer.counted = True
            self.point(frame, "after a call")
        else:
            tracer.pending = -1  # it raised

    def tracer_of(self, frame: FrameType) -> _FrameTracer | None:
        return self._tracers.get(frame)

    def point(self, frame: FrameType, kind: str) -> None:
        """Count a check point in ``frame`` (described as ``kind``); act if it is the one."""
        self.count += 1
        self.points.append(f"{_describe(frame)} ({kind})")
        if self.count == self.target:
            self.fired = self.points[-1]
            try:
                self._action(self)
            except BaseException:
                self.stopped = True
                raise

    def describe(self) -> str:
        where = self.fired or "none (this run passed every check point)"
        return f"check point {self.target}: {where}"

    def forget(self, frame: FrameType) -> None:
        self._tracers.pop(frame, None)

    def close(self) -> None:
        """Drop the frames (and through them the locals) the run still refers to."""
        self._tracers.clear()

    def instruction(self, frame: FrameType) -> None:
        """An instruction of ``frame``, on the traced thread, from `_Instructions`."""
        tracer = self._tracers.get(frame)
        if tracer is not None and not self.stopped:
            tracer.trace(frame, "opcode", None)

    def __call__(self, operation: Callable[[], object]) -> object:
        """Run ``operation`` on this thread, traced."""
        instructions = _Instructions(self) if _INSTRUCTIONS_MONITORED else None
        self._instructions = instructions
        sys.setprofile(self.profile)
        sys.settrace(self.trace)
        try:
            return operation()
        finally:
            sys.settrace(None)
            sys.setprofile(None)
            self._instructions = None
            if instructions is not None:
                instructions.close()


class _Instructions:
    """The instructions of a run's traced frames, from a ``sys.monitoring`` tool (3.12+): its
    local ``INSTRUCTION`` events on each traced code object, on from the code's first traced
    frame to the end of the run. The callback runs in every thread that runs such code (the
    events are per code object); it passes over every thread but the traced one, and never
    answers ``DISABLE``, so nothing another thread does turns the events off (see
    `_INSTRUCTIONS_MONITORED`). What it raises leaves the instruction, as an exception raised
    by a legacy 'opcode' trace function does (that one is a callback of the same kind)."""

    def __init__(self, run: Run) -> None:
        monitoring = _monitoring
        free = [tool for tool in (3, 4, 5, 2, 1, 0) if monitoring.get_tool(tool) is None]
        assert free, "no sys.monitoring tool id is free for the sweep"
        self._tool = free[0]
        self._thread = threading.get_ident()
        self._codes: list[CodeType] = []
        self._run = run
        monitoring.use_tool_id(self._tool, "allotment's envelope sweep")
        monitoring.register_callback(
            self._tool, monitoring.events.INSTRUCTION, self._on_instruction
        )

    def report(self, code: CodeType) -> None:
        """Report ``code``'s instructions from now on (called at a frame's 'call' event:
        the code is instrumented before its next instruction runs)."""
        if code not in self._codes:
            self._codes.append(code)
            _monitoring.set_local_events(self._tool, code, _monitoring.events.INSTRUCTION)

    def _on_instruction(self, code: CodeType, offset: int) -> None:
        if threading.get_ident() == self._thread:
            self._run.instruction(sys._getframe(1))

    def close(self) -> None:
        """Turn the events off (every thread pays a callback for them) and free the tool."""
        monitoring = _monitoring
        for code in self._codes:
            monitoring.set_local_events(self._tool, code, 0)
        monitoring.register_callback(self._tool, monitoring.events.INSTRUCTION, None)
        monitoring.free_tool_id(self._tool)


def _describe(frame: FrameType) -> str:
    path = os.path.relpath(frame.f_code.co_filename, _ROOT)
    return f"{path}:{frame.f_lineno} in {frame.f_code.co_name}"


def raise_injected(run: Run) -> None:
    raise Injected(f"injected at check point {run.count}: {run.fired}")


# -- the sweep ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    """How one traced run ended."""

    run: Run
    result: object = None
    error: BaseException | None = None

    def describe(self) -> str:
        return self.run.describe()


@dataclass
class Swept:
    """What a sweep went through."""

    points: list[str]
    """The check points of the operation, in order (of the run that passed them all)."""
    passed_over: set[str]
    """Check points it could not raise at as CPython would (none known on 3.10 to 3.13)."""
    reentries: dict[str, int]
    """How the re-entrant calls ended (``"ok"``, ``"ReentrantCall"``), counted."""


def sweep(
    setup: Callable[[], Any],
    operation: Callable[[Any], object],
    check: Callable[[Any, Outcome], None],
    *,
    action: Callable[[Any, Run], None] | None = None,
    traced: Callable[[CodeType], bool] = in_package,
    limit: int = 2000,
) -> Swept:
    """Run ``operation(setup())`` once per check point k = 1, 2, ..., each time on a worker
    thread, acting at the k-th point: raise :class:`Injected`, or call ``action(env, run)``.
    Then ``check(env, outcome)`` on this thread. Stop after the first run that passes all its
    check points without acting (there must be some). Nothing may warn meanwhile, in any
    thread.

    The points before the action must be the same in every run (the operation is
    deterministic up to there), so each run acts one point further along the same path.
    """
    previous: list[str] = []
    passed_over: set[str] = set()
    reentries: dict[str, int] = {}
    for k in range(1, limit + 1):
        env = setup()

        def act(run: Run, env: Any = env) -> None:
            if action is None:
                raise_injected(run)
            else:
                action(env, run)

        run = Run(k, act, traced)
        with no_warnings(run.describe, functools.partial(_result_in_transit, run)):
            worker = Worker(functools.partial(run, functools.partial(operation, env)))
            worker.name = f"traced to check point {k}"
            worker.start()
            worker.join(GENEROUS)
            if worker.is_alive():
                inside = f", inside the re-entrant {run.calling}" if run.calling else ""
                pytest.fail(
                    f"the operation did not return within {GENEROUS} s after check point "
                    f"{k}: {run.fired}{inside}"
                )
            run.close()
            outcome = Outcome(run, worker.result, worker.error)
            worker.result = worker.error = None
            assert not run.unreported, f"instructions were not reported: {run.unreported}"
            assert run.points[: k - 1] == previous[: k - 1], (
                f"the run that acts at check point {k} took another path before it: "
                + _divergence(run.points[: k - 1], previous[: k - 1])
            )
            check(env, outcome)
        passed_over |= run.unfaithful
        for ending, count in run.outcomes.items():
            reentries[ending] = reentries.get(ending, 0) + count
        if run.fired is None:
            assert run.points, "the operation ran no code of allotment: nothing was swept"
            return Swept(run.points, passed_over, reentries)
        previous = run.points
    raise AssertionError(f"more than {limit} check points: is the operation looping?")


def _divergence(now: list[str], before: list[str]) -> str:
    """Where two runs' check points part, with what came just before."""
    index = next(
        (i for i, (one, other) in enumerate(zip(now, before, strict=False)) if one != other),
        min(len(now), len(before)),
    )
    return (
        f"after {now[max(index - 3, 0) : index]}, at point {index + 1}, this run reached "
        f"{now[index : index + 3]} where the previous one reached {before[index : index + 3]}"
    )


LEAK_NOTICES = ("garbage-collected while still held", "garbage-collected while open")


def _result_in_transit(run: Run) -> bool:
    """Whether the run acted where a lease (or claim) was already out of the library's hands:
    anywhere in ``Lease.__enter__`` or at the first line of ``__exit__`` (a ``with``
    statement aborted before entering or leaving), or as a call returned its result (the
    value dropped on its way back to the caller: the same window every caller of a function
    that returns a resource has in its own frame, and all that ``run_blocking`` holds).
    There, the designed outcome is the finalizer's: the units come back at once, with a
    ResourceWarning. Everything else is still checked."""
    fired = run.fired or ""
    # run_blocking (with _collect) only carries the result of a thread's steps to the caller:
    # it takes nothing itself, so its every window is before the steps or in transit.
    return (
        "(after a call into Python)" in fired
        or bool(re.search(r" in (run_blocking|_collect) ", fired))
        or bool(re.search(r"_lease\.py:\d+ in (__enter__ |__exit__ \(entry\))", fired))
    )


@contextlib.contextmanager
def no_warnings(
    what: Callable[[], str], leak_allowed: Callable[[], bool] = lambda: False
) -> Iterator[None]:
    """Fail if anything warns, or reaches ``sys.unraisablehook`` (but an :class:`Injected`),
    in any thread meanwhile; a leak warning only where ``leak_allowed()``."""
    unraisable: list[str] = []
    hook = sys.unraisablehook

    def record(report: Any) -> None:
        # An exception injected into a finalizer is reported and dropped, as CPython drops
        # every exception raised there; what it left behind is checked like any other.
        if not isinstance(report.exc_value, Injected):
            unraisable.append(f"{report.err_msg}: {report.exc_type.__name__}: {report.exc_value}")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sys.unraisablehook = record
        try:
            yield
        finally:
            sys.unraisablehook = hook
    issued = [f"{w.category.__name__}: {w.message}" for w in caught] + unraisable
    if leak_allowed():
        issued = [
            text
            for text in issued
            if not (
                text.startswith(("ResourceWarning", "LeakedLeaseWarning"))
                and any(n in text for n in LEAK_NOTICES)
            )
        ]
    assert not issued, f"warned at {what()}: {issued}"


def on_another_thread(function: Callable[[], object], what: str) -> object:
    """``function()`` on a new thread, within ``GENEROUS`` seconds: a lock left held by the
    traced thread blocks it (the traced thread itself could re-enter an ``RLock``)."""
    worker = Worker(function, name=what)
    worker.start()
    worker.join(GENEROUS)
    if worker.is_alive():
        pytest.fail(f"{what} did not return within {GENEROUS} s: a lock is held forever")
    if worker.error is not None:
        raise AssertionError(f"{what}: {worker.error!r}") from worker.error
    return worker.result


def forget_frames(error: BaseException | None) -> None:
    """Drop the tracebacks of ``error`` and its chain: their frames would keep alive what the
    operation's locals held (a leaked lease warns only once collected)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        error.__traceback__ = None
        error = error.__cause__ or error.__context__


# -- what the operations run on ----------------------------------------------------------------


@dataclass(eq=False)
class Spare:
    """Something held since the setup that a re-entrant call gives back; ``back(result)`` says,
    right after the operation returned ``result``, whether it is back."""

    release: Callable[[], None]
    back: Callable[[object], bool]


@dataclass(eq=False)
class Env:
    """The managers (or semaphore) an operation runs on, and what the setup took from them."""

    managers: list[allotment.ResourceManager[Any]] = field(default_factory=list)
    amounts: list[Any] = field(default_factory=list)
    """For each manager, what a probe (``try_acquire``, a fresh acquire) takes."""
    subject: Any = None
    """What the operation acts on, besides the managers (a lease, a claim, a semaphore)."""
    permits: frozenset[int] = frozenset()
    """The values the semaphore (the subject) may have once everything is given back."""
    interrupted_permits: frozenset[int] = frozenset()
    """And the values it may have too after an interrupted operation."""
    give_back: list[Callable[[], None]] = field(default_factory=list)
    """Gives back what the setup took, in order; each idempotent."""
    spares: list[Spare] = field(default_factory=list)
    helpers: list[tuple[Worker, tuple[type[BaseException], ...]]] = field(default_factory=list)
    """Threads queued by the setup, and the exceptions they may end with instead of a lease."""
    companion: Callable[[Env], None] | None = None
    """Run on its own thread beside the traced operation."""
    done: threading.Event = field(default_factory=threading.Event)
    """Set once the traced operation has returned or raised."""
    spares_back: bool | None = None
    """Whether every spare was back right after the operation returned."""
    abandoned: threading.Event = field(default_factory=threading.Event)
    """Set after a failure: what the helpers get, they give back at once."""

    @property
    def semaphore(self) -> allotment.Semaphore | None:
        subject = self.subject
        return subject if isinstance(subject, allotment.Semaphore) else None


_serials = itertools.count(1)


def _manager(capacity: Any, name: str, **options: Any) -> allotment.ResourceManager[Any]:
    return allotment.ResourceManager(capacity, name=f"{name}-{next(_serials)}", **options)


def _hold(env: Env, lease: allotment.Lease[Any]) -> allotment.Lease[Any]:
    env.give_back.append(lease.release)
    return lease


def _spare(env: Env, lease: allotment.Lease[Any]) -> None:
    _hold(env, lease)
    env.spares.append(Spare(lease.release, lambda result: lease.released))


def _queue(
    env: Env,
    manager: allotment.ResourceManager[Any],
    amount: Any,
    ends: tuple[type[BaseException], ...],
) -> None:
    """Start a thread whose request waits on ``manager``."""

    def wait_in_queue() -> allotment.Lease[Any] | None:
        # It waits longer than anyone waits for it: a lost wake-up shows as a thread that
        # is still waiting.
        lease = manager.acquire(amount, 2 * GENEROUS)
        if env.abandoned.is_set():
            lease.release()
            return None
        return lease

    queued = len(manager.statistics().waiters)
    worker = Worker(wait_in_queue, name="queued")
    worker.start()
    wait_until(
        lambda: len(manager.statistics().waiters) > queued or worker.finished.is_set(),
        "the helper is queued",
    )
    env.helpers.append((worker, ends))


def _pool(capacity: int = 3, **options: Any) -> Env:
    """A manager of ``capacity`` units, one of them held by a spare lease."""
    manager = _manager(capacity, "pool", **options)
    env = Env([manager], [1])
    _spare(env, manager.acquire(1))
    return env


def _holding(amount: int) -> Callable[[], Env]:
    """A pool of 4: a spare, and a lease of ``amount`` (the subject)."""

    def setup() -> Env:
        env = _pool(4)
        env.subject = _hold(env, env.managers[0].acquire(amount))
        return env

    return setup


def _group_held() -> Env:
    """Two managers of one resource and a group of leases on both (the subject): what a
    backend releases in one round trip (``redis/_group.py``), memory lease by lease."""
    env = _scalar_pair()()
    first, second = env.managers
    group = allotment.acquire_all([(second, 1), (first, 1)])
    env.give_back.append(group.release)
    env.subject = group
    return env


def _full_pool() -> Env:
    env = _pool(2)
    _hold(env, env.managers[0].acquire(1))
    return env


def _node() -> Env:
    node = _manager({"gpu": 2, "ram": 4}, "node")
    env = Env([node], [{"ram": 1}])
    _spare(env, node.acquire({"gpu": 1, "ram": 1}))
    return env


def _pair() -> Env:
    first = _manager(3, "first", rank=1)
    second = _manager({"gpu": 2}, "second", rank=2)
    env = Env([first, second], [1, {"gpu": 1}])
    _spare(env, first.acquire(1))
    _spare(env, second.acquire({"gpu": 1}))
    return env


def _scalar_pair(*, second_full: bool = False) -> Callable[[], Env]:
    """Two managers of one resource: what ``acquire_all``'s one-pass path takes (or, with
    ``second_full``, gives back as it finds the second full, falling back)."""

    def setup() -> Env:
        first = _manager(3, "first", rank=1)
        second = _manager(2, "second", rank=2)
        env = Env([first, second], [1, 1])
        _spare(env, first.acquire(1))
        _spare(env, second.acquire(1))
        if second_full:
            _hold(env, second.acquire(1))
        return env

    return setup


def _queued_behind(
    capacity: int, held: int, queued: int, *ends: type[BaseException]
) -> Callable[[], Env]:
    """A pool of ``capacity``: a spare, a lease of ``held``, a thread queued for ``queued``."""

    def setup() -> Env:
        env = _pool(capacity)
        _hold(env, env.managers[0].acquire(held))
        _queue(env, env.managers[0], queued, ends)
        return env

    return setup


def _contended() -> Env:
    """A pool of 2 that a spare and a lease fill, and a companion that releases the lease as
    soon as the traced request is queued (or the traced operation has ended)."""
    env = _pool(2)
    manager = env.managers[0]
    lease = _hold(env, manager.acquire(1))

    def release_when_queued(env: Env) -> None:
        wait_until(
            lambda: bool(manager.statistics().waiters) or env.done.is_set(),
            "the traced request is queued",
        )
        lease.release()

    env.companion = release_when_queued
    return env


def _banker() -> Env:
    return _pool(4, banker=True)


def _claimed(*, holding: bool) -> Callable[[], Env]:
    """A banker-mode pool of 4 with a spare, and a claim of 2 (the subject), holding 1 if
    ``holding``."""

    def setup() -> Env:
        env = _banker()
        claim = env.subject = env.managers[0].claim(2)
        if holding:
            _hold(env, claim.acquire(1))
        env.give_back.append(claim.close)
        return env

    return setup


def _semaphore(
    kind: type[allotment.Semaphore], value: int, *, spare: bool, taken: int = 0
) -> Callable[[], Env]:
    """A semaphore of ``value`` permits (the subject): ``taken`` of them taken, and one more
    taken as a spare if ``spare``."""

    def setup() -> Env:
        semaphore = kind(value)
        env = Env(subject=semaphore, permits=frozenset({value}))
        for _ in range(taken):
            assert semaphore.acquire(blocking=False)
        if spare:
            assert semaphore.acquire(blocking=False)
            held = [True]

            def release() -> None:
                if held:
                    held.clear()
                    semaphore.release()

            env.give_back.append(release)
            env.spares.append(Spare(release, lambda result: not held))
        return env

    return setup


# -- the operations --------------------------------------------------------------------------


def _first(env: Env) -> allotment.ResourceManager[Any]:
    return env.managers[0]


def _acquire_in_a_with_block(env: Env) -> None:
    with _first(env).acquire(1):
        pass


def _acquire_or_time_out(env: Env) -> object:
    try:
        return _first(env).acquire(1, timeout=0)
    except allotment.AcquireTimeout as error:
        return error


def _acquire_all(env: Env) -> allotment.LeaseGroup:
    first, second = env.managers
    # Two requests to `first`: merged into one grant, then split into two leases.
    return allotment.acquire_all([(second, {"gpu": 1}), (first, 1), (first, 1)])


def _try_acquire_all(env: Env) -> allotment.LeaseGroup | None:
    first, second = env.managers
    return allotment.try_acquire_all([(first, 1), (second, {"gpu": 1}), (first, 1)])


def _acquire_all_at_once(env: Env) -> allotment.LeaseGroup:
    first, second = env.managers
    return allotment.acquire_all([(second, 1), (first, 1)])


def _acquire_all_falls_back(env: Env) -> object:
    first, second = env.managers
    try:
        return allotment.acquire_all([(second, 1), (first, 1)], timeout=0)
    except allotment.AcquireTimeout as error:
        return error


def _release_a_permit(env: Env) -> None:
    # Interrupted, the release may or may not have given the permit.
    env.interrupted_permits = env.permits | {min(env.permits) - 1}
    env.subject.release()


def _over_release(env: Env) -> object:
    try:
        env.subject.release()
    except ValueError as error:
        return error
    return None


@dataclass(frozen=True)
class Case:
    """A public operation, and what it runs on."""

    id: str
    setup: Callable[[], Env]
    operation: Callable[[Env], object]


CASES = [
    Case("acquire", _pool, lambda env: _first(env).acquire(1)),
    Case("acquire-in-a-with-block", _pool, _acquire_in_a_with_block),
    Case("try_acquire", _pool, lambda env: _first(env).try_acquire(1)),
    Case("acquire-times-out-at-once-on-a-full-pool", _full_pool, _acquire_or_time_out),
    Case("acquire-named-resources", _node, lambda env: _first(env).acquire({"gpu": 1, "ram": 2})),
    Case(
        "acquire-waits-until-another-thread-releases",
        _contended,
        # Waits longer than the sweep waits for it: a lost wake-up shows as a hang.
        lambda env: _first(env).acquire(1, timeout=2 * GENEROUS),
    ),
    Case("release", _holding(2), lambda env: env.subject.release()),
    Case("release-part", _holding(2), lambda env: env.subject.release(1)),
    Case("group-release", _group_held, lambda env: env.subject.release()),
    Case("resize-up", _pool, lambda env: _first(env).resize(5)),
    Case("resize-down", _holding(2), lambda env: _first(env).resize(2)),
    Case(
        "resize-up-grants-a-queued-request",
        _queued_behind(3, 2, 2),
        lambda env: _first(env).resize(5),
    ),
    Case(
        "resize-down-refuses-a-queued-request",
        _queued_behind(4, 1, 4, allotment.ExceedsCapacity),
        lambda env: _first(env).resize(3),
    ),
    Case("close", _pool, lambda env: _first(env).close()),
    Case(
        "close-refuses-a-queued-request",
        _queued_behind(3, 2, 2, allotment.ManagerClosed),
        lambda env: _first(env).close(),
    ),
    Case("statistics", _holding(1), lambda env: _first(env).statistics()),
    Case("repr", _holding(1), lambda env: repr(_first(env))),
    Case("acquire_all-splits-a-shared-manager", _pair, _acquire_all),
    Case("try_acquire_all", _pair, _try_acquire_all),
    Case("acquire_all-in-one-pass", _scalar_pair(), _acquire_all_at_once),
    Case(
        "acquire_all-falls-back-on-a-full-manager",
        _scalar_pair(second_full=True),
        _acquire_all_falls_back,
    ),
    Case(
        "try_acquire_all-in-one-pass",
        _scalar_pair(),
        lambda env: allotment.try_acquire_all([(m, 1) for m in env.managers]),
    ),
    Case("claim", _banker, lambda env: _first(env).claim(2)),
    Case("claim-acquire", _claimed(holding=False), lambda env: env.subject.acquire(1)),
    Case("claim-close", _claimed(holding=True), lambda env: env.subject.close()),
    Case(
        "semaphore-acquire",
        _semaphore(allotment.Semaphore, 2, spare=True),
        lambda env: env.subject.acquire(),
    ),
    Case(
        "semaphore-release",
        _semaphore(allotment.Semaphore, 2, spare=True, taken=1),
        _release_a_permit,
    ),
    Case(
        "bounded-semaphore-refuses-an-over-release",
        _semaphore(allotment.BoundedSemaphore, 1, spare=False),
        _over_release,
    ),
]


# -- the checks --------------------------------------------------------------------------------


def _give_back_result(env: Env, result: object) -> None:
    """Give back what the operation returned, as its caller would."""
    if isinstance(result, (allotment.Lease, allotment.LeaseGroup)):
        result.release()
    elif isinstance(result, allotment.DeclaredClaim):
        result.close()
    elif isinstance(result, allotment.ManagerStatistics):
        check_invariants(result)
    elif result is True and env.semaphore is not None:
        env.semaphore.release()


def _assert_not_wedged(env: Env) -> None:
    """No manager's lock stays held now that nobody is inside (polled: a queued helper thread
    may be inside for a moment), and the statistics hold their invariants."""
    names = {manager.name for manager in env.managers}
    wait_until(
        lambda: not names.intersection(allotment.wait_graph(lock_timeout=0).busy),
        f"the locks of {sorted(names)} are free (else one is held forever)",
    )
    for manager in env.managers:
        check_invariants(manager.statistics())


def _join_helpers(env: Env, what: str) -> None:
    for helper, ends in env.helpers:
        helper.join(GENEROUS)
        assert not helper.is_alive(), (
            f"after {what}: a queued request was not served within {GENEROUS} s of everything "
            "being given back (a lost wake-up, or lost units)"
        )
        if helper.error is not None:
            if not isinstance(helper.error, ends):
                raise helper.error
        else:
            assert isinstance(helper.result, allotment.Lease), f"{what}: {helper.result!r}"
            helper.result.release()
        helper.result = helper.error = None


def _assert_idle_and_usable(env: Env, interrupted: bool) -> None:
    for manager, amount in zip(env.managers, env.amounts, strict=True):
        assert_idle(manager)
        assert not manager.statistics().claims, "a declared claim stayed open"
        if manager.closed:
            with pytest.raises(allotment.ManagerClosed):
                manager.acquire(amount, timeout=0)
        else:
            manager.acquire(amount, timeout=0).release()
            assert_idle(manager)
    semaphore = env.semaphore
    if semaphore is not None:
        permits = env.permits | (env.interrupted_permits if interrupted else frozenset())
        assert semaphore._value in permits, (
            f"the semaphore's value is {semaphore._value}, not one of {sorted(permits)}"
        )
        assert semaphore.acquire(blocking=False)
        semaphore.release()


def check_run(env: Env, outcome: Outcome, *, reentrant: bool) -> None:
    """Everything that must hold after a run, whatever happened at its check point."""
    try:
        _check_run(env, outcome, reentrant=reentrant)
    except BaseException:
        _abandon(env)
        raise


def _abandon(env: Env) -> None:
    """After a failure: end what the setup started, if the locks allow, so that no thread
    outlives the test (best effort, quietly)."""

    env.abandoned.set()

    def end() -> None:
        busy = set(allotment.wait_graph(lock_timeout=0).busy)
        for manager in env.managers:
            if manager.name not in busy:
                manager.close()  # refuses the queued helpers
        for release in env.give_back:
            with contextlib.suppress(Exception):
                release()

    worker = Worker(end, name="abandoning")
    worker.start()
    worker.join(GENEROUS)


def _check_run(env: Env, outcome: Outcome, *, reentrant: bool) -> None:
    what = outcome.describe()
    error, result = outcome.error, outcome.result
    outcome.error = outcome.result = None
    forget_frames(error)
    forget_frames(result if isinstance(result, BaseException) else None)
    if error is not None:
        if reentrant or not isinstance(error, Injected):
            raise AssertionError(f"the operation raised at {what}: {error!r}") from error
        assert outcome.run.fired is not None
    del error
    on_another_thread(functools.partial(_assert_not_wedged, env), f"statistics after {what}")

    def give_back(result: object = result) -> None:
        _give_back_result(env, result)
        for release in env.give_back:
            release()

    on_another_thread(give_back, f"giving back after {what}")
    _join_helpers(env, what)
    del result, give_back
    gc.collect()
    on_another_thread(
        functools.partial(_assert_idle_and_usable, env, outcome.run.fired is not None),
        f"a fresh acquire after {what}",
    )


def run_sweep(case: Case, *, reentrant: bool) -> Swept:
    """Sweep ``case``: raising :class:`Injected`, or calling back into the manager."""

    def operation(env: Env) -> object:
        companion = None
        if env.companion is not None:
            companion = Worker(functools.partial(env.companion, env), name="companion")
            companion.start()
        try:
            result = case.operation(env)
            if reentrant:
                env.spares_back = all(spare.back(result) for spare in env.spares)
            return result
        finally:
            env.done.set()
            if companion is not None:
                companion.outcome()

    def check(env: Env, outcome: Outcome) -> None:
        check_run(env, outcome, reentrant=reentrant)
        if reentrant:
            run = outcome.run
            assert not run.failures, f"at {outcome.describe()}: {run.failures}"
            assert run.fired is None or env.spares_back is not False, (
                f"at {outcome.describe()}: a lease released re-entrantly was not back when "
                "the operation returned"
            )

    with frozen_gc():
        return sweep(case.setup, operation, check, action=reenter if reentrant else None)


# -- re-entry ----------------------------------------------------------------------------------


def _probe(
    run: Run,
    what: str,
    call: Callable[[], object],
    *,
    may_refuse: bool,
    may_raise: tuple[type[BaseException], ...] = (),
) -> None:
    """Call back into the manager from the trace function, as a signal handler would. It
    may raise ``may_raise`` (as it could from anywhere), and ``ReentrantCall`` if
    ``may_refuse``."""
    run.calling = what
    try:
        call()
    except may_raise:
        run.outcomes["ok"] = run.outcomes.get("ok", 0) + 1
    except allotment.ReentrantCall as error:
        if may_refuse:
            run.outcomes["ReentrantCall"] = run.outcomes.get("ReentrantCall", 0) + 1
        else:
            run.failures.append(f"{what} raised {error!r}")
    except BaseException as error:
        run.failures.append(f"{what} raised {error!r}")
    else:
        run.outcomes["ok"] = run.outcomes.get("ok", 0) + 1
    finally:
        run.calling = None


def _statistics_hold(manager: allotment.ResourceManager[Any]) -> None:
    check_invariants(manager.statistics())


def _try_and_give_back(manager: allotment.ResourceManager[Any], amount: Any) -> None:
    lease = manager.try_acquire(amount)
    if lease is not None:
        lease.release()


def _try_a_permit(semaphore: allotment.Semaphore) -> None:
    if semaphore.acquire(blocking=False):
        semaphore.release()


def reenter(env: Env, run: Run) -> None:
    """At a check point: what a finalizer or a signal handler might do there."""
    for manager, amount in zip(env.managers, env.amounts, strict=True):
        name = manager.name
        _probe(run, f"repr({name})", functools.partial(repr, manager), may_refuse=False)
        _probe(
            run,
            f"{name}.statistics()",
            functools.partial(_statistics_hold, manager),
            may_refuse=True,
        )
        _probe(
            run,
            f"{name}.try_acquire({amount!r})",
            functools.partial(_try_and_give_back, manager, amount),
            may_refuse=True,
            may_raise=(allotment.ManagerClosed,),
        )
    semaphore = env.semaphore
    if semaphore is not None:
        _probe(run, "repr(semaphore)", functools.partial(repr, semaphore), may_refuse=False)
        _probe(
            run,
            "semaphore.acquire(blocking=False)",
            functools.partial(_try_a_permit, semaphore),
            may_refuse=True,
        )
    for spare in env.spares:
        _probe(run, "a full release of another lease", spare.release, may_refuse=False)


# -- the tests ---------------------------------------------------------------------------------

_IDS = [case.id for case in CASES]


@pytest.mark.timeout(4 * GENEROUS)
@pytest.mark.parametrize("case", CASES, ids=_IDS)
def test_an_exception_at_any_check_point_leaves_the_manager_sound(case: Case) -> None:
    assert run_sweep(case, reentrant=False).points


@pytest.mark.timeout(4 * GENEROUS)
@pytest.mark.parametrize("case", CASES, ids=_IDS)
def test_a_reentrant_call_at_any_check_point_returns_and_leaves_the_manager_sound(
    case: Case,
) -> None:
    assert run_sweep(case, reentrant=True).points


# -- the sweep itself ----------------------------------------------------------------------------


def _in_this_file(code: CodeType) -> bool:
    return code.co_filename == __file__ and code.co_name.startswith("_toy")


def _toy_stores(box: list[int]) -> None:
    first = box[0]
    second = first
    box[0] = second


def _toy_loop(count: int) -> int:
    total = 0
    for number in range(count):
        total += abs(number)
    return total


def _toy_lock_then_try(lock: threading.Lock, log: list[int]) -> None:
    lock.acquire()
    try:
        log.append(1)
    finally:
        lock.release()


def _toy_with(lock: threading.Lock | SectionLock, log: list[int]) -> None:
    with lock:
        log.append(1)


def _toy_return_in_with(lock: SectionLock, call: Callable[[], object]) -> object:
    with lock:
        return call()


def _toy_callee() -> int:
    return 1


def _points_of(toy: Callable[[], object]) -> list[str]:
    """The kinds of the check points of ``toy()``."""
    run = Run(0, raise_injected, _in_this_file)
    worker = Worker(functools.partial(run, toy))
    worker.start()
    worker.outcome()
    run.close()
    assert not run.unreported
    return [point.rsplit("(", 1)[1].rstrip(")") for point in run.points]


def test_plain_stores_have_no_check_point_between_them() -> None:
    assert _points_of(lambda: _toy_stores([1])) == ["entry"]


def test_each_call_and_each_loop_round_is_a_check_point() -> None:
    after_call = "after a call"
    loop = "backward jump" if _CHECKS_BEFORE_JUMPING else "jump target"
    expected = ["entry", after_call] + [after_call, loop] * 3
    assert _points_of(lambda: _toy_loop(3)) == expected


def _toy_loop_after(step: Callable[[], object], count: int) -> int:
    step()
    return _toy_loop(count)


def test_another_thread_running_the_traced_code_untraced_hides_no_instruction() -> None:
    """A helper thread, or the Redis keeper, runs the traced functions untraced meanwhile
    (on 3.13 that switched legacy opcode tracing off for every thread: see
    `_INSTRUCTIONS_MONITORED`)."""

    others: list[Worker] = []  # kept: a thread dropped runs a weakref callback, a callee

    def elsewhere() -> None:
        other = Worker(functools.partial(_toy_loop_after, lambda: None, 3), name="untraced")
        others.append(other)
        other.start()
        other.outcome()

    def traced_points(step: Callable[[], object]) -> list[str]:
        points = _points_of(lambda: _toy_loop_after(step, 3))
        return [kind for kind in points if not kind.startswith("entry of the callee")]

    alone = traced_points(lambda: None)
    assert traced_points(elsewhere) == alone
    assert alone.count("after a call") == 4, alone  # range(), abs() three times


def test_the_sweep_finds_a_lock_acquired_outside_its_try() -> None:
    lock = threading.Lock()
    held_after: list[str] = []

    def check(log: list[int], outcome: Outcome) -> None:
        if lock.locked():
            held_after.append(outcome.describe())
            lock.release()

    sweep(list, lambda log: _toy_lock_then_try(lock, log), check, traced=_in_this_file)
    assert len(held_after) == 1, held_after  # right after lock.acquire() returned
    assert "after a call" in held_after[0]


def _held(lock: threading.Lock | SectionLock) -> bool:
    """Whether some thread holds ``lock`` (seen from one that does not)."""
    if not lock.acquire(blocking=False):
        return True
    lock.release()
    return False


def test_the_sweep_finds_no_window_in_a_with_block() -> None:
    """Except, where the interpreter checks as a C ``__enter__`` returns (3.14, gh-148874),
    the one right after taking a plain lock: a section lock closes it."""
    lock = threading.Lock()
    held_after: list[str] = []

    def check(log: list[int], outcome: Outcome) -> None:
        if lock.locked():
            held_after.append(outcome.describe())
            lock.release()
        assert outcome.error is None or isinstance(outcome.error, Injected)

    swept = sweep(list, lambda log: _toy_with(lock, log), check, traced=_in_this_file)
    # entry, (on entering the block,) after log.append(), after the lock's __exit__
    assert len(swept.points) == 3 + WITH_ENTRY_CHECKS
    assert len(held_after) == WITH_ENTRY_CHECKS, held_after

    section_lock = new_section_lock()

    def check_section_lock(log: list[int], outcome: Outcome) -> None:
        assert not _held(section_lock), outcome.describe()
        assert outcome.error is None or isinstance(outcome.error, Injected)

    sweep(
        list,
        lambda log: _toy_with(section_lock, log),
        check_section_lock,
        traced=lambda code: _in_this_file(code) or in_package(code),
    )


@pytest.mark.parametrize(
    "call", [[].copy, _toy_callee], ids=["calling-C-code", "calling-Python-code"]
)
def test_an_exception_as_a_call_returns_inside_a_with_block_is_handled_by_it(
    call: Callable[[], object],
) -> None:
    # From 3.11 the exit sequence of `return call()` lies outside the block's handler: the
    # exception must be raised by the call instruction, as CPython raises it, not after it.
    lock = new_section_lock()  # a plain lock's with can leave it held on 3.14 (see above)

    def check(env: object, outcome: Outcome) -> None:
        assert not _held(lock), f"the lock is still held after {outcome.describe()}"

    swept = sweep(list, lambda env: _toy_return_in_with(lock, call), check, traced=_in_this_file)
    assert not swept.passed_over
    after_calls = [point for point in swept.points if "after a call" in point]
    assert len(after_calls) == 2, swept.points  # `call()`, and the lock's __exit__


class _ToyCounter:
    """Two fields that one critical section keeps equal, with a call between the stores."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.first = self.second = 0

    def _toy_bump(self) -> None:
        with self.lock:
            self.first += 1
            _toy_stores([self.first])
            self.second += 1


def test_the_reentry_sweep_sees_what_a_handler_would_see() -> None:
    counter = _ToyCounter()
    torn: list[str] = []

    def look(counter: _ToyCounter, run: Run) -> None:
        with counter.lock:  # an RLock: the handler gets in, and sees the section half done
            if counter.first != counter.second:
                torn.append(run.describe())

    sweep(
        lambda: counter,
        _ToyCounter._toy_bump,
        lambda env, outcome: None,
        action=look,
        traced=_in_this_file,
    )
    # Entering _toy_stores, and just after it returned.
    assert len(torn) == 2, torn


def test_the_reentry_sweep_reaches_inside_the_critical_section() -> None:
    # resize computes the new capacity under the lock, by calling back into the manager's form.
    (case,) = (case for case in CASES if case.id == "resize-up")
    assert run_sweep(case, reentrant=True).reentries.get("ReentrantCall", 0) > 0
