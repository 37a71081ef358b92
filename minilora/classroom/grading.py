"""Grading of the classroom exercises by the library's own spec tests, and their command line.

Each step of ``minilora.classroom.exercises.STEPS`` is graded by one pytest subprocess on the student's copy
of the project, ``pytest -m stepNN`` with the workspace's minilora first on the import path:

    grade(workspace)             a StepResult per step: tests passed out of those that ran
    grade_many(parent)           the same for a folder of submissions, one row per student
    score_table, class_table     the scores as text; write_csv saves them, one row per student

``tests_from`` grades with the tests and step table of a trusted checkout instead of the
submitted ones, hidden tests included. Command line: ``minilora exercises
{list,make,hints,grade,grade-all} ...``, also
``python -m minilora.classroom ...`` (docs/teachers.md); both run ``exercises_main`` here.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from minilora.classroom.exercises import STEPS, Step, check_table, get_step, step_tests, steps_table
from minilora.classroom.regions import SolutionMarkerError
from minilora.classroom.workspace import _JUNK, TEACHER_ONLY, make_student_workspace, write_hints


# --------------------------------------------------------------------------- grading
@dataclass
class StepResult:
    """The score of one step: tests passed out of those that ran (skipped ones do not count)."""
    number: int
    name: str
    status: str              # passed | not implemented | failing | error | no tests | not available
    passed: int = 0
    total: int = 0
    skipped: int = 0
    not_implemented: bool = False     # there were failures and every one was a stub's
    stub_steps: tuple[int, ...] = ()  # the steps whose stubs the failures reached
    tests: tuple[str, ...] = ()       # names of the selected tests, skipped ones included
    detail: str = ""                  # first failure, or why nothing ran

    @property
    def done(self) -> bool:
        return self.status == "passed"


_STUB_RAISED = re.compile(r"NotImplementedError: Step (\d+):")


def grading_env(workspace_dir) -> dict:
    """The subprocess environment that imports ``minilora`` from the workspace, whatever is installed."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    env["PYTHONPATH"] = str(Path(workspace_dir).resolve())
    env["PYTHONDONTWRITEBYTECODE"] = "1"          # leave submissions as they were handed in
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"   # the spec tests need no plugin; saves ~0.5 s a step
    return env


def _last_error_line(text: str) -> str:
    """The exception line of a pytest traceback, with the file and line of a syntax error."""
    lines = [ln[1:].strip() for ln in text.splitlines() if ln.startswith("E ")]
    where = [m for m in map(re.compile(r'File "(.+?)", line (\d+)').search, lines) if m]
    suffix = f" ({Path(where[-1][1]).name}:{where[-1][2]})" if where else ""
    return lines[-1] + suffix if lines else ""


def _read_junit(path: Path) -> list[tuple[str, str, str]]:
    """(name, outcome, message) per testcase; outcome is passed, failed, error or skipped."""
    cases = []
    for tc in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in tc:
            if child.tag in ("failure", "error", "skipped"):
                outcome = "failed" if child.tag == "failure" else child.tag
                message = (child.get("message") or "").strip()
                if child.tag == "error" or not message:       # "collection failure": say why
                    message = _last_error_line(child.text or "") or message
                break
        cases.append((tc.get("name", ""), outcome, message))
    return cases


