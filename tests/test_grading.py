"""Specification of grading: the reference passes every step, each stub fails its own step (or one
before it), restoring a solution passes exactly that step, and edited tests change no score.

The tests grade real workspaces in pytest subprocesses (about a second per step); one student
workspace is made per module and shared.
"""
import csv
import shutil
from pathlib import Path

import pytest

from minilora.classroom.exercises import STEPS, get_step, step_tests
from minilora.classroom.grading import exercises_main, grade
from minilora.classroom.workspace import make_student_workspace, restore_solution

REPO = Path(__file__).resolve().parent.parent
AVAILABLE = [s for s in STEPS if s.missing(REPO) is None]


def selected_names(step, root=REPO):
    return {t.split("::")[-1] for t in step_tests(step, root)}


def ran_names(result):
    return {name.split("[")[0] for name in result.tests}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """One student workspace of this repository, shared by the tests below (do not modify it)."""
    return make_student_workspace(tmp_path_factory.mktemp("student") / "ws")


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
def test_every_step_fails_in_the_student_workspace_with_a_stub(workspace, student_grades):
    """Every test of every step fails with a NotImplementedError of that step or an earlier one."""
    for step in AVAILABLE:
        r = student_grades[step.number]
        assert r.passed == 0 and r.not_implemented and r.total > 0, (
            f"step {step.number}: expected only stub failures, got {r.status} {r.passed}/{r.total} {r.detail}")
        assert set(r.stub_steps) <= {n for n in range(1, step.number + 1)}, (
            f"step {step.number} reaches the stubs of later steps {r.stub_steps}")
        expected = selected_names(step, workspace)               # the hidden tests are not handed out
        assert ran_names(r) == expected, f"step {step.number}: ran {sorted(ran_names(r))}, expected {sorted(expected)}"


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


@pytest.mark.slow
def test_grading_with_tests_from_also_runs_the_hidden_tests(workspace):
    """Step 8 graded with the teacher's tests runs test_lora_hidden.py too, which students never get."""
    (own,) = grade(workspace, [8])
    (trusted,) = grade(workspace, [8], tests_from=REPO)
    hidden = "test_lora_forward_matches_its_closed_form"
    assert hidden in ran_names(trusted) and hidden not in ran_names(own), (ran_names(own), ran_names(trusted))
    assert trusted.total == own.total + 1 and trusted.passed == 0 and trusted.not_implemented, trusted
