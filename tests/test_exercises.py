"""Specification of the classroom exercises: the reference passes every step, each stub fails its
own step, restoring a solution passes exactly that step, and the region rewriting is exact.

The slow tests grade real workspaces in pytest subprocesses (about a second each); one student
workspace is made per module and shared.
"""
import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minilora.classroom.exercises import (BEGIN, END, STEPS, SolutionMarkerError, check_table, find_regions,
                                get_step, make_student_workspace, replace_regions, restore_solution,
                                step_tests, steps_for_test)
from minilora.classroom.grading import exercises_main, grade, grading_env

REPO = Path(__file__).resolve().parent.parent
AVAILABLE = [s for s in STEPS if s.missing(REPO) is None]


def code(*lines, eol="\n"):
    """Source text from lines; <B> and <E> stand for the markers (so this file holds none)."""
    return "".join(line.replace("<B>", BEGIN).replace("<E>", END) + eol for line in lines)


def selected_names(step):
    return {t.split("::")[-1] for t in step_tests(step, REPO)}


def ran_names(result):
    return {name.split("[")[0] for name in result.tests}


# --------------------------------------------------------------------------- region rewriting
def test_region_becomes_one_stub_line_at_the_marker_indentation():
    """Signature, docstring, the lines before BEGIN and after END stay; the region becomes the stub."""
    text = code("class Layer:",
                "    def backward(self, dy):",
                '        """dy (B, C) -> dx (B, C)."""',
                "        x = self.x",
                "        if x is not None:",
                "            <B>",
                "            dx = dy * x",
                "            <E>",
                "        return dx")
    (region,) = find_regions(text)
    assert (region.begin, region.end, region.indent, region.function) == (6, 8, " " * 12, "backward")
    out = replace_regions(text, 'raise NotImplementedError("Step 1: backward")')
    expected = code("class Layer:",
                    "    def backward(self, dy):",
                    '        """dy (B, C) -> dx (B, C)."""',
                    "        x = self.x",
                    "        if x is not None:",
                    '            raise NotImplementedError("Step 1: backward")',
                    "        return dx")
    assert out == expected, f"expected:\n{expected}\ngot:\n{out}"


def test_every_region_of_a_file_is_replaced_with_its_own_stub():
    """Two functions, two regions: each stub names its function; unmarked lines are unchanged."""
    text = code("import math", "", "def f(x):", "    <B>", "    y = x", "    <E>", "    return y",
                "", "def g(x):", "    <B>", "    return math.exp(x)", "    <E>", "", "TAIL = 1")
    out = replace_regions(text, lambda r: f"raise NotImplementedError({r.function!r})")
    assert out == code("import math", "", "def f(x):", "    raise NotImplementedError('f')", "    return y",
                       "", "def g(x):", "    raise NotImplementedError('g')", "", "TAIL = 1"), out


def test_enclosing_function_skips_nested_blocks_and_sibling_defs():
    """A def nested before the region is not its function; a region inside a nested def is the nested one's."""
    text = code("def outer(x):",
                "    def helper(y):",
                "        return y",
                "    for i in range(2):",
                "        <B>",
                "        x = helper(x)",
                "        <E>",
                "    def inner():",
                "        <B>",
                "        pass",
                "        <E>",
                "    return x")
    assert [r.function for r in find_regions(text)] == ["outer", "inner"]


def test_windows_line_endings_are_kept():
    """A file with CRLF endings keeps them, the stub line included."""
    out = replace_regions(code("def f():", "    <B>", "    pass", "    <E>", eol="\r\n"), "raise E")
    assert out == "def f():\r\n    raise E\r\n", repr(out)


def test_marker_text_inside_a_line_is_not_a_marker():
    """Only a line holding nothing but the marker counts; text without markers is unchanged."""
    text = code("def f():", f"    s = {BEGIN!r}", f"    return s  # {END}")
    assert find_regions(text) == [] and replace_regions(text, "raise E") == text


@pytest.mark.parametrize("lines, line, words", [
    (("def f():", "    <B>", "    pass"), 2, "no matching"),
    (("def f():", "    pass", "    <E>"), 3, "without"),
    (("def f():", "    <B>", "    <B>", "    <E>"), 3, "inside the region opened at line 2"),
])
def test_unbalanced_markers_are_errors_naming_file_and_line(lines, line, words):
    """An unmatched BEGIN, a stray END or a nested BEGIN raises, naming file and line."""
    with pytest.raises(SolutionMarkerError, match=rf"^layers\.py:{line}: .*{words}"):
        replace_regions(code(*lines), "raise E", filename="layers.py")


# --------------------------------------------------------------------------- the step table
def test_table_agrees_with_the_code_and_the_tests():
    """Every marked region has a row; every available row has regions and each test pattern matches."""
    problems = check_table(REPO)
    assert problems == [], "\n".join(problems)


def test_every_step_marker_is_registered_in_pyproject():
    """--strict-markers is on, so each stepNN used by the table must be declared."""
    registered = set(re.findall(r'^\s*"(\w+):', (REPO / "pyproject.toml").read_text(), re.M))
    missing = [s.marker for s in STEPS if s.marker not in registered]
    assert not missing, f"register these markers in pyproject.toml: {missing}"


