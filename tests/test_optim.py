"""Tests for minilora.nn.optim: SGD, AdamW, the warmup/decay schedule and gradient clipping."""
import math

import numpy as np
import pytest

from minilora.nn import backend
from minilora.nn.optim import SGD, AdamW, adamw_update, clip_grad_norm, linear_warmup_decay, loraplus_lr_scale


def _params(dtype=np.float64, seed=0):
    """A tiny model: two trainable LoRA matrices, a trainable bias, a frozen base weight."""
    rng = np.random.default_rng(seed)
    return {
        "wq.weight": rng.standard_normal((6, 5)).astype(dtype),  # frozen W0 (out, in)
        "wq.lora_A": rng.standard_normal((2, 5)).astype(dtype),  # (r, in)
        "wq.lora_B": rng.standard_normal((6, 2)).astype(dtype),  # (out, r)
        "head.bias": rng.standard_normal(6).astype(dtype),
    }


TRAINABLE = ("wq.lora_A", "wq.lora_B", "head.bias")


def _grads(params, seed):
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(params[n].shape).astype(params[n].dtype) for n in TRAINABLE}


# --------------------------------------------------------------------------- AdamW
def test_first_adamw_step_is_lr_times_g_over_abs_g_plus_eps():
    """With wd = 0 the first step is exactly p -= lr * g / (|g| + eps)."""
    lr, eps = 0.01, 1e-8
    params = _params()
    before = {n: a.copy() for n, a in params.items()}
    grads = _grads(params, seed=1)
    AdamW(lr=lr, eps=eps, weight_decay=0.0).step(params, grads)
    for n, g in grads.items():
        expected = before[n] - lr * g / (np.abs(g) + eps)
        err = np.max(np.abs(params[n] - expected))
        assert err < 1e-15, (f"{n}: expected closed-form first step, max abs error {err:.3e}"
                             f"{_first_step_diagnosis((before[n] - params[n]) / (lr * np.sign(g)))}")


def _first_step_diagnosis(ratio, b1=0.9, b2=0.999) -> str:
    """Name the common mistake when the first step is a known multiple of lr (ratio: step / (lr sign g))."""
    mistakes = {(1 - b1) / math.sqrt(1 - b2): "both bias corrections are missing",
                1 - b1: "the first moment's bias correction is missing",
                1 / math.sqrt(1 - b2): "the second moment's bias correction is missing"}
    med = float(np.median(ratio))
    for factor, what in mistakes.items():
        if abs(med / factor - 1) < 1e-3:
            return f". The step is {med:.4g} x lr instead of 1 x lr: {what} (Kingma & Ba 2015, Algorithm 1)"
    return ""


def test_weight_decay_is_decoupled_from_the_gradient():
    """With g = 0, m and v stay 0 and each step multiplies p by exactly (1 - lr * wd)."""
    lr, wd = 0.1, 0.5
    p = np.array([[1.0, -2.0], [3.0, 0.25]])
    params = {"w": p}
    opt = AdamW(lr=lr, weight_decay=wd)
    for step in range(1, 4):
        opt.step(params, {"w": np.zeros_like(p)})
        expected = np.array([[1.0, -2.0], [3.0, 0.25]]) * (1 - lr * wd) ** step
        assert np.allclose(p, expected, rtol=1e-15, atol=0), (
            f"step {step}: expected {expected.tolist()}, got {p.tolist()}")


def test_no_decay_parameters_do_not_shrink():
    """Biases (ndim < 2) and names chosen by no_decay keep their values when g = 0."""
    params = {"b": np.array([1.0, -2.0]), "w": np.ones((2, 2)), "keep": np.ones((2, 2))}
    before = {n: a.copy() for n, a in params.items()}
    opt = AdamW(lr=0.1, weight_decay=0.5, no_decay=lambda n, a: a.ndim < 2 or n == "keep")
    opt.step(params, {n: np.zeros_like(a) for n, a in params.items()})
    for n in ("b", "keep"):
        assert np.array_equal(params[n], before[n]), f"{n}: expected {before[n]}, got {params[n]}"
    assert np.all(params["w"] == 0.95), f"w: expected all 0.95, got {params['w']}"


