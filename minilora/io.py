"""Files on disk: tensors as safetensors, settings as JSON, every save all-or-nothing.

Tensors are stored with ``safetensors`` (a JSON header followed by raw little-endian bytes), so
loading a file never runs code from it: minilora has no pickle anywhere. JSON holds everything
else (adapter_config.json, training settings, metrics).

One file: it goes to a temporary file in the target's folder, is flushed and fsync'ed, and is
renamed over the target with ``os.replace``: a reader never sees half a file.

A folder of several files (a model, an adapter, a training checkpoint) is one save; renaming its
files one by one would not make it one (killed between config.json and the tensors, a folder
mixes two saves). ``atomic_folder`` writes every file into a hidden sibling and swaps folders:
    1. write and fsync every file in .NAME.minilora-partial-XXXX/      (NAME untouched)
    2. rename NAME -> .NAME.minilora-old-TIME                           (the previous save, complete)
    3. rename .NAME.minilora-partial-XXXX -> NAME                       (the new save, complete)
    4. remove .NAME.minilora-old-TIME
Each rename is atomic, but POSIX cannot rename a folder over a non-empty one, so a crash between
2 and 3 leaves no NAME. ``saved_folder`` (every loader calls it) then reads the complete previous
save in .NAME.minilora-old-TIME, and the next save renames it back first. After a crash at any
instant a load gives the complete old save or the complete new one; the next save removes the
leftovers. tests/test_kill.py proves it by killing saving processes (docs/reliability.md). A save
replaces the whole folder, so it refuses a folder holding other files; one process saves a folder.

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
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

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


# mkstemp and mkdtemp create files and folders for the owner only; give finished ones the usual permissions.
_FILE_MODE = 0o666 & ~_current_umask()
_DIR_MODE = 0o777 & ~_current_umask()


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


# --------------------------------------------------------------------------- folders (one save, several files)
_PARTIAL, _OLD = "minilora-partial", "minilora-old"


def _leftovers(final: Path, tag: str) -> list[Path]:
    """The hidden siblings of ``final`` made by an unfinished save (``tag``: partial or old), oldest first."""
    prefix = f".{final.name}.{tag}-"
    found = [final.parent / n for n in os.listdir(final.parent)] if final.parent.is_dir() else []
    return sorted(p for p in found if p.name.startswith(prefix))


def _fsync_dir(path: Path) -> None:
    """Make a folder's entries (new names, renames) durable; a no-op where folders cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def saved_folder(directory) -> Path:
    """The folder a save in ``directory`` is read from: ``directory`` itself, or, when a save was
    killed between its two renames (see the module docstring), the complete previous save beside it."""
    final = Path(os.path.realpath(directory))
    if final.exists():
        return final
    olds = _leftovers(final, _OLD)
    return olds[-1] if olds else final


def check_save_target(directory, names) -> Path:
    """Refuse, before any work, a folder a save of the files ``names`` cannot replace; returns its real path.

    It must not be a file, may hold only files of the same kind of save (they are replaced; anything
    else would be lost), and its parent must be writable (or creatable).
    """
    final = Path(os.path.realpath(directory))
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"{directory} exists and is a file, not a folder; choose a folder to save into")
    foreign = sorted(set(os.listdir(final)) - set(names)) if final.is_dir() else []
    if foreign:
        raise FileExistsError(f"{directory} holds files this save would not write ({', '.join(foreign[:4])}); "
                              f"a save replaces the whole folder, so they would be lost. Choose a new or "
                              f"empty folder, or one that holds only {sorted(names)}")
    parent = final.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"cannot save into {directory}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot save into {directory}: {parent} is not writable")
    return final


def _recover(final: Path) -> None:
    """Undo a killed earlier save of ``final``: restore the previous save, remove partial folders."""
    olds = _leftovers(final, _OLD)
    if olds and not final.exists():
        os.rename(olds.pop(), final)                   # killed between the two renames: put it back
    for leftover in olds + _leftovers(final, _PARTIAL):
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(directory, names):
    """Save the files ``names`` into ``directory`` as one: all of them or, after a crash, none.

        with atomic_folder(d, ["model.safetensors", "config.json"]) as tmp:
            save_tensors(tmp / "model.safetensors", ...)
            write_json(tmp / "config.json", ...)

    The files are written into a hidden sibling folder ``tmp``; when the block ends normally and
    ``tmp`` holds exactly ``names``, it replaces ``directory`` (the module docstring gives the
    steps and why a crash at any instant leaves a complete save). On an exception nothing changes.
    """
    final = Path(os.path.realpath(directory))
    final.parent.mkdir(parents=True, exist_ok=True)
    _recover(final)                                    # first: a restored previous save is checked too
    check_save_target(final, names)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.{_PARTIAL}-"))
    old = final.parent / f".{final.name}.{_OLD}-{time.time_ns():020d}"
    try:
        yield tmp
        written = sorted(os.listdir(tmp))
        if written != sorted(names):
            raise RuntimeError(f"a save into {directory} wrote {written}, not the files it declared {sorted(names)}")
        os.chmod(tmp, _DIR_MODE)
        _fsync_dir(tmp)
        if final.exists():
            os.rename(final, old)                      # step 2: the previous save, complete, beside it
        os.rename(tmp, final)                          # step 3: the new save, complete, in its place
        _fsync_dir(final.parent)
    except BaseException:
        if old.exists() and not final.exists():
            os.rename(old, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)             # step 4 (a leftover is removed by the next save)


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
