"""No loop's back edge escapes the handler of the block it runs in.

From 3.12 CPython compiles the back edge of some loops (a loop whose body ends with an ``if``,
and on 3.12 and 3.13 also a ``while cond:`` loop) to a ``JUMP_BACKWARD`` that the exception
table leaves out, even when the loop lies inside a ``with`` or ``try`` block. From 3.13 that
instruction checks the eval breaker before jumping, so an asynchronous exception (Ctrl-C, a
signal handler that raises) is raised *at* the jump, outside every handler of the frame: it
leaves a ``with lock:`` block without releasing the lock. The demonstration below shows it. The
package's loops inside such blocks are written so that the compiler covers their back edges
(``while True:`` with a ``break``; a plain statement, not an ``if``, last in the body), and
the scan below keeps them so.
"""

from __future__ import annotations

import dis
import signal
import sys
import threading
import time
from pathlib import Path
from types import CodeType
from typing import Any

import pytest

import allotment

PACKAGE = Path(allotment.__file__).parent
CHECKS_BEFORE_JUMPING = sys.version_info >= (3, 13)
"""From 3.13 a ``JUMP_BACKWARD`` checks the eval breaker before it jumps: an exception then
belongs to the jump itself. 3.12 checks after, and the exception belongs to the instruction
before the jump's target, which the table covers."""


def _codes(code: CodeType) -> list[CodeType]:
    found = [code]
    for constant in code.co_consts:
        if isinstance(constant, CodeType):
            found += _codes(constant)
    return found


def _entries(code: CodeType) -> list[tuple[int, int, int]]:
    """(start, end, target) of each exception table entry, in bytes."""
    bytecode = dis.Bytecode(code)
    entries = getattr(bytecode, "exception_entries", None)
    if entries is None:  # 3.11: the same table, through the parser dis uses
        entries = dis._parse_exception_table(code)  # type: ignore[attr-defined]
    return [(entry.start, entry.end, entry.target) for entry in entries]


def escaping_back_edges(code: CodeType) -> list[int]:
    """Lines of the ``JUMP_BACKWARD``s of ``code`` that no handler covers although their
    target lies in a ``with`` or ``try`` block (a range whose handler starts with
    ``PUSH_EXC_INFO``)."""
    instructions = {instruction.offset: instruction for instruction in dis.get_instructions(code)}
    entries = _entries(code)
    lines = []
    for instruction in instructions.values():
        if instruction.opname != "JUMP_BACKWARD":
            continue
        if any(start <= instruction.offset < end for start, end, _ in entries):
            continue
        target = instruction.argval
        if any(
            start <= target < end and instructions[handler].opname == "PUSH_EXC_INFO"
            for start, end, handler in entries
        ):
            positions = getattr(instruction, "positions", None)  # 3.11 and later
            lines.append(positions.lineno if positions and positions.lineno else -1)
    return lines


def _package_codes() -> list[tuple[str, CodeType]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        top = compile(path.read_text(encoding="utf-8"), str(path), "exec")
        found += [(f"{path.relative_to(PACKAGE)}:{code.co_name}", code) for code in _codes(top)]
    return found


@pytest.mark.skipif(sys.version_info < (3, 11), reason="3.10 has no exception table")
def test_the_scan_finds_the_pattern_where_the_compiler_leaves_it_uncovered() -> None:
    lock = threading.Lock()

    def draining(items: list[int]) -> None:
        with lock:
            while items:
                items.pop()

    def ending_with_if(items: list[int]) -> None:
        with lock:
            for item in items:
                if item:
                    items.clear()

    def written_out(items: list[int]) -> None:
        with lock:
            while True:
                if not items:
                    break
                items.pop()

    assert escaping_back_edges(written_out.__code__) == []
    if sys.version_info >= (3, 12):
        assert escaping_back_edges(ending_with_if.__code__) != []  # the compiler's gap, found
    # 3.14 covers a ``while cond:`` loop's back edge; 3.12 and 3.13 leave it out.
    escapes = escaping_back_edges(draining.__code__) != []
    assert escapes == (sys.version_info[:2] in {(3, 12), (3, 13)})


@pytest.mark.skipif(not CHECKS_BEFORE_JUMPING, reason="raised inside the table before 3.13")
def test_no_loop_in_the_package_has_a_back_edge_outside_its_handler() -> None:
    codes = _package_codes()
    assert len(codes) > 200  # the scan reads the whole package
    escaping = {name: lines for name, code in codes if (lines := escaping_back_edges(code))}
    assert not escaping, f"back edges outside their handlers (line numbers): {escaping}"


@pytest.mark.skipif(not CHECKS_BEFORE_JUMPING, reason="raised inside the table before 3.13")
def test_the_gap_really_leaves_a_lock_held_on_this_interpreter() -> None:
    """Why the scan matters: a signal handler that raises, delivered at the uncovered back
    edge, leaves ``with lock:`` without releasing the lock. (Counted only where the traceback
    shows the back edge: on 3.14 ``with`` itself can leave a C lock held, see
    ``test_with_entry.py``.)"""
    lock = threading.Lock()

    class Interrupt(Exception):
        pass

    armed = [False]

    def interrupt(signum: int, frame: Any) -> None:
        if armed[0]:
            raise Interrupt

    def draining(count: int) -> None:
        with lock:
            for item in [0] * count:
                if item:
                    break

    back_edges = set(escaping_back_edges(draining.__code__))
    assert back_edges
    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.0001)
    left_held = 0
    try:
        deadline = time.monotonic() + 10
        while not left_held and time.monotonic() < deadline:
            try:
                armed[0] = True
                try:
                    draining(500)
                finally:
                    armed[0] = False
            except Interrupt as interrupted:
                if lock.locked():
                    lock.release()
                    left_held += _raised_at(interrupted, draining.__code__) in back_edges
            else:
                assert not lock.locked()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert left_held, "no interrupt left the lock held: has CPython closed the gap?"


def _raised_at(error: BaseException, code: CodeType) -> int | None:
    """The line of ``code`` where ``error`` was raised, or ``None``."""
    line = None
    traceback = error.__traceback__
    while traceback is not None:
        if traceback.tb_frame.f_code is code:
            line = traceback.tb_lineno
        traceback = traceback.tb_next
    return line
