"""The training experiments of minilora.sweeps on a tiny GPT built here (2 layers, C = 16), a few
steps each: the exact facts (equal budgets, which factor moves first) and the bookkeeping
(recommendations, errors, plots), not the accuracies."""
import numpy as np
import pytest

from minilora import sweeps
from minilora.data import default_tokenizer, make_splits
from minilora.finetune import prepare
from minilora.lora import LoRAConfig
from minilora.lora_model import LoraModel
from minilora.model import GPT, GPTConfig

L, C = 2, 16


@pytest.fixture(scope="module")
def tiny_base():
    """A random tiny GPT with the task tokenizer's vocabulary and the shipped block size."""
    return GPT(GPTConfig(vocab_size=default_tokenizer().vocab_size, block_size=24, n_layer=L, n_head=2, n_embd=C),
               seed=0)


@pytest.fixture(scope="module")
def lab(tiny_base):
    """A Lab with 3 steps per run on 64 training examples (shared by the tests: runs are cached)."""
    cfg = sweeps.SweepConfig(task="shift", steps=3, batch_size=8, n_train=64, n_test=32, warmup_steps=1,
                             ranks=(1, 2, 8), target_sets=(("wq",), ("wq", "wv")), budget_rank=8, progress=False)
    return sweeps.Lab(cfg, base=tiny_base)


def hand_made_sweep():
    return {"task": "shift", "ranks": [1, 2, 4, 8, 16], "target_sets": [["wq"], ["wq", "wv"]],
            "accuracy": [[0.50, 0.60, 0.70, 0.72, 0.71], [0.80, 0.905, 0.91, 0.912, 0.90]]}


# --------------------------------------------------------------------------- Table 5: equal budgets
def test_budget_configurations_train_equal_parameter_counts(tiny_base):
    """r = 8 on one type, 4 on two, 2 on four: each trains 2 L d r_total = 2 * 2 * 16 * 8 parameters."""
    data = make_splits("shift", 16, 8, seed=0, block_size=24)[0]
    counts = {}
    for targets, r in sweeps.budget_configs(8):
        model = prepare(tiny_base, "lora", data, LoRAConfig(r=r, target_modules=targets))
        counts[f"{targets} r={r}"] = model.num_params(trainable_only=True)
    expected = 2 * L * C * 8
    assert len(counts) == 7 and set(counts.values()) == {expected}, f"expected 7 x {expected}, got {counts}"


def test_budget_configs_rejects_a_rank_that_does_not_split_over_four_types():
    """budget_rank 6 cannot be split as 6, 3, 1.5: a clear ValueError."""
    with pytest.raises(ValueError, match="multiple of 4"):
        sweeps.budget_configs(6)


def test_budget_sweep_reports_one_equal_count_for_every_row(lab):
    """The sweep's seven rows all carry the same trainable count, the r = 8 single-type budget."""
    rows = sweeps.budget_sweep(lab)
    counts = {r["label"]: r["trainable"] for r in rows}
    assert len(rows) == 7 and set(counts.values()) == {2 * L * C * 8}, f"got {counts}"


# --------------------------------------------------------------------------- §4.1: which factor moves first
@pytest.mark.parametrize("init, std", [("gaussian", None), ("gaussian", 0.02), ("peft_gaussian", None),
                                       ("kaiming", None)])
def test_only_B_moves_at_step_0_when_A_is_random_and_B_zero(tiny_base, init, std):
    """B = 0: dA = s (dh B)^T x is exactly 0 while dB is not."""
    data = make_splits("shift", 16, 8, seed=0, block_size=24)[0]
    facts = sweeps.step0_gradients(tiny_base, data, LoRAConfig(r=4, init_lora_weights=init, init_std=std),
                                   batch_size=8)
    assert facts["max_abs_dA"] == 0.0, f"expected dA exactly 0, got max abs {facts['max_abs_dA']}"
    assert facts["max_abs_dB"] > 0.0, f"expected a non-zero dB, got max abs {facts['max_abs_dB']}"