def test_optimizer_state_exists_only_for_trainable_parameters():
    """Frozen params get no state, stay bit-identical, and state_bytes is 2 * 4 * n_trainable."""
    params = _params(dtype=np.float32)
    frozen = params["wq.weight"].copy()
    opt = AdamW(lr=0.01)
    for s in range(3):
        opt.step(params, _grads(params, seed=s))
    assert set(opt.state) == set(TRAINABLE), f"expected state for {TRAINABLE}, got {set(opt.state)}"
    assert np.array_equal(params["wq.weight"], frozen), "frozen weight changed"
    n_trainable = sum(params[n].size for n in TRAINABLE)
    assert opt.state_bytes() == 2 * 4 * n_trainable, (
        f"expected {2 * 4 * n_trainable} bytes, got {opt.state_bytes()}")


def test_params_are_updated_in_place():
    """After AdamW and SGD steps every dict entry is still the same array object."""
    for opt in (AdamW(lr=0.01), SGD(lr=0.01, momentum=0.9, weight_decay=0.1)):
        params = _params()
        objects = {n: a for n, a in params.items()}
        before = {n: a.copy() for n, a in params.items()}
        opt.step(params, _grads(params, seed=3))
        for n in params:
            assert params[n] is objects[n], f"{type(opt).__name__}: {n} was rebound, not updated"
        for n in TRAINABLE:
            assert not np.array_equal(params[n], before[n]), f"{n} did not move"


def test_parameter_added_later_starts_its_own_bias_correction():
    """A parameter first seen at step 3 gets the closed-form first step; one without a grad is not touched."""
    lr, eps = 0.01, 1e-8
    params = {"old": np.ones((2, 2)), "new": np.ones((2, 2))}
    opt = AdamW(lr=lr, eps=eps, weight_decay=0.0)
    for _ in range(2):
        opt.step(params, {"old": np.full((2, 2), 0.5)})
    assert np.array_equal(params["new"], np.ones((2, 2))), "a parameter without grads moved"
    g = np.array([[0.3, -2.0], [1e-3, 4.0]])
    opt.step(params, {"old": np.full((2, 2), 0.5), "new": g})
    expected = 1.0 - lr * g / (np.abs(g) + eps)
    err = np.max(np.abs(params["new"] - expected))
    assert err < 1e-15, f"expected a first step for 'new', max abs error {err:.3e}"
    assert (opt.state["old"]["t"], opt.state["new"]["t"]) == (3, 1), (
        f"expected step counts (3, 1), got {(opt.state['old']['t'], opt.state['new']['t'])}")


def test_learning_rate_set_between_steps_is_used():
    """Setting opt.lr changes the size of the next step (schedules rely on it)."""
    params = {"w": np.zeros((1, 1))}
    opt = AdamW(lr=1.0, weight_decay=0.0, eps=0.0)
    opt.lr = 0.25
    opt.step(params, {"w": np.ones((1, 1))})
    assert params["w"][0, 0] == -0.25, f"expected -0.25, got {params['w'][0, 0]}"


@pytest.mark.parametrize("make", [lambda: AdamW(lr=0.1), lambda: SGD(lr=0.1)])
def test_unknown_grad_name_raises_before_any_update(make):
    """A grad whose name is not in params raises ValueError and leaves params unchanged."""
    params = _params()
    before = {n: a.copy() for n, a in params.items()}
    grads = _grads(params, seed=0)
    grads["wq.lora_C"] = np.ones(3)
    with pytest.raises(ValueError, match="wq.lora_C"):
        make().step(params, grads)
    for n in params:
        assert np.array_equal(params[n], before[n]), f"{n} changed although the step failed"


def test_grad_with_wrong_shape_raises():
    """A gradient whose shape differs from its parameter's raises instead of broadcasting."""
    params = {"w": np.ones((3, 4))}
    with pytest.raises(ValueError, match="shape"):
        AdamW().step(params, {"w": np.ones(4)})


