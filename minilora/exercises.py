"""Classroom exercises made from the library itself and graded by its own spec tests.

The functions students write carry ``### BEGIN SOLUTION`` / ``### END SOLUTION`` comment lines
around their bodies (the nbgrader convention). ``STEPS`` lists them in teaching order, each with
the spec tests that grade it. Everything else is derived from that one table:

    make_student_workspace(out)  a copy of the project where each marked region has become
                                 ``raise NotImplementedError("Step N: <name>")``
    tests/conftest.py            marks each spec test with its step: ``pytest -m step01``
    grade(workspace)             runs each step's tests on that copy and scores them
    grade_many(parent)           the same for a folder of submissions, one row per student

Command line: ``python -m minilora.exercises {list,make,grade,grade-all} ...`` (docs/teachers.md).

Adding a step: mark the function's body in the library and add a row to ``STEPS``. A row whose
module or function does not exist yet is shown as "not available" and skipped everywhere.
This file is twice the usual 300 lines: the table, the stubbing and the grading all read the same
rows, and one file keeps them checkable side by side (split it into a package if it grows further).
"""
from __future__ import annotations

import argparse
import ast
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
SOURCE_DIR = Path(__file__).resolve().parent.parent       # the checkout this package lives in
TEACHER_ONLY = ("tests/test_exercises.py",)                # checks the reference; not handed out
_JUNK = ("__pycache__", "*.pyc", ".pytest_cache", "*.egg-info", ".ipynb_checkpoints")


# --------------------------------------------------------------------------- the step table
@dataclass(frozen=True)
class Step:
    """One exercise: the function(s) a student writes and the spec tests that grade them.

    number:   1, 2, ...: the pytest marker is ``step01``, the stub says "Step 1: <name>".
    module:   the file, relative to the project root ("minilora/layers.py").
    function: the function to write, or a tuple of functions written in the same step.
    tests:    {test file: test-name substrings}. A test grades the step when its function name
              contains one of them. Choose tests that call this step's function and no later
              step's, so that a student can pass the steps in order.
    concept:  one line for the tables.
    """
    number: int
    name: str
    module: str
    function: str | tuple[str, ...]
    tests: dict = field(hash=False)
    concept: str = ""

    @property
    def marker(self) -> str:
        return f"step{self.number:02d}"

    @property
    def functions(self) -> tuple[str, ...]:
        return (self.function,) if isinstance(self.function, str) else tuple(self.function)

    @property
    def stub(self) -> str:
        """The line that replaces this step's solution regions (before indentation)."""
        return f"raise NotImplementedError({json.dumps(f'Step {self.number}: {self.name}')})"

    def missing(self, root=SOURCE_DIR) -> str | None:
        """Why the step is not available in the project at ``root`` yet; None when it is."""
        path = Path(root) / self.module
        if not path.is_file():
            return f"{self.module} does not exist yet"
        text = path.read_text(encoding="utf-8")
        absent = [f for f in self.functions
                  if not re.search(rf"^\s*def {re.escape(f)}\s*\(", text, re.M)]
        return f"{self.module} has no {', '.join(absent)} yet" if absent else None


_ADAMW_TESTS = ("test_first_adamw_step", "test_adamw_matches_direct_reimplementation",
                "test_adamw_matches_torch_adamw", "test_adamw_on_cupy",
                "test_adamw_update_leaves_the_gradient_unchanged",
                "test_weight_decay_is_decoupled", "test_no_decay_parameters_do_not_shrink",
                "test_optimizer_state_exists_only_for_trainable_parameters",
                "test_params_are_updated_in_place", "test_parameter_added_later",
                "test_learning_rate_set_between_steps_is_used")