def _grade_step(step: Step, ws: Path, timeout: float) -> StepResult:
    why = step.missing(ws)
    if why:
        return StepResult(step.number, step.name, "not available", detail=why)
    files = [rel for rel in step.tests if (ws / rel).is_file()]
    if not files:
        return StepResult(step.number, step.name, "no tests", detail=f"missing {', '.join(step.tests)}")
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", *files, "-m", step.marker, "-q",
               "-p", "no:cacheprovider", f"--junitxml={junit}"]
        try:
            proc = subprocess.run(cmd, cwd=ws, env=grading_env(ws), capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return StepResult(step.number, step.name, "error", total=len(step_tests(step, ws)),
                              detail=f"timed out after {timeout} s")
        cases = _read_junit(junit) if junit.is_file() else []
    ran = [c for c in cases if c[1] != "skipped"]
    bad = [c for c in ran if c[1] != "passed"]
    stubs = [_STUB_RAISED.match(c[2]) for c in bad]
    r = StepResult(step.number, step.name, "passed", sum(c[1] == "passed" for c in ran), len(ran),
                   len(cases) - len(ran), bool(bad) and all(stubs),
                   tuple(sorted({int(m.group(1)) for m in stubs if m})), tuple(c[0] for c in cases))
    output = (proc.stdout + proc.stderr).strip().splitlines()
    if proc.returncode not in (0, 1, 5):             # interrupted: nothing of this step was graded
        r.status, r.detail = "error", (bad[0][2] if bad else "") or " / ".join(output[-3:])
        r.passed, r.total = 0, len(step_tests(step, ws))
    elif not ran:
        r.status, r.detail = "no tests", "every test was skipped" if cases else "no test selected"
    elif bad and r.not_implemented and r.stub_steps == (step.number,):
        r.status = "not implemented"
    elif bad:
        others = [n for n in r.stub_steps if n != step.number]
        r.status = "failing"
        r.detail = f"needs step {', '.join(map(str, others))} first" if others else bad[0][2]
    return r


def _trusted_copy(ws: Path, tests_from: Path, dst: Path) -> Path:
    """The workspace with tests/ (hidden ones included), pyproject.toml and the step table taken
    from ``tests_from``."""
    shutil.copytree(ws, dst, ignore=shutil.ignore_patterns(*_JUNK, ".git", ".venv", "venv", "runs"))
    shutil.rmtree(dst / "tests", ignore_errors=True)
    shutil.copytree(tests_from / "tests", dst / "tests", ignore=shutil.ignore_patterns(*_JUNK))
    for rel in TEACHER_ONLY:
        (dst / rel).unlink(missing_ok=True)
    shutil.copy2(tests_from / "pyproject.toml", dst / "pyproject.toml")
    shutil.rmtree(dst / "minilora/classroom", ignore_errors=True)          # the step table and its tools
    shutil.copytree(tests_from / "minilora/classroom", dst / "minilora/classroom",
                    ignore=shutil.ignore_patterns(*_JUNK))
    return dst


def grade(workspace_dir=".", steps=None, *, tests_from=None, timeout: float = 120) -> list[StepResult]:
    """Grade the copy of minilora in ``workspace_dir``, one pytest subprocess per step.

    steps:      step numbers to grade; all of STEPS by default (unavailable ones are reported).
    tests_from: a checkout or fresh workspace whose tests/, pyproject.toml and step table replace
                the submitted ones (in a temporary copy), so edited tests cannot change a score.
    timeout:    seconds per step before its tests count as an error (an endless loop, say).
    """
    ws = Path(workspace_dir).resolve()
    if not (ws / "minilora").is_dir():
        raise FileNotFoundError(f"{ws} has no minilora/ folder: not a workspace")
    chosen = STEPS if steps is None else [get_step(int(n)) for n in steps]
    if tests_from is None:
        return [_grade_step(s, ws, timeout) for s in chosen]
    with tempfile.TemporaryDirectory() as tmp:
        copy = _trusted_copy(ws, Path(tests_from).resolve(), Path(tmp) / "ws")
        return [_grade_step(s, copy, timeout) for s in chosen]


def _find_workspace(folder: Path) -> Path | None:
    """``folder`` itself, or its single subfolder holding minilora/ (an unzipped archive)."""
    if (folder / "minilora").is_dir():
        return folder
    inner = [p for p in folder.iterdir() if p.is_dir() and (p / "minilora").is_dir()]
    return inner[0] if len(inner) == 1 else None


def grade_many(parent_dir, steps=None, *, tests_from=None, timeout: float = 120,
               progress=None) -> dict[str, list[StepResult]]:
    """Grade every student subfolder of ``parent_dir``; an empty list where none holds minilora/.

    ``progress(name)``, if given, is called before each student (grading takes seconds per step).
    """
    scores = {}
    for folder in sorted(p for p in Path(parent_dir).iterdir() if p.is_dir() and not p.name.startswith(".")):
        if progress:
            progress(folder.name)
        ws = _find_workspace(folder)
        scores[folder.name] = grade(ws, steps, tests_from=tests_from, timeout=timeout) if ws else []
    return scores


def score_table(results: list[StepResult]) -> str:
    lines = [f"{'step':>4}  {'name':<24} {'passed':>7}  status"]
    for r in results:
        score = f"{r.passed}/{r.total}" if r.status != "not available" else "-"
        status = f"{r.status} ({r.detail})" if r.detail and r.status != "passed" else r.status
        lines.append(f"{r.number:>4}  {r.name:<24} {score:>7}  {status}")
    graded = [r for r in results if r.status != "not available"]
    lines.append(f"{sum(r.done for r in graded)} of {len(graded)} steps done, "
                 f"{sum(r.passed for r in graded)}/{sum(r.total for r in graded)} tests passed")
    return "\n".join(lines)


def class_table(scores: dict[str, list[StepResult]]) -> str:
    numbers = sorted({r.number for rs in scores.values() for r in rs})
    width = max([len(n) for n in scores] + [7])
    lines = [f"{'student':<{width}}  " + " ".join(f"s{n:02d}".rjust(5) for n in numbers) + "   done"]
    for student, rs in scores.items():
        if not rs:
            lines.append(f"{student:<{width}}  (no minilora/ folder found)")
            continue
        cells = {r.number: ("-" if r.status == "not available" else "err" if r.status == "error"
                            else f"{r.passed}/{r.total}") for r in rs}
        graded = [r for r in rs if r.status != "not available"]
        lines.append(f"{student:<{width}}  " + " ".join(cells.get(n, "").rjust(5) for n in numbers)
                     + f"   {sum(r.done for r in graded)}/{len(graded)}")
    return "\n".join(lines)


def write_csv(scores: dict[str, list[StepResult]], path) -> None:
    """One row per student: passed and total tests per step, then the number of steps done."""
    numbers = sorted({r.number for rs in scores.values() for r in rs})
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["student"] + [f"step{n:02d}{x}" for n in numbers for x in ("", "_total")]
                   + ["steps_done"])
        for student, rs in scores.items():
            by = {r.number: r for r in rs}
            w.writerow([student] + [v for n in numbers for v in
                                    ((by[n].passed, by[n].total) if n in by else ("", ""))]
                       + [sum(r.done for r in rs)])


