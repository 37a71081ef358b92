"""A folder of several files saved as one: after a crash at any instant it holds the complete old
save or the complete new one, never a mix (``minilora.io`` re-exports these names).

Why files alone are not enough. A model folder is config.json + model.safetensors, an adapter
folder adapter_config.json + adapter_model.safetensors; writing each file atomically, one after the
other, leaves a folder that mixes two saves when the process is killed between them (the config of
one, the tensors of the other), and the previous good save is gone.

How. ``atomic_folder`` writes every file into a hidden sibling and swaps whole folders:
    1. write and fsync every file in .NAME.minilora-partial-XXXX/      (NAME untouched)
    2. rename NAME -> .NAME.minilora-old-TIME                           (the previous save, complete)
    3. rename .NAME.minilora-partial-XXXX -> NAME                       (the new save, complete)
    4. remove .NAME.minilora-old-TIME
Each rename is atomic on POSIX, but POSIX cannot rename a folder over a non-empty folder, so two
renames are needed and a crash between 2 and 3 leaves no NAME. That window is handled, not hoped
away: ``saved_folder(NAME)``, which every loader calls, then reads the complete previous save in
.NAME.minilora-old-TIME, and the next save renames it back before anything else. The next save also
removes any partial or old folder a crash left. tests/test_kill*.py kill saving processes at random
instants and at each of these steps to prove it (figures in docs/reliability.md).

A save replaces the whole folder, so it refuses a folder holding files it would not write (they
would be lost); ``check_save_target`` makes that check early (the command line calls it before
training). One process saves a given folder at a time.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path


def _current_umask() -> int:
    # os.umask can only be read by setting it; done once, at import.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkdtemp creates folders for the owner only; give a finished save the permissions mkdir would.
_DIR_MODE = 0o777 & ~_current_umask()
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
