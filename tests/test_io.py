"""Tests for minilora.io: safetensors and JSON files, atomic writes and folder saves, fingerprints.

tests/test_kill.py kills saving processes; here each step of a folder save is checked in one process."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from minilora import io
from minilora.io import CheckpointError


def _tensors():
    rng = np.random.default_rng(0)
    return {
        "blocks.0.attn.wq.lora_A": rng.standard_normal((4, 8)).astype(np.float32),
        "blocks.0.attn.wq.lora_B": rng.standard_normal((8, 4)),  # float64
        "positions": np.arange(5, dtype=np.int64),
        "scalar": np.array(1.5, dtype=np.float32),  # 0-d
        "transposed": rng.standard_normal((3, 5)).astype(np.float32).T,  # not C-contiguous
    }


def _saved(tmp_path, name="adapter.safetensors"):
    path = tmp_path / name
    io.save_tensors(path, _tensors(), metadata={"r": "4"})
    return path


# --------------------------------------------------------------------------- tensors
def test_tensor_round_trip_preserves_names_dtypes_shapes_and_bits(tmp_path):
    """Saved and loaded tensors agree in names, dtypes, shapes and every bit."""
    original = _tensors()
    path = tmp_path / "t.safetensors"
    io.save_tensors(path, original)
    loaded, metadata = io.load_tensors(path)
    assert set(loaded) == set(original), f"expected names {sorted(original)}, got {sorted(loaded)}"
    for name, a in original.items():
        b = loaded[name]
        assert b.dtype == a.dtype, f"{name}: expected dtype {a.dtype}, got {b.dtype}"
        assert b.shape == a.shape, f"{name}: expected shape {a.shape}, got {b.shape}"
        assert np.array_equal(a, b), f"{name}: values differ after the round trip"
        assert b.flags.writeable, f"{name}: loaded array is read-only; optimizers update in place"
    assert metadata == {}, f"expected empty metadata for a file saved without any, got {metadata}"


def test_metadata_round_trips_as_strings(tmp_path):
    """String metadata comes back exactly as it was saved."""
    meta = {"base_fingerprint": "0123456789abcdef", "config": json.dumps({"r": 4, "alpha": 8})}
    path = tmp_path / "t.safetensors"
    io.save_tensors(path, {"x": np.zeros(2)}, metadata=meta)
    _, loaded = io.load_tensors(path)
    assert loaded == meta, f"expected metadata {meta}, got {loaded}"


def test_successful_write_leaves_no_temporary_files(tmp_path):
    """After a successful save the directory holds exactly the written files."""
    io.save_tensors(tmp_path / "sub" / "t.safetensors", _tensors())
    io.write_json(tmp_path / "sub" / "c.json", {"a": 1})
    left = sorted(os.listdir(tmp_path / "sub"))
    assert left == ["c.json", "t.safetensors"], f"expected only the two files, found {left}"


def test_non_string_metadata_raises_and_keeps_previous_file(tmp_path):
    """A TypeError for non-string metadata leaves the existing file unchanged."""
    path = _saved(tmp_path)
    before = path.read_bytes()
    with pytest.raises(TypeError, match="json.dumps"):
        io.save_tensors(path, {"x": np.ones(3)}, metadata={"r": 4})
    assert path.read_bytes() == before, "previous file was modified by a failed save"
    assert os.listdir(tmp_path) == [path.name], f"leftovers: {os.listdir(tmp_path)}"


def test_failed_replace_keeps_previous_file_and_removes_temporary(tmp_path, monkeypatch):
    """If the final rename fails, the old file is intact and the temporary file is gone."""
    path = _saved(tmp_path)
    before = path.read_bytes()

    def failing_replace(src, dst):
        raise OSError("simulated failure")

    monkeypatch.setattr(io.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated failure"):
        io.save_tensors(path, {"x": np.ones(3)})
    assert path.read_bytes() == before, "previous file was modified by a failed save"
    assert os.listdir(tmp_path) == [path.name], f"leftovers: {os.listdir(tmp_path)}"


def test_truncated_file_raises_checkpoint_error_naming_the_file(tmp_path):
    """A file cut short is reported as corrupt, with its path in the message."""
    path = _saved(tmp_path)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(CheckpointError) as info:
        io.load_tensors(path)
    msg = str(info.value)
    assert str(path) in msg, f"expected the path {path} in the message, got: {msg}"
    assert "truncated or corrupt" in msg, f"expected the problem in the message, got: {msg}"


@pytest.mark.parametrize("content", [b"", b"abc", b"\x00" * 64, b"not a safetensors file" * 10])
def test_garbage_bytes_raise_checkpoint_error(tmp_path, content):
    """Bytes that are not safetensors raise CheckpointError, not a library-specific error."""
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        io.load_tensors(path)


def test_missing_tensor_file_raises_file_not_found_naming_the_path(tmp_path):
    """Loading a missing file raises FileNotFoundError with the path in the message."""
    path = tmp_path / "missing.safetensors"
    with pytest.raises(FileNotFoundError) as info:
        io.load_tensors(path)
    assert str(path) in str(info.value), f"expected {path} in the message, got: {info.value}"


# --------------------------------------------------------------------------- JSON
def test_json_round_trip_is_sorted_indented_and_newline_terminated(tmp_path):
    """write_json output reads back equal, with sorted keys, indent 2 and a final newline."""
    obj = {"b": [1, 2.5], "a": {"nested": "x"}}
    path = tmp_path / "c.json"
    io.write_json(path, obj)
    text = path.read_text()
    expected = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    assert text == expected, f"expected file text {expected!r}, got {text!r}"
    assert io.read_json(path) == obj, f"expected {obj}, got {io.read_json(path)}"


def test_invalid_json_raises_checkpoint_error_naming_the_file(tmp_path):
    """A broken JSON file raises CheckpointError with its path in the message."""
    path = tmp_path / "adapter_config.json"
    path.write_text('{"r": 4,')
    with pytest.raises(CheckpointError) as info:
        io.read_json(path)
    assert str(path) in str(info.value), f"expected {path} in the message, got: {info.value}"


def test_missing_json_raises_file_not_found_naming_the_path(tmp_path):
    """read_json on a missing file raises FileNotFoundError with the path in the message."""
    path = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError) as info:
        io.read_json(path)
    assert str(path) in str(info.value), f"expected {path} in the message, got: {info.value}"


# --------------------------------------------------------------------------- fingerprints
def test_fingerprint_changes_when_one_value_moves_one_ulp():
    """Changing one float by one unit in the last place changes the fingerprint."""
    a = _tensors()
    b = {k: v.copy() for k, v in a.items()}
    x = b["blocks.0.attn.wq.lora_A"]
    x[2, 3] = np.nextafter(x[2, 3], np.float32(np.inf))
    fa, fb = io.fingerprint(a), io.fingerprint(b)
    assert fa != fb, f"expected different fingerprints after a one-ulp change, both are {fa}"


def test_fingerprint_changes_when_a_name_changes():
    """Renaming one tensor changes the fingerprint."""
    a = _tensors()
    b = dict(a)
    b["renamed"] = b.pop("positions")
    fa, fb = io.fingerprint(a), io.fingerprint(b)
    assert fa != fb, f"expected different fingerprints after a rename, both are {fa}"


def test_fingerprint_changes_with_dtype_and_shape_for_equal_bytes():
    """Equal raw bytes under another dtype or shape give another fingerprint."""
    x = np.arange(6, dtype=np.int64)
    base = io.fingerprint({"x": x})
    for other in (x.view(np.float64), x.reshape(2, 3)):
        f = io.fingerprint({"x": other})
        assert f != base, f"expected a different fingerprint for {other.dtype} {other.shape}"


def test_fingerprint_is_independent_of_insertion_order_and_survives_a_round_trip(tmp_path):
    """Reordered dicts and tensors loaded back from a file give the same 16-hex fingerprint."""
    a = _tensors()
    reordered = dict(reversed(list(a.items())))
    path = tmp_path / "t.safetensors"
    io.save_tensors(path, a)
    loaded, _ = io.load_tensors(path)
    expected = io.fingerprint(a)
    assert len(expected) == 16 and int(expected, 16) >= 0, f"expected 16 hex chars, got {expected}"
    for label, t in (("reordered", reordered), ("loaded", loaded)):
        got = io.fingerprint(t)
        assert got == expected, f"{label}: expected fingerprint {expected}, got {got}"


# --------------------------------------------------------------------------- sizes
def test_file_and_dir_sizes_add_up(tmp_path):
    """dir_size is the sum of the file sizes below it, and file_size matches the bytes written."""
    io.atomic_write_bytes(tmp_path / "a.bin", b"x" * 10)
    io.atomic_write_bytes(tmp_path / "d" / "b.bin", b"y" * 7)
    assert io.file_size(tmp_path / "a.bin") == 10, f"expected 10, got {io.file_size(tmp_path / 'a.bin')}"
    assert io.dir_size(tmp_path) == 17, f"expected 17, got {io.dir_size(tmp_path)}"


# --------------------------------------------------------------------------- folder saves
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
    monkeypatch.setattr(io.os, "rename", second_rename_fails)
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


def test_fingerprint_with_a_description_binds_it_to_the_tensors():
    """The same tensors described by two configs that differ in one field get two fingerprints."""
    t = _tensors()
    a, b = io.fingerprint(t, {"n_head": 4}), io.fingerprint(t, {"n_head": 8})
    assert a != b and a != io.fingerprint(t), f"expected three different fingerprints, got {a}, {b}, {io.fingerprint(t)}"
