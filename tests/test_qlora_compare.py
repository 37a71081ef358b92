"""Spec: the LoRA / QLoRA / QDoRA / full comparison (minilora.experiments.qlora_compare) on the one runner,
and finetune's "qlora" method.

Expected values: the definitions (mean, sample sd, the stats rules), and the 4-bit storage count.
"""
import pytest

from minilora.adapters.lora_model import LoraModel
from minilora.data.datasets import make_splits
from minilora.experiments import qlora_compare, stats
from minilora.experiments.finetune import SWEPT_LR, prepare
from minilora.experiments.results import Results, RunResult
from minilora.experiments.runner import Budget

TINY = Budget(steps=3, batch_size=8, warmup_steps=1, n_train=64, n_test=16)
ALL = qlora_compare.METHODS


def test_finetune_prepares_qlora_as_lora_on_a_4bit_copy(tiny_base):
    """prepare(base, "qlora") is a LoraModel whose block linears are 4-bit; the caller's base stays float."""
    data, _ = make_splits("shift", 16, 8, seed=0, block_size=tiny_base.config.block_size)
    model = prepare(tiny_base, "qlora", data)
    assert isinstance(model, LoraModel) and model.model.weight_parts, "not LoRA on a 4-bit base"
    assert not tiny_base.weight_parts and "blocks.0.attn.wq.weight" in tiny_base.params, "the base was quantized"


def test_the_methods_are_one_lora_recipe_on_a_float_or_a_4bit_base():
    """qlora/qdora are kind "qlora" with lora's/dora's LoraConfig and rate, and measure the merge drift."""
    m = {x.name: x for x in qlora_compare.qlora_methods()}
    assert [x.kind for x in m.values()] == ["full", "lora", "qlora", "lora", "qlora"], [x.kind for x in m.values()]
    assert m["qlora"].config == m["lora"].config and m["qdora"].config == m["dora"].config
    assert m["dora"].config.use_dora and not m["lora"].config.use_dora
    assert m["qlora"].measures == m["qdora"].measures == ("merge_drift",) and m["lora"].measures == ()
    for task, lr in SWEPT_LR["lora"].items():
        assert m["qlora"].lr_for(task) == m["qdora"].lr_for(task) == lr, (task, m["qlora"].lr)
    assert m["full"].lr_for("ordered") == SWEPT_LR["full"]["ordered"]
    with pytest.raises(ValueError, match="unknown methods"):
        qlora_compare.qlora_methods(("lora", "q8lora"))


def test_a_tiny_comparison_trains_every_method_and_reports_4bit_bytes_and_merge_drift(tiny_base):
    """Two seeds, three steps: one run per (method, seed); the 4-bit block weights take ~7.8 x fewer bytes;
    the 4-bit runs carry the merge drift."""
    res = qlora_compare.run_comparison(("shift",), (0, 1), ALL, base=tiny_base, budget=TINY,
                                       log=None)
    assert sorted((r.method, r.seed) for r in res.runs) == sorted((m, s) for s in (0, 1) for m in ALL)
    drift = res.select("shift", "qlora")[0].extra["merge_drift"]
    assert 0.0 <= drift["merged_4bit_accuracy"] <= 1.0 and 0.0 <= drift["update_kept_fraction"] <= 1.0, drift
    assert res.select("shift", "lora")[0].extra == {}, "float-base runs have no merge drift"
    nbytes = qlora_compare.storage(tiny_base, qlora_compare.qlora_methods(ALL))
    ratio = nbytes["lora"]["block_weight_bytes"] / nbytes["qlora"]["block_weight_bytes"]
    assert ratio > 6.5, f"float32 / 4-bit block bytes {ratio:.2f}"
    assert "| shift | qlora |" in qlora_compare.table(res, nbytes) and "| shift | qlora |" in qlora_compare.drift_table(res)


def run(method, seed, acc, task="double", ms=1.0):
    return RunResult(task=task, method=method, seed=seed, accuracy=acc, loss=0.0, trainable=10, ms_per_step=ms,
                     seconds=1.0, steps=1, n_train=1)


def test_the_4bit_methods_are_judged_against_the_same_method_on_the_float_base():
    """QLoRA 0.5 points below LoRA with sds 0.1 points: about as good (held); QDoRA 10 points below DoRA: did not hold."""
    runs = [run("lora", s, a) for s, a in enumerate((0.900, 0.901, 0.899))]
    runs += [run("qlora", s, a) for s, a in enumerate((0.895, 0.896, 0.894))]
    runs += [run("dora", s, a) for s, a in enumerate((0.90, 0.91, 0.89))]
    runs += [run("qdora", s, a) for s, a in enumerate((0.80, 0.81, 0.79))]
    rows = {r["method"]: r for r in qlora_compare.summary_rows(Results(runs))}
    assert rows["qlora"]["vs"] == "lora" and rows["qlora"]["verdict"].verdict == stats.HELD, rows["qlora"]["verdict"]
    assert rows["qdora"]["verdict"].verdict == stats.NOT_HELD, rows["qdora"]["verdict"]
    assert rows["lora"]["verdict"] is None and rows["dora"]["verdict"] is None
    assert rows["qlora"]["accuracy"].mean == pytest.approx(0.895) and rows["qlora"]["accuracy"].sd == pytest.approx(0.001)


def test_a_difference_inside_the_seed_spread_is_within_noise_and_chance_is_not_judged():
    """Seeds 2 and 3 points apart around a 1-point gap: within noise; LoRA at 0% on every seed: not judged."""
    runs = [run("lora", s, a) for s, a in enumerate((0.80, 0.84, 0.76))]
    runs += [run("qlora", s, a) for s, a in enumerate((0.82, 0.77, 0.78))]
    runs += [run("lora", s, 0.0, task="rotate") for s in range(3)] + [run("qlora", s, 0.3, task="rotate") for s in range(3)]
    rows = {(r["task"], r["method"]): r for r in qlora_compare.summary_rows(Results(runs))}
    assert rows["double", "qlora"]["verdict"].verdict == stats.NOISE, rows["double", "qlora"]["verdict"]
    assert rows["rotate", "qlora"]["verdict"].startswith("not judged"), rows["rotate", "qlora"]["verdict"]
