"""The leak check: no line of a graded solution may reach what students receive.

``solution_lines(source)`` collects the lines inside the solution regions of the library and the
tutorials, and the bodies of the optimised copies of graded functions, without comments; ``find_leaks(workspace, source)`` looks for each of them, up to
whitespace, in every text file of a workspace (code, notebooks, tests, docs). Lines too short to
give anything away (``else:``, ``return dx``, ``C = dy.shape[-1]``) are not looked for: a line
counts when it holds at least ``MIN_CHARS`` characters besides spaces and is not one of the
``IDIOMS`` (plumbing the whole library uses).
"""
from __future__ import annotations

import ast
import io
import json
import re
import textwrap
import tokenize
from dataclasses import dataclass
from pathlib import Path

from minilora.classroom.exercises import STEPS, TEXTBOOK_IN_WORKSPACE
from minilora.classroom.regions import find_regions, region_body

MIN_CHARS = 16
# Plumbing lines that solutions share with code everywhere in the library; they give nothing away:
# an argument reshaped into rows, and a test of an optional argument for None.
IDIOMS = (re.compile(r"\w+=\w+\.reshape\(-1,\w+\.shape\[-1\]\)"), re.compile(r"if\w+isnotNone:|if\w+isNone:"))
TEXT_SUFFIXES = (".py", ".ipynb", ".md", ".txt", ".toml", ".cfg", ".json", ".rst", ".yml", ".yaml")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class SolutionLine:
    where: str        # "minilora/nn/layers.py:44" or "tutorials/01_x.ipynb cell 3:7"
    text: str         # the line as written, comment removed
    key: str          # the line without any whitespace: what is looked for


def _without_comments(code: str) -> list[str]:
    """The lines of ``code`` with comments removed (by the tokenizer, so '#' in strings stays)."""
    lines = code.splitlines()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            if tok.type == tokenize.COMMENT:
                row, col = tok.start
                lines[row - 1] = lines[row - 1][:col]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass                                    # a fragment the tokenizer rejects: keep it whole
    return lines


def _counts(key: str) -> bool:
    return len(key) >= MIN_CHARS and not any(p.fullmatch(key) for p in IDIOMS)


def _lines_of(text: str, where: str) -> list[SolutionLine]:
    out = []
    for r in find_regions(text, where):
        body = region_body(text, r)
        for k, line in enumerate(_without_comments(body)):
            key = _SPACE.sub("", line)
            if _counts(key):
                out.append(SolutionLine(f"{where}:{r.begin + 1 + k}", line.strip(), key))
    return out


def _cells(path: Path) -> list[tuple[str, str]]:
    """(label, source) of every cell of a notebook."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    return [(f"cell {k}", c["source"] if isinstance(c["source"], str) else "".join(c["source"]))
            for k, c in enumerate(nb.get("cells", []))]


def _given_keys(src: Path, step) -> set[str]:
    """The lines of a graded function that the student is given: those outside its regions."""
    text = (src / step.module).read_text(encoding="utf-8")
    inside = {n for r in find_regions(text) for n in range(r.begin, r.end + 1)}
    return {_SPACE.sub("", line) for n, line in enumerate(text.splitlines(), 1) if n not in inside}


def _optimised_lines(src: Path, text: str, where: str, functions) -> list[SolutionLine]:
    """The body lines of the optimised copies of graded functions (TEXTBOOK_IN_WORKSPACE), less the
    lines the textbook form gives the student anyway (unpacking the cache, the return line)."""
    out, lines = [], text.splitlines()
    graded = {f: s for s in STEPS for f in s.functions if s.missing(src) is None}
    for fn in ast.parse(text).body:
        if isinstance(fn, ast.FunctionDef) and fn.name in functions and fn.name in graded:
            given = _given_keys(src, graded[fn.name])
            start = fn.body[1 if ast.get_docstring(fn) else 0].lineno
            body = "\n".join(lines[start - 1:fn.end_lineno])
            for k, line in enumerate(_without_comments(textwrap.dedent(body))):
                key = _SPACE.sub("", line)
                if _counts(key) and key not in given:
                    out.append(SolutionLine(f"{where}:{start + k}", line.strip(), key))
    return out


def solution_lines(source) -> list[SolutionLine]:
    """Every solution line of the library (optimised copies included) and of the tutorials."""
    src = Path(source)
    found = []
    for path in sorted((src / "minilora").rglob("*.py")):
        rel, text = path.relative_to(src).as_posix(), path.read_text(encoding="utf-8")
        found += _lines_of(text, rel) + _optimised_lines(src, text, rel, TEXTBOOK_IN_WORKSPACE.get(rel, ()))
    for path in sorted(src.glob("tutorials/*.ipynb")):
        for label, cell in _cells(path):
            found += _lines_of(cell, f"{path.relative_to(src).as_posix()} {label}")
    return found


def _texts(workspace: Path):
    """(label, text without whitespace) for every text file of the workspace, per notebook cell."""
    for path in sorted(p for p in workspace.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES):
        rel = path.relative_to(workspace).as_posix()
        if any(part.startswith(".") for part in path.relative_to(workspace).parts):
            continue                               # .venv, .git: not what was handed out
        try:
            if path.suffix == ".ipynb":
                for label, cell in _cells(path):
                    yield f"{rel} {label}", _SPACE.sub("", cell)
            else:
                yield rel, _SPACE.sub("", path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue


def find_leaks(workspace, source) -> list[str]:
    """One line per solution line found in the workspace: where it was found and where it is from."""
    lines = solution_lines(source)
    leaks = []
    for label, text in _texts(Path(workspace)):
        leaks += [f"{label}: {s.text!r} (solution line {s.where})" for s in lines if s.key in text]
    return leaks
