"""Spec: where the memory of a training step goes (minilora.experiments.footprint, footprint_report).

Expected values: the arrays of a real step (counted), the QLoRA paper's figures for a 65B model
(> 780 GB for 16-bit full fine-tuning, < 48 GB with QLoRA), and arithmetic from the definitions.
"""
import numpy as np
import pytest

from minilora.experiments.footprint import METHODS, PARTS, Shape, build, estimate, lm_batch, measure_step
from minilora.experiments.footprint_report import (PAPER_SETTING, SHAPES, extrapolate, measured_report,
                                                   offload_cost, with_setting)
from minilora.nn.model import GPT, GPTConfig

SMALL = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("targets", [("wq", "wv"), ("wo", "fc"), ("proj",), ("wq", "wk", "wv", "wo", "fc", "proj")])
def test_the_formula_equals_the_bytes_of_a_real_step(method, targets):
    """Every part of ``estimate`` equals the bytes counted on one training step, for any adapted layers."""
    base = GPT(SMALL, seed=0)
    measured = measure_step(build(method, base, r=4, targets=targets), lm_batch(SMALL, 3, 6))
    formula = estimate(Shape.of(SMALL), method, B=3, T=6, r=4, targets=targets)
    assert measured == formula, f"{method} {targets}: " + str({p: (measured[p], formula[p]) for p in PARTS
                                                                if measured[p] != formula[p]})


def test_lora_and_qlora_keep_no_gradient_or_optimizer_state_for_frozen_weights():
    """Measured: LoRA and QLoRA hold gradients and AdamW state for A and B only; QLoRA's frozen bytes are 4-bit."""
    rows = {r["method"]: r for r in measured_report(GPT(SMALL, seed=0), B=3, T=6, r=4)}
    n_adapter = 2 * SMALL.n_layer * 4 * (16 + 16)                # r (d_in + d_out) for wq and wv per block
    for method in ("lora", "qlora"):
        assert rows[method]["gradients"] == 4 * n_adapter, f"{method}: {rows[method]['gradients']} gradient bytes"
        assert rows[method]["optimizer state"] == 8 * n_adapter, f"{method}: {rows[method]['optimizer state']} B"
    assert rows["qlora"]["frozen weights"] < rows["lora"]["frozen weights"], "QLoRA's base is not smaller"
    assert rows["full"]["frozen weights"] == 0 and all(r["matches"] for r in rows.values()), "formula mismatch"


def test_dora_adds_its_magnitudes_and_one_output_per_row_and_keeps_no_weight_copy():
    """Measured: DoRA = LoRA + m (d_out per matrix, with its gradient and AdamW state) + x V^T, ||V||, m / ||V||
    per row; QDoRA keeps QLoRA's 4-bit frozen bytes (no float V or W0 appears in its activations)."""
    rows = {r["method"]: r for r in measured_report(GPT(SMALL, seed=0), B=3, T=6, r=4)}
    n_rows, N = 2 * SMALL.n_layer * 16, 3 * 6                 # d_out = 16 for wq and wv in each block; N = B T
    expected = {"trainable weights": 4 * n_rows, "gradients": 4 * n_rows, "optimizer state": 8 * n_rows,
                "activations": 4 * (N + 2) * n_rows, "frozen weights": 0}
    for dora, lora in (("dora", "lora"), ("qdora", "qlora")):
        received = {p: rows[dora][p] - rows[lora][p] for p in PARTS}
        assert received == expected, f"{dora} - {lora}: expected {expected}, received {received}"


def test_shares_of_each_row_add_up_to_one():
    """Each report row's shares sum to 1 and its total is the sum of its parts."""
    for row in extrapolate(SHAPES["7B"]):
        assert sum(row["shares"].values()) == pytest.approx(1.0), f"{row['method']}: {row['shares']}"
        assert row["total"] == sum(row[p] for p in PARTS), f"{row['method']}: total {row['total']}"


