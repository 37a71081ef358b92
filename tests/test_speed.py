"""Specification of minilora.experiments.speed: the FLOP bound of a LoRA step and interleaved timing."""
import math

from minilora.data.datasets import make_dataset
from minilora.experiments import speed
from minilora.experiments.finetune import prepare
from minilora.experiments.pretrain import base_config
from minilora.experiments.train import to_backend


def test_full_step_is_three_forward_passes_of_matrix_products():
    """Forward, input gradient and weight gradient cost one forward pass each."""
    c = base_config()
    f = speed.train_step_flops(c, 32, 24)
    assert f["train_step"] == 3 * (f["linear"] + f["attention"]), f
    assert f["linear"] == 2 * 32 * 24 * (c.n_layer * 12 * c.n_embd ** 2 + c.vocab_size * c.n_embd)


def test_lora_step_skips_exactly_the_frozen_weight_gradients():
    """LoRA = 2 linear + 3 attention + 3 adapters; without adapters and attention the bound is 2/3."""
    c = base_config()
    full = speed.train_step_flops(c, 32, 24)
    lora = speed.train_step_flops(c, 32, 24, lora_r=8, lora_targets=2)
    adapters = 2 * 32 * 24 * c.n_layer * 2 * 2 * 8 * c.n_embd
    assert lora["train_step"] == 2 * full["linear"] + 3 * full["attention"] + 3 * adapters, lora
    assert 2 / 3 < lora["train_step"] / full["train_step"] < 0.75


def test_interleaved_timing_gives_one_time_per_round_for_every_model(tiny_base):
    """time_steps returns ``rounds`` positive times per model; step_ratio reads their ratio."""
    data = make_dataset("rotate", 4, seed=0, block_size=24)
    batch = to_backend({"x": data.x, "y": data.y, "mask": data.mask})
    models = {"full": prepare(tiny_base, "full", data), "lora": prepare(tiny_base, "lora", data)}
    times = speed.time_steps(models, batch, rounds=3, warmup=1)
    assert {k: len(v) for k, v in times.items()} == {"full": 3, "lora": 3}
    assert all(t > 0 for v in times.values() for t in v)
    r = speed.step_ratio(times, "lora", "full")
    assert r["ratio_q25"] <= r["ratio"] <= r["ratio_q75"] and math.isfinite(r["lora_ms"]), r
