"""Specification of minilora.experiments.memory: counted memory equals the formula; LoRA removes exactly
the gradients and optimizer state of the frozen weights."""
import numpy as np
import pytest

from minilora.adapters.config import LoraConfig
from minilora.data.datasets import make_dataset
from minilora.experiments import memory
from minilora.experiments.finetune import prepare
from minilora.experiments.pretrain import base_config
from minilora.experiments.train import to_backend
from minilora.nn.model import GPT


@pytest.fixture(scope="module")
def setup(tiny_base):
    data = make_dataset("rotate", 6, seed=0, block_size=tiny_base.config.block_size)
    batch = to_backend({"x": data.x.copy(), "y": data.y.copy(), "mask": data.mask.copy()})
    full = prepare(tiny_base, "full", data)
    lora = prepare(tiny_base, "lora", data, LoraConfig(r=3, target_modules=("wq", "wv")))
    return tiny_base, batch, {"full": full, "lora": lora}


def formula_activations(base, batch, lora_u=0):
    c = base.config
    B, T = batch["x"].shape
    return memory.activation_bytes(B=B, T=T, C=c.n_embd, L=c.n_layer, NH=c.n_head, V=c.vocab_size, lora_u=lora_u)


def test_counted_activations_equal_the_formula_for_full_and_lora(setup):
    """The forward caches hold exactly 20 N C + 2 N + B NH T^2 values per block (+ N r per adapter)."""
    base, batch, models = setup
    c = base.config
    for name, lora_u in (("full", 0), ("lora", c.n_layer * 2 * 3)):
        counted = memory.measure_step(models[name], batch)["activations"]
        assert counted == formula_activations(base, batch, lora_u), (name, counted, formula_activations(base, batch, lora_u))


def test_lora_keeps_weights_and_activations_and_drops_frozen_gradients_and_state(setup):
    """LoRA: frozen weights = the base, gradients 4 and AdamW state 8 bytes per trainable parameter only."""
    base, batch, models = setup
    full, lora = (memory.measure_step(models[k], batch) for k in ("full", "lora"))
    n_lora = models["lora"].num_params(trainable_only=True)
    assert full["gradients"] == 4 * base.num_params() and full["optimizer state"] == 8 * base.num_params(), full
    assert lora["frozen weights"] == 4 * base.num_params(), (lora["frozen weights"], 4 * base.num_params())
    assert lora["gradients"] == 4 * n_lora and lora["optimizer state"] == 8 * n_lora, lora
    assert lora["activations"] > full["activations"], "LoRA keeps every activation, plus its u = x A^T"


def test_estimate_reproduces_the_counted_step(setup):
    """Parameter groups + the activation formula give the counted numbers, part by part."""
    base, batch, models = setup
    n_lora = models["lora"].num_params(trainable_only=True)
    est = memory.estimate(memory.lora_groups(base.num_params(), n_lora),
                          formula_activations(base, batch, base.config.n_layer * 2 * 3))
    assert est == memory.measure_step(models["lora"], batch), est


def test_a_four_bit_frozen_group_costs_half_a_byte_per_parameter():
    """The hook for QLoRA: a frozen group at 4 bits; trainable groups get gradients and AdamW state."""
    est = memory.estimate([memory.ParamGroup("nf4 base", 1000, 4), memory.ParamGroup("lora", 10, 32, True)], 0)
    assert est == {"frozen weights": 500, "trainable weights": 40, "gradients": 40, "optimizer state": 80,
                   "activations": 0}, est


def test_traced_peak_holds_at_least_the_activations(setup):
    """tracemalloc sees the caches alive at the peak of forward + backward."""
    base, batch, models = setup
    for name, model in models.items():
        counted = memory.measure_step(model, batch)["activations"]
        peak = memory.trace_step(model, batch)
        assert counted <= peak < 10 * counted, (name, counted, peak)


def test_parameter_count_formula_matches_the_model():
    """gpt_param_count(L, C, V, T) is minilora's GPT's num_params (GPT-2's layout)."""
    c = base_config()
    assert memory.gpt_param_count(c.n_layer, c.n_embd, c.vocab_size, c.block_size) == GPT(c).num_params()


def test_extrapolated_saving_shrinks_as_activations_grow():
    """At a larger batch the activations, which LoRA keeps, weigh more: the saving falls, below 3/4."""
    small, big = (memory.extrapolate("GPT-2 Large", B=b) for b in (1, 8))
    assert 0 < big["saving"] < small["saving"] < 0.75, (small["saving"], big["saving"])
    assert small["full"]["optimizer state"] == 8 * small["params"]
    assert np.isclose(small["lora"]["frozen weights"], 4 * small["params"])
