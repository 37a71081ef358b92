"""Specification of minilora.experiments.known_rank: a teacher of known rank k and LoRA students."""
import numpy as np
import pytest

from minilora.experiments import known_rank as kr
from minilora.nn import backend


def test_teacher_update_has_rank_k_and_the_stated_norm(tiny_base):
    """Every target gets dW_k of rank k, k equal singular values and ||dW_k|| = gain ||W0||."""
    cfg = kr.KnownRankConfig(k=3, gain=0.5)
    deltas = kr.teacher_deltas(tiny_base, cfg)
    assert sorted(deltas) == sorted(f"blocks.{i}.attn.{t}" for i in range(tiny_base.config.n_layer) for t in ("wq", "wv"))
    for name, dW in deltas.items():
        W0 = backend.to_numpy(tiny_base.params[name + ".weight"]).astype(np.float64)
        s = np.linalg.svd(dW, compute_uv=False)
        assert np.sum(s > 1e-9 * s[0]) == 3 and np.allclose(s[:3], s[0]), (name, s[:5])
        assert np.isclose(np.linalg.norm(dW), 0.5 * np.linalg.norm(W0)), name


def test_layer_inputs_are_what_the_matrix_reads_in_the_base(tiny_base):
    """The inputs of blocks.0.attn.wq are layer norm 1 of the embeddings, one row per real token."""
    cfg = kr.KnownRankConfig(n_inputs=4, targets=("wq",))
    x = kr.layer_inputs(tiny_base, cfg)["blocks.0.attn.wq"]
    C = tiny_base.config.n_embd
    assert x.ndim == 2 and x.shape[1] == C, x.shape
    g = backend.to_numpy(tiny_base.params["blocks.0.ln1.weight"])
    b = backend.to_numpy(tiny_base.params["blocks.0.ln1.bias"])
    xhat = (x - b) / g                                               # undo gamma, beta: rows of mean 0, var ~1
    # var is v / (v + eps) < 1: the tiny model's embeddings have v ~ 1e-3, so eps = 1e-5 shows
    assert np.allclose(xhat.mean(axis=1), 0, atol=1e-4) and np.allclose(xhat.var(axis=1), 1, atol=5e-2)


def test_eckart_young_residual_of_equal_singular_values_is_k_minus_r_over_k():
    """For k equal singular values the best rank-r update misses (k - r) / k of ||dW||^2."""
    rng = np.random.default_rng(0)
    deltas = {"m": kr._orthonormal(rng, 20, 4) @ kr._orthonormal(rng, 12, 4).T}
    assert np.allclose([kr.eckart_young_residual(deltas, r) for r in (1, 2, 4, 6)], [0.75, 0.5, 0.0, 0.0], atol=1e-12)


def test_a_student_of_rank_k_fits_what_a_rank_below_cannot(rng):
    """On isotropic inputs, r = k drives the error to ~0; r = k - 1 stays near the Eckart-Young 1/k."""
    k = 3
    dW = kr._orthonormal(rng, 16, k) @ kr._orthonormal(rng, 12, k).T            # (16, 12), rank 3
    x = rng.standard_normal((256, 12))
    cfg = kr.KnownRankConfig(k=k, steps=300, lr=2e-2)
    below, at = kr.fit_student(x, dW, k - 1, cfg), kr.fit_student(x, dW, k, cfg)
    assert at < 1e-2 and below > 0.2, (below, at)


@pytest.mark.slow
def test_the_experiment_finds_the_knee_at_k_on_the_tiny_model(tiny_base):
    """The mean error drops most from r = k - 1 to r = k, and the residual column is (k - r) / k."""
    cfg = kr.KnownRankConfig(k=2, ranks=(1, 2, 4), n_inputs=8, steps=200)
    out = kr.known_rank_experiment(tiny_base, cfg, log=lambda *a, **k: None)
    e = dict(zip(out["ranks"], out["error"]))
    assert e[2] < e[1] / 10 and e[4] < e[1] / 10, e
    assert np.allclose(out["residual"], [0.5, 0.0, 0.0], atol=1e-12), out["residual"]
