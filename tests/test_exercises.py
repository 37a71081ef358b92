"""Specification of the course's step table: it agrees with the code, the tests and pyproject.toml,
and each stub's guide names what the lines after it read."""
import re
from pathlib import Path

from minilora.classroom.exercises import (STEPS, check_table, get_step, names_left_for_later, step_tests,
                                          steps_for_test, stub_guide)
from minilora.classroom.regions import BEGIN, END

REPO = Path(__file__).resolve().parent.parent


def code(*lines):
    return "".join(line.replace("<B>", BEGIN).replace("<E>", END) + "\n" for line in lines)


def test_table_agrees_with_the_code_and_the_tests():
    """Every marked region has a row; every available row has regions and each test pattern matches."""
    problems = check_table(REPO)
    assert problems == [], "\n".join(problems)


def test_course_has_at_least_twelve_graded_steps_most_about_lora():
    """At least 12 steps are available, and the LoRA-specific ones (adapters/) are the largest group."""
    available = [s for s in STEPS if s.missing(REPO) is None]
    lora = [s for s in available if s.module.startswith("minilora/adapters/")]
    assert len(available) >= 12, f"expected >= 12 graded steps, found {len(available)}"
    assert len(lora) > len(available) / 2 - 1, f"{len(lora)} of {len(available)} steps are about LoRA"


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


def test_every_step_has_tests_a_time_and_a_concept():
    """Each available step selects at least one test and says what it teaches and how long it takes."""
    for s in STEPS:
        if s.missing(REPO) is None:
            assert step_tests(s, REPO), f"step {s.number} selects no test"
            assert re.fullmatch(r"\d+-\d+", s.minutes) and s.concept, (s.number, s.minutes, s.concept)


def test_guide_names_what_the_lines_after_the_region_read():
    """Assigned in the region and read after it, in the order they are read; other names are not listed."""
    text = code("def f(x, W):", "    <B>", "    tmp = x * 2", "    dW = tmp.T @ x", "    dx = tmp @ W", "    <E>",
                "    return dx, dW")
    assert names_left_for_later(text, "f") == ("dx", "dW")
    assert stub_guide(text, "f") == "define dx, dW: the lines below use them"


def test_guide_says_return_or_in_place_when_nothing_is_left_for_later():
    """A region that returns asks for the result; one that returns nothing updates its arguments."""
    returns = code("def f(a):", "    <B>", "    return a + 1", "    <E>")
    in_place = code("def f(a):", "    <B>", "    a += 1", "    <E>")
    assert stub_guide(returns, "f") == "return the result, as the docstring says"
    assert stub_guide(in_place, "f") == "update the arguments in place"


def test_guides_of_the_library_steps_name_the_return_lines_variables():
    """Step 1's stub asks for dx, dW, db and step 9's for dx, dA, dB: what their return lines read."""
    for number, function, names in ((1, "linear_backward", ("dx", "dW", "db")),
                                    (9, "lora_backward", ("dx", "dA", "dB"))):
        text = (REPO / get_step(number).module).read_text()
        assert names_left_for_later(text, function) == names, (number, names_left_for_later(text, function))
