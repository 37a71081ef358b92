"""The student workspace and the teacher's hint files, made from the marked library and tutorials.

    make_student_workspace(out)  a copy of the project for students: every solution region has
                                 become its step's stub, the hint parts of docstrings are gone,
                                 the tutorials are student notebooks, the README describes the copy
    write_hints(out)             one markdown file per step for the teacher to hand out or not
    restore_solution(ws, n)      puts step n's reference back into a workspace (unblocks a student)

What stays with the teacher: TEACHER_ONLY (the checks of the course itself), the hidden tests
(``tests/test_*_hidden.py``: they hold reference implementations; grade with ``--tests-from``),
docs/ (the hints' hand-written parts and the answer key) and everything else not listed in
``HANDED_OUT``.
"""
from __future__ import annotations

import ast
import json
import shutil
import textwrap
from pathlib import Path

from minilora.classroom.exercises import SOURCE_DIR, STEPS, TEXTBOOK_IN_WORKSPACE, get_step, step_of, stub_guide
from minilora.classroom.regions import (HINT, SOLUTION, SolutionMarkerError, find_regions, has_markers, region_body,
                                        replace_regions)
from minilora.classroom.student_readme import student_readme

HANDED_OUT = ("minilora", "tests", "tutorials", "pyproject.toml", "README.md")
TEACHER_ONLY = ("tests/test_exercises.py", "tests/test_regions.py", "tests/test_workspace.py",
                "tests/test_grading.py", "tests/test_notebooks.py", "tests/test_course.py")  # the course's own checks
HIDDEN_TESTS = "tests/test_*_hidden.py"                                 # graded with --tests-from only
HINTS_DIR = "docs/course/hints"                                         # the hints' hand-written parts
MARKDOWN_SOLUTION = ("<!-- BEGIN SOLUTION -->", "<!-- END SOLUTION -->")
DERIVE_PROMPT = "> **Your derivation.** This part is an exercise: derive it here before you read on."
_JUNK = ("__pycache__", "*.pyc", ".pytest_cache", "*.egg-info", ".ipynb_checkpoints")


def _read(path: Path) -> str:
    with open(path, encoding="utf-8", newline="") as f:        # keep \r\n where a file has it
        return f.read()


def _write(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def not_handed_out(src: Path) -> list[str]:
    """The test files of ``src`` that stay with the teacher (relative paths)."""
    hidden = sorted(p.relative_to(src).as_posix() for p in src.glob(HIDDEN_TESTS))
    return list(TEACHER_ONLY) + hidden


# --------------------------------------------------------------------------- stubbing
def _stub_line(step, text: str, function: str | None) -> str:
    guide = stub_guide(text, function) if function else ""
    return step.stub + (f"  # {guide}" if guide else "")


def _call_of(fn: ast.FunctionDef) -> str:
    """The arguments of ``fn`` passed on as they came: "dy, cache, param_grads=param_grads"."""
    a = fn.args
    parts = [x.arg for x in a.posonlyargs + a.args]
    parts += [f"*{a.vararg.arg}"] if a.vararg else []
    parts += [f"{x.arg}={x.arg}" for x in a.kwonlyargs]
    parts += [f"**{a.kwarg.arg}"] if a.kwarg else []
    return ", ".join(parts)


def _first_line(node) -> str:
    doc = ast.get_docstring(node, clean=True) or ""
    return doc.splitlines()[0] if doc else ""


def delegate_to_textbook(text: str, functions: dict) -> str:
    """Replace each function in ``functions`` {name: textbook module} by a call of the function of
    the same name in that module; its docstring and the module's keep their first lines only (the
    rest explains the optimised form, which is a hint)."""
    lines = text.splitlines(keepends=True)
    tree = ast.parse(text)
    defs = sorted((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in functions),
                  key=lambda n: n.lineno, reverse=True)
    missing = set(functions) - {n.name for n in defs}
    if missing:
        raise SolutionMarkerError(f"TEXTBOOK_IN_WORKSPACE names {sorted(missing)}, which the file does not define")
    for fn in defs:
        indent = " " * fn.body[0].col_offset
        module, _, short = functions[fn.name].rpartition(".")
        lines[fn.body[0].lineno - 1:fn.end_lineno] = [
            f'{indent}"""{_first_line(fn)}"""\n',
            f"{indent}from {module} import {short}  # in this workspace the textbook form runs: yours\n",
            f"{indent}return {short}.{fn.name}({_call_of(fn)})\n"]
    doc = tree.body[0] if tree.body and isinstance(tree.body[0], ast.Expr) else None
    if doc is not None and isinstance(doc.value, ast.Constant):
        lines[doc.lineno - 1:doc.end_lineno] = [
            f'"""{_first_line(tree)}\n\nIn this workspace {", ".join(sorted(functions))} call the textbook forms.\n"""\n']
    return "".join(lines)


def stub_module(text: str, module: str) -> str:
    """A library file as students get it: solutions become stubs, hint regions disappear, and
    optimised copies of graded functions call their textbook forms."""
    if module in TEXTBOOK_IN_WORKSPACE:
        text = delegate_to_textbook(text, TEXTBOOK_IN_WORKSPACE[module])
    stubbed = replace_regions(
        text, lambda r: _stub_line(step_of(r.function, module, module, r.begin), text, r.function),
        filename=module)
    return replace_regions(stubbed, None, filename=module, markers=HINT)


def stub_notebook(text: str, name: str) -> str:
    """A tutorial as students get it: code solutions become stubs, marked markdown becomes a
    prompt to derive it, and every output is dropped (outputs could show the answers)."""
    nb = json.loads(text)
    for k, cell in enumerate(nb.get("cells", [])):
        src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        where = f"{name} cell {k}"
        if cell.get("cell_type") == "code":
            new = replace_regions(src, lambda r: _stub_line(step_of(r.function, None, where, r.begin),
                                                            src, r.function), filename=where)
            cell["outputs"], cell["execution_count"] = [], None
        else:
            new = replace_regions(src, DERIVE_PROMPT, filename=where, markers=MARKDOWN_SOLUTION)
        cell["source"] = new if isinstance(cell["source"], str) else new.splitlines(keepends=True)
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def _stubbed_files(src: Path) -> dict[str, str]:
    """Relative path -> student text, for every file that changes; raises on a bad marker first."""
    stubbed = {}
    for path in sorted((src / "minilora").rglob("*.py")):
        rel, text = path.relative_to(src).as_posix(), _read(path)
        if has_markers(text, SOLUTION) or has_markers(text, HINT) or rel in TEXTBOOK_IN_WORKSPACE:
            stubbed[rel] = stub_module(text, rel)
    for path in sorted(src.glob("tutorials/*.ipynb")):
        rel = path.relative_to(src).as_posix()
        stubbed[rel] = stub_notebook(_read(path), rel)
    return stubbed


# --------------------------------------------------------------------------- the workspace
def make_student_workspace(out_dir, *, force: bool = False, source_dir=None) -> Path:
    """Write the student version of the project to ``out_dir`` and return its path.

    Copies what ``HANDED_OUT`` names (binary checkpoints included; only the notebooks of
    tutorials/), less the teacher's test files, stubs every solution region, drops the hint
    regions and writes the workspace's own README.md. A non-empty ``out_dir`` is refused unless
    ``force``; then only the paths written here are replaced, anything else there (a .venv) is kept.
    """
    src, out = Path(source_dir or SOURCE_DIR), Path(out_dir)
    if not (src / "minilora").is_dir() or not (src / "tests").is_dir():
        raise FileNotFoundError(f"{src} is not a minilora source checkout (needs minilora/ and tests/)")
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} is not empty; choose another folder or pass force=True")
    stubbed = _stubbed_files(src)                  # a bad marker raises before anything is written
    out.mkdir(parents=True, exist_ok=True)
    for name in HANDED_OUT + ("EXERCISES.md",):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
        elif (out / name).exists():
            (out / name).unlink()
    ignore = shutil.ignore_patterns(*_JUNK)
    shutil.copytree(src / "minilora", out / "minilora", ignore=ignore)
    shutil.copytree(src / "tests", out / "tests", ignore=ignore)
    for rel in not_handed_out(src):
        (out / rel).unlink(missing_ok=True)
    if (src / "pyproject.toml").is_file():
        shutil.copy2(src / "pyproject.toml", out / "pyproject.toml")
    for rel, text in stubbed.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        _write(out / rel, text)
    _write(out / "README.md", student_readme(out))
    return out


