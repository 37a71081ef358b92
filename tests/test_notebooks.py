"""Specification of the tutorial notebooks as files: valid, output-free, titled, built on the package.

Running them is nbmake's job (`python -m pytest --nbmake tutorials/`, part of `make test`): every
check cell asserts, so a notebook that runs is a notebook whose checks pass. These tests cover what a
reviewer reads in a diff: notebooks are committed without outputs, so diffs show only the source.
"""
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))


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