def test_adamw_update_leaves_the_gradient_unchanged():
    """adamw_update writes to p, m and v only."""
    rng = np.random.default_rng(0)
    p, g = rng.standard_normal((3, 3)), rng.standard_normal((3, 3))
    g0 = g.copy()
    adamw_update(p, g, np.zeros_like(p), np.zeros_like(p), 1, 0.1, 0.9, 0.999, 1e-8, 0.01)
    assert np.array_equal(g, g0), "adamw_update modified the gradient"


# --------------------------------------------------------------------------- SGD
def test_sgd_with_momentum_matches_closed_form_over_three_steps():
    """buf_t = mu * buf_{t-1} + g_t + wd * p_{t-1}; p_t = p_{t-1} - lr * buf_t, written out by hand."""
    lr, mu, wd = 0.1, 0.9, 0.01
    p0 = np.array([1.0, -2.0, 0.5])
    g = [np.array([0.3, 0.1, -0.2]), np.array([-0.1, 0.4, 0.0]), np.array([0.2, 0.2, 0.2])]
    b1 = g[0] + wd * p0
    p1 = p0 - lr * b1
    b2 = mu * b1 + g[1] + wd * p1
    p2 = p1 - lr * b2
    b3 = mu * b2 + g[2] + wd * p2
    p3 = p2 - lr * b3
    params, frozen = {"w": p0.copy(), "frozen": np.ones(2)}, np.ones(2)
    opt = SGD(lr=lr, momentum=mu, weight_decay=wd)
    for gt in g:
        opt.step(params, {"w": gt})
    assert np.allclose(params["w"], p3, rtol=0, atol=1e-15), f"expected {p3}, got {params['w']}"
    assert np.array_equal(params["frozen"], frozen), "frozen parameter changed"
    assert set(opt.state) == {"w"}, f"expected state only for 'w', got {set(opt.state)}"
    assert opt.state_bytes() == 3 * 8, f"expected 24 bytes of momentum, got {opt.state_bytes()}"


def test_sgd_with_constant_gradient_follows_geometric_sum():
    """With constant g and no decay, after 3 steps p = p0 - lr * g * (3 + 2 mu + mu^2)."""
    lr, mu = 0.1, 0.5
    params = {"w": np.zeros(2)}
    opt = SGD(lr=lr, momentum=mu)
    for _ in range(3):
        opt.step(params, {"w": np.array([1.0, -2.0])})
    expected = -lr * np.array([1.0, -2.0]) * (3 + 2 * mu + mu**2)
    assert np.allclose(params["w"], expected, rtol=1e-15), f"expected {expected}, got {params['w']}"


# --------------------------------------------------------------------------- schedule
@pytest.mark.parametrize("step, expected", [
    (0, 0.25),    # (0 + 1) / 4 of base_lr: the first step already trains
    (1, 0.5),
    (3, 1.0),     # last warmup step reaches base_lr
    (4, 1.0),     # decay starts at base_lr
    (8, 0.55),    # halfway from step 4 to step 12: (1.0 + 0.1) / 2
    (12, 0.1),    # total_steps: min_lr
    (50, 0.1),    # clamped after the end
])
def test_warmup_then_linear_decay_values(step, expected):
    """Schedule values at chosen steps match the closed form (warmup 4, total 12, 1.0 -> 0.1)."""
    got = linear_warmup_decay(step, total_steps=12, warmup_steps=4, base_lr=1.0, min_lr=0.1)
    assert math.isclose(got, expected, rel_tol=1e-12), f"step {step}: expected {expected}, got {got}"


def test_schedule_without_warmup_starts_at_base_lr():
    """warmup_steps = 0 gives base_lr at step 0 and min_lr at total_steps."""
    kw = dict(total_steps=10, warmup_steps=0, base_lr=2.0)
    got = (linear_warmup_decay(0, **kw), linear_warmup_decay(10, **kw))
    assert got == (2.0, 0.0), f"expected (2.0, 0.0), got {got}"