def test_steps_for_test_matches_by_file_and_name_ignoring_parameters():
    """A parametrized id maps to its function's step; the same name in another file maps to none."""
    step = get_step(1)
    name = step.tests["tests/test_layers.py"][0]
    assert steps_for_test("tests/test_layers.py", name + "[case0]") == [step]
    assert steps_for_test("tests/test_model.py", name) == []


# --------------------------------------------------------------------------- making a workspace
def fake_source(root: Path, region_function="linear_backward") -> Path:
    """A tiny project: one marked function, a binary checkpoint, a notebook, a teacher-only test."""
    (root / "minilora/checkpoints/base").mkdir(parents=True)
    (root / "minilora/nn").mkdir()
    (root / "tests").mkdir()
    (root / "exercises").mkdir()
    (root / "minilora/__init__.py").write_text("")
    (root / "minilora/nn/layers.py").write_text(code(f"def {region_function}(dy, cache):",
                                                  "    x, W = cache", "    <B>", "    dx = dy @ W",
                                                  "    <E>", "    return dx"))
    (root / "minilora/checkpoints/base/model.safetensors").write_bytes(bytes(range(256)) * 3)
    (root / "tests/test_layers.py").write_text("def test_a():\n    pass\n")
    (root / "tests/test_exercises.py").write_text("def test_teacher_only():\n    pass\n")
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    source = code("def layernorm_backward(dy, cache):", "    <B>", "    return dy", "    <E>")
    cell = {"cell_type": "code", "execution_count": 3, "metadata": {}, "source": source.splitlines(True),
            "outputs": [{"output_type": "stream", "name": "stdout", "text": "the answer"}]}
    nb = {"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (root / "exercises/02_layernorm.ipynb").write_text(json.dumps(nb))
    return root


def test_workspace_has_stubs_binary_checkpoints_and_stubbed_notebooks(tmp_path):
    """Checkpoints are copied byte for byte, notebooks are stubbed and cleared, teacher files stay out."""
    src = fake_source(tmp_path / "src")
    out = make_student_workspace(tmp_path / "ws", source_dir=src)
    ckpt = "minilora/checkpoints/base/model.safetensors"
    assert (out / ckpt).read_bytes() == (src / ckpt).read_bytes()
    assert (out / "minilora/nn/layers.py").read_text() == code(
        "def linear_backward(dy, cache):", "    x, W = cache",
        '    raise NotImplementedError("Step 1: linear_backward")', "    return dx")
    cell = json.loads((out / "exercises/02_layernorm.ipynb").read_text())["cells"][0]
    assert "".join(cell["source"]) == code("def layernorm_backward(dy, cache):",
                                           '    raise NotImplementedError("Step 2: layernorm_backward")')
    assert cell["outputs"] == [] and cell["execution_count"] is None
    assert not (out / "tests/test_exercises.py").exists() and (out / "tests/test_layers.py").exists()
    assert "pytest -m step01" in (out / "EXERCISES.md").read_text()


def test_region_without_a_step_row_is_refused_before_writing(tmp_path):
    """A marked function missing from STEPS is an error naming file and line; nothing is written."""
    src = fake_source(tmp_path / "src", region_function="not_a_step")
    with pytest.raises(SolutionMarkerError, match=r"minilora/nn/layers\.py:3: .*not_a_step\(\) has no row"):
        make_student_workspace(tmp_path / "ws", source_dir=src)
    assert not (tmp_path / "ws").exists()


def test_make_refuses_a_non_empty_directory_unless_forced(tmp_path):
    """A non-empty folder is refused (CLI exit 2); force replaces what make writes and keeps the rest."""
    src = fake_source(tmp_path / "src")
    out = tmp_path / "ws"
    (out / ".venv").mkdir(parents=True)
    (out / "minilora").mkdir()
    (out / "minilora/old.py").write_text("stale")
    with pytest.raises(FileExistsError, match="not empty"):
        make_student_workspace(out, source_dir=src)
    assert exercises_main(["make", "--out", str(out)]) == 2
    make_student_workspace(out, source_dir=src, force=True)
    assert (out / ".venv").is_dir() and not (out / "minilora/old.py").exists()
    assert (out / "minilora/nn/layers.py").is_file()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """One student workspace of this repository, shared by the tests below (do not modify it)."""
    return make_student_workspace(tmp_path_factory.mktemp("student") / "ws")


def test_stub_text_names_the_step_and_no_solution_is_left(workspace):
    """Each available step's function holds its "Step N: name" stub; no marker is left in the package."""
    for step in AVAILABLE:
        text = (workspace / step.module).read_text()
        stub = f'raise NotImplementedError("Step {step.number}: {step.name}")'
        assert text.count(stub) == len(step.functions), f"{step.module}: expected {stub!r}"
    for path in (workspace / "minilora").rglob("*.py"):
        marked = [ln for ln in path.read_text().splitlines() if ln.strip() in (BEGIN, END)]
        assert not marked, f"{path}: solution markers left in the student copy"


def test_restoring_every_solution_gives_back_the_reference_files(workspace, tmp_path):
    """Stubbing then restoring every step reproduces the reference package byte for byte."""
    copy = shutil.copytree(workspace, tmp_path / "ws")
    for step in AVAILABLE:
        restore_solution(copy, step.number)
    for path in (REPO / "minilora").rglob("*.py"):
        rel = path.relative_to(REPO)
        assert (copy / rel).read_bytes() == path.read_bytes(), f"{rel} differs after restoring"


def test_grading_environment_imports_the_workspace_package(workspace):
    """Under grading_env every minilora module imports, from the workspace and not the installed copy."""
    script = ("import importlib, pkgutil, minilora\n"
              "for m in pkgutil.walk_packages(minilora.__path__, 'minilora.'):\n"
              "    if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
              "print(minilora.__file__)")
    proc = subprocess.run([sys.executable, "-c", script], cwd=workspace, env=grading_env(workspace),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).resolve() == (workspace / "minilora/__init__.py").resolve(), proc.stdout


# --------------------------------------------------------------------------- grading (subprocesses)
@pytest.fixture(scope="module")
def student_grades(workspace):
    return {r.number: r for r in grade(workspace, [s.number for s in AVAILABLE])}


@pytest.mark.slow
def test_reference_passes_every_available_step():
    """Graded on this repository, every available step passes, running exactly the table's tests."""
    for r in grade(REPO, [s.number for s in AVAILABLE]):
        assert r.status == "passed", f"step {r.number}: {r.status} {r.passed}/{r.total} {r.detail}"
        expected = selected_names(get_step(r.number))
        assert ran_names(r) == expected, (
            f"step {r.number}: ran {sorted(ran_names(r))}, the table selects {sorted(expected)}")


@pytest.mark.slow
def test_every_step_fails_in_the_student_workspace_with_a_stub(student_grades):
    """Every test of every step fails with a NotImplementedError of that step or an earlier one."""
    for step in AVAILABLE:
        r = student_grades[step.number]
        assert r.passed == 0 and r.not_implemented and r.total > 0, (
            f"step {step.number}: expected only stub failures, got {r.status} {r.passed}/{r.total} {r.detail}")
        assert set(r.stub_steps) <= {n for n in range(1, step.number + 1)}, (
            f"step {step.number} reaches the stubs of later steps {r.stub_steps}")
        assert ran_names(r) == selected_names(step), f"step {step.number}: ran {sorted(ran_names(r))}"


@pytest.mark.slow
def test_restoring_one_solution_passes_exactly_that_step(workspace, student_grades, tmp_path):
    """Restore the solution other steps depend on (or step 1): it passes, and every other step
    now fails with its own stub only."""
    needed = {n for r in student_grades.values() for n in r.stub_steps if n != r.number}
    restored = needed or {AVAILABLE[0].number}
    copy = shutil.copytree(workspace, tmp_path / "ws")
    for n in restored:
        restore_solution(copy, n)
    for r in grade(copy, [s.number for s in AVAILABLE]):
        if r.number in restored:
            assert r.status == "passed", f"restored step {r.number}: {r.status} {r.detail}"
        else:
            assert r.status == "not implemented" and r.stub_steps == (r.number,), (
                f"step {r.number} with steps {sorted(restored)} restored: {r.status} {r.stub_steps} {r.detail}")


@pytest.mark.slow
def test_grading_with_tests_from_ignores_edited_tests(workspace, tmp_path):
    """A student who empties a test passes with their own tests and fails with the teacher's."""
    copy = shutil.copytree(workspace, tmp_path / "ws")
    name = get_step(1).tests["tests/test_layers.py"][0]
    (copy / "tests/test_layers.py").write_text(f"def {name}():\n    pass\n")
    (own,) = grade(copy, [1])
    (trusted,) = grade(copy, [1], tests_from=REPO)
    assert (own.status, own.passed) == ("passed", 1), own
    assert trusted.status == "not implemented" and trusted.total == len(selected_names(get_step(1))), trusted


@pytest.mark.slow
def test_grade_all_scores_each_student_folder(workspace, tmp_path, capsys):
    """grade-all finds workspaces (also one folder down), scores them, and writes one CSV row each."""
    parent = tmp_path / "submissions"
    shutil.copytree(workspace, parent / "alice")
    restore_solution(parent / "alice", 1)
    shutil.copytree(workspace, parent / "bob" / "minilora-main")
    (parent / "carol").mkdir()
    table = tmp_path / "scores.csv"
    assert exercises_main(["grade-all", str(parent), "--steps", "1", "--csv", str(table)]) == 0
    out = capsys.readouterr().out
    assert "carol" in out and "no minilora/ folder" in out, out
    rows = {row["student"]: row for row in csv.DictReader(table.open())}
    n = str(len(selected_names(get_step(1))))
    assert (rows["alice"]["step01"], rows["alice"]["step01_total"], rows["alice"]["steps_done"]) == (n, n, "1")
    assert (rows["bob"]["step01"], rows["bob"]["steps_done"]) == ("0", "0")
    assert rows["carol"]["step01"] == ""