STEPS: list[Step] = [
    Step(1, "linear_backward", "minilora/layers.py", "linear_backward",
         {"tests/test_layers.py": ("test_linear_backward_matches_numerical_gradient",
                                   "test_frozen_linear_computes_no_weight_gradient")},
         "chain rule through y = x W^T + b; a frozen W needs no dW"),
    Step(2, "layernorm_backward", "minilora/layers.py", "layernorm_backward",
         {"tests/test_layers.py": ("test_layernorm_backward_matches_numerical_gradient",)},
         "three paths through mean and variance collapse to one formula"),
    Step(3, "cross_entropy_backward", "minilora/layers.py", "cross_entropy_backward",
         {"tests/test_layers.py": ("test_cross_entropy_backward_matches_numerical_gradient",
                                   "test_cross_entropy_ignores_masked_positions")},
         "softmax minus one-hot, averaged over the masked positions"),
    Step(4, "attention_backward", "minilora/attention.py", "attention_backward",
         {"tests/test_attention.py": ("test_attention_backward_matches_numerical_gradient",)},
         "softmax Jacobian, causal mask, scaled dot products"),
    Step(5, "adamw_update", "minilora/optim.py", "adamw_update",
         {"tests/test_optim.py": _ADAMW_TESTS},
         "bias-corrected moments and decoupled weight decay"),
    Step(6, "lora_forward", "minilora/lora.py", "lora_forward",
         {"tests/test_lora.py": ("test_lora_forward_matches_its_closed_form",),
          "tests/test_lora_model.py": ("test_lora_model_equals_base_model_at_init",
                                       "test_disable_adapter_gives_the_base_logits_exactly",
                                       "test_switching_adapters_gives_each_adapters_own_outputs")},
         "h = W0 x + (alpha / r) B A x without forming B A"),
    Step(7, "lora_backward", "minilora/lora.py", "lora_backward",
         {"tests/test_lora.py": ("test_lora_backward_matches_numerical_gradient",
                                 "test_lora_backward_with_dropout_matches_numerical_gradient",
                                 "test_only_B_gets_a_gradient_at_init")},
         "gradients for A and B only; none for the frozen W0"),
    Step(8, "merge", "minilora/lora.py", ("merge_weights", "unmerge_weights"),
         {"tests/test_lora.py": ("test_merge_then_unmerge_restores_w0_up_to_float32_rounding",
                                 "test_lora_forward_equals_linear_with_merged_weight"),
          "tests/test_lora_model.py": ("test_merged_forward_matches_unmerged_forward",
                                       "test_merge_then_unmerge_restores_the_base_logits",
                                       "test_merge_and_unload_gives_a_plain_model_with_the_same_outputs")},
         "W = W0 + (alpha / r) B A: no extra latency, and back"),
    Step(9, "subspace_similarity", "minilora/analysis.py", ("subspace_similarity", "subspace_similarity_grid"),
         {"tests/test_analysis.py": ("subspace_similarity",)},
         "overlap of the right singular subspaces of two adapters"),
]


def get_step(number: int) -> Step:
    for step in STEPS:
        if step.number == number:
            return step
    raise ValueError(f"no step {number}; steps are {[s.number for s in STEPS]}")


def steps_for_test(path: str, test_name: str) -> list[Step]:
    """The steps graded by the test ``test_name`` (parameters allowed) of ``path`` (from the root)."""
    name = test_name.split("[")[0]
    return [s for s in STEPS if any(p in name for p in s.tests.get(path, ()))]


def step_tests(step: Step, root=SOURCE_DIR) -> list[str]:
    """Node ids "tests/test_x.py::test_y" of the test functions in ``root`` that grade ``step``."""
    found = []
    for rel, patterns in step.tests.items():
        path = Path(root) / rel
        if not path.is_file():
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            defs = [(node.name, node)] if isinstance(node, ast.FunctionDef) else []
            if isinstance(node, ast.ClassDef):
                defs = [(f"{node.name}::{m.name}", m) for m in node.body if isinstance(m, ast.FunctionDef)]
            found += [f"{rel}::{nid}" for nid, d in defs
                      if d.name.startswith("test") and any(p in d.name for p in patterns)]
    return found


# --------------------------------------------------------------------------- solution regions
class SolutionMarkerError(ValueError):
    """Unbalanced solution markers, or a region without a step; the message names file and line."""


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


def find_regions(text: str, filename: str = "<string>") -> list[Region]:
    """The marked regions of ``text``; a marker line holds only the marker (and spaces)."""
    lines = text.splitlines()
    regions, opened = [], None
    for i, line in enumerate(lines):
        if line.strip() == BEGIN:
            if opened is not None:
                raise SolutionMarkerError(f"{filename}:{i + 1}: {BEGIN!r} inside the region "
                                          f"opened at line {opened + 1}")
            opened = i
        elif line.strip() == END:
            if opened is None:
                raise SolutionMarkerError(f"{filename}:{i + 1}: {END!r} without a {BEGIN!r} before it")
            indent = lines[opened][:len(lines[opened]) - len(lines[opened].lstrip())]
            regions.append(Region(opened + 1, i + 1, indent, _enclosing_function(lines, opened, indent)))
            opened = None
    if opened is not None:
        raise SolutionMarkerError(f"{filename}:{opened + 1}: {BEGIN!r} has no matching {END!r}")
    return regions


