"""Training runs and the command line survive SIGKILL: a run that checkpoints every step, killed at random
instants, leaves the exact state of its step and resumes bit for bit; `minilora finetune --out` and
`minilora merge --out` killed while saving leave the old or the new folder; `minilora pretrain` and
`minilora finetune` killed mid-run continue with `--resume`. ``python tests/test_kill_runs.py`` prints
the figures of docs/reliability.md (with tests/test_kill.py's folder kinds).
"""
import os
import random
import shutil
import signal
import time

import numpy as np
import pytest

from minilora import io
from minilora.adapters.lora_model import LoraModel
from minilora.data.datasets import make_dataset
from minilora.experiments import resume
from minilora.experiments import train as training
from minilora.nn.checkpoint import load_model, save_model
from minilora.nn.model import GPT

from kill_helpers import CFG, TRAIN, TRIALS, Child, count, phase

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not hasattr(os, "fork"), reason="kills forked children (POSIX)")]


# --------------------------------------------------------------------------- training checkpoints
class _Recording(training.AdamW):
    """AdamW that keeps a copy of every parameter after each update (the reference trajectory)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.snapshots = []

    def step(self, params, grads):
        super().step(params, grads)
        self.snapshots.append({k: v.copy() for k, v in params.items()})


def _logged_saves(log):
    real = training._save_checkpoint

    def save(model, opt, steps_done, *args):
        log(f"s {steps_done}")
        real(model, opt, steps_done, *args)
        log(f"d {steps_done}")
    training._save_checkpoint = save


def run_training_trials(folder, trials=TRIALS, seed=0) -> dict:
    """Kill a training run that checkpoints every step; the checkpoint is the reference state of its step,
    and resuming from it ends bit for bit where the uninterrupted run ends."""
    rng = random.Random(seed)
    data = make_dataset("copy", 64, seed=0, block_size=24)
    config = training.TrainConfig(**TRAIN)
    reference = _Recording(lr=config.lr, weight_decay=config.weight_decay)
    t0 = time.perf_counter()
    losses = training.train(GPT(CFG, seed=0), data, None, config, optimizer=reference, checkpoint_dir=folder).losses
    duration = (time.perf_counter() - t0) / config.steps           # a step and its save
    inside, resumed, phases = 0, 0, {}
    for t in range(trials):
        shutil.rmtree(folder, ignore_errors=True)
        child = Child(lambda log: (_logged_saves(log), training.train(GPT(CFG, seed=0), data, None, config,
                                                                      checkpoint_dir=folder)))
        child.wait_for(f"s {rng.randint(3, 10)}")
        time.sleep(rng.uniform(0, 1.5 * duration))
        child.kill()
        count(phases, phase(folder))
        started, done = child.progress()
        k = resume.read_state(folder)[0]["step"]
        assert k == done or (k == started and started != done), \
            f"trial {t}: checkpoint of step {k}; the child had started {started}, finished {done}"
        model, _ = load_model(folder)
        assert all(np.array_equal(model.params[n], reference.snapshots[k - 1][n]) for n in model.params), f"step {k}"
        fresh = GPT(CFG, seed=0)
        hist = training.train(fresh, data, None, config, resume_from=folder)
        assert hist.losses == losses, f"trial {t}: losses after resuming at step {k} differ from the reference run"
        assert all(np.array_equal(fresh.params[n], reference.snapshots[-1][n]) for n in fresh.params), f"resumed at {k}"
        inside += started != done
        resumed += 1
    return {"kind": "training checkpoint (train, save_every=1)", "trials": trials, "killed inside a save": inside,
            "resumed bit-identical": resumed, "load failures": 0, "save ms": round(1000 * duration, 1), **phases}


def test_a_training_run_killed_at_random_instants_leaves_a_checkpoint_that_resumes_bit_identically(tmp_path):
    """TRIALS kills of a run saving every step: the checkpoint holds exactly the state of its step and resumes to
    the uninterrupted run's final weights and losses."""
    stats = run_training_trials(tmp_path / "ck")
    assert stats["trials"] >= 30 and stats["resumed bit-identical"] == stats["trials"], stats


# --------------------------------------------------------------------------- the command line's --out
QUICK = ["--task", "shift", "--steps", "1", "--n-train", "32", "--n-test", "1"]


def _logged(module, name, log, tag, folder):
    """Wrap ``module.name`` so that the child logs "s TAG" before and "d TAG" after each save into ``folder``
    (finetune also saves into a temporary folder, to measure the file size: that one is not logged)."""
    real = getattr(module, name)

    def save(*args, **kw):
        ours = any(str(a) == str(folder) for a in args)
        if ours:
            log(f"s {tag}")
        out = real(*args, **kw)
        if ours:
            log(f"d {tag}")
        return out
    setattr(module, name, save)


def _identity(folder, merged: bool):
    """Which save a folder holds: the adapter's seed, or the merged model's weights fingerprint (checked loads)."""
    if merged:
        model, _ = load_model(folder)
        return io.fingerprint(model.params)
    from minilora.experiments.pretrain import load_base

    host = LoraModel(load_base()[0])
    host.load_adapter(folder)
    return host.adapters["default"].seed


def _timed(save, repeats=3) -> float:
    t0 = time.perf_counter()
    for _ in range(repeats):
        save()
    return (time.perf_counter() - t0) / repeats


