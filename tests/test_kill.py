"""Folder saves survive SIGKILL: a child process saves in a loop while the parent kills it, and the folder
always loads and equals one of the saves (the one before the kill, or the one in progress).

A model folder and an adapter folder each get TRIALS kills at random instants inside or just after a save
(the delay after a save starts is uniform in [0, 1.5 x its measured duration]); a model, an adapter and a
training checkpoint each get kills placed exactly between the two files, right after the old folder is
moved aside, and right before it is removed. tests/test_kill_runs.py kills training runs and the command
line; ``python tests/test_kill_runs.py`` prints the table that docs/reliability.md reports.
"""
import os
import random
import signal
import time

import numpy as np
import pytest

from minilora import folders, io
from minilora.adapters.config import LoraConfig
from minilora.adapters.lora_model import LoraModel
from minilora.data.datasets import make_dataset
from minilora.experiments import resume
from minilora.experiments import train as training
from minilora.nn.checkpoint import load_model, save_model
from minilora.nn.model import GPT

from kill_helpers import CFG, TRAIN, TRIALS, Child, count, leftovers, phase

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not hasattr(os, "fork"), reason="kills forked children (POSIX)")]


# --------------------------------------------------------------------------- the kinds of save
def _model(i):
    base = GPT(CFG, seed=0)
    return GPT(CFG, {k: v + np.float32(i) for k, v in base.params.items()})


def _adapter(i):
    lm = LoraModel(GPT(CFG, seed=0), LoraConfig(r=2, lora_alpha=float(i + 1), target_modules=("wq", "wv")))
    for k in lm.adapter_state():
        if ".lora_B." in k:
            lm.params[lm.param_name(k)][...] = i
    return lm


class ModelKind:
    name = "model folder (save_model)"

    def save(self, folder, i):
        save_model(_model(i), folder, extra={"i": i})

    def loaded(self, folder):
        model, extra = load_model(folder)
        j = extra["i"]
        expected = _model(j).params
        assert all(np.array_equal(model.params[k], expected[k]) for k in expected), f"save {j}: tensors of another save"
        return j


class AdapterKind:
    name = "adapter folder (save_adapter)"

    def save(self, folder, i):
        _adapter(i).save_adapter(folder)

    def loaded(self, folder):
        host = LoraModel(GPT(CFG, seed=0))
        host.load_adapter(folder)
        j = int(host.adapters["default"].lora_alpha) - 1          # the config says which save ...
        state, expected = host.adapter_state(), _adapter(j).adapter_state()
        assert all(np.array_equal(state[k], expected[k]) for k in expected), f"config of save {j}, tensors of another"
        return j                                                  # ... and the tensors agree with it


class CheckpointKind:
    """Save i: the checkpoint at the end of an (i + 1)-step run, which writes four files."""
    name = "training checkpoint (train)"

    def _run(self, i, folder=None):
        model = GPT(CFG, seed=0)
        config = training.TrainConfig(**{**TRAIN, "steps": i + 1, "save_every": None})
        training.train(model, make_dataset("copy", 64, seed=0, block_size=24), None, config, checkpoint_dir=folder)
        return model

    def save(self, folder, i):
        self._run(i, folder)

    def loaded(self, folder):
        j = resume.read_state(folder)[0]["step"] - 1
        model, expected = load_model(folder)[0], self._run(j)
        assert all(np.array_equal(model.params[k], expected.params[k]) for k in expected.params), f"save {j}"
        return j


def _loop(kind, folder, start):
    """The child's body: save forever, logging each save's start and end."""
    def body(log):
        for i in range(start, 10**9):
            log(f"s {i}")
            kind.save(folder, i)
            log(f"d {i}")
    return body


def _save_seconds(kind, folder) -> float:
    t0 = time.perf_counter()
    for i in range(3):
        kind.save(folder, i)
    return (time.perf_counter() - t0) / 3


def run_trials(kind, folder, trials=TRIALS, seed=0) -> dict:
    """Kill a saving child ``trials`` times; after each kill the folder must load as the old or the new save."""
    rng = random.Random(seed)
    duration = _save_seconds(kind, folder)
    kind.save(folder, 0)
    current, inside, new, phases = 0, 0, 0, {}
    for t in range(trials):
        start = 1000 * (t + 1)
        child = Child(_loop(kind, folder, start))
        child.wait_for(f"s {start + rng.randint(0, 1)}")
        time.sleep(rng.uniform(0, 1.5 * duration))
        child.kill()
        count(phases, phase(folder))
        started, done = child.progress()                         # killed after a save ended: only the new one
        allowed = {started} if started == done else {done if done is not None else current, started}
        j = kind.loaded(folder)
        assert j in allowed, f"trial {t}: the folder holds save {j}; the child had started {started}, finished {done}"
        inside += started != done
        new += j == started
        current = j
    kind.save(folder, 1)
    assert not leftovers(folder), f"the next save left {leftovers(folder)}"
    return {"kind": kind.name, "trials": trials, "killed inside a save": inside, "loaded the new save": new,
            "loaded the old save": trials - new, "load failures": 0, "save ms": round(1000 * duration, 1), **phases}


@pytest.mark.parametrize("kind", [ModelKind(), AdapterKind()], ids=["model", "adapter"])
def test_a_folder_save_killed_at_random_instants_always_loads_as_the_old_or_the_new_save(tmp_path, kind):
    """TRIALS kills of a process saving in a loop: every time the folder loads and equals one of its saves."""
    stats = run_trials(kind, tmp_path / "saved")
    assert stats["trials"] >= 30 and stats["killed inside a save"] >= 5, stats


# --------------------------------------------------------------------------- kills at the exact steps of a save
def _kill_at(point):
    """Patch, in the child, the step after which it kills itself (see minilora.io's steps 1-4)."""
    me = os.getpid()
    if point == "between the two files":
        real = io.write_json

        def write_json(path, obj):
            if ".minilora-partial-" in str(path):
                os.kill(me, signal.SIGKILL)
            real(path, obj)
        io.write_json = write_json
    elif point == "old folder moved aside":
        real_rename = os.rename

        def rename(src, dst):
            real_rename(src, dst)
            if ".minilora-old-" in str(dst):
                os.kill(me, signal.SIGKILL)
        folders.os.rename = rename
    else:                                                     # "new folder in place, old not yet removed"
        real_rmtree = folders.shutil.rmtree

        def rmtree(path, *a, **k):
            if ".minilora-old-" in str(path):
                os.kill(me, signal.SIGKILL)
            real_rmtree(path, *a, **k)
        folders.shutil.rmtree = rmtree


POINTS = {"between the two files": 0, "old folder moved aside": 0, "new folder in place, old not yet removed": 1}


@pytest.mark.parametrize("point", sorted(POINTS))
@pytest.mark.parametrize("kind", [ModelKind(), AdapterKind(), CheckpointKind()], ids=["model", "adapter", "checkpoint"])
def test_a_kill_at_each_step_of_a_save_leaves_the_save_it_should(tmp_path, kind, point):
    """Killed between the files or the renames: the old save; after the swap: the new; no leftovers next time."""
    folder = tmp_path / "saved"
    kind.save(folder, 0)

    def body(log):
        _kill_at(point)
        kind.save(folder, 1)
    status = Child(body).finish()
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"the child was not killed: {status}"
    got = kind.loaded(folder)
    assert got == POINTS[point], f"killed at '{point}': expected save {POINTS[point]}, the folder holds {got}"
    kind.save(folder, 2)
    assert kind.loaded(folder) == 2 and not leftovers(folder), leftovers(folder)
