"""Files on disk: tensors as safetensors, settings as JSON, every save all-or-nothing.

Tensors are stored with ``safetensors`` (a JSON header followed by raw little-endian bytes), so
loading a file never runs code from it: minilora has no pickle anywhere. JSON holds everything
else (adapter_config.json, training settings, metrics).

One file: it goes to a temporary file in the target's folder, is flushed and fsync'ed, and is
renamed over the target with ``os.replace``: a reader never sees half a file.

A folder of several files (a model, an adapter, a training checkpoint) is one save:
``atomic_folder`` writes them beside the folder and swaps folders, so after a crash at any instant
a load (through ``saved_folder``) gives the complete old save or the complete new one. How, and why
a crash between the two renames is safe too: ``minilora.folders``, whose names io re-exports.

``fingerprint`` hashes a set of tensors (and, optionally, the JSON that describes them), so a
file's config is bound to its tensors and an adapter can name the base model it was trained on.

Arrays may live on either backend when saved; loading always returns NumPy arrays, and the
caller moves them with ``backend.asarray``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

from minilora.folders import atomic_folder, check_save_target, saved_folder  # noqa: F401  (io's API)
from minilora.nn.backend import to_numpy


class CheckpointError(ValueError):
    """A file exists but cannot be used: corrupt, truncated, or not what the caller expected."""


def _host_contiguous(a) -> np.ndarray:
    """``a`` as a C-contiguous NumPy array (copies only when needed; keeps 0-d arrays 0-d).

    safetensors serialises from the array's data pointer, so a non-contiguous view would be
    written as the wrong bytes. (``np.ascontiguousarray`` would turn a 0-d array into shape (1,).)
    """
    return np.asarray(to_numpy(a), order="C")


# --------------------------------------------------------------------------- atomic writes
def _current_umask() -> int:
    # os.umask can only be read by setting it; done once, at import.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only; give finished files the usual permissions.
_FILE_MODE = 0o666 & ~_current_umask()


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds either the old or the new contents.

    The bytes go to a temporary file next to ``path`` (same directory, hence same file system,
    which ``os.replace`` needs to be atomic), are flushed and fsync'ed, and the temporary file is
    then renamed over ``path``. On any error the temporary file is removed and ``path`` is left
    untouched. Parent directories are created. (The directory itself is not fsync'ed, so after a
    power cut the rename may be lost, but the file is never half-written.)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- text, JSON and figures
def write_text(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically: reports and notes are never half-written."""
    atomic_write_bytes(path, text.encode("utf-8"))


def save_figure(fig, path, *, tight: bool = True, dpi: int = 110) -> Path:
    """Save a matplotlib figure as a PNG atomically (making folders) and close it.

    The one helper every plot of minilora goes through. ``tight=False`` for figures that use
    constrained layout.
    """
    import io as _bytes_io

    import matplotlib.pyplot as plt

    if tight:
        fig.tight_layout()
    buffer = _bytes_io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def write_json(path, obj) -> None:
    """Write ``obj`` as JSON (indent 2, sorted keys, trailing newline), atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path):
    """Read a JSON file written by ``write_json`` (or by hand).

    Raises FileNotFoundError when ``path`` does not exist and CheckpointError when it is not
    valid UTF-8 JSON; both messages name the file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: no such file. Check the path, or create the file first "
            f"(it is written when the checkpoint or adapter it belongs to is saved)."
        ) from None
    except UnicodeDecodeError as e:
        raise CheckpointError(
            f"{path} is not a valid JSON file: it is not UTF-8 text ({e}). "
            f"Re-create it, or fix it by hand."
        ) from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{path} is not a valid JSON file (truncated or edited by hand?): {e.msg} at line "
            f"{e.lineno}, column {e.colno}. Fix the file by hand, or re-create it."
        ) from e


# --------------------------------------------------------------------------- tensors
def save_tensors(path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Save named arrays (either backend) to a safetensors file, atomically.

    tensors:  name -> array of any shape; brought to the CPU and made C-contiguous.
    metadata: name -> str, stored in the file header. Values must already be strings
              (json.dumps anything else first); a TypeError is raised before anything is written.
    """
    for key, value in (metadata or {}).items():
        if not isinstance(key, str):
            raise TypeError(f"safetensors metadata keys must be str, got {key!r}")
        if not isinstance(value, str):
            raise TypeError(
                f"safetensors metadata values must be str, but {key!r} is a "
                f"{type(value).__name__}; encode it first, e.g. json.dumps(value)"
            )
    for name in tensors:
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r} ({type(name).__name__})")
    host = {name: _host_contiguous(a) for name, a in tensors.items()}
    data = safetensors.numpy.save(host, metadata=dict(metadata) if metadata else None)
    atomic_write_bytes(path, data)


def load_tensors(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Load a safetensors file: (name -> NumPy array, metadata name -> str).

    The file is read with ``safetensors.safe_open``, which checks the header (its length, its
    JSON, and that the tensors cover the data exactly) before anything is returned; its
    ``metadata()`` gives the header's ``__metadata__`` (an empty dict when the file has none).
    Arrays are NumPy and writable; move them with ``backend.asarray``.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "no such file"
        raise FileNotFoundError(
            f"{path}: {what}. Check the path, or save the tensors first (save_tensors)."
        )
    try:
        with safetensors.safe_open(str(path), framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except safetensors.SafetensorError as e:
        raise CheckpointError(
            f"{path} is not a valid safetensors file (truncated or corrupt?): {e}. "
            f"Re-create it by saving again, or restore it from a good copy."
        ) from e
    return tensors, metadata


# --------------------------------------------------------------------------- fingerprints
def fingerprint(tensors: dict, described_by: dict | None = None) -> str:
    """A short hash of names, dtypes, shapes and exact values; independent of dict order.

    Two sets of tensors get the same fingerprint only if they agree bit for bit (one ulp in one
    value changes it). Bytes are hashed little-endian, as safetensors stores them, so an array
    and the same array loaded back from a file hash alike. ``described_by``: a JSON-ready dict
    hashed too (as sorted, compact JSON), which binds a config to its tensors: editing one field
    (n_head 4 -> 8) changes the fingerprint. Returns 16 hex characters (64 bits).
    """
    h = hashlib.sha256()
    if described_by is not None:
        h.update(json.dumps(described_by, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n")
    for name in sorted(tensors):
        a = to_numpy(tensors[name])
        a = np.asarray(a, dtype=a.dtype.newbyteorder("<"), order="C")  # no copy if already so
        # A JSON line per tensor frames the fields, so ("ab", "c") cannot collide with ("a", "bc").
        header = json.dumps([name, a.dtype.str, list(a.shape)]) + "\n"
        h.update(header.encode("utf-8"))
        h.update(a.data)
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- sizes
def file_size(path) -> int:
    """Size of one file in bytes."""
    return os.path.getsize(path)


def dir_size(path) -> int:
    """Total size in bytes of the files under ``path`` (recursively; links are not followed)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a directory")
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total
