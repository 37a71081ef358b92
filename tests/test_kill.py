"""Saves survive SIGKILL: a child process saves while the parent kills it, and the folder always loads and
equals one of the saves (the one before the kill, or the one in progress); a killed run resumes bit for bit.

Kinds of save: a model folder, an adapter folder, a training checkpoint, `minilora finetune --out` and
`minilora merge --out`. Each gets TRIALS kills at random instants inside or just after a save (the delay
after the save starts is uniform in [0, 1.5 x its measured duration]), plus kills placed exactly between
the two files, right after the old folder is moved aside, and right before it is removed.
``python tests/test_kill.py`` prints the table that docs/reliability.md reports.
"""
import os
import random
import select
import signal
import sys
import time

import numpy as np
import pytest

from minilora import io
from minilora.adapters.config import LoraConfig
from minilora.adapters.lora_model import LoraModel
from minilora.data.datasets import make_dataset
from minilora.experiments import resume
from minilora.experiments import train as training
from minilora.nn.checkpoint import load_model, save_model
from minilora.nn.model import GPT, GPTConfig

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not hasattr(os, "fork"), reason="kills forked children (POSIX)")]

TRIALS = 30
CFG = GPTConfig(vocab_size=56, block_size=24, n_layer=1, n_head=2, n_embd=16)
TRAIN = dict(steps=24, batch_size=8, lr=1e-2, warmup_steps=2, eval_every=1000, save_every=1, progress=False, workers=2)


# --------------------------------------------------------------------------- a child that can be killed
class Child:
    """A forked process running ``body(log)``; ``log(text)`` sends one line to the parent."""

    def __init__(self, body):
        r, w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:                                    # the child: never returns into pytest
            code = 1
            try:
                os.close(r)
                _quiet_child()
                body(lambda text: os.write(w, (text + "\n").encode()))
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        self.fd, self.lines, self._buffer = r, [], b""

    def _read(self, timeout) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        chunk = os.read(self.fd, 65536) if ready else b""
        self._buffer += chunk
        *complete, self._buffer = self._buffer.split(b"\n")
        self.lines += [c.decode() for c in complete]
        return bool(chunk)

    def wait_for(self, line: str, timeout: float = 120.0):
        deadline = time.monotonic() + timeout
        while line not in self.lines:
            if not self._read(max(0.0, deadline - time.monotonic())) and time.monotonic() > deadline:
                raise TimeoutError(f"the child never logged {line!r}; it logged {self.lines[-5:]}")

    def kill(self):
        os.kill(self.pid, signal.SIGKILL)
        return self.finish()

    def finish(self):
        _, status = os.waitpid(self.pid, 0)
        while self._read(0.5):
            pass
        os.close(self.fd)
        return status

    def progress(self) -> tuple[int | None, int | None]:
        """(last save started, last save done) as the child logged them ("s i" / "d i")."""
        last = lambda tag: max((int(x.split()[1]) for x in self.lines if x.startswith(tag + " ")), default=None)
        return last("s"), last("d")


def _quiet_child():
    """What a forked child must not inherit: the parent's worker threads (gone after fork), its output, tqdm's monitor."""
    from tqdm import tqdm

    from minilora.fast import parallel

    parallel._pool, parallel._pool_size = None, 0
    tqdm.monitor_interval = 0
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)


def _leftovers(folder):
    return sorted(n for n in os.listdir(folder.parent) if n.startswith(f".{folder.name}.minilora-"))


def _phase(folder) -> str:
    """Where in a save (minilora.io's steps) the kill struck, read from what it left beside the folder."""
    left = " ".join(_leftovers(folder))
    if "minilora-old-" in left:
        return "steps 2-3 (between the renames)" if not folder.exists() else "step 4 (old not yet removed)"
    return "step 1 (writing the new files)" if "minilora-partial-" in left else "outside the swap"


def _count(stats: dict, phase: str) -> None:
    stats[phase] = stats.get(phase, 0) + 1


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
        _count(phases, _phase(folder))
        started, done = child.progress()                         # killed after a save ended: only the new one
        allowed = {started} if started == done else {done if done is not None else current, started}
        j = kind.loaded(folder)
        assert j in allowed, f"trial {t}: the folder holds save {j}; the child had started {started}, finished {done}"
        inside += started != done
        new += j == started
        current = j
    kind.save(folder, 1)
    assert not _leftovers(folder), f"the next save left {_leftovers(folder)}"
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
        io.os.rename = rename
    else:                                                     # "new folder in place, old not yet removed"
        real_rmtree = io.shutil.rmtree

        def rmtree(path, *a, **k):
            if ".minilora-old-" in str(path):
                os.kill(me, signal.SIGKILL)
            real_rmtree(path, *a, **k)
        io.shutil.rmtree = rmtree


POINTS = {"between the two files": 0, "old folder moved aside": 0, "new folder in place, old not yet removed": 1}


@pytest.mark.parametrize("point", sorted(POINTS))
@pytest.mark.parametrize("kind", [ModelKind(), AdapterKind(), CheckpointKind()], ids=["model", "adapter", "checkpoint"])
def test_a_kill_at_each_step_of_a_save_leaves_the_save_it_should(tmp_path, kind, point):
    """Killed between the files or between the renames: the old save; after the swap: the new; no leftovers next time."""
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
    assert kind.loaded(folder) == 2 and not _leftovers(folder), _leftovers(folder)


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
        io.shutil.rmtree(folder, ignore_errors=True)
        child = Child(lambda log: (_logged_saves(log), training.train(GPT(CFG, seed=0), data, None, config,
                                                                      checkpoint_dir=folder)))
        child.wait_for(f"s {rng.randint(3, 10)}")
        time.sleep(rng.uniform(0, 1.5 * duration))
        child.kill()
        _count(phases, _phase(folder))
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
    """Which save a folder holds: the adapter's seed, or the merged model's weights fingerprint (fully checked loads)."""
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
    assert main(["merge", str(adapters[0]), "--out", str(out)] if merged else ["finetune", *QUICK, "--out", str(out)]) == 0
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
        _count(phases, _phase(out))
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
    """TRIALS kills of `minilora finetune --out` / `merge --out` right after the save starts: the folder loads as a save."""
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

    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_trials(ModelKind(), Path(tmp) / "m"), run_trials(AdapterKind(), Path(tmp) / "a"),
                run_training_trials(Path(tmp) / "t"), run_cli_trials(Path(tmp) / "f", "finetune"),
                run_cli_trials(Path(tmp) / "g", "merge")]
    for row in rows:
        print(row)
