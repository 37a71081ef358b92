"""Spec: the LoRA / QLoRA / QDoRA / full comparison (minilora.experiments.qlora_compare) and finetune's "qlora" method.

Expected values: the definitions (mean, sample sd, paired differences), and the 4-bit storage count.
"""
import numpy as np
import pytest

from minilora.experiments import qlora_compare
from minilora.experiments.finetune import prepare
from minilora.adapters.lora_model import LoraModel
from minilora.data.datasets import make_splits


def test_finetune_prepares_qlora_as_lora_on_a_4bit_copy(tiny_base):
    """prepare(base, "qlora") is a LoraModel whose block linears are 4-bit; the caller's base stays float."""
    data, _ = make_splits("shift", 16, 8, seed=0, block_size=tiny_base.config.block_size)
    model = prepare(tiny_base, "qlora", data)
    assert isinstance(model, LoraModel) and model.model.weight_parts, "not LoRA on a 4-bit base"
    assert not tiny_base.weight_parts and "blocks.0.attn.wq.weight" in tiny_base.params, "the base was quantized"


def test_a_tiny_comparison_trains_every_method_and_reports_4bit_bytes(tiny_base):
    """Two seeds, three steps: one row per run; 4-bit block weights (QLoRA's, QDoRA's) take ~7.8 x fewer bytes."""
    rows = qlora_compare.run_comparison(("shift",), (0, 1), base=tiny_base, steps=3, n_train=64, n_test=16,
                                        log=lambda *_: None)
    assert [(r["method"], r["seed"]) for r in rows] == [(m, s) for s in (0, 1) for m in qlora_compare.METHODS]
    q = next(r for r in rows if r["method"] == "qlora")
    f = next(r for r in rows if r["method"] == "lora")
    ratio = f["block_weight_bytes"] / q["block_weight_bytes"]
    assert ratio > 6.5, f"float32 / 4-bit block bytes {ratio:.2f}"
    qd = next(r for r in rows if r["method"] == "qdora")
    assert qd["block_weight_bytes"] == q["block_weight_bytes"], f"QDoRA {qd['block_weight_bytes']} B vs QLoRA's"
    assert 0.0 <= qd["merged_4bit_accuracy"] <= 1.0, "QDoRA runs report the merge drift as QLoRA's do"


def test_summary_gives_mean_sd_and_paired_differences():
    """Mean and sample sd over seeds; the difference to LoRA is taken seed by seed (+5 points on every seed: higher)."""
    rows = [{"task": "t", "method": m, "seed": s, "accuracy": a, "ms_per_step": 1.0, "n_test": 500,
             "block_weight_bytes": 1, "base_bytes": 1}
            for m, accs in (("lora", (0.90, 0.80, 0.70)), ("qlora", (0.95, 0.85, 0.75))) for s, a in enumerate(accs)]
    summary = {r["method"]: r for r in qlora_compare.summarize(rows)}
    assert summary["lora"]["mean"] == pytest.approx(0.8) and summary["lora"]["sd"] == pytest.approx(0.1)
    assert summary["qlora"]["diff_vs_reference"] == pytest.approx(0.05), summary["qlora"]
    assert summary["qlora"]["diff_sd"] == pytest.approx(0.0, abs=1e-12) and summary["qlora"]["verdict"] == "higher"


def test_a_difference_inside_the_seed_spread_is_within_noise():
    """Paired differences of +2, -3 and +1 points: their mean is inside 2 standard errors."""
    rows = [{"task": "t", "method": m, "seed": s, "accuracy": a, "ms_per_step": 1.0, "n_test": 500,
             "block_weight_bytes": 1, "base_bytes": 1}
            for m, accs in (("lora", (0.80, 0.80, 0.80)), ("qlora", (0.82, 0.77, 0.81))) for s, a in enumerate(accs)]
    verdict = {r["method"]: r.get("verdict") for r in qlora_compare.summarize(rows)}
    assert verdict["qlora"] == "within noise", verdict


def test_results_round_trip_through_json(tmp_path):
    """save then load gives the rows, the settings and the summary back."""
    rows = [{"task": "t", "method": "lora", "seed": 0, "accuracy": 0.5, "ms_per_step": 2.0, "n_test": 10,
             "block_weight_bytes": 4, "base_bytes": 8}]
    qlora_compare.save(tmp_path / "c.json", rows, {"steps": 3})
    back = qlora_compare.load(tmp_path / "c.json")
    assert back["rows"] == rows and back["settings"] == {"steps": 3} and back["summary"][0]["mean"] == 0.5
    assert np.isfinite(back["summary"][0]["sd"])
