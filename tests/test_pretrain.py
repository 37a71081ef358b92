"""Specification of the shipped base model and of pretraining."""
import pytest

from minilora.data.tasks import PRETRAIN_TASKS
from minilora.io import dir_size, fingerprint, read_json
from minilora.nn.model import GPT
from minilora.experiments.pretrain import SHIPPED_BASE, PretrainConfig, base_config, load_base, pretrain, task_accuracy
from minilora.experiments.train import TrainConfig


def test_shipped_base_checkpoint_is_well_under_5_mb():
    """The package ships the base as safetensors + JSON, under 5 MB together."""
    assert dir_size(SHIPPED_BASE) < 5 * 1024 ** 2, dir_size(SHIPPED_BASE)


def test_shipped_base_loads_frozen_with_its_tokenizer():
    """load_base returns the documented architecture, every weight frozen, and the task tokenizer."""
    model, tok = load_base()
    assert model.config == base_config(tok.vocab_size) and not model.trainable
    assert tok.decode(tok.encode("rev:abc=cba.")) == "rev:abc=cba."


@pytest.mark.parametrize("dtype", ["float16", "int32"])
def test_the_base_loads_only_as_float32_or_float64(dtype):
    """load_base(dtype=float16) would round the weights and int32 truncate them: both are refused up front."""
    with pytest.raises(ValueError, match="float32 or float64"):
        load_base(dtype=dtype)


@pytest.mark.slow
def test_shipped_base_solves_its_pretraining_tasks():
    """>= 99% exact match on fresh examples of copy, reverse and sort (seeds unseen in pretraining)."""
    model, _ = load_base()
    accuracy = task_accuracy(model, seed=123_456, n=400)
    assert all(a >= 0.99 for a in accuracy.values()), accuracy


def test_shipped_base_has_not_seen_the_downstream_tasks():
    """Before adaptation the base solves (almost) none of shift and rotate: LoRA has work to do."""
    model, _ = load_base()
    accuracy = task_accuracy(model, ("shift", "rotate"), seed=7, n=100)
    assert all(a < 0.2 for a in accuracy.values()), accuracy


def test_shipped_base_config_records_how_it_was_made():
    """config.json names the pretraining tasks and the accuracy measured when it was saved."""
    extra = read_json(SHIPPED_BASE / "config.json")["extra"]
    assert extra["pretrain_tasks"] == list(PRETRAIN_TASKS) and set(extra["accuracy"]) == set(PRETRAIN_TASKS)


def test_pretraining_is_deterministic_in_its_seed(tmp_path):
    """Two pretraining runs with one seed save identical weights (a few steps of a small run)."""
    cfg = lambda: PretrainConfig(n_train=200, n_eval=20, train=TrainConfig(steps=3, batch_size=8, warmup_steps=1,
                                                                         eval_every=3, progress=False))
    prints = []
    for run in ("a", "b"):
        model, _, _ = pretrain(cfg(), out_dir=tmp_path / run, progress=False)
        prints.append(fingerprint(model.params))
    assert prints[0] == prints[1]
    assert isinstance(model, GPT) and (tmp_path / "a" / "model.safetensors").exists()


def test_base_info_reports_the_recipe_that_made_the_shipped_base():
    """base_info() returns config.json's record: the pretraining tasks and the training settings."""
    from minilora.experiments.pretrain import base_info

    info = base_info()
    assert info["pretrain_tasks"] == list(PRETRAIN_TASKS) and info["pretrain"]["train"]["steps"] > 0
