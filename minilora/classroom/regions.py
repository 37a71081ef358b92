"""Marked regions of source text, and their rewriting (the nbgrader convention).

Two kinds of region, each a pair of lines that hold nothing but the marker:

    ### BEGIN SOLUTION / ### END SOLUTION   the body a student writes; the student copy has one
                                           ``raise NotImplementedError("Step N: name")`` line instead
    ### BEGIN HINT / ### END HINT           a part of a graded function's docstring that gives the
                                           answer away (a formula); the student copy drops it and
                                           the teacher's hint file for the step carries it

Everything here is text in, text out: ``find_regions`` locates the regions of one file (and the
function each sits in), ``replace_regions`` rewrites them, ``region_body`` reads one.
"""
from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass

SOLUTION = ("### BEGIN SOLUTION", "### END SOLUTION")
HINT = ("### BEGIN HINT", "### END HINT")
BEGIN, END = SOLUTION


class SolutionMarkerError(ValueError):
    """Unbalanced markers, or a region without a step; the message names file and line."""


@dataclass(frozen=True)
class Region:
    begin: int              # 1-based line of the BEGIN marker
    end: int                # 1-based line of the END marker
    indent: str             # the BEGIN marker's indentation, which the stub takes
    function: str | None    # the innermost enclosing ``def``; None at module level


_DEF = re.compile(r"\s*(?:async\s+)?def\s+(\w+)")


def _enclosing_function(lines: list[str], i: int, indent: str) -> str | None:
    """Walk up from line i: the first ``def`` indented less than every block passed on the way."""
    width = len(indent)
    for line in reversed(lines[:i]):
        stripped = line.lstrip()
        w = len(line) - len(stripped)
        if not stripped or stripped.startswith("#") or w >= width:
            continue
        m = _DEF.match(line)
        if m:
            return m.group(1)
        width = w                     # left an if/for/class block: its def must be further out
    return None


def find_regions(text: str, filename: str = "<string>", markers=SOLUTION) -> list[Region]:
    """The regions of ``text`` between ``markers`` (a BEGIN, END pair), in order."""
    begin, end = markers
    lines = text.splitlines()
    regions, opened = [], None
    for i, line in enumerate(lines):
        if line.strip() == begin:
            if opened is not None:
                raise SolutionMarkerError(f"{filename}:{i + 1}: {begin!r} inside the region "
                                          f"opened at line {opened + 1}")
            opened = i
        elif line.strip() == end:
            if opened is None:
                raise SolutionMarkerError(f"{filename}:{i + 1}: {end!r} without a {begin!r} before it")
            indent = lines[opened][:len(lines[opened]) - len(lines[opened].lstrip())]
            regions.append(Region(opened + 1, i + 1, indent, _enclosing_function(lines, opened, indent)))
            opened = None
    if opened is not None:
        raise SolutionMarkerError(f"{filename}:{opened + 1}: {begin!r} has no matching {end!r}")
    return regions


def has_markers(text: str, markers=SOLUTION) -> bool:
    """True when some line of ``text`` is one of ``markers``."""
    return any(line.strip() in markers for line in text.splitlines())


def replace_regions(text: str, stub, *, filename: str = "<string>", markers=SOLUTION) -> str:
    """Replace each region, markers included, by one stub line at the BEGIN indentation.

    ``stub`` is the statement ("raise NotImplementedError(...)"), a function Region -> statement,
    or None (a function may return None too): then the region's lines are dropped.
    Lines outside the regions stay as they are, line endings included.
    """
    lines = text.splitlines(keepends=True)
    out, pos = [], 0
    for r in find_regions(text, filename, markers):
        out += lines[pos:r.begin - 1]
        begin = lines[r.begin - 1]
        eol = begin[len(begin.rstrip("\r\n")):]
        line = stub(r) if callable(stub) else stub
        if line is not None:
            out.append(r.indent + line + eol)
        pos = r.end
    return "".join(out + lines[pos:])


def region_body(text: str, region: Region) -> str:
    """The lines between a region's markers, dedented, without the markers."""
    lines = text.splitlines(keepends=True)[region.begin:region.end - 1]
    return textwrap.dedent("".join(lines))
