"""The README.md of a student workspace: what is in the folder, how to work a step, the steps.

It names only what the workspace holds (tests/test_exercises.py checks every path it mentions).
``NOTEBOOK_NEEDS`` says which graded library functions each tutorial calls, so a student knows
which steps must be done before a notebook runs to the end; tests/test_notebooks.py measures it
when it executes the notebooks and fails when the table is out of date.
"""
from __future__ import annotations

from pathlib import Path

from minilora.classroom.exercises import STEPS

# notebook -> the steps whose library functions it calls (measured; see the module docstring).
NOTEBOOK_NEEDS: dict[str, tuple[int, ...]] = {
    "00_tokens_attention_and_the_chain_rule.ipynb": (),
    "01_backprop_from_scratch.ipynb": (1, 2, 3, 4),
    "02_the_transformer_by_hand.ipynb": (1, 2, 3, 4, 5),
    "03_the_lora_layer.ipynb": (1, 2, 3, 4, 5, 6, 7, 8, 9),
    "04_lora_vs_full_finetuning.ipynb": (1, 2, 3, 4, 5, 6, 7, 8, 9),
    "05_merging_and_task_switching.ipynb": (1, 2, 3, 4, 5, 6, 7, 8, 9, 11),
    "06_choosing_the_rank.ipynb": (1, 2, 3, 4, 5, 6, 7, 8, 9, 13),
    "07_dora_and_the_lora_family.ipynb": (1, 2, 3, 4, 5, 6, 7, 8, 9, 14, 15),
    "08_qlora_nf4_and_where_the_memory_goes.ipynb": (1, 2, 3, 4, 5, 6, 7, 8, 9, 14, 15, 16, 17),
    "09_lora_among_its_alternatives.ipynb": (6, 7, 8, 11, 18),
    "90_appendix_backend_and_gpu.ipynb": (2,),
}


def _steps_text(numbers) -> str:
    return ", ".join(map(str, numbers)) if numbers else "none"


def student_readme(root) -> str:
    """The README of the workspace at ``root`` (read to list what it holds)."""
    root = Path(root)
    available = [s for s in STEPS if s.missing(root) is None]
    rows = "\n".join(
        f"| {s.number} | `{'`, `'.join(s.functions)}` in `{s.module}` | {s.concept} | "
        f"{', '.join(f'`{f}`' for f in s.notebook) or '-'} | `pytest -m {s.marker}` | {s.minutes} |"
        for s in available)
    notebooks = sorted(p.name for p in (root / "tutorials").glob("*.ipynb"))
    nb_rows = "\n".join(f"| `tutorials/{n}` | {_steps_text(NOTEBOOK_NEEDS.get(n, ()))} |" for n in notebooks)
    return f"""# minilora: your workspace

minilora builds LoRA (Hu et al. 2021, arXiv 2106.09685) from first principles: a small GPT-2-style
transformer in NumPy with every backward pass written by hand, and LoRA on top of it. In this copy
{len(available)} steps of the course are yours to write: in each, a function's body has become the
one line `raise NotImplementedError("Step N: ...")`.

| path | what it holds |
|---|---|
| `minilora/` | the package; the functions of the steps below are the ones to write |
| `tests/` | the spec tests; each step is graded by its own tests (`pytest -m step01`) |
| `tutorials/` | the notebooks, in reading order; a graded part is an exercise, a **Question** asks for a written answer |
| `pyproject.toml` | the package's description, for `pip install` |

## Install

    python -m venv .venv && . .venv/bin/activate
    pip install -e '.[notebooks]' pytest

## Work on one step

    pytest -m step01 -x          # the tests of step 1, stop at the first failure
    python -m minilora.classroom grade --steps 1    # your score for step 1 (no --steps: all)

Keep the signature and the docstring: they give every shape and what the function must do. The
stub line ends with a comment saying what your code must leave for the lines after it (for
`return dx, dW, db` below the stub: define dx, dW and db). Do the steps in order: a later step may
call an earlier one. `minilora.nn.gradcheck.check_layer` checks any backward pass of yours against
central differences, and says so when a gradient has the wrong shape or is off by a constant factor.

`pytest` with no arguments runs every test; a test that stops at a step you have not written yet is
reported in one line, and the summary at the end lists the steps still to write.

## Steps

| step | write | concept | notebook exercise | run | minutes |
|------|-------|---------|-------------------|-----|---------|
{rows}

## Notebooks

Read them in order. A notebook's exercises (the `my_...` functions with a stub) and its questions
are yours; it also calls the package, so it runs to the end once the steps below are done.

| notebook | needs steps |
|---|---|
{nb_rows}
"""
