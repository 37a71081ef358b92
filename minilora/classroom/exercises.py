"""Classroom exercises made from the library itself: the step table, the marked solutions and the
student workspace.

The functions students write carry ``### BEGIN SOLUTION`` / ``### END SOLUTION`` comment lines
around their bodies (the nbgrader convention). ``STEPS`` lists them in teaching order, each with
the spec tests that grade it. Everything else is derived from that one table:

    make_student_workspace(out)  a copy of the project where each marked region has become
                                 ``raise NotImplementedError("Step N: <name>")``
    tests/conftest.py            marks each spec test with its step: ``pytest -m step01``
    grade(workspace)             runs each step's tests on that copy and scores them (grading.py)
    grade_many(parent)           the same for a folder of submissions, one row per student

Command line: ``python -m minilora.classroom {list,make,grade,grade-all} ...`` (docs/teachers.md);
its parser, exercises_main, lives in grading.py with the grading it runs.

Adding a step: mark the function's body in the library and add a row to ``STEPS``. A row whose
module or function does not exist yet is shown as "not available" and skipped everywhere.
"""
from __future__ import annotations

import ast
import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
SOURCE_DIR = Path(__file__).resolve().parents[2]         # the checkout this package lives in
TEACHER_ONLY = ("tests/test_exercises.py",)                # checks the reference; not handed out
_JUNK = ("__pycache__", "*.pyc", ".pytest_cache", "*.egg-info", ".ipynb_checkpoints")


# --------------------------------------------------------------------------- the step table
@dataclass(frozen=True)
class Step:
    """One exercise: the function(s) a student writes and the spec tests that grade them.

    number:   1, 2, ...: the pytest marker is ``step01``, the stub says "Step 1: <name>".
    module:   the file, relative to the project root ("minilora/nn/layers.py").
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
    Step(1, "linear_backward", "minilora/nn/layers.py", "linear_backward",
         {"tests/test_layers.py": ("test_linear_backward_matches_numerical_gradient",
                                   "test_frozen_linear_computes_no_weight_gradient")},
         "chain rule through y = x W^T + b; a frozen W needs no dW"),
    Step(2, "layernorm_backward", "minilora/nn/layers.py", "layernorm_backward",
         {"tests/test_layers.py": ("test_layernorm_backward_matches_numerical_gradient",)},
         "three paths through mean and variance collapse to one formula"),
    Step(3, "cross_entropy_backward", "minilora/nn/layers.py", "cross_entropy_backward",
         {"tests/test_layers.py": ("test_cross_entropy_backward_matches_numerical_gradient",
                                   "test_cross_entropy_ignores_masked_positions")},
         "softmax minus one-hot, averaged over the masked positions"),
    Step(4, "attention_backward", "minilora/nn/attention.py", "attention_backward",
         {"tests/test_attention.py": ("test_attention_backward_matches_numerical_gradient",)},
         "softmax Jacobian, causal mask, scaled dot products"),
    Step(5, "adamw_update", "minilora/nn/optim.py", "adamw_update",
         {"tests/test_optim.py": _ADAMW_TESTS},
         "bias-corrected moments and decoupled weight decay"),
    Step(6, "lora_forward", "minilora/adapters/lora.py", "lora_forward",
         {"tests/test_lora.py": ("test_lora_forward_matches_its_closed_form",),
          "tests/test_lora_model.py": ("test_lora_model_equals_base_model_at_init",
                                       "test_disable_adapter_gives_the_base_logits_exactly",
                                       "test_switching_adapters_gives_each_adapters_own_outputs")},
         "h = W0 x + (alpha / r) B A x without forming B A"),
    Step(7, "lora_backward", "minilora/adapters/lora.py", "lora_backward",
         {"tests/test_lora.py": ("test_lora_backward_matches_numerical_gradient",
                                 "test_lora_backward_with_dropout_matches_numerical_gradient",
                                 "test_only_B_gets_a_gradient_at_init")},
         "gradients for A and B only; none for the frozen W0"),
    Step(8, "merge", "minilora/adapters/lora.py", ("merge_weights", "unmerge_weights"),
         {"tests/test_lora.py": ("test_merge_then_unmerge_restores_w0_up_to_float32_rounding",
                                 "test_lora_forward_equals_linear_with_merged_weight"),
          "tests/test_lora_model.py": ("test_merged_forward_matches_unmerged_forward",
                                       "test_merge_then_unmerge_restores_the_base_logits",
                                       "test_merge_and_unload_gives_a_plain_model_with_the_same_outputs")},
         "W = W0 + (alpha / r) B A: no extra latency, and back"),
    Step(9, "subspace_similarity", "minilora/experiments/analysis.py", ("subspace_similarity", "subspace_similarity_grid"),
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
                              f"has no row in minilora.classroom.exercises.STEPS")


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
    python -m minilora.classroom grade --steps 1    # your score for step 1 (no --steps: all steps)

Do the steps in order: a later step may call an earlier one. `minilora.nn.gradcheck.check_layer`
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
