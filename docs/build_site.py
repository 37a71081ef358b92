"""Build the course's static site (mkdocs-material + mkdocs-jupyter) into build/site.

    python docs/build_site.py                  # what `make docs` runs: executes stale notebooks first
    python docs/build_site.py --from-test-run  # what `make test` runs: only the copies the tests executed

The notebooks on the site are the executed copies in build/notebooks/ that tests/test_notebooks.py
writes, so the site shows the numbers and plots that the test run checked; a copy is stale when its
cells' sources differ from tutorials/. The pages are assembled in build/site-src (the pages of
docs/ named in PAGES and the notebooks); the answer key and the hints in docs/course/ stay off the site.
Material for MkDocs is maintained until 2027 (its notice is silenced here; NO_MKDOCS_2_WARNING).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent
EXECUTED, SRC = REPO / "build/notebooks", REPO / "build/site-src"
PAGES = ("index.md", "lora_math.md", "adding_a_variant.md", "dora.md", "quantization.md", "baselines.md",
         "interop.md", "reliability.md", "generation.md", "gpt2.md", "findings.md", "teachers.md")
FIGURES = ("findings",)               # folders of figures that pages show


def sources(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source) for c in nb.cells]


def is_fresh(notebook: Path) -> bool:
    """The executed copy exists, has outputs, and its cells are the notebook's cells."""
    copy = EXECUTED / notebook.name
    if not copy.is_file():
        return False
    executed = nbformat.read(copy, as_version=4)
    ran = any(c.get("outputs") for c in executed.cells if c.cell_type == "code")
    return ran and sources(executed) == sources(nbformat.read(notebook, as_version=4))


def execute(notebook: Path) -> None:
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(notebook.parent)}}).execute()
    EXECUTED.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, EXECUTED / notebook.name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from-test-run", action="store_true",
                    help="use only the notebooks the test run executed; fail if one is missing or stale")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    notebooks = sorted((REPO / "tutorials").glob("*.ipynb"))
    stale = [p for p in notebooks if not is_fresh(p)]
    if stale and args.from_test_run:
        print(f"build_site: no fresh executed copy of {[p.name for p in stale]} in {EXECUTED}; "
              f"run the notebook tests first (pytest tests/test_notebooks.py)", file=sys.stderr)
        return 1
    for p in stale:
        print(f"executing {p.name} ...", flush=True)
        execute(p)
    shutil.rmtree(SRC, ignore_errors=True)
    (SRC / "tutorials").mkdir(parents=True)
    for page in PAGES:
        shutil.copy2(REPO / "docs" / page, SRC / page)
    for folder in FIGURES:
        shutil.copytree(REPO / "docs" / folder, SRC / folder)
    for p in notebooks:
        shutil.copy2(EXECUTED / p.name, SRC / "tutorials" / p.name)
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--quiet", "-f", str(REPO / "mkdocs.yml")],
                          cwd=REPO, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    if proc.returncode == 0:
        print(f"site in {REPO / 'build/site'} ({len(notebooks)} notebooks, {len(stale)} executed now, "
              f"{time.perf_counter() - start:.0f} s)")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
