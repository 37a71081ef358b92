"""minilora's DoRA, adapter combination, PiSSA/OLoRA and LoRA+ against the real PEFT.

Every comparison runs twice: against the files scripts/make_peft_dora_fixtures.py committed under
tests/fixtures/peft_dora (PEFT and torch versions in meta.json), and live against PEFT itself
through the same script (skipped where torch or peft is not installed).
Tolerances: float64 cases agree to ~1e-15 per operation, so 1e-12 relative leaves room for a
different summation order and still catches any wrong term (a wrong gradient is off by O(1)).
PiSSA/OLoRA run in float32 (PEFT refuses float64 there): 1e-5 relative.
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from minilora.adapters.combine import combine_adapters
from minilora.adapters.dora import dora_backward, dora_forward, dora_merge, dora_unmerge
from minilora.adapters.config import LoraConfig, resolve_targets
from minilora.adapters.lora import lora_forward
from minilora.adapters.lora_init import converted_lora_alpha, olora_init, pissa_init, to_plain_lora
from minilora.nn.optim import loraplus_lr_scale

from helpers import tiny_float64_base

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "peft_dora"
LAYERS = ("blocks.0.attn.wq", "blocks.0.mlp.fc", "blocks.0.mlp.proj")   # the script's LAYERS
DORA_CASES = ("plain", "rslora", "dropout")


def rel(received, expected) -> float:
    """max |received - expected| / max |expected|."""
    return float(np.abs(np.asarray(received) - expected).max() / np.abs(expected).max())


def load_files():
    """({"dora"|"combine"|"init": {key: array}}, meta) from the committed fixtures."""
    return ({stem: load_file(str(FIXTURES / f"{stem}.safetensors")) for stem in ("dora", "combine", "init")},
            json.loads((FIXTURES / "meta.json").read_text()))


def build_live():
    """The same dicts, built now by PEFT through the fixture script."""
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    sys.path.insert(0, str(ROOT / "scripts"))
    import warnings

    import make_peft_dora_fixtures
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_peft_dora_fixtures.build_all()


@pytest.fixture(scope="module", params=["files", "live"])
def peft_ref(request):
    """(tensors by file, meta), from the committed files or from a live PEFT."""
    return load_files() if request.param == "files" else build_live()


# --------------------------------------------------------------------------- DoRA
def dora_layer(peft_ref, case, name):
    """The arrays of one DoRA layer, its scale and dropout mask (None without dropout)."""
    files, meta = peft_ref
    t = {k.split("/")[-1]: v for k, v in files["dora"].items() if k.startswith(f"{case}/{name}/")}
    return t, meta["cases"][f"dora/{case}"]["scale"][name], t.get("mask")


@pytest.mark.parametrize("case", DORA_CASES)
@pytest.mark.parametrize("name", LAYERS)
def test_dora_forward_and_detached_backward_match_peft(peft_ref, case, name):
    """y, dx, dA, dB, dm equal PEFT's DoRA (its training forward and autograd with the norm detached)."""
    t, s, mask = dora_layer(peft_ref, case, name)
    y, cache = dora_forward(t["x"], t["W"], t["b"], t["A"], t["B"], t["m"], s, mask)
    got = dict(zip(("dx", "dA", "dB", "dm"), dora_backward(t["dy"], cache, detach_norm=True)), y=y)
    errors = {k: rel(got[k], t[k]) for k in got}
    assert max(errors.values()) < 1e-12, f"{case} {name}: relative errors against PEFT {errors}"


@pytest.mark.parametrize("case", DORA_CASES)
@pytest.mark.parametrize("name", LAYERS)
def test_dora_exact_backward_matches_autograd_of_eq5(peft_ref, case, name):
    """detach_norm=False equals torch autograd of m (W + sBA) / ||W + sBA|| with nothing detached."""
    t, s, mask = dora_layer(peft_ref, case, name)
    _, cache = dora_forward(t["x"], t["W"], t["b"], t["A"], t["B"], t["m"], s, mask)
    got = dict(zip(("dx", "dA", "dB", "dm"), dora_backward(t["dy"], cache, detach_norm=False)))
    errors = {k: rel(got[k], t[f"exact_{k}"]) for k in got}
    assert max(errors.values()) < 1e-12, f"{case} {name}: relative errors against autograd {errors}"


@pytest.mark.parametrize("name", LAYERS)
def test_dora_merge_and_unmerge_match_peft(peft_ref, name):
    """dora_merge gives PEFT's merged weight; unmerging it with the cached norm gives W0 as PEFT does."""
    t, s, _ = dora_layer(peft_ref, "plain", name)
    W, norm = dora_merge(t["W"], t["A"], t["B"], t["m"], s)
    back = dora_unmerge(t["merged_W"], t["A"], t["B"], t["m"], s, norm)
    errors = {"merged": rel(W, t["merged_W"]), "unmerged": rel(back, t["unmerged_W"]), "W0": rel(back, t["W"])}
    assert max(errors.values()) < 1e-12, f"{name}: relative errors {errors}"


def test_dora_magnitude_is_saved_as_lora_magnitude_vector_with_d_out_entries(peft_ref):
    """PEFT's adapter file holds <module>.lora_magnitude_vector of shape (d_out,), next to lora_A/B.weight."""
    keys = peft_ref[1]["cases"]["dora/plain"]["file_keys"]
    expected = {"base_model.model.blocks.0.mlp.fc.lora_magnitude_vector": [12],
                "base_model.model.blocks.0.mlp.fc.lora_A.weight": [3, 8],
                "base_model.model.blocks.0.mlp.fc.lora_B.weight": [12, 3]}
    got = {k: keys.get(k) for k in expected}
    assert got == expected, f"expected PEFT's keys and shapes {expected}, got {got}"


