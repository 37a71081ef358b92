"""Specification of fine-tuning: LoRA and full fine-tuning through one loop, and what each costs."""
import numpy as np
import pytest

from minilora.data.datasets import make_dataset
from minilora.experiments.finetune import finetune, prepare
from minilora.adapters.config import LoraConfig
from minilora.adapters.lora_model import LoraModel
from minilora.nn.model import GPT
from minilora.experiments.pretrain import base_config
from minilora.experiments.train import TrainConfig

BASE = base_config()          # the shipped base's shape: 4 blocks, d = 128 (weights random here)


def short(steps=2):
    return TrainConfig(steps=steps, batch_size=8, warmup_steps=1, eval_every=steps, progress=False)


@pytest.fixture(scope="module")
def costs():
    """One LoRA and one full run of two steps each on the same small base."""
    base = GPT(BASE, seed=0)
    base.freeze()
    lora = finetune("shift", "lora", base=base, lora_config=LoraConfig(r=4, target_modules=["wq", "wv"]),
                    train_config=short(), n_train=64, n_test=16, progress=False)
    full = finetune("shift", "full", base=base, train_config=short(), n_train=64, n_test=16, progress=False)
    return base, lora, full


def test_lora_trains_exactly_2_Lhat_d_r_parameters(costs):
    """r = 4 on Wq, Wv of 4 blocks with d = 128: 2 * 8 * 128 * 4 = 8,192 trainable parameters."""
    _, lora, full = costs
    assert lora.trainable_params == 2 * 8 * 128 * 4
    assert full.trainable_params == GPT(BASE).num_params()


def test_lora_optimizer_state_is_two_floats_per_trainable_parameter(costs):
    """AdamW keeps m and v (float32) for A and B only: 8 bytes per trainable parameter."""
    _, lora, full = costs
    assert lora.optimizer_bytes == 8 * lora.trainable_params
    assert full.optimizer_bytes == 8 * full.trainable_params


def test_adapter_file_is_at_least_50x_smaller_than_the_full_checkpoint(costs):
    """Saving A and B only: the file shrinks with the parameter count (§4.1: 350 GB -> 35 MB on GPT-3)."""
    _, lora, full = costs
    assert full.file_bytes / lora.file_bytes >= 50, (full.file_bytes, lora.file_bytes)


def test_finetuning_never_changes_the_callers_base(costs):
    """Both methods train a copy: the base passed in is bit-identical afterwards."""
    base, _, _ = costs
    fresh = GPT(BASE, seed=0)
    assert all(np.array_equal(base.params[k], fresh.params[k]) for k in fresh.params)


def test_classification_lora_trains_a_new_head_fully():
    """For a classification task the head is in modules_to_save: trainable next to A and B."""
    data = make_dataset("palindrome", 8, seed=0, block_size=24)
    model = prepare(GPT(BASE), "lora", data)
    assert isinstance(model, LoraModel) and {model.param_name("head.weight"), model.param_name("head.bias")} <= model.trainable


def test_classification_without_head_in_modules_to_save_is_an_error():
    """A LoRA config for a classification task must save the new head, or it would never train."""
    data = make_dataset("palindrome", 8, seed=0, block_size=24)
    with pytest.raises(ValueError, match="modules_to_save"):
        prepare(GPT(BASE), "lora", data, LoraConfig(r=2))


def test_dora_methods_build_dora_layers_and_qdora_on_a_4bit_base():
    """'dora' is LoRA's recipe with use_dora=True; 'qdora' the same on 4-bit block linears (the head stays float)."""
    data = make_dataset("shift", 8, seed=0, block_size=24)
    dora, qdora = prepare(GPT(BASE), "dora", data), prepare(GPT(BASE), "qdora", data)
    kinds = {m: {s.kind for s in lm.model.linears.values()} for m, lm in (("dora", dora), ("qdora", qdora))}
    assert kinds == {"dora": {"dora", "linear"}, "qdora": {"dora", "qlinear", "linear"}}, f"layer kinds {kinds}"


def test_a_dora_method_with_a_config_that_is_not_dora_is_an_error():
    """method='qdora' with LoraConfig(use_dora=False) contradicts itself: refused, not silently changed."""
    with pytest.raises(ValueError, match="use_dora=False"):
        prepare(GPT(BASE), "qdora", make_dataset("shift", 8, seed=0, block_size=24), LoraConfig(r=2))


def test_unknown_method_is_an_error():
    """Only 'lora', 'full', 'qlora', 'dora' and 'qdora' exist."""
    with pytest.raises(ValueError, match="unknown method 'bitfit'"):
        prepare(GPT(BASE), "bitfit", make_dataset("shift", 8, seed=0, block_size=24))