def test_reversed_init_moves_A_first_and_B_not_at_all(tiny_base):
    """A = 0, B random: u = x A^T = 0, so dB = 0 exactly and only A gets a gradient."""
    data = make_splits("shift", 16, 8, seed=0, block_size=24)[0]
    facts = sweeps.step0_gradients(tiny_base, data, LoRAConfig(r=4, init_lora_weights="reversed"), batch_size=8)
    assert facts["max_abs_dB"] == 0.0, f"expected dB exactly 0, got max abs {facts['max_abs_dB']}"
    assert facts["max_abs_dA"] > 0.0, f"expected a non-zero dA, got max abs {facts['max_abs_dA']}"


def test_zero_init_never_trains_and_keeps_the_base_loss(lab):
    """A = B = 0: all gradients are 0 at step 0, A and B are still exactly 0 after training, and the
    test loss equals the loss before training bit for bit."""
    (row,) = sweeps.init_ablation(lab, r=2, variants=[("both zero", "zeros", None)])
    assert row["max_abs_dA"] == 0.0 and row["max_abs_dB"] == 0.0, f"step-0 gradients: {row}"
    assert row["stayed_zero"], "A and B moved away from 0"
    assert row["loss"] == row["loss_at_init"], f"expected loss {row['loss_at_init']}, got {row['loss']}"


def test_init_ablation_reports_the_step_0_facts_of_every_variant(lab):
    """gaussian (both sigmas) and kaiming move B first, reversed moves A first, zeros moves nothing."""
    rows = {r["init"]: r for r in sweeps.init_ablation(lab, r=2, variants=[v for v in sweeps.INIT_VARIANTS
                                                                          if v[2] is None])}
    moves = {k: (r["A_moves"], r["B_moves"]) for k, r in rows.items()}
    expected = {"gaussian": (False, True), "peft_gaussian": (False, True), "kaiming": (False, True),
                "reversed": (True, False), "zeros": (False, False)}
    assert moves == expected, f"(A moves, B moves): expected {expected}, got {moves}"


# --------------------------------------------------------------------------- recommending a rank
def test_recommend_rank_picks_the_smallest_r_within_tolerance_of_the_best():
    """Best 0.912 at r = 8; r = 2 (0.905) is the smallest within 0.01, so both wq and wv get r = 2."""
    recs = sweeps.recommend_rank("shift", sweep=hand_made_sweep(), targets=("wq", "wv"), tolerance=0.01)
    got = {r.target: (r.r, r.best_r, r.basis) for r in recs}
    assert got == {"wq": (2, 8, "sweep"), "wv": (2, 8, "sweep")}, f"got {got}"
    text = sweeps.format_recommendation(recs)
    assert "wq: r = 2" in text and "91.2% at r=8" in text, f"unexpected text:\n{text}"


def test_recommend_rank_uses_the_target_alone_row_and_a_plain_mapping():
    """targets=("wq",) reads the wq row (best 0.72 at r = 8, r = 4 within 0.03); {r: acc} works too."""
    (rec,) = sweeps.recommend_rank("shift", sweep=hand_made_sweep(), targets=("wq",), tolerance=0.03)
    assert rec.r == 4, f"expected r = 4, got {rec.r}"
    (rec,) = sweeps.recommend_rank("shift", sweep={1: 0.2, 4: 0.5, 16: 0.5}, targets=("wv",), tolerance=0.0)
    assert rec.r == 4, f"ties: expected the smaller r = 4, got {rec.r}"


def test_recommend_rank_from_full_finetuning_energy_alone():
    """No sweep: the largest per-layer 90% energy rank (9 + 4 >= 0.9 * 14 gives 2; flat gives 5) rounded up to a power of two, 8."""
    spectra = {"rows": [{"module": "blocks.0.attn.wq", "layer": 0, "s": np.array([3.0, 2, 1, 1e-3, 0])},
                        {"module": "blocks.1.attn.wq", "layer": 1, "s": np.ones(5)}]}
    (rec,) = sweeps.recommend_rank("shift", full_ft_result=spectra, targets=("wq",), energy=0.9)
    assert (rec.r, rec.basis, rec.energy_ranks) == (8, "energy", [2, 5]), f"got {rec}"