def test_peft_dora_scale_with_rslora_is_the_one_minilora_resolves(peft_ref):
    """PEFT's DoRA scale, plain and with use_rslora, is the one resolve_targets gives."""
    meta = peft_ref[1]["cases"]
    for case, use_rslora in (("plain", False), ("rslora", True)):
        ours = resolve_targets(tiny_float64_base(), LoraConfig(r=3, lora_alpha=5, use_rslora=use_rslora))
        theirs = meta[f"dora/{case}"]["scale"]["blocks.0.attn.wq"]
        assert ours["blocks.0.attn.wq"][1] == pytest.approx(theirs, rel=1e-15), (case, ours, theirs)


def test_peft_gives_nan_on_a_zero_row_where_minilora_does_not():
    """Recorded: PEFT's DoRA output is not finite with a zero row of W0 (minilora: test_dora zero-row tests)."""
    assert load_files()[1]["peft_zero_row_output_is_finite"] is False


# --------------------------------------------------------------------------- add_weighted_adapter
@pytest.mark.parametrize("kind", ["cat", "linear", "svd"])
def test_combination_matches_peft_add_weighted_adapter(peft_ref, kind):
    """cat and linear give PEFT's A and B; svd gives PEFT's B A (singular-vector signs may differ)."""
    files, meta = peft_ref
    t, info = files["combine"], meta["cases"]["combine"]
    spec = info["weights"][kind]
    adapters = [(t[f"{a}/A"], t[f"{a}/B"], info["scale"][a]) for a in spec["adapters"]]
    out = combine_adapters(adapters, spec["weights"], kind, svd_rank=spec["svd_rank"])
    assert out.scale == info["scale"][kind] == 1.0, (out.scale, info["scale"][kind])
    if kind == "svd":
        err = rel(out.B @ out.A, t["svd/B"] @ t["svd/A"])
    else:
        err = max(rel(out.A, t[f"{kind}/A"]), rel(out.B, t[f"{kind}/B"]))
    assert err < 1e-12, f"{kind}: relative error against PEFT {err:.2e}"


# --------------------------------------------------------------------------- PiSSA / OLoRA
def init_layer(peft_ref, init, name):
    files, meta = peft_ref
    t = {k.split("/")[-1]: v for k, v in files["init"].items() if k.startswith(f"{init}/{name}/")}
    return t, meta["cases"][f"init/{init}"]


@pytest.mark.parametrize("init", ["pissa", "olora"])
@pytest.mark.parametrize("name", LAYERS)
def test_init_matches_peft(peft_ref, init, name):
    """Same residual W_res and s B0 A0 as PEFT; same A0, B0 up to the sign of each rank component."""
    t, info = init_layer(peft_ref, init, name)
    s = info["scale"][name]
    A0, B0, W_res = (pissa_init if init == "pissa" else olora_init)(t["W0"], 2, s)
    signs = np.sign(np.einsum("ij,ij->i", A0, t["A0"]))          # an SVD may flip u_k and v_k together
    errors = {"W_res": rel(W_res, t["W_res"]), "sBA": rel(s * B0 @ A0, s * t["B0"] @ t["A0"]),
              "A0": rel(signs[:, None] * A0, t["A0"]), "B0": rel(B0 * signs[None, :], t["B0"])}
    assert max(errors.values()) < 1e-5, f"{init} {name}: relative errors (float32) {errors}"


@pytest.mark.parametrize("init", ["pissa", "olora"])
@pytest.mark.parametrize("name", LAYERS)
def test_conversion_to_plain_lora_matches_peft(peft_ref, init, name):
    """to_plain_lora gives PEFT's saved rank-2r adapter, and both reproduce the trained layer's output."""
    t, info = init_layer(peft_ref, init, name)
    s = info["scale"][name]
    A2, B2 = to_plain_lora(t["A0"], t["B0"], t["A"], t["B"])
    assert np.array_equal(A2, t["A2"]) and np.array_equal(B2, t["B2"]), f"{init} {name}: not PEFT's A2/B2"
    r2, alpha2 = converted_lora_alpha(2, 3)
    config = info["converted_config"]
    assert (config["r"], config["lora_alpha"]) == (r2, alpha2) and math.isclose(alpha2 / r2, s), (config, s)
    y_trained, _ = lora_forward(t["x"], t["W_res"], t["b"], t["A"], t["B"], s)
    y_plain, _ = lora_forward(t["x"], t["W0"], t["b"], A2, B2, s)
    errors = {"trained": rel(y_trained, t["y_trained"]), "converted": rel(y_plain, t["y_converted"]),
              "converted vs trained": rel(y_plain, t["y_trained"])}
    assert max(errors.values()) < 1e-5, f"{init} {name}: relative errors (float32) {errors}"


# --------------------------------------------------------------------------- LoRA+
def test_loraplus_groups_match_peft(peft_ref):
    """For every trainable PEFT parameter (A, B, DoRA magnitude, bias), loraplus_lr_scale gives PEFT's lr ratio."""
    plus = peft_ref[1]["loraplus"]
    scale = loraplus_lr_scale(plus["ratio"])
    got = {n: scale(n, np.zeros(g["shape"])) for n, g in plus["groups"].items()}
    expected = {n: g["lr_multiplier"] for n, g in plus["groups"].items()}
    assert got == expected and len(got) == 12, f"expected {expected}, got {got}"


def test_fixtures_record_the_library_versions():
    """meta.json says which PEFT and torch made the files."""
    versions = load_files()[1]["versions"]
    assert set(versions) >= {"peft", "torch", "numpy"} and versions["peft"], versions
