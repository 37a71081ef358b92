"""Specification of the tutorial notebooks: as files (valid, output-free, titled, built on the
package) and as runs (every cell runs, so every check holds; every notebook shows a figure).

The runs execute each notebook once, in a fresh python3 kernel started in tutorials/, and save the
executed copy to build/notebooks/: the site (`make docs`) is built from those copies, so its plots
and numbers are the ones this run checked. Notebooks are committed without outputs, so diffs show
only the source. A run also records which graded library functions the notebook calls, so the
student README's "needs steps" table (minilora.classroom.student_readme.NOTEBOOK_NEEDS) stays true
(a call of an optimised copy in minilora.fast counts for its step: in a workspace it calls the textbook form).
"""
import json
import re
import time
from pathlib import Path

import pytest

from minilora.classroom.exercises import STEPS, TEXTBOOK_IN_WORKSPACE
from minilora.classroom.student_readme import NOTEBOOK_NEEDS

nbformat = pytest.importorskip("nbformat")

REPO = Path(__file__).resolve().parent.parent
TUTORIALS = REPO / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
EXECUTED = REPO / "build" / "notebooks"
CELL_TIMEOUT = 600


def load(path):
    return nbformat.read(path, as_version=nbformat.NO_CONVERT)


def sources(nb, cell_type):
    return [c.source for c in nb.cells if c.cell_type == cell_type]


def test_tutorials_folder_holds_notebooks():
    """There is something to test: tutorials/ holds at least one notebook."""
    assert NOTEBOOKS, f"expected notebooks in {TUTORIALS}, found none"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_valid_nbformat_v4(path):
    """The file parses as nbformat version 4 and validates against its schema."""
    nb = load(path)
    assert nb.nbformat == 4, f"{path.name}: nbformat {nb.nbformat}, expected 4"
    nbformat.validate(nb)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    """No code cell carries outputs or an execution count (clear them before committing)."""
    nb = load(path)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: cells {dirty} have outputs or execution counts; run "
                       f"`jupyter nbconvert --clear-output --inplace tutorials/{path.name}`")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_file_name_is_numbered(path):
    """Names are NN_words.ipynb, so the folder lists the notebooks in reading order."""
    assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), f"{path.name} is not NN_words.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_starts_with_a_markdown_title_and_learning_goals(path):
    """The first cell is markdown: a '# ' title and a 'Learning goals' list."""
    first = load(path).cells[0]
    assert first.cell_type == "markdown", f"{path.name}: first cell is {first.cell_type}, expected markdown"
    assert first.source.startswith("# "), f"{path.name}: first cell starts {first.source[:30]!r}, expected '# title'"
    assert "Learning goals" in first.source, f"{path.name}: the title cell has no 'Learning goals'"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_imports_from_minilora(path):
    """The package is the single source of truth: the notebook imports from minilora."""
    code = "\n".join(sources(load(path), "code"))
    assert re.search(r"^\s*(from minilora[\s.]|import minilora\b)", code, re.M), (
        f"{path.name}: no `from minilora ... import` or `import minilora` in any code cell")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_checks_by_asserting(path):
    """Checks assert rather than print: at least one code cell holds an assert statement."""
    code = "\n".join(sources(load(path), "code"))
    assert re.search(r"^\s*assert\s", code, re.M), f"{path.name}: no assert statement in any code cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_ends_with_summary_and_exercises(path):
    """A '## Summary' and a '## Exercises' section, the exercises in the last cell."""
    nb = load(path)
    markdown = "\n".join(sources(nb, "markdown"))
    assert "## Summary" in markdown, f"{path.name}: no '## Summary' section"
    last = nb.cells[-1]
    assert last.cell_type == "markdown" and "## Exercises" in last.source, (
        f"{path.name}: the last cell should be the markdown '## Exercises' section")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_uses_the_python3_kernel(path):
    """The kernelspec is the default python3, so nbmake and Jupyter run it in the active environment."""
    spec = load(path).metadata.get("kernelspec", {})
    assert spec.get("name") == "python3", f"{path.name}: kernelspec {spec!r}, expected name 'python3'"


