"""Specification of the student workspace: stubs in place of solutions, no hint and no solution line
anywhere in it, hidden tests kept back, a README about the copy itself, hint files for the teacher."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minilora.classroom.exercises import STEPS, TEXTBOOK_IN_WORKSPACE
from minilora.classroom.grading import exercises_main, grading_env
from minilora.classroom.leaks import find_leaks, solution_lines
from minilora.classroom.regions import BEGIN, END, HINT, SolutionMarkerError, replace_regions
from minilora.classroom.workspace import (MARKDOWN_SOLUTION, make_student_workspace, not_handed_out,
                                          restore_solution, write_hints)

REPO = Path(__file__).resolve().parent.parent
AVAILABLE = [s for s in STEPS if s.missing(REPO) is None]


def code(*lines, eol="\n"):
    """Source text from lines; <B>, <E>, <HB>, <HE> stand for the markers (so this file holds none)."""
    marks = {"<B>": BEGIN, "<E>": END, "<HB>": HINT[0], "<HE>": HINT[1]}
    return "".join(re.sub("|".join(marks), lambda m: marks[m[0]], line) + eol for line in lines)


# --------------------------------------------------------------------------- a tiny project
def fake_source(root: Path, region_function="linear_backward") -> Path:
    """One marked function with a hint, a checkpoint, a tutorial, teacher-only and hidden tests."""
    for folder in ("minilora/checkpoints/base", "minilora/nn", "tests", "tutorials", "docs"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "minilora/__init__.py").write_text("")
    (root / "minilora/nn/layers.py").write_text(code(
        f"def {region_function}(dy, cache):", '    """dy -> dx.', "    <HB>", "    dx = dy W", "    <HE>",
        '    """', "    x, W = cache", "    <B>", "    dx = dy @ W", "    <E>", "    return dx"))
    (root / "minilora/checkpoints/base/model.safetensors").write_bytes(bytes(range(256)) * 3)
    for name in ("test_layers.py", "test_exercises.py", "test_notebooks.py", "test_course.py", "test_layers_hidden.py"):
        (root / "tests" / name).write_text("def test_a():\n    pass\n")
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (root / "docs/teachers.md").write_text("for teachers\n")
    source = code("def my_layernorm_backward(dy, cache):", "    <B>", "    return dy", "    <E>")
    cell = {"cell_type": "code", "execution_count": 3, "metadata": {}, "source": source.splitlines(True),
            "outputs": [{"output_type": "stream", "name": "stdout", "text": "the answer"}]}
    derivation = "".join(f"{line}\n" for line in ("We derive:", MARKDOWN_SOLUTION[0], "dx = r (g - mean g)",
                                                   MARKDOWN_SOLUTION[1], "Done."))
    text = {"cell_type": "markdown", "metadata": {}, "source": derivation}
    nb = {"cells": [text, cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (root / "tutorials/02_layernorm.ipynb").write_text(json.dumps(nb))
    return root


def test_workspace_has_stubs_binary_checkpoints_and_student_notebooks(tmp_path):
    """Checkpoints byte for byte; the stub carries its guide; hints, derivations and outputs are gone."""
    src = fake_source(tmp_path / "src")
    out = make_student_workspace(tmp_path / "ws", source_dir=src)
    ckpt = "minilora/checkpoints/base/model.safetensors"
    assert (out / ckpt).read_bytes() == (src / ckpt).read_bytes()
    assert (out / "minilora/nn/layers.py").read_text() == code(
        "def linear_backward(dy, cache):", '    """dy -> dx.', '    """', "    x, W = cache",
        '    raise NotImplementedError("Step 1: linear_backward")  # define dx: the lines below use them',
        "    return dx")
    text, cell = json.loads((out / "tutorials/02_layernorm.ipynb").read_text())["cells"]
    assert "".join(cell["source"]) == code("def my_layernorm_backward(dy, cache):",
                                           '    raise NotImplementedError("Step 2: layernorm_backward")'
                                           "  # return the result, as the docstring says")
    assert cell["outputs"] == [] and cell["execution_count"] is None
    assert "dx = r" not in text["source"] and "Your derivation" in text["source"], text["source"]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "minilora", "pyproject.toml", "tests", "tutorials"]


def test_optimised_copies_call_their_textbook_forms_in_the_workspace(workspace):
    """minilora/fast's graded forms become calls of the textbook ones, which hold the student's stubs."""
    from minilora.classroom.workspace import delegate_to_textbook

    text = "def f(x, *, k=1):\n    \"\"\"x -> y.\n\n    The trick.\n    \"\"\"\n    return x * k\n"
    assert delegate_to_textbook(text, {"f": "minilora.nn.layers"}) == (
        'def f(x, *, k=1):\n    """x -> y."""\n'
        "    from minilora.nn import layers  # in this workspace the textbook form runs: yours\n"
        "    return layers.f(x, k=k)\n")
    for rel, functions in TEXTBOOK_IN_WORKSPACE.items():
        text = (workspace / rel).read_text()
        for name, module in functions.items():
            assert f"return {module.rsplit('.', 1)[1]}.{name}(" in text, f"{rel}: {name} does not call {module}"


def test_teacher_and_hidden_tests_stay_with_the_teacher(tmp_path):
    """The course's own checks and tests/test_*_hidden.py are not handed out; the spec tests are."""
    src = fake_source(tmp_path / "src")
    out = make_student_workspace(tmp_path / "ws", source_dir=src)
    assert sorted(p.name for p in (out / "tests").iterdir()) == ["test_layers.py"]
    assert "tests/test_layers_hidden.py" in not_handed_out(src)


def test_region_without_a_step_row_is_refused_before_writing(tmp_path):
    """A marked function missing from STEPS is an error naming file and line; nothing is written."""
    src = fake_source(tmp_path / "src", region_function="not_a_step")
    with pytest.raises(SolutionMarkerError, match=r"minilora/nn/layers\.py:8: .*not_a_step\(\) has no row"):
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


# --------------------------------------------------------------------------- this repository's workspace
@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """One student workspace of this repository, shared by the tests below (do not modify it)."""
    return make_student_workspace(tmp_path_factory.mktemp("student") / "ws")


def test_every_step_is_stubbed_in_the_library_and_its_notebooks(workspace):
    """Each step's functions and notebook exercises hold its stub; no marker is left anywhere."""
    cells = [c["source"] if isinstance(c["source"], str) else "".join(c["source"])
             for p in (workspace / "tutorials").glob("*.ipynb") for c in json.loads(p.read_text())["cells"]]
    for step in AVAILABLE:
        stub = f'raise NotImplementedError("Step {step.number}: {step.name}")'
        count = (workspace / step.module).read_text().count(stub)
        assert count == len(step.functions), f"{step.module}: expected {len(step.functions)} x {stub!r}, got {count}"
        for f in step.notebook:
            defining = [c for c in cells if f"def {f}(" in c]
            assert defining and all(stub in c for c in defining), f"notebook exercise {f} (step {step.number}) is not stubbed"
    markers = set(HINT) | {BEGIN, END} | set(MARKDOWN_SOLUTION)
    for path in (workspace / "minilora").rglob("*.py"):
        left = [ln for ln in path.read_text().splitlines() if ln.strip() in markers]
        assert not left, f"{path}: marker lines {left} left in the student copy"
    left = [m for m in markers if m in "\n".join(cells)]
    assert not left, f"markers {left} left in the student notebooks"


def test_no_solution_line_appears_anywhere_in_the_workspace(workspace):
    """The leak check: no line of a graded solution, up to whitespace, in code, notebooks, tests or docs."""
    assert len(solution_lines(REPO)) > 50, "the checker found almost no solution lines to look for"
    leaks = find_leaks(workspace, REPO)
    assert leaks == [], f"{len(leaks)} solution lines in the workspace:\n" + "\n".join(leaks[:20])


def test_leak_check_finds_a_planted_solution_line(workspace, tmp_path):
    """The checker can fail: a solution line pasted into a test file, re-indented, is found."""
    copy = shutil.copytree(workspace, tmp_path / "ws")
    planted = solution_lines(REPO)[0]
    (copy / "tests/test_planted.py").write_text(f"def f():\n        {planted.text}\n")
    leaks = find_leaks(copy, REPO)
    assert len(leaks) >= 1 and leaks[0].startswith("tests/test_planted.py"), leaks


def test_restoring_every_solution_gives_back_the_reference_files(workspace, tmp_path):
    """Stubbing then restoring every step reproduces the reference package, less its hint regions
    (the optimised copies of minilora/fast keep calling the textbook forms)."""
    copy = shutil.copytree(workspace, tmp_path / "ws")
    for step in AVAILABLE:
        restore_solution(copy, step.number)
    for path in (REPO / "minilora").rglob("*.py"):
        rel = path.relative_to(REPO)
        if rel.as_posix() in TEXTBOOK_IN_WORKSPACE:
            continue
        expected = replace_regions(path.read_text(), None, markers=HINT)
        assert (copy / rel).read_text() == expected, f"{rel} differs after restoring"


def test_readme_names_only_what_the_workspace_holds(workspace):
    """Every path the README mentions exists in the workspace, and it lists every step and notebook."""
    readme = (workspace / "README.md").read_text()
    paths = set(re.findall(r"`((?:minilora|tests|tutorials)/[\w./]*|pyproject\.toml)`", readme))
    assert paths, "the README should name the workspace's folders"
    missing = sorted(p for p in paths if not (workspace / p).exists())
    assert not missing, f"the README mentions {missing}, which the workspace lacks"
    assert all(f"pytest -m {s.marker}" in readme for s in AVAILABLE)
    assert all(p.name in readme for p in (workspace / "tutorials").glob("*.ipynb"))
    assert not re.search(r"docs/|teachers|Makefile|make test|benchmarks", readme), "names teacher-side files"


def test_hint_files_carry_the_docstring_formulas_the_workspace_lacks(workspace, tmp_path):
    """Each step gets a hint file with its hand-written part; step 9's formula is there and not in the copy."""
    files = {p.name: p.read_text() for p in write_hints(tmp_path / "hints")}
    assert sorted(files) == sorted(f"{s.marker}_{s.name}.md" for s in AVAILABLE)
    for name, text in files.items():
        assert "## Common mistakes" in text, f"{name} has no hand-written part (docs/course/hints/{name})"
    assert "dB = s dh^T u" in files["step09_lora_backward.md"]
    assert "dB = s dh^T u" not in (workspace / "minilora/adapters/lora.py").read_text()


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


@pytest.mark.slow
def test_pytest_in_a_fresh_workspace_reports_each_stub_in_one_line(workspace):
    """No traceback for a stub: one line per waiting test, and a summary of the steps to write."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/test_layers.py", "tests/test_lora.py",
                           "-p", "no:cacheprovider"], cwd=workspace, env=grading_env(workspace),
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 1 and "steps not written yet" in out, out[-2000:]
    assert "Traceback" not in out and "raise NotImplementedError" not in out, out[:3000]
    for number, name in ((1, "linear_backward"), (6, "lora_init"), (8, "lora_forward")):
        assert re.search(rf"step +{number} {name} +\d+ tests wait for it", out), (number, out[-2000:])