# --------------------------------------------------------------------------- clipping
def test_clip_grad_norm_scales_large_grads_to_max_norm():
    """Grads with global norm 13 are scaled in place to norm 1 (up to the 1e-6 guard)."""
    grads = {"a": np.array([3.0, 4.0], dtype=np.float32), "b": np.array([[12.0]], dtype=np.float32)}
    a = grads["a"]
    norm = clip_grad_norm(grads, max_norm=1.0)
    assert norm == pytest.approx(13.0, rel=1e-12), f"expected returned norm 13, got {norm}"
    new = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))
    assert new == pytest.approx(1.0, rel=1e-6), f"expected norm 1 after clipping, got {new}"
    assert grads["a"] is a and grads["a"].dtype == np.float32, "grad was replaced, not scaled in place"


def test_clip_grad_norm_leaves_small_grads_untouched():
    """Grads already under max_norm are bit-identical afterwards."""
    grads = {"a": np.array([0.3, 0.4])}
    norm = clip_grad_norm(grads, max_norm=1.0)
    assert norm == pytest.approx(0.5, rel=1e-15), f"expected norm 0.5, got {norm}"
    assert np.array_equal(grads["a"], [0.3, 0.4]), f"expected [0.3, 0.4], got {grads['a']}"


def test_clip_grad_norm_returns_non_finite_norm_without_scaling():
    """An inf gradient gives norm inf and nothing is scaled; the caller decides what to do."""
    grads = {"a": np.array([np.inf, 1.0]), "b": np.array([2.0])}
    norm = clip_grad_norm(grads, max_norm=1.0)
    assert math.isinf(norm), f"expected inf, got {norm}"
    assert grads["b"][0] == 2.0, f"expected b untouched (2.0), got {grads['b'][0]}"


# --------------------------------------------------------------------------- references
def test_adamw_matches_torch_adamw_over_five_steps():
    """5 steps agree with torch.optim.AdamW in float64 (skipped where PyTorch is not installed)."""
    torch = pytest.importorskip("torch")
    lr, betas, eps, wd = 0.05, (0.8, 0.95), 1e-8, 0.1
    params = _params()
    grad_steps = [_grads(params, seed=s) for s in range(5)]
    tp = {n: torch.tensor(params[n].copy(), requires_grad=True) for n in TRAINABLE}
    groups = [{"params": [tp[n] for n in TRAINABLE if params[n].ndim >= 2], "weight_decay": wd},
              {"params": [tp[n] for n in TRAINABLE if params[n].ndim < 2], "weight_decay": 0.0}]
    topt = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
    opt = AdamW(lr=lr, betas=betas, eps=eps, weight_decay=wd)
    for grads in grad_steps:
        for n in TRAINABLE:
            tp[n].grad = torch.tensor(grads[n])
        topt.step()
        opt.step(params, grads)
    for n in TRAINABLE:
        err = np.max(np.abs(params[n] - tp[n].detach().numpy()))
        assert err < 1e-12, f"{n}: expected torch's values, max abs error {err:.3e}"


@pytest.mark.gpu
@pytest.mark.skipif(not backend.cupy_available(), reason="needs CuPy and a CUDA GPU")
def test_adamw_on_cupy_matches_numpy():
    """3 AdamW steps on CuPy arrays agree with the same steps on NumPy to 1e-12 (float64)."""
    ref = _params()
    grad_steps = [_grads(ref, seed=s) for s in range(3)]
    backend.set_backend("cupy")
    try:
        dev = {n: backend.asarray(a) for n, a in ref.items()}
        opt = AdamW(lr=0.05)
        for grads in grad_steps:
            opt.step(dev, {n: backend.asarray(g) for n, g in grads.items()})
        got = {n: backend.to_numpy(a) for n, a in dev.items()}
    finally:
        backend.set_backend("numpy")
    opt = AdamW(lr=0.05)
    for grads in grad_steps:
        opt.step(ref, grads)
    for n in ref:
        err = np.max(np.abs(got[n] - ref[n]))
        assert err < 1e-12, f"{n}: expected NumPy's values, max abs error {err:.3e}"


