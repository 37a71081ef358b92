"""Specification of the marked regions: finding them, naming their function, rewriting them exactly."""
import pytest

from minilora.classroom.regions import (BEGIN, END, HINT, SolutionMarkerError, find_regions, region_body,
                                        replace_regions)


def code(*lines, eol="\n"):
    """Source text from lines; <B> and <E> stand for the markers (so this file holds none)."""
    return "".join(line.replace("<B>", BEGIN).replace("<E>", END) + eol for line in lines)


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


def test_hint_regions_are_found_in_docstrings_and_can_be_dropped():
    """A HINT region inside a docstring belongs to its function; replacing it by None drops its lines."""
    hb, he = HINT
    text = code("def f(x):", '    """x (N,) -> y (N,).', "", f"    {hb}", "    y = 2 x", f"    {he}",
                '    """', "    return 2 * x")
    (r,) = find_regions(text, markers=HINT)
    assert r.function == "f" and region_body(text, r) == "y = 2 x\n", region_body(text, r)
    assert replace_regions(text, None, markers=HINT) == code(
        "def f(x):", '    """x (N,) -> y (N,).', "", '    """', "    return 2 * x")