def test_recommend_rank_rejects_mismatched_task_and_missing_evidence():
    """A sweep of another task, an unknown target and a target without evidence raise ValueError."""
    with pytest.raises(ValueError, match="'shift', not 'rotate'"):
        sweeps.recommend_rank("rotate", sweep=hand_made_sweep())
    with pytest.raises(ValueError, match="unknown targets"):
        sweeps.recommend_rank("shift", sweep=hand_made_sweep(), targets=("wz",))
    with pytest.raises(ValueError, match="no evidence for target 'wo'"):
        sweeps.recommend_rank("shift", sweep=hand_made_sweep(), targets=("wo",))


# --------------------------------------------------------------------------- comparing adapters
def adapter(base, **kw):
    return LoraModel(GPT(base.config, {k: v.copy() for k, v in base.params.items()}), LoRAConfig(**kw))


def test_comparing_adapters_of_different_layers_or_targets_raises(tiny_base):
    """Adapters on different blocks or matrix types cannot be compared; the message names the modules."""
    a = adapter(tiny_base, r=2, target_modules=("wq",), layers_to_transform=(0,))
    b = adapter(tiny_base, r=4, target_modules=("wq",), layers_to_transform=(1,))
    c = adapter(tiny_base, r=4, target_modules=("wv",))
    with pytest.raises(ValueError, match=r"only the first has \['blocks.0.attn.wq'\]"):
        sweeps.compare_adapters(a, b)
    with pytest.raises(ValueError, match="blocks.0.attn.wq missing in adapter 2"):
        sweeps.compare_adapters(a, c, ["blocks.0.attn.wq"])


def test_comparing_matching_adapters_gives_one_r1_by_r2_grid_per_module(tiny_base):
    """Same modules, ranks 2 and 4: a (2, 4) phi grid for each of the L wq modules."""
    a = adapter(tiny_base, r=2, target_modules=("wq",))
    b = adapter(tiny_base, r=4, target_modules=("wq",), seed=1)
    grids = sweeps.compare_adapters(a, b)
    shapes = {m: g.shape for m, g in grids.items()}
    assert shapes == {f"blocks.{i}.attn.wq": (2, 4) for i in range(L)}, f"got {shapes}"


# --------------------------------------------------------------------------- the experiments end to end
def test_runs_are_cached_and_shared_between_analyses(lab):
    """The rank sweep's wq,wv r = 8 run is the same object the subspace analysis uses."""
    sweep = sweeps.rank_sweep(lab)
    assert np.shape(sweep["accuracy"]) == (2, 3), f"expected (2 target sets, 3 ranks), got {np.shape(sweep['accuracy'])}"
    n = len(lab.runs)
    result = sweeps.subspace_analysis(lab, r_small=2, r_large=8, k=2)
    assert len(lab.runs) == n + 1, f"expected one extra run (seed 1), got {len(lab.runs) - n}"
    assert result["by_rank"]["blocks.0.attn.wq"].shape == (2, 8), "grid of r_small x r_large"
    assert abs(result["baseline_phi11"] - 1 / C) < 1e-15, f"baseline 1/d_in, got {result['baseline_phi11']}"


def test_every_analysis_returns_its_data_and_writes_its_plot(lab, tmp_path):
    """Amplification rows, spectra of all L x 6 linear layers, and one PNG per plot function."""
    amp = sweeps.amplification_analysis(lab, ranks=(1, 2))
    assert [r["source"] for r in amp] == ["LoRA r=1", "LoRA r=2", "full FT, top 1", "full FT, top 2"], amp
    spectra = sweeps.full_finetune_spectra(lab)
    assert len(spectra["rows"]) == 6 * L, f"expected {6 * L} matrices, got {len(spectra['rows'])}"
    paths = [sweeps.plot_rank_sweep(sweeps.rank_sweep(lab), tmp_path / "rank.png"),
             sweeps.plot_budget(sweeps.budget_sweep(lab), tmp_path / "budget.png"),
             sweeps.plot_subspace(sweeps.subspace_analysis(lab, r_small=2, r_large=8, k=2), tmp_path / "sub.png"),
             sweeps.plot_spectra(spectra, tmp_path / "spectra.png"),
             sweeps.plot_init_ablation(sweeps.init_ablation(lab, r=2), tmp_path / "init.png")]
    small = [p.name for p in paths if p.stat().st_size < 1000]
    assert not small, f"empty or missing PNGs: {small}"
