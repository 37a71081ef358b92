"""The training experiments of minilora.experiments.sweeps on a tiny GPT (2 layers, C = 16, built in helpers), a
few steps each: the exact facts (equal budgets) and the bookkeeping (errors, cached runs, every
analysis's data and plot), not the accuracies."""
import numpy as np
import pytest

from minilora.experiments import rank_choice, sweeps
from minilora.data.datasets import make_splits
from minilora.experiments.finetune import prepare
from minilora.adapters.config import LoraConfig
from minilora.adapters.lora_model import LoraModel
from minilora.nn.model import GPT

from helpers import SWEEP_C, SWEEP_L

L, C = SWEEP_L, SWEEP_C        # the tiny base of conftest.py's tiny_base and lab fixtures


# --------------------------------------------------------------------------- Table 5: equal budgets
def test_budget_configurations_train_equal_parameter_counts(tiny_base):
    """r = 8 on one type, 4 on two, 2 on four: each trains 2 L d r_total = 2 * 2 * 16 * 8 parameters."""
    data = make_splits("shift", 16, 8, seed=0, block_size=24)[0]
    counts = {}
    for targets, r in sweeps.budget_configs(8):
        model = prepare(tiny_base, "lora", data, LoraConfig(r=r, target_modules=targets))
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


# --------------------------------------------------------------------------- comparing adapters
def adapter(base, **kw):
    return LoraModel(GPT(base.config, {k: v.copy() for k, v in base.params.items()}), LoraConfig(**kw))


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
    spectra = rank_choice.full_finetune_spectra(lab)
    assert len(spectra["rows"]) == 6 * L, f"expected {6 * L} matrices, got {len(spectra['rows'])}"
    paths = [sweeps.plot_rank_sweep(sweeps.rank_sweep(lab), tmp_path / "rank.png"),
             sweeps.plot_budget(sweeps.budget_sweep(lab), tmp_path / "budget.png"),
             sweeps.plot_subspace(sweeps.subspace_analysis(lab, r_small=2, r_large=8, k=2), tmp_path / "sub.png"),
             rank_choice.plot_spectra(spectra, tmp_path / "spectra.png"),
             rank_choice.plot_init_ablation(rank_choice.init_ablation(lab, r=2), tmp_path / "init.png")]
    small = [p.name for p in paths if p.stat().st_size < 1000]
    assert not small, f"empty or missing PNGs: {small}"
