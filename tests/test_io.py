"""Tests for minilora.io: safetensors and JSON files, atomic writes, fingerprints."""
import json
import os

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


def test_fingerprint_with_a_description_binds_it_to_the_tensors():
    """The same tensors described by two configs that differ in one field get two fingerprints."""
    t = _tensors()
    a, b = io.fingerprint(t, {"n_head": 4}), io.fingerprint(t, {"n_head": 8})
    plain = io.fingerprint(t)
    assert a != b and a != plain, f"expected three different fingerprints, got {a}, {b}, {plain}"
