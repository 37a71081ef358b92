"""Specification of the Delta M / Delta D study (DoRA §3.2, Fig. 2) on a tiny model."""
import json

import numpy as np
import pytest

from minilora.adapters.config import LoraConfig
from minilora.adapters.lora_model import LoraModel
from minilora.experiments import decomposition_study as study

from helpers import randomize, tiny_float64_base

TINY = study.StudyConfig(steps=4, checkpoints=2, n_train=48, n_test=16, batch_size=8, seeds=(0, 1))


def test_effective_weight_is_what_each_kind_computes_with(rng):
    """Plain: W; LoRA: W0 + s B A; DoRA: m V / ||V|| (V = W0 + s B A), each written out by the test."""
    base = tiny_float64_base()
    W0 = base.params["blocks.0.attn.wq.weight"].copy()
    assert np.array_equal(study.effective_weight(base, "blocks.0.attn.wq"), W0)
    for dora in (False, True):
        lm = LoraModel(tiny_float64_base(), LoraConfig(r=2, use_dora=dora))
        randomize(lm, ".lora_B.", rng)
        A, B_, s = lm.lora_factors("blocks.0.attn.wq")
        V = W0 + s * B_ @ A
        if dora:
            m = 1.3 * lm.params[lm.param_name("blocks.0.attn.wq.lora_magnitude_vector")]
            lm.params[lm.param_name("blocks.0.attn.wq.lora_magnitude_vector")][...] = m
            V = m[:, None] * V / np.linalg.norm(V, axis=1, keepdims=True)
        got = study.effective_weight(lm, "blocks.0.attn.wq")
        assert np.allclose(got, V, atol=1e-14), f"dora={dora}: max diff {np.abs(got - V).max():.1e}"


def test_within_checkpoint_slope_separates_layers_from_training_time():
    """Points that all grow with time (pooled slope > 0) but trade M against D within a checkpoint (< 0)."""
    points = [{"module": f"blocks.{i}.attn.wq", "step": step, "delta_d": step * (1 + i), "delta_m": step * (4 - i)}
              for step in (1, 2, 3) for i in range(3)]
    pooled = study.trends(points, ("attn.wq",))["attn.wq"]
    assert pooled["slope"] > 0, f"expected a positive pooled slope, got {pooled['slope']}"
    within = study.within_checkpoint_slope(points)
    assert within == pytest.approx(-1.0, rel=1e-12), f"expected -1 within every checkpoint, got {within}"


def test_summarize_gives_mean_and_sd_over_seeds():
    """Three runs with slopes 1, 2, 3: mean 2, sample sd 1, no negative slope."""
    runs = [{"method": "lora", "accuracy": 0.5, "trends": {"attn.wq": {"slope": s, "corr": 0.5, "within_slope": None}}}
            for s in (1.0, 2.0, 3.0)]
    got = study.summarize(runs)["lora"]
    assert got["slope"] == (2.0, 1.0) and got["negative_slopes"] == 0 and got["n"] == 3, got


@pytest.fixture(scope="module")
def tiny_study(tiny_base):
    return study.run_study(TINY, base=tiny_base, log=lambda *a: None)


def test_study_measures_every_analysed_matrix_at_every_checkpoint(tiny_study):
    """One point per (wq/wv matrix, checkpoint), Delta M >= 0 and 0 <= Delta D <= 2, at steps 2 and 4."""
    runs = tiny_study["runs"]
    assert [(r["method"], r["seed"]) for r in runs] == [(m, s) for s in (0, 1) for m in study.METHODS]
    for run in runs:
        pts = run["points"]
        assert len(pts) == 2 * 2 * 2 and sorted({p["step"] for p in pts}) == [2, 4], pts
        assert all(p["delta_m"] >= 0 and 0 <= p["delta_d"] <= 2 for p in pts), pts
        assert all(p["delta_d"] > 0 for p in pts), f"{run['method']}: training should turn some direction"
    json.dumps(tiny_study)                                    # plain JSON, for the committed results


def test_study_leaves_the_base_model_untouched(tiny_base, tiny_study):
    """Full fine-tuning trains a copy: the shared base keeps its weights."""
    fresh = type(tiny_base)(tiny_base.config, seed=0)
    assert all(np.array_equal(tiny_base.params[k], fresh.params[k]) for k in fresh.params)
