"""Specification of resumable training (minilora.experiments.resume): a run stopped at any checkpoint and
resumed ends bit for bit where the uninterrupted run ends; a checkpoint of another run is refused.

tests/test_kill.py resumes from checkpoints of processes killed with SIGKILL; here the stop is an exception."""
import numpy as np
import pytest

from minilora.adapters.config import LoraConfig
from minilora.adapters.lora_model import LoraModel
from minilora.data.datasets import make_dataset
from minilora.experiments import resume
from minilora.experiments.train import NonFiniteLossError, TrainConfig, train
from minilora.nn.checkpoint import load_model
from minilora.nn.model import GPT, GPTConfig
from minilora.nn.optim import AdamW

TINY = GPTConfig(vocab_size=56, block_size=24, n_layer=2, n_head=2, n_embd=32)
STEPS = 14


class _Stopped(Exception):
    """Stands for the process being killed."""


class _StopAfter(AdamW):
    """AdamW that raises after ``n`` updates (a run killed mid-training)."""

    def __init__(self, n, **kw):
        super().__init__(**kw)
        self.n, self.count = n, 0

    def step(self, params, grads):
        super().step(params, grads)
        self.count += 1
        if self.count == self.n:
            raise _Stopped


def _config(**kw):
    return TrainConfig(**{**dict(steps=STEPS, batch_size=8, lr=1e-2, warmup_steps=3, eval_every=5, save_every=4,
                                 progress=False, workers=2), **kw})


def _full_model():
    return GPT(TINY, seed=0)


def _lora_model():
    model = GPT(TINY, seed=0)
    model.add_classification_head(2, seed=1)
    model.freeze()
    return LoraModel(model, LoraConfig(r=2, lora_dropout=0.1, modules_to_save=("head",), seed=5))


CASES = {"full, 2 worker threads": (_full_model, "copy"),
         "LoRA with dropout, classification": (_lora_model, "palindrome")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_resumed_run_ends_bit_identical_to_the_uninterrupted_run(tmp_path, case):
    """Stopped after 10 updates (last checkpoint at 8), resumed in a fresh model: same weights, losses, evals."""
    make, task = CASES[case]
    data = make_dataset(task, 200, seed=0, block_size=24)
    whole = make()
    reference = train(whole, data, data, _config())
    stopped = make()
    with pytest.raises(_Stopped):
        train(stopped, data, data, _config(), optimizer=_StopAfter(10, lr=1e-2, weight_decay=0.01),
              checkpoint_dir=tmp_path / "ck")
    fresh = make()
    resumed = train(fresh, data, data, _config(), checkpoint_dir=tmp_path / "ck", resume_from=tmp_path / "ck")
    assert resumed.losses == reference.losses, \
        f"losses differ from step {_first_difference(resumed.losses, reference.losses)}"
    assert resumed.evals == reference.evals, f"evals differ: {resumed.evals} vs {reference.evals}"
    different = [k for k in whole.params if not np.array_equal(whole.params[k], fresh.params[k])]
    assert not different, f"{len(different)} parameters differ after resuming, e.g. {different[:2]}"


def _first_difference(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_a_checkpoint_folder_also_loads_as_a_plain_model(tmp_path):
    """A full run's checkpoint is a model folder: load_model reads the weights at the checkpoint's step."""
    model = _full_model()
    train(model, make_dataset("copy", 100, seed=0, block_size=24), None, _config(), checkpoint_dir=tmp_path / "ck")
    loaded, _ = load_model(tmp_path / "ck")
    assert all(np.array_equal(loaded.params[k], v) for k, v in model.params.items()), "weights differ"


@pytest.mark.parametrize("change", ["lr", "data", "base"])
def test_resuming_another_run_is_refused(tmp_path, change):
    """Another learning rate, other training data or another base: a ValueError naming what differs."""
    data = make_dataset("copy", 100, seed=0, block_size=24)
    train(_full_model(), data, None, _config(), checkpoint_dir=tmp_path / "ck")
    config, model = _config(), _full_model()
    if change == "lr":
        config = _config(lr=2e-2)
    elif change == "data":
        data = make_dataset("copy", 100, seed=1, block_size=24)
    else:
        model = LoraModel(GPT(TINY, seed=9), LoraConfig(r=2))
    with pytest.raises(ValueError, match={"lr": "lr", "data": "training data", "base": "another run"}[change]):
        train(model, data, None, config, resume_from=tmp_path / "ck")


def test_no_checkpoint_is_written_from_nan_weights(tmp_path):
    """Weights poisoned by the update before a save: that save is refused and the error names the previous one."""
    class PoisonAfter(AdamW):
        def step(self, params, grads):
            super().step(params, grads)
            self.count = getattr(self, "count", 0) + 1
            if self.count == 8:                                      # the update right before the save at step 8
                params["ln_f.weight"][0] = np.nan
    data = make_dataset("copy", 100, seed=0, block_size=24)
    with pytest.raises(NonFiniteLossError, match=r"not saved, and the last good checkpoint is .*\(step 4\)"):
        train(_full_model(), data, None, _config(), optimizer=PoisonAfter(lr=1e-3), checkpoint_dir=tmp_path / "ck")
    model, _ = load_model(tmp_path / "ck")
    state, _ = resume.read_state(tmp_path / "ck")
    assert state["step"] == 4 and all(np.isfinite(v).all() for v in model.params.values()), state["step"]


def test_a_folder_that_cannot_hold_the_checkpoint_is_refused_before_training(tmp_path):
    """A checkpoint_dir holding other files is refused before the first step, not after minutes of work."""
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "notes.txt").write_text("mine")
    model = _full_model()
    before = model.params["wte.weight"].copy()
    with pytest.raises(FileExistsError, match="notes.txt"):
        train(model, make_dataset("copy", 100, seed=0, block_size=24), None, _config(), checkpoint_dir=tmp_path / "ck")
    assert np.array_equal(model.params["wte.weight"], before), "training ran before the folder was checked"
