"""Specification of folder saves (minilora.folders): several files saved as one, a crash leaving the old or
the new save, leftovers removed by the next save. tests/test_kill.py kills real saving processes; here
each step is checked in one process."""
import os
from pathlib import Path

import pytest

from minilora import folders, io

NAMES = ("a.json", "b.bin")


def _save_folder(d, value):
    """One save of two files whose contents say which save they belong to."""
    with io.atomic_folder(d, NAMES) as tmp:
        io.write_json(tmp / "a.json", {"save": value})
        io.atomic_write_bytes(tmp / "b.bin", str(value).encode())


def _read_folder(d):
    """(save number of a.json, save number of b.bin) of the folder a loader would read."""
    folder = io.saved_folder(d)
    return io.read_json(folder / "a.json")["save"], int((folder / "b.bin").read_bytes())


def test_folder_save_replaces_both_files_and_leaves_nothing_beside_it(tmp_path):
    """Two saves in a row: the folder holds the second, and no hidden sibling is left."""
    _save_folder(tmp_path / "d", 1)
    _save_folder(tmp_path / "d", 2)
    assert _read_folder(tmp_path / "d") == (2, 2), f"expected save 2 in both files, got {_read_folder(tmp_path / 'd')}"
    assert os.listdir(tmp_path) == ["d"], f"expected only the folder, found {os.listdir(tmp_path)}"
    assert sorted(os.listdir(tmp_path / "d")) == list(NAMES), f"found {os.listdir(tmp_path / 'd')}"


def test_folder_save_that_fails_half_way_keeps_the_previous_save(tmp_path):
    """An exception after the first file leaves the previous save whole and removes the partial folder."""
    _save_folder(tmp_path / "d", 1)
    with pytest.raises(RuntimeError, match="disk full"):
        with io.atomic_folder(tmp_path / "d", NAMES) as tmp:
            io.write_json(tmp / "a.json", {"save": 2})
            raise RuntimeError("disk full")
    assert _read_folder(tmp_path / "d") == (1, 1), f"expected save 1, got {_read_folder(tmp_path / 'd')}"
    assert os.listdir(tmp_path) == ["d"], f"leftovers: {os.listdir(tmp_path)}"


def test_folder_save_that_forgets_a_declared_file_is_refused(tmp_path):
    """A save must write every file it declared, or it replaces nothing."""
    _save_folder(tmp_path / "d", 1)
    with pytest.raises(RuntimeError, match="not the files it declared"):
        with io.atomic_folder(tmp_path / "d", NAMES) as tmp:
            io.write_json(tmp / "a.json", {"save": 2})
    assert _read_folder(tmp_path / "d") == (1, 1), f"expected save 1, got {_read_folder(tmp_path / 'd')}"


def test_killed_between_the_two_renames_loads_the_previous_save_and_the_next_save_recovers(tmp_path):
    """The state a kill between steps 2 and 3 leaves: loaders read the old save; the next save cleans up."""
    _save_folder(tmp_path / "d", 1)
    _save_folder(tmp_path / "new", 2)
    os.rename(tmp_path / "d", tmp_path / ".d.minilora-old-00000000000000000001")      # step 2 done
    os.rename(tmp_path / "new", tmp_path / ".d.minilora-partial-x")                  # step 3 not yet
    assert _read_folder(tmp_path / "d") == (1, 1), f"expected the previous save, got {_read_folder(tmp_path / 'd')}"
    _save_folder(tmp_path / "d", 3)
    assert _read_folder(tmp_path / "d") == (3, 3), f"expected save 3, got {_read_folder(tmp_path / 'd')}"
    assert os.listdir(tmp_path) == ["d"], f"leftovers: {sorted(os.listdir(tmp_path))}"


def test_an_error_between_the_two_renames_puts_the_previous_save_back(tmp_path, monkeypatch):
    """If the second rename fails (an exception, not a kill), the previous save is renamed back at once."""
    _save_folder(tmp_path / "d", 1)
    real_rename = os.rename

    def second_rename_fails(src, dst):
        if Path(src).name.startswith(".d.minilora-partial-"):
            raise OSError("simulated failure")
        real_rename(src, dst)
    monkeypatch.setattr(folders.os, "rename", second_rename_fails)
    with pytest.raises(OSError, match="simulated"):
        _save_folder(tmp_path / "d", 2)
    assert os.listdir(tmp_path) == ["d"] and _read_folder(tmp_path / "d") == (1, 1), sorted(os.listdir(tmp_path))


def test_folder_save_refuses_a_folder_with_other_files_and_a_file_in_its_place(tmp_path):
    """A save replaces the whole folder, so it never takes one holding files it would not write."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        _save_folder(tmp_path / "d", 1)
    assert (tmp_path / "d" / "notes.txt").read_text() == "mine", "a refused save touched the folder"
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        _save_folder(tmp_path / "f", 1)


def test_folder_save_gives_the_usual_permissions(tmp_path):
    """The saved folder is not left owner-only (mkdtemp's mode) but follows the umask like mkdir."""
    _save_folder(tmp_path / "d", 1)
    (tmp_path / "ref").mkdir()
    got, expected = (tmp_path / "d").stat().st_mode & 0o777, (tmp_path / "ref").stat().st_mode & 0o777
    assert got == expected, f"expected mode {oct(expected)}, got {oct(got)}"
