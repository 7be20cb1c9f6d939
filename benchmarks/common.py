"""What the benchmark scripts share: the collector kept quiet while timing, and the section of
``docs/benchmarks.md`` that ``rate.py`` and ``aio.py`` each own (``run.py`` writes the rest and
keeps those sections, found by their markers)."""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
from collections.abc import Callable, Iterator

MARKER = "<!-- written by benchmarks/"
"""How every owned section's first marker starts."""


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """No automatic collection while timing: a collection would land in one sample."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def markers(script: str) -> tuple[str, str]:
    """The comments that enclose what ``script`` writes into the page."""
    return f"{MARKER}{script} --write: from here -->", f"<!-- to here: benchmarks/{script} -->"


def replace_figures(page: str, figures: str, heading: str, script: str) -> str:
    """``page`` with what lies between ``script``'s markers replaced by ``figures``; a page
    without them gets a new section (``heading``) at its end. Whatever else the section holds
    (a reading of the figures, by hand) stays."""
    begin_marker, end_marker = markers(script)
    begin = page.find(begin_marker)
    end = page.find(end_marker, begin) if begin >= 0 else -1
    if begin < 0 or end < 0:
        return f"{page.rstrip()}\n\n{heading}\n\n{begin_marker}\n\n{figures}\n{end_marker}\n"
    return f"{page[: begin + len(begin_marker)]}\n\n{figures}\n{page[end:]}"


def run_section_script(
    description: str | None, heading: str, script: str, report: Callable[[bool], str]
) -> None:
    """The command line of a script that owns a section: print ``report(quick)`` and, with
    ``--write PATH``, put it into that page."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a few seconds, for smoke tests")
    parser.add_argument(
        "--write",
        metavar="PATH",
        help=f"also write the figures into the page at PATH (its {heading!r} section)",
    )
    arguments = parser.parse_args()
    figures = report(arguments.quick)
    print(f"{heading}\n\n{figures}", end="")
    if arguments.write:
        with open(arguments.write, encoding="utf-8") as file:
            page = file.read()
        with open(arguments.write, "w", encoding="utf-8") as file:
            file.write(replace_figures(page, figures, heading, script))
    sys.stdout.flush()