def test_65b_full_fine_tuning_in_16_bits_needs_about_780_gb():
    """QLoRA §1: 16-bit full fine-tuning of a 65B model takes > 780 GB (2 + 2 + 8 bytes per weight)."""
    full = next(r for r in extrapolate(SHAPES["65B"]) if r["method"] == "full")
    weights = full["trainable weights"] + full["gradients"] + full["optimizer state"]
    assert weights == 12 * SHAPES["65B"].params(), f"{weights} bytes for {SHAPES['65B'].params()} weights"
    assert 770e9 < full["total"] < 790e9, f"total {full['total'] / 1e9:.1f} GB"


def test_65b_qlora_and_qdora_fit_in_48_gb_and_16_bit_lora_does_not():
    """QLoRA's claim in the paper's setting: < 48 GB on the 4-bit base (QDoRA too); LoRA on a 16-bit base > 130 GB."""
    rows = {r["method"]: r for r in extrapolate(SHAPES["65B"], PAPER_SETTING)}
    assert rows["qlora"]["total"] < 48e9, f"QLoRA needs {rows['qlora']['total'] / 1e9:.1f} GB"
    assert rows["qlora"]["total"] < rows["qdora"]["total"] < 48e9, f"QDoRA needs {rows['qdora']['total'] / 1e9:.1f} GB"
    assert rows["lora"]["total"] > 130e9, f"LoRA needs {rows['lora']['total'] / 1e9:.1f} GB"
    ratio = rows["lora"]["frozen weights"] / rows["qlora"]["frozen weights"]
    assert 3.5 < ratio < 3.9, f"16-bit / 4-bit frozen bytes {ratio:.2f} (16 / 4.127 = 3.88, less the 16-bit embeddings)"


def test_changing_an_assumption_changes_only_its_part():
    """with_setting(adapter_bits=32) doubles the adapters' weights and gradients and leaves the rest."""
    base = {r["method"]: r for r in extrapolate(SHAPES["7B"])}
    wider = {r["method"]: r for r in extrapolate(SHAPES["7B"], with_setting(adapter_bits=32))}
    q, w = base["qlora"], wider["qlora"]
    assert w["trainable weights"] == 2 * q["trainable weights"] and w["gradients"] == 2 * q["gradients"]
    assert all(w[p] == q[p] for p in ("frozen weights", "optimizer state", "activations")), "other parts moved"


def test_offloading_reads_every_frozen_weight_twice_over_the_bus():
    """Offloaded weights cross the bus for the forward and the backward product: 2 x bytes / bandwidth."""
    cost = offload_cost(10 * 10**9, bus_gb_s=25.0, device_gb_s=2000.0)
    assert cost["bytes_per_step"] == 20 * 10**9, f"got {cost['bytes_per_step']}"
    assert cost["bus_seconds"] == pytest.approx(0.8) and cost["device_seconds"] == pytest.approx(0.01), f"got {cost}"


def test_an_unknown_method_is_refused():
    """build names the methods it knows."""
    with pytest.raises(ValueError, match="unknown method"):
        build("bitfit", GPT(SMALL, seed=0))


def test_checkpointing_keeps_one_block_and_every_block_input():
    """With checkpointing the activations are L N C (block inputs) + one block + the head, far below all blocks."""
    shape, B, T = Shape(L=8, C=64, NH=4, V=50, T_max=32), 2, 32
    full = estimate(shape, "lora", B=B, T=T)["activations"]
    ckpt = estimate(shape, "lora", B=B, T=T, checkpointing=True)["activations"]
    one_block = (full - estimate(Shape(L=7, C=64, NH=4, V=50, T_max=32), "lora", B=B, T=T)["activations"])
    assert ckpt == full - 7 * one_block + 4 * 8 * B * T * 64, f"checkpointed {ckpt}, full {full}"
    assert np.isfinite(ckpt) and ckpt < full / 3, f"checkpointing saved too little: {ckpt} vs {full}"