# --------------------------------------------------------------------------- command line
def _step_list(text: str) -> list[int]:
    try:
        numbers = [int(t.strip().lower().removeprefix("step")) for t in text.split(",") if t.strip()]
        for n in numbers:
            get_step(n)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return numbers


def exercises_main(argv=None) -> int:
    """``minilora exercises {list,make,hints,grade,grade-all}``; returns the exit status."""
    p = argparse.ArgumentParser(prog="minilora exercises",
                                description="Student workspaces from minilora's marked solutions, "
                                            "graded by its spec tests.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the step table and any disagreement between table and code")
    make = sub.add_parser("make", help="write a student workspace")
    make.add_argument("--out", required=True, help="the folder to create")
    make.add_argument("--force", action="store_true", help="write into a non-empty folder")
    hints = sub.add_parser("hints", help="write the per-step hint files (for the teacher to hand out, or not)")
    hints.add_argument("--out", required=True, help="the folder to write stepNN_name.md files into")
    one = sub.add_parser("grade", help="grade one workspace (exit status 0 when every step passes)")
    one.add_argument("dir", nargs="?", default=".", help="the workspace (default: here)")
    many = sub.add_parser("grade-all", help="grade every student subfolder of PARENT")
    many.add_argument("parent")
    many.add_argument("--csv", help="also write the scores to this CSV file")
    for q in (one, many):
        q.add_argument("--steps", type=_step_list, help="step numbers, e.g. 1,2 (default: all)")
        q.add_argument("--tests-from", help="grade with the tests of this checkout or workspace")
        q.add_argument("--timeout", type=float, default=120, help="seconds per step (default 120)")
    args = p.parse_args(argv)
    try:
        if args.command == "list":
            problems = check_table()
            print(steps_table() + "".join(f"\nproblem: {m}" for m in problems))
            return 1 if problems else 0
        if args.command == "make":
            out = make_student_workspace(args.out, force=args.force)
            print(f"wrote {out}; students start with {out / 'README.md'}\n\n{steps_table(out)}")
            return 0
        if args.command == "hints":
            for path in write_hints(args.out):
                print(path)
            return 0
        if args.command == "grade":
            results = grade(args.dir, args.steps, tests_from=args.tests_from, timeout=args.timeout)
            print(score_table(results))
            return 0 if all(r.done for r in results if r.status != "not available") else 1
        scores = grade_many(args.parent, args.steps, tests_from=args.tests_from, timeout=args.timeout,
                            progress=lambda name: print(f"grading {name} ...", file=sys.stderr))
        print(class_table(scores))
        if args.csv:
            write_csv(scores, args.csv)
        return 0
    except (FileExistsError, FileNotFoundError, SolutionMarkerError) as e:
        print(f"minilora exercises: {e}", file=sys.stderr)
        return 2
