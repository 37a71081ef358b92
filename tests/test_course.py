"""Specification of the course around the notebooks: every notebook has a graded or written
exercise, every written question and every exercise has an answer in the teacher's key (which
quotes it, so a reworded question shows up here), and every step has its hint and its row in the
teachers' guide."""
import re
from pathlib import Path

import pytest

from minilora.classroom.exercises import STEPS
from minilora.classroom.regions import BEGIN
from minilora.classroom.workspace import HINTS_DIR

nbformat = pytest.importorskip("nbformat")

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "tutorials").glob("*.ipynb"))
KEY = REPO / "docs/course/answer_key.md"
QUESTION = re.compile(r"\*\*Question (\d+)\.(\d+)\.\*\*\s*(.*?)\s*\*Your answer:\*", re.S)


def words(text: str) -> str:
    return " ".join(text.split())


def questions(path) -> list[tuple[str, str]]:
    """(label "3.1", text) of every written question of a notebook."""
    nb = nbformat.read(path, as_version=4)
    return [(f"{a}.{b}", words(t)) for c in nb.cells if c.cell_type == "markdown"
            for a, b, t in QUESTION.findall(c.source)]


def exercises(path) -> list[tuple[str, str]]:
    """(label "3.1", text) of every item of the notebook's final '## Exercises' list."""
    last = nbformat.read(path, as_version=4).cells[-1].source
    body = last[last.index("## Exercises"):]
    number = int(path.name[:2])
    items = re.findall(r"^(\d+)\.\s+(.*?)(?=^\d+\.\s|\Z)", body, re.M | re.S)
    return [(f"{number}.{k}", words(t)) for k, t in items]


def answer_key() -> dict[tuple[str, str, str], str]:
    """(notebook, "Question"/"Exercise", label) -> the quote that opens the entry."""
    entries, notebook = {}, None
    for block in re.split(r"^(?=##+ )", KEY.read_text(encoding="utf-8"), flags=re.M):
        head = block.splitlines()[0] if block.strip() else ""
        if head.startswith("## ") and head.endswith(".ipynb"):
            notebook = head[3:].strip()
        m = re.match(r"### (Question|Exercise) (\d+\.\d+)", head)
        if m:
            quote = re.search(r"^> (.*)$", block, re.M)
            entries[(notebook, m[1], m[2])] = words(quote[1]) if quote else ""
    return entries


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_a_graded_exercise_or_a_written_question(path):
    """A solution region (stubbed for students) or a **Question**, and a numbered exercise list."""
    text = path.read_text(encoding="utf-8")
    assert BEGIN in text or questions(path), f"{path.name}: no graded part and no written question"
    assert exercises(path), f"{path.name}: the '## Exercises' cell has no numbered items"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_questions_are_numbered_by_their_notebook_from_one(path):
    """Question labels are <notebook number>.1, .2, ... in order, each followed by '*Your answer:*'."""
    labels = [label for label, _ in questions(path)]
    expected = [f"{int(path.name[:2])}.{k}" for k in range(1, len(labels) + 1)]
    assert labels == expected, f"{path.name}: questions {labels}, expected {expected}"
    asked = len(re.findall(r"\*\*Question \d+\.\d+\.\*\*", path.read_text(encoding="utf-8")))
    assert asked == len(labels), f"{path.name}: a question without '*Your answer:*' after it"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_answer_key_answers_every_question_and_exercise(path):
    """Each has an entry under the notebook's heading whose quote opens the current wording."""
    key = answer_key()
    for kind, items in (("Question", questions(path)), ("Exercise", exercises(path))):
        for label, text in items:
            quote = key.get((path.name, kind, label))
            assert quote is not None, f"{KEY.name}: no '### {kind} {label}' under '## {path.name}'"
            assert quote and text.startswith(quote.rstrip(".")), (
                f"{KEY.name}, {kind} {label}: the quote {quote!r} does not open the notebook's text "
                f"{text[:80]!r}: was it reworded? Revise the answer too")


def test_answer_key_has_no_entry_for_a_question_that_is_gone():
    """Every entry of the key belongs to a question or exercise that exists."""
    existing = {(p.name, "Question", label) for p in NOTEBOOKS for label, _ in questions(p)}
    existing |= {(p.name, "Exercise", label) for p in NOTEBOOKS for label, _ in exercises(p)}
    stale = sorted(set(answer_key()) - existing)
    assert not stale, f"entries in {KEY.name} without a question or exercise: {stale}"


def test_every_step_has_a_hand_written_hint_and_no_hint_is_orphaned():
    """docs/course/hints holds stepNN_name.md for each step, with its common mistakes, and nothing else."""
    folder = REPO / HINTS_DIR
    expected = {f"{s.marker}_{s.name}.md" for s in STEPS}
    present = {p.name for p in folder.glob("*.md")}
    assert present == expected, f"missing {sorted(expected - present)}, orphaned {sorted(present - expected)}"
    for name in present:
        assert "## Common mistakes" in (folder / name).read_text(encoding="utf-8"), name


def test_teachers_guide_lists_every_step_and_its_functions():
    """docs/teachers.md has a row per step naming its functions, so the guide cannot fall behind."""
    guide = (REPO / "docs/teachers.md").read_text(encoding="utf-8")
    for s in STEPS:
        row = re.search(rf"^\| {s.number} \|(.*)$", guide, re.M)
        assert row and all(f"`{f}`" in row[1] for f in s.functions), f"docs/teachers.md: no row for step {s.number}"