def test_readme_lists_every_notebook():
    """tutorials/README.md names every notebook in the folder."""
    readme = (TUTORIALS / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in NOTEBOOKS if p.name not in readme]
    assert not missing, f"tutorials/README.md does not list {missing}"


# --------------------------------------------------------------------------- runs
# Run in the kernel before the notebook: a profile hook that records which graded library
# functions get called (by file and name, so that nothing is imported before the notebook's setup).
_RECORD_CALLS = """
import sys as _sys, threading as _threading
_minilora_targets, _minilora_calls, _minilora_codes = {targets!r}, set(), {{}}


def _minilora_profile(frame, event, arg):
    if event == "call":
        code = frame.f_code
        step = _minilora_codes.get(code)
        if step is None:
            where = code.co_filename.replace(chr(92), "/")
            step = _minilora_codes[code] = next((n for (f, name), n in _minilora_targets.items()
                                                 if name == code.co_name and where.endswith(f)), 0)
        if step:
            _minilora_calls.add(step)


_sys.setprofile(_minilora_profile)
_threading.setprofile(_minilora_profile)
"""
_REPORT_CALLS = "_sys.setprofile(None); print(sorted(_minilora_calls))"


class Run:
    """One execution of a notebook: the executed copy, the steps it called, the seconds, or the error."""

    def __init__(self, path: Path):
        from nbclient import NotebookClient

        nb = nbformat.read(path, as_version=4)
        targets = {(s.module, f): s.number for s in STEPS for f in s.functions}
        graded = {f: n for (_, f), n in targets.items()}
        targets |= {(rel, f): graded[f] for rel, fs in TEXTBOOK_IN_WORKSPACE.items() for f in fs if f in graded}
        nb.cells.insert(0, nbformat.v4.new_code_cell(_RECORD_CALLS.format(targets=targets)))
        nb.cells.append(nbformat.v4.new_code_cell(_REPORT_CALLS))
        self.error, start = None, time.perf_counter()
        try:
            NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                           resources={"metadata": {"path": str(path.parent)}}).execute()
        except Exception as e:                 # CellExecutionError, a dead kernel, a timeout
            self.error = f"{type(e).__name__}: {e}"
        self.seconds = time.perf_counter() - start
        report = nb.cells.pop()
        nb.cells.pop(0)
        for cell in nb.cells:                  # number the cells as if the recorder had not run
            if cell.get("execution_count"):
                cell.execution_count -= 1
        self.steps = tuple(json.loads(report.outputs[0]["text"])) if report.get("outputs") else None
        self.nb = nb
        EXECUTED.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, EXECUTED / path.name)


_RUNS: dict[Path, Run] = {}


def run(path: Path) -> Run:
    """The notebook's run, executed on first use (every test of a notebook shares it)."""
    if path not in _RUNS:
        _RUNS[path] = Run(path)
    return _RUNS[path]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_to_the_end_so_every_check_holds(path):
    """Every cell runs without an error in a fresh kernel; the executed copy goes to build/notebooks/."""
    r = run(path)
    assert r.error is None, f"{path.name} failed after {r.seconds:.0f} s:\n{r.error[-3000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_shows_at_least_one_figure(path):
    """The executed notebook holds an image output: a plot or a diagram."""
    r = run(path)
    images = [o for c in r.nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if {"image/png", "image/svg+xml"} & set(o.get("data", {}))]
    assert r.error is None and images, f"{path.name}: no figure in the executed notebook ({r.error})"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_needs_exactly_the_steps_the_student_readme_lists(path):
    """The graded library functions the run called are those of NOTEBOOK_NEEDS[notebook]."""
    r = run(path)
    assert r.error is None and r.steps is not None, f"{path.name} did not run to the end"
    listed = NOTEBOOK_NEEDS.get(path.name)
    assert tuple(r.steps) == listed, (f"{path.name} calls the functions of steps {list(r.steps)}; "
                                      f"NOTEBOOK_NEEDS lists {listed}: update minilora/classroom/student_readme.py")
