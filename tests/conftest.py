"""Shared test set-up: a non-interactive plot backend, float64 helpers, the exercise steps' markers
and a plain report of the steps a student workspace has not written yet."""
import re

import matplotlib

matplotlib.use("Agg")  # tests never open windows

import numpy as np
import pytest

from minilora.nn import backend

from helpers import SWEEP_C, SWEEP_L, tiny_lab, tiny_task_base


@pytest.fixture
def rng():
    """A fixed-seed NumPy generator, so every test sees the same numbers."""
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def numpy_backend():
    """Every test starts on NumPy with float32 defaults, whatever an earlier test switched."""
    backend.set_backend("numpy")
    backend.set_default_dtype(np.float32)
    yield
    backend.set_backend("numpy")
    backend.set_default_dtype(np.float32)


# --------------------------------------------------------------------------- the sweep specs' tiny model
@pytest.fixture(scope="module")
def tiny_base():
    """The random tiny GPT of the sweep specs (helpers.tiny_task_base), SWEEP_L layers of SWEEP_C channels."""
    return tiny_task_base(SWEEP_L, SWEEP_C)


@pytest.fixture(scope="module")
def lab(tiny_base):
    """A Lab with 3 steps per run on 64 training examples (shared by a module's tests: runs are cached)."""
    return tiny_lab(tiny_base)


# --------------------------------------------------------------------------- exercise steps
@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects, so ``pytest -m step01`` sees the marks
def pytest_collection_modifyitems(config, items):
    """Mark each spec test with the exercise steps it grades, read from minilora.classroom.exercises.STEPS.

    The test files carry no step markers: the table is the one place that says which tests grade
    which step, and ``pytest -m step01`` runs exactly the tests of step 1.
    """
    from minilora.classroom.exercises import steps_for_test

    for item in items:
        try:
            path = item.path.relative_to(config.rootpath).as_posix()
        except ValueError:  # a test file outside this project
            continue
        for step in steps_for_test(path, getattr(item, "originalname", item.name)):
            item.add_marker(step.marker)


# --------------------------------------------------------------------------- stubs, reported plainly
# In a student workspace most tests stop at a step not written yet. Each such failure is one line
# naming the step, and the summary lists the steps still to write, instead of a traceback each.
_WAITING = pytest.StashKey[dict]()
_STUB = re.compile(r"Step (\d+): (\w+)")
_STUB_QUOTED = re.compile(r"'Step (\d+): (\w+)'")
_STUB_PRINTED = re.compile(r"error: Step (\d+): (\w+)$", re.M)


def _stub_reached(excinfo, report):
    """The stub's "Step N: name" if the failure came from one: raised directly, inside another
    message (pytest.raises(..., match=...) catching it: NotImplementedError is a RuntimeError), or
    printed by a command line that caught it."""
    if excinfo.errisinstance(NotImplementedError):
        return _STUB.match(str(excinfo.value))
    return _STUB_QUOTED.search(str(excinfo.value)) or _STUB_PRINTED.search(report.capstderr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    excinfo = call.excinfo
    if not report.failed or excinfo is None:
        return
    m = _stub_reached(excinfo, report)
    if m:
        number, name = int(m[1]), m[2]
        # Keeps "NotImplementedError: Step N:" first: grading reads the step from that message.
        report.longrepr = (f"NotImplementedError: Step {number}: {name} is not written yet "
                           f"(its own tests: pytest -m step{number:02d})")
        waiting = item.config.stash.setdefault(_WAITING, {})
        waiting.setdefault((number, name), set()).add(item.nodeid)


def pytest_terminal_summary(terminalreporter, config):
    waiting = config.stash.get(_WAITING, {})
    if waiting:
        terminalreporter.write_sep("=", "steps not written yet")
        for (number, name), tests in sorted(waiting.items()):
            terminalreporter.write_line(f"step {number:2d} {name:<24} {len(tests):4d} tests wait for it   "
                                        f"pytest -m step{number:02d}")