# --------------------------------------------------------------------------- LoRA+
@pytest.mark.parametrize("name, shape, expected", [
    ("blocks.0.attn.wq.lora_B.default", (6, 2), 16.0),           # B: the fast group
    ("blocks.0.attn.wq.lora_A.default", (2, 5), 1.0),            # A: the base learning rate
    ("blocks.0.attn.wq.lora_magnitude_vector.default", (6,), 16.0),   # DoRA magnitude: 1-d
    ("head.bias", (6,), 16.0),                                   # every 1-d parameter, as PEFT
    ("head.weight", (3, 6), 1.0),                                # a fully trained matrix
])
def test_loraplus_scales_B_and_vectors_by_the_ratio(name, shape, expected):
    """PEFT's create_loraplus_optimizer groups: lora_B or ndim == 1 -> lr * ratio, the rest lr."""
    got = loraplus_lr_scale(16)(name, np.zeros(shape))
    assert got == expected, f"{name}: expected multiplier {expected}, got {got}"


def test_loraplus_first_step_of_B_is_ratio_times_larger():
    """With wd = 0, step 1 moves B by lr * ratio * g / (|g| + eps) and A by lr * g / (|g| + eps)."""
    lr, eps, ratio = 0.01, 1e-8, 4.0
    params = _params()
    before = {n: a.copy() for n, a in params.items()}
    grads = _grads(params, seed=2)
    AdamW(lr=lr, eps=eps, weight_decay=0.0, lr_scale=loraplus_lr_scale(ratio)).step(params, grads)
    for n, g in grads.items():
        mult = ratio if (n == "wq.lora_B" or g.ndim == 1) else 1.0
        expected = before[n] - mult * lr * g / (np.abs(g) + eps)
        err = np.max(np.abs(params[n] - expected))
        assert err < 1e-15, f"{n}: expected a step {mult} x lr, max abs error {err:.3e}"


def test_lr_scale_of_one_changes_nothing():
    """AdamW with lr_scale returning 1 gives bit-identical parameters to AdamW without it."""
    a, b = _params(), _params()
    plain, scaled = AdamW(lr=0.05), AdamW(lr=0.05, lr_scale=lambda n, p: 1.0)
    for s in range(3):
        plain.step(a, _grads(a, seed=s))
        scaled.step(b, _grads(b, seed=s))
    for n in a:
        assert np.array_equal(a[n], b[n]), f"{n} differs with lr_scale = 1"


def test_loraplus_ratio_must_be_positive():
    """A zero or negative ratio is refused with the value named."""
    with pytest.raises(ValueError, match="must be positive, got 0"):
        loraplus_lr_scale(0)


def test_loraplus_matches_peft_create_loraplus_optimizer_over_three_steps():
    """3 steps equal torch.optim.AdamW with PEFT's LoRA+ groups (skipped without torch and peft)."""
    torch = pytest.importorskip("torch")
    loraplus = pytest.importorskip("peft.optimizers")
    lr, ratio = 0.02, 8.0

    class Tiny(torch.nn.Module):                               # PEFT names: lin.lora_A.default.weight
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(5, 6)

        def forward(self, x):
            return self.lin(x)

    import peft
    torch.manual_seed(0)
    model = peft.get_peft_model(Tiny().double(), peft.LoraConfig(r=2, target_modules=["lin"], use_dora=True,
                                                                 bias="lora_only", init_lora_weights=False))
    topt = loraplus.create_loraplus_optimizer(model, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=ratio)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    params = {n: p.detach().numpy().copy() for n, p in named.items()}
    assert any("lora_magnitude_vector" in n for n in params) and any(n.endswith("bias") for n in params), params
    opt = AdamW(lr=lr, weight_decay=0.0, lr_scale=loraplus_lr_scale(ratio))
    rng = np.random.default_rng(0)
    for _ in range(3):
        grads = {n: rng.standard_normal(p.shape) for n, p in params.items()}
        for n, p in named.items():
            p.grad = torch.tensor(grads[n])
        topt.step()
        opt.step(params, grads)
    for n, p in named.items():
        err = np.max(np.abs(params[n] - p.detach().numpy()))
        assert err < 1e-12, f"{n}: expected PEFT's LoRA+ step, max abs error {err:.3e}"