def replace_regions(text: str, stub, *, filename: str = "<string>") -> str:
    """Replace each marked region, markers included, by one stub line at the BEGIN indentation.

    ``stub`` is the statement ("raise NotImplementedError(...)") or a function Region -> statement.
    Lines outside the regions stay as they are, line endings included.
    """
    lines = text.splitlines(keepends=True)
    out, pos = [], 0
    for r in find_regions(text, filename):
        out += lines[pos:r.begin - 1]
        begin = lines[r.begin - 1]
        eol = begin[len(begin.rstrip("\r\n")):]
        out.append(r.indent + (stub(r) if callable(stub) else stub) + eol)
        pos = r.end
    return "".join(out + lines[pos:])


def _step_of(region: Region, module: str | None, filename: str) -> Step:
    """The row of a region: by module and function, or by function alone (notebooks)."""
    for step in STEPS:
        if region.function in step.functions and module in (None, step.module):
            return step
    where = f"{region.function}()" if region.function else "module-level code"
    raise SolutionMarkerError(f"{filename}:{region.begin}: the solution region in {where} "
                              f"has no row in minilora.exercises.STEPS")


def _stub_module(text: str, module: str) -> str:
    return replace_regions(text, lambda r: _step_of(r, module, module).stub, filename=module)


def _stub_notebook(text: str, name: str) -> str:
    """Stub the code cells of a notebook and drop all outputs (they could show the answers)."""
    nb = json.loads(text)
    for k, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        where = f"{name} cell {k}"
        new = replace_regions(src, lambda r: _step_of(r, None, where).stub, filename=where)
        cell["source"] = new if isinstance(cell["source"], str) else new.splitlines(keepends=True)
        cell["outputs"], cell["execution_count"] = [], None
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- student workspace
def _read(path: Path) -> str:
    with open(path, encoding="utf-8", newline="") as f:        # keep \r\n where a file has it
        return f.read()


def _write(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def make_student_workspace(out_dir, *, force: bool = False, source_dir=None) -> Path:
    """Write the student version of the project to ``out_dir`` and return its path.

    Copies minilora/ (binary checkpoints included), tests/ (less TEACHER_ONLY), pyproject.toml,
    README.md and exercises/*.ipynb, replaces every solution region by its step's stub and adds
    EXERCISES.md. A non-empty ``out_dir`` is refused unless ``force``; then only the paths written
    here are replaced, anything else there (a .venv) is kept.
    """
    src, out = Path(source_dir or SOURCE_DIR), Path(out_dir)
    if not (src / "minilora").is_dir() or not (src / "tests").is_dir():
        raise FileNotFoundError(f"{src} is not a minilora source checkout (needs minilora/ and tests/)")
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} is not empty; choose another folder or pass force=True")
    # Stub everything first: a bad marker raises before anything is written.
    stubbed = {}
    for path in sorted((src / "minilora").rglob("*.py")):
        rel = path.relative_to(src).as_posix()
        text = _read(path)
        if any(line.strip() in (BEGIN, END) for line in text.splitlines()):
            stubbed[rel] = _stub_module(text, rel)
    for path in sorted(src.glob("exercises/*.ipynb")):
        rel = path.relative_to(src).as_posix()
        stubbed[rel] = _stub_notebook(_read(path), rel)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("minilora", "tests", "exercises", "pyproject.toml", "README.md", "EXERCISES.md"):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
        elif (out / name).exists():
            (out / name).unlink()
    ignore = shutil.ignore_patterns(*_JUNK)
    shutil.copytree(src / "minilora", out / "minilora", ignore=ignore)
    shutil.copytree(src / "tests", out / "tests", ignore=ignore)
    for rel in TEACHER_ONLY:
        (out / rel).unlink(missing_ok=True)
    for name in ("pyproject.toml", "README.md"):
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    for rel, text in stubbed.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        _write(out / rel, text)
    _write(out / "EXERCISES.md", exercises_readme(out))
    return out