def restore_solution(workspace_dir, number: int, *, source_dir=None) -> Path:
    """Put step ``number``'s reference solution back into a workspace's library (unblocks a student).

    Each stub of the step is replaced, in order, by the reference region, markers included, so
    that stubbing and restoring every step gives back the reference file less its hint regions.
    Returns the file.
    """
    step = get_step(number)
    ref_path, path = Path(source_dir or SOURCE_DIR) / step.module, Path(workspace_dir) / step.module
    reference = replace_regions(_read(ref_path), None, filename=step.module, markers=HINT)
    ref_lines = reference.splitlines(keepends=True)
    regions = [r for r in find_regions(reference, step.module) if r.function in step.functions]
    lines = _read(path).splitlines(keepends=True)
    stubs = [i for i, line in enumerate(lines) if line.strip().startswith(step.stub)]
    if len(stubs) != len(regions) or not stubs:
        raise ValueError(f"{path}: expected {len(regions)} stub(s) of step {number}, found {len(stubs)}")
    for i, r in reversed(list(zip(stubs, regions))):
        lines[i:i + 1] = ref_lines[r.begin - 1:r.end]
    _write(path, "".join(lines))
    return path


# --------------------------------------------------------------------------- hints for the teacher
def hint_text(step, source_dir=None) -> str:
    """The hint file of one step: the docstring formulas the student copy lacks, then the
    hand-written advice in docs/course/hints/stepNN_name.md (common mistakes, how to check)."""
    src = Path(source_dir or SOURCE_DIR)
    text = _read(src / step.module)
    parts = [f"# Hint for step {step.number}: {step.name}\n\n"
             f"`{'`, `'.join(step.functions)}` in `{step.module}`: {step.concept}.\n"]
    parts.append("\n## What your code must leave\n\n" + "".join(
        f"- `{f}`: {stub_guide(text, f)}.\n" for f in step.functions))
    for r in find_regions(text, step.module, HINT):
        if r.function in step.functions:
            parts.append(f"\n## From the docstring of `{r.function}`\n\n"
                         f"```\n{textwrap.dedent(region_body(text, r)).strip()}\n```\n")
    handwritten = src / HINTS_DIR / f"{step.marker}_{step.name}.md"
    if handwritten.is_file():
        parts.append("\n" + _read(handwritten).strip() + "\n")
    return "".join(parts)


def write_hints(out_dir, *, source_dir=None) -> list[Path]:
    """One ``stepNN_name.md`` per available step in ``out_dir``; returns the files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for step in STEPS:
        if step.missing(source_dir or SOURCE_DIR) is None:
            path = out / f"{step.marker}_{step.name}.md"
            _write(path, hint_text(step, source_dir))
            written.append(path)
    return written