def run_cli_trials(tmp_path, command, trials=TRIALS, seed=0) -> dict:
    """Kill `minilora finetune --out` / `minilora merge --out` while it saves; the folder is the old or the new save."""
    from minilora.adapters.adapted import AdaptedModel
    from minilora.cli import main
    from minilora.nn import checkpoint

    rng, out, merged = random.Random(seed), tmp_path / "out", command == "merge"
    adapters = [tmp_path / "a1", tmp_path / "a2"]
    for k, a in enumerate(adapters):
        assert main(["finetune", *QUICK, "--seed", str(k + 1), "--out", str(a)]) == 0
    expected = {}
    for k, a in enumerate(adapters):                              # what each merge saves, computed once
        assert main(["merge", str(a), "--out", str(tmp_path / f"m{k}")]) == 0
        expected[k] = _identity(tmp_path / f"m{k}", True)
    first = ["merge", str(adapters[0]), "--out", str(out)] if merged else ["finetune", *QUICK, "--out", str(out)]
    assert main(first) == 0
    current = _identity(out, merged)
    if merged:                                                    # how long one save takes, measured here
        model, extra = load_model(out)
        duration = _timed(lambda: save_model(model, tmp_path / "timing", extra=extra))
    else:
        from minilora.experiments.pretrain import load_base

        host = LoraModel(load_base()[0])
        host.load_adapter(out)
        duration = _timed(lambda: host.save_adapter(tmp_path / "timing"))
    inside = new_count = 0
    phases = {}
    for t in range(trials):
        k = t % 2

        def body(log):
            if merged:
                _logged(checkpoint, "save_model", log, t, out)
                main(["merge", str(adapters[k]), "--out", str(out)])
            else:
                _logged(AdaptedModel, "save_adapter", log, t, out)
                main(["finetune", *QUICK, "--seed", str(100 + t), "--out", str(out)])
        child = Child(body)
        child.wait_for(f"s {t}")
        time.sleep(rng.uniform(0, 1.5 * duration))
        child.kill()
        count(phases, phase(out))
        started, done = child.progress()
        new = expected[k] if merged else 100 + t
        got = _identity(out, merged)
        allowed = {new} if done is not None else {current, new}  # killed after the save ended: only the new one
        assert got in allowed, f"trial {t}: the folder holds neither the previous save nor the new one"
        inside += done is None
        new_count += got == new and got != current
        current = got
    return {"kind": f"minilora {command} --out", "trials": trials, "killed inside a save": inside,
            "loaded the new save": new_count, "loaded the old save": trials - new_count, "load failures": 0,
            "save ms": round(1000 * duration, 1), **phases}


@pytest.mark.parametrize("command", ["finetune", "merge"])
def test_the_command_lines_out_folder_survives_a_kill_during_its_save(tmp_path, command):
    """TRIALS kills of `minilora finetune --out` / `merge --out` as the save starts: the folder loads as a save."""
    stats = run_cli_trials(tmp_path, command)
    assert stats["trials"] >= 30 and stats["killed inside a save"] >= 5, stats


# --------------------------------------------------------------------------- killed command-line runs resume
def _kill_after_updates(n):
    from minilora.nn import optim

    real, count, me = optim.AdamW.step, [0], os.getpid()

    def step(self, params, grads):
        real(self, params, grads)
        count[0] += 1
        if count[0] == n:
            os.kill(me, signal.SIGKILL)
    optim.AdamW.step = step


@pytest.mark.parametrize("command, options, files", [
    ("finetune", ["--task", "shift", "--steps", "9", "--n-train", "64", "--n-test", "8", "--seed", "1"],
     ("adapter_model.safetensors",)),
    ("pretrain", ["--steps", "5", "--seed", "1"], ("model.safetensors",)),
])
def test_a_killed_command_line_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, command, options, files):
    """`minilora {pretrain,finetune} --save-every` killed by SIGKILL, then `--resume DIR`: the saved weights equal
    those of the same run left alone, bit for bit."""
    import functools

    from minilora.cli import main
    from minilora.experiments import pretrain

    # the shipped recipe draws 60 000 examples and evaluates 1 800; a smaller mix keeps this test short
    monkeypatch.setattr(pretrain, "PretrainConfig", functools.partial(pretrain.PretrainConfig, n_train=2000, n_eval=50))

    assert main([command, *options, "--save-every", "2", "--out", str(tmp_path / "whole")]) == 0
    killed = [command, *options, "--save-every", "2", "--out", str(tmp_path / "run")]
    status = Child(lambda log: (_kill_after_updates(5 if command == "finetune" else 3), main(killed))).finish()
    assert os.WIFSIGNALED(status), f"the run was not killed (status {status})"
    assert not (tmp_path / "run").exists() and resume.read_state(tmp_path / "run-checkpoint")[0]["step"] in (2, 4)
    assert main([command, "--resume", str(tmp_path / "run-checkpoint")]) == 0
    for name in files:
        a, _ = io.load_tensors(tmp_path / "whole" / name)
        b, _ = io.load_tensors(tmp_path / "run" / name)
        assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a), f"{name} differs after resuming"


if __name__ == "__main__":                                        # the figures of docs/reliability.md
    import tempfile
    from pathlib import Path

    from test_kill import AdapterKind, ModelKind, run_trials

    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_trials(ModelKind(), Path(tmp) / "m"), run_trials(AdapterKind(), Path(tmp) / "a"),
                run_training_trials(Path(tmp) / "t"), run_cli_trials(Path(tmp) / "f", "finetune"),
                run_cli_trials(Path(tmp) / "g", "merge")]
    for row in rows:
        print(row)
