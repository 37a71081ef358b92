"""The experiments of minilora.experiments.rank_choice on the tiny GPT of the sweep specs (2 layers, C = 16, built
in helpers), a few steps each: the exact facts (which factor moves first) and the bookkeeping
(recommendations, errors), not the accuracies."""
import numpy as np
import pytest

from minilora.experiments import rank_choice, sweeps
from minilora.data.datasets import make_splits
from minilora.adapters.config import LoraConfig

from helpers import SWEEP_C, SWEEP_L

L, C = SWEEP_L, SWEEP_C        # the tiny base of conftest.py's tiny_base and lab fixtures


def hand_made_sweep():
    return {"task": "shift", "ranks": [1, 2, 4, 8, 16], "target_sets": [["wq"], ["wq", "wv"]],
            "accuracy": [[0.50, 0.60, 0.70, 0.72, 0.71], [0.80, 0.905, 0.91, 0.912, 0.90]]}


# --------------------------------------------------------------------------- §4.1: which factor moves first
@pytest.mark.parametrize("init, std", [("gaussian", None), ("gaussian", 0.02), ("peft_gaussian", None),
                                       ("kaiming", None)])
def test_only_B_moves_at_step_0_when_A_is_random_and_B_zero(tiny_base, init, std):
    """B = 0: dA = s (dh B)^T x is exactly 0 while dB is not."""
    data = make_splits("shift", 16, 8, seed=0, block_size=24)[0]
    facts = rank_choice.step0_gradients(tiny_base, data, LoraConfig(r=4, init_lora_weights=init, init_std=std),
                                        batch_size=8)
    assert facts["max_abs_dA"] == 0.0, f"expected dA exactly 0, got max abs {facts['max_abs_dA']}"
    assert facts["max_abs_dB"] > 0.0, f"expected a non-zero dB, got max abs {facts['max_abs_dB']}"


def test_reversed_init_moves_A_first_and_B_not_at_all(tiny_base):
    """A = 0, B random: u = x A^T = 0, so dB = 0 exactly and only A gets a gradient."""
    data = make_splits("shift", 16, 8, seed=0, block_size=24)[0]
    facts = rank_choice.step0_gradients(tiny_base, data, LoraConfig(r=4, init_lora_weights="reversed"), batch_size=8)
    assert facts["max_abs_dB"] == 0.0, f"expected dB exactly 0, got max abs {facts['max_abs_dB']}"
    assert facts["max_abs_dA"] > 0.0, f"expected a non-zero dA, got max abs {facts['max_abs_dA']}"


def test_zero_init_never_trains_and_keeps_the_base_loss(lab):
    """A = B = 0: all gradients are 0 at step 0, A and B are still exactly 0 after training, and the
    test loss equals the loss before training bit for bit."""
    (row,) = rank_choice.init_ablation(lab, r=2, variants=[("both zero", "zeros", None)])
    assert row["max_abs_dA"] == 0.0 and row["max_abs_dB"] == 0.0, f"step-0 gradients: {row}"
    assert row["stayed_zero"], "A and B moved away from 0"
    assert row["loss"] == row["loss_at_init"], f"expected loss {row['loss_at_init']}, got {row['loss']}"


def test_init_ablation_reports_the_step_0_facts_of_every_variant(lab):
    """gaussian (both sigmas) and kaiming move B first, reversed moves A first, zeros moves nothing."""
    rows = {r["init"]: r for r in rank_choice.init_ablation(lab, r=2, variants=[v for v in sweeps.INIT_VARIANTS
                                                                               if v[2] is None])}
    moves = {k: (r["A_moves"], r["B_moves"]) for k, r in rows.items()}
    expected = {"gaussian": (False, True), "peft_gaussian": (False, True), "kaiming": (False, True),
                "reversed": (True, False), "zeros": (False, False)}
    assert moves == expected, f"(A moves, B moves): expected {expected}, got {moves}"


# --------------------------------------------------------------------------- recommending a rank
def test_recommend_rank_picks_the_smallest_r_within_tolerance_of_the_best():
    """Best 0.912 at r = 8; r = 2 (0.905) is the smallest within 0.01, so both wq and wv get r = 2."""
    recs = rank_choice.recommend_rank("shift", sweep=hand_made_sweep(), targets=("wq", "wv"), tolerance=0.01)
    got = {r.target: (r.r, r.best_r, r.basis) for r in recs}
    assert got == {"wq": (2, 8, "sweep"), "wv": (2, 8, "sweep")}, f"got {got}"
    text = rank_choice.format_recommendation(recs)
    assert "wq: r = 2" in text and "91.2% at r=8" in text, f"unexpected text:\n{text}"


def test_recommend_rank_uses_the_target_alone_row_and_a_plain_mapping():
    """targets=("wq",) reads the wq row (best 0.72 at r = 8, r = 4 within 0.03); {r: acc} works too."""
    (rec,) = rank_choice.recommend_rank("shift", sweep=hand_made_sweep(), targets=("wq",), tolerance=0.03)
    assert rec.r == 4, f"expected r = 4, got {rec.r}"
    (rec,) = rank_choice.recommend_rank("shift", sweep={1: 0.2, 4: 0.5, 16: 0.5}, targets=("wv",), tolerance=0.0)
    assert rec.r == 4, f"ties: expected the smaller r = 4, got {rec.r}"


def test_recommend_rank_from_full_finetuning_energy_alone():
    """No sweep: the largest per-layer 90% energy rank (9 + 4 >= 0.9 * 14 gives 2; flat gives 5) rounded up to a power of two, 8."""
    spectra = {"rows": [{"module": "blocks.0.attn.wq", "layer": 0, "s": np.array([3.0, 2, 1, 1e-3, 0])},
                        {"module": "blocks.1.attn.wq", "layer": 1, "s": np.ones(5)}]}
    (rec,) = rank_choice.recommend_rank("shift", full_ft_result=spectra, targets=("wq",), energy=0.9)
    assert (rec.r, rec.basis, rec.energy_ranks) == (8, "energy", [2, 5]), f"got {rec}"


def test_recommend_rank_rejects_mismatched_task_and_missing_evidence():
    """A sweep of another task, an unknown target and a target without evidence raise ValueError."""
    with pytest.raises(ValueError, match="'shift', not 'rotate'"):
        rank_choice.recommend_rank("rotate", sweep=hand_made_sweep())
    with pytest.raises(ValueError, match="unknown targets"):
        rank_choice.recommend_rank("shift", sweep=hand_made_sweep(), targets=("wz",))
    with pytest.raises(ValueError, match="no evidence for target 'wo'"):
        rank_choice.recommend_rank("shift", sweep=hand_made_sweep(), targets=("wo",))