def exercises_readme(root) -> str:
    """The EXERCISES.md of a workspace: what to write, how to install, how to test one step."""
    rows = "\n".join(f"| {s.number} | `{'`, `'.join(s.functions)}` in `{s.module}` | {s.concept} "
                     f"| `pytest -m {s.marker}` |" for s in STEPS if s.missing(root) is None)
    return f"""# minilora exercises

Each step below is one function of the package whose body has been replaced by
`raise NotImplementedError("Step N: ...")`. Replace that line with your code; keep the signature
and the docstring, which give every shape. The spec tests in `tests/` grade each step.

## Install

    python -m venv .venv && . .venv/bin/activate
    pip install -e . pytest

## Work on one step

    pytest -m step01 -x          # the tests of step 1, stop at the first failure
    python -m minilora.exercises grade --steps 1    # your score for step 1 (no --steps: all steps)

Do the steps in order: a later step may call an earlier one. `minilora.gradcheck.check_layer`
checks any backward pass of yours against central differences.

## Steps

| step | write | concept | run |
|------|-------|---------|-----|
{rows}
"""


def restore_solution(workspace_dir, number: int, *, source_dir=None) -> Path:
    """Put step ``number``'s reference solution back into a workspace (unblocks a student).

    Each stub of the step is replaced, in order, by the reference region, markers included, so
    that stubbing and restoring every step gives back the reference file. Returns the file.
    """
    step = get_step(number)
    ref_path, path = Path(source_dir or SOURCE_DIR) / step.module, Path(workspace_dir) / step.module
    ref_lines = _read(ref_path).splitlines(keepends=True)
    regions = [r for r in find_regions(_read(ref_path), step.module) if r.function in step.functions]
    lines = _read(path).splitlines(keepends=True)
    stubs = [i for i, line in enumerate(lines) if line.strip() == step.stub]
    if len(stubs) != len(regions) or not stubs:
        raise ValueError(f"{path}: expected {len(regions)} stub(s) of step {number}, found {len(stubs)}")
    for i, r in reversed(list(zip(stubs, regions))):
        lines[i:i + 1] = ref_lines[r.begin - 1:r.end]
    _write(path, "".join(lines))
    return path


def check_table(root=SOURCE_DIR) -> list[str]:
    """Problems between STEPS and the project at ``root``; empty when table and code agree."""
    problems = []
    numbers = [s.number for s in STEPS]
    if numbers != sorted(set(numbers)):
        problems.append(f"step numbers must be increasing and unique: {numbers}")
    marked = set()
    root = Path(root)
    for path in sorted((root / "minilora").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        for r in find_regions(_read(path), rel):
            try:
                marked.add((_step_of(r, rel, rel).number, r.function))
            except SolutionMarkerError as e:
                problems.append(str(e))
    for s in STEPS:
        if s.missing(root) is not None:
            continue
        problems += [f"step {s.number}: {f}() in {s.module} has no solution region"
                     for f in s.functions if (s.number, f) not in marked]
        names = [t.split("::")[-1] for t in step_tests(s, root)]
        problems += [f"step {s.number}: no test in {rel} matches {p!r}"
                     for rel, ps in s.tests.items() for p in ps if not any(p in n for n in names)]
    return problems


def steps_table(root=SOURCE_DIR) -> str:
    lines = [f"{'step':>4}  {'name':<24} {'tests':>5}  module / note"]
    for s in STEPS:
        why = s.missing(root)
        note = f"not available: {why}" if why else s.module
        lines.append(f"{s.number:>4}  {s.name:<24} {'-' if why else len(step_tests(s, root)):>5}  {note}")
    return "\n".join(lines)


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
    """The workspace with tests/, pyproject.toml and the step table taken from ``tests_from``."""
    shutil.copytree(ws, dst, ignore=shutil.ignore_patterns(*_JUNK, ".git", ".venv", "venv", "runs"))
    shutil.rmtree(dst / "tests", ignore_errors=True)
    shutil.copytree(tests_from / "tests", dst / "tests", ignore=shutil.ignore_patterns(*_JUNK))
    for rel in TEACHER_ONLY:
        (dst / rel).unlink(missing_ok=True)
    for rel in ("pyproject.toml", "minilora/exercises.py"):
        shutil.copy2(tests_from / rel, dst / rel)
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
    """``minilora exercises {list,make,grade,grade-all}``; returns the exit status."""
    p = argparse.ArgumentParser(prog="minilora exercises",
                                description="Student workspaces from minilora's marked solutions, "
                                            "graded by its spec tests.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the step table and any disagreement between table and code")
    make = sub.add_parser("make", help="write a student workspace")
    make.add_argument("--out", required=True, help="the folder to create")
    make.add_argument("--force", action="store_true", help="write into a non-empty folder")
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
            print(f"wrote {out}; students start with {out / 'EXERCISES.md'}\n\n{steps_table(out)}")
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


if __name__ == "__main__":
    sys.exit(exercises_main())
