"""Build the PEFT reference fixtures for DoRA, adapter combination, PiSSA/OLoRA and LoRA+.

minilora never depends on PyTorch, so its tests compare against small files that the real PEFT
produced. Run this script in a side environment to (re)build them:

    python3 -m venv .venv-peft
    .venv-peft/bin/pip install torch==2.13.0 peft safetensors numpy
    .venv-peft/bin/pip install -e .            # only for the live tests
    .venv-peft/bin/python scripts/make_peft_dora_fixtures.py

It writes tests/fixtures/peft_dora/{dora,combine,init}.safetensors and meta.json (library
versions, scales, file keys, LoRA+ groups). Keys are "<case>/<module>/<tensor>". The builders
return plain dicts, so tests/test_peft_reference.py also runs them live when torch and peft exist.
"""
from __future__ import annotations

import json
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

import peft
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft.optimizers import create_loraplus_optimizer

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "peft_dora"
# (module name, d_in, d_out): minilora's names, square and non-square in both directions.
LAYERS = [("blocks.0.attn.wq", 8, 8), ("blocks.0.mlp.fc", 8, 12), ("blocks.0.mlp.proj", 12, 8)]
ROWS = (2, 3)  # (B, T) of every input


class Tiny(nn.Module):
    """nn.Linear layers under minilora's dotted names; forward takes one input per layer."""

    def __init__(self):
        super().__init__()
        self.layers = [name for name, _, _ in LAYERS]
        for name, d_in, d_out in LAYERS:
            parent = self
            for part in name.split(".")[:-1]:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            parent.add_module(name.split(".")[-1], nn.Linear(d_in, d_out))

    def forward(self, xs: dict):
        return {n: self.get_submodule(n)(xs[n]) for n in self.layers}


class FixedMask(nn.Module):
    """A dropout whose keep-mask is given, so minilora can replay PEFT's training forward exactly."""

    def __init__(self, mask):
        super().__init__()
        self.mask = mask

    def forward(self, x):
        return x * self.mask


def np_(t) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


@contextmanager
def default_dtype(dtype):
    """Create every tensor (modules, random draws) in ``dtype`` inside the block."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _lora_layer(model, name):
    return model.base_model.model.get_submodule(name)


# --------------------------------------------------------------------------- DoRA
def dora_case(*, use_rslora=False, dropout=False, seed=0):
    """One PEFT DoRA model in float64 with random A, B (B != 0) and a trained-looking magnitude.

    Returns (tensors, info): per layer x, W, b, A, B, m, dy and PEFT's y, dx, dA, dB, dm (its
    detached backward), the exact-gradient reference (autograd of eq. 5, no detach), the merged
    weight and PEFT's unmerged weight; info has the scales and the adapter file's keys.
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    config = LoraConfig(r=3, lora_alpha=5, target_modules=[n for n, _, _ in LAYERS], use_dora=True,
                        use_rslora=use_rslora, lora_dropout=0.1 if dropout else 0.0)
    model = get_peft_model(Tiny(), config)
    out, info = {}, {"scale": {}}
    xs, dys = {}, {}
    for name, d_in, d_out in LAYERS:
        layer = _lora_layer(model, name)
        with torch.no_grad():
            layer.base_layer.bias.copy_(0.1 * torch.randn(d_out, generator=g))
            layer.lora_A["default"].weight.copy_(0.3 * torch.randn(3, d_in, generator=g))
            layer.lora_B["default"].weight.copy_(0.3 * torch.randn(d_out, 3, generator=g))
            mag = layer.lora_magnitude_vector["default"].weight
            mag.mul_(1 + 0.2 * torch.randn(d_out, generator=g))          # not ||V||: the factor is not 1
        if dropout:
            mask = (torch.rand(*ROWS, d_in, generator=g) > 0.3).to(torch.get_default_dtype()) / 0.7
            layer.lora_dropout["default"] = FixedMask(mask)
            out[f"{name}/mask"] = np_(mask)
        xs[name] = torch.randn(*ROWS, d_in, generator=g, requires_grad=True)
        dys[name] = torch.randn(*ROWS, d_out, generator=g)
        info["scale"][name] = layer.scaling["default"]
    model.train()
    ys = model(xs)
    sum((ys[n] * dys[n]).sum() for n in ys).backward()
    for name, _, _ in LAYERS:
        layer = _lora_layer(model, name)
        A, B, m = (layer.lora_A["default"].weight, layer.lora_B["default"].weight,
                   layer.lora_magnitude_vector["default"].weight)
        W, b = layer.base_layer.weight, layer.base_layer.bias
        out.update({f"{name}/{k}": np_(v) for k, v in dict(
            x=xs[name], W=W, b=b, A=A, B=B, m=m, dy=dys[name], y=ys[name], dx=xs[name].grad,
            dA=A.grad, dB=B.grad, dm=m.grad).items()})
        out.update({f"{name}/exact_{k}": v for k, v in _exact_grads(out, name, info["scale"][name]).items()})
    model.merge_adapter()
    out.update({f"{n}/merged_W": np_(_lora_layer(model, n).base_layer.weight) for n, _, _ in LAYERS})
    model.unmerge_adapter()
    out.update({f"{n}/unmerged_W": np_(_lora_layer(model, n).base_layer.weight) for n, _, _ in LAYERS})
    info["file_keys"] = {k: list(v.shape) for k, v in get_peft_model_state_dict(model).items()}
    return out, info


def _exact_grads(t: dict, name: str, s: float) -> dict:
    """Autograd of eq. 5 with nothing detached: W' = m (W + s B A) / ||W + s B A||, per output row."""
    A, B, m = (torch.tensor(t[f"{name}/{k}"], requires_grad=True) for k in ("A", "B", "m"))
    x = torch.tensor(t[f"{name}/x"], requires_grad=True)
    V = torch.tensor(t[f"{name}/W"]) + s * B @ A
    W_prime = m[:, None] * V / V.norm(dim=1, keepdim=True)
    x_kept = x if f"{name}/mask" not in t else x * torch.tensor(t[f"{name}/mask"])
    W0 = torch.tensor(t[f"{name}/W"])
    y = (x - x_kept) @ W0.T + x_kept @ W_prime.T + torch.tensor(t[f"{name}/b"])
    (y * torch.tensor(t[f"{name}/dy"])).sum().backward()
    return {"dA": np_(A.grad), "dB": np_(B.grad), "dm": np_(m.grad), "dx": np_(x.grad)}


def zero_row_is_finite_in_peft() -> bool:
    """Does PEFT's DoRA output stay finite when a row of W0 is zero? (peft#2049)"""
    model = Tiny()
    with torch.no_grad():
        model.get_submodule(LAYERS[0][0]).weight[2] = 0.0
    model = get_peft_model(model, LoraConfig(r=2, target_modules=[LAYERS[0][0]], use_dora=True))
    xs = {n: torch.randn(*ROWS, d_in) for n, d_in, _ in LAYERS}
    return bool(torch.isfinite(model(xs)[LAYERS[0][0]]).all())


# --------------------------------------------------------------------------- add_weighted_adapter
# Weights chosen so that w * s and sqrt(|w * s|) are exact in float32: PEFT builds its weight
# tensors with torch.tensor(list) (float32), which would otherwise round them.
ADAPTERS = {"a": (2, 4.0), "b": (2, 3.0), "c": (3, 6.0)}        # name: (r, lora_alpha)
COMBINATIONS = {"cat": (["a", "c"], [0.125, -1.5], None), "linear": (["a", "b"], [0.125, -1.5], None),
                "svd": (["a", "c"], [0.125, -1.5], 3)}


def combine_case(seed=0):
    """PEFT's add_weighted_adapter (cat, linear, svd) on the non-square blocks.0.mlp.fc, float64."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 2)
    name, d_in, d_out = LAYERS[1]
    configs = {a: LoraConfig(r=r, lora_alpha=alpha, target_modules=[name]) for a, (r, alpha) in ADAPTERS.items()}
    model = get_peft_model(Tiny(), configs["a"], adapter_name="a")
    for adapter in ("b", "c"):
        model.add_adapter(adapter, configs[adapter])
    layer = _lora_layer(model, name)
    out, info = {}, {"scale": {}, "weights": {}, "module": name}
    for adapter in ADAPTERS:
        with torch.no_grad():
            layer.lora_A[adapter].weight.copy_(torch.randn(ADAPTERS[adapter][0], d_in, generator=g))
            layer.lora_B[adapter].weight.copy_(torch.randn(d_out, ADAPTERS[adapter][0], generator=g))
        out[f"{adapter}/A"], out[f"{adapter}/B"] = np_(layer.lora_A[adapter].weight), np_(layer.lora_B[adapter].weight)
        info["scale"][adapter] = layer.scaling[adapter]
    for kind, (adapters, weights, rank) in COMBINATIONS.items():
        model.add_weighted_adapter(adapters, weights, kind, combination_type=kind, svd_rank=rank)
        out[f"{kind}/A"], out[f"{kind}/B"] = np_(layer.lora_A[kind].weight), np_(layer.lora_B[kind].weight)
        info["scale"][kind] = layer.scaling[kind]
        info["weights"][kind] = {"adapters": adapters, "weights": weights, "svd_rank": rank}
    return out, info


# --------------------------------------------------------------------------- PiSSA / OLoRA
def init_case(init: str, seed=0):
    """PEFT's PiSSA or OLoRA init and its conversion to plain LoRA, in float32 (PEFT refuses float64).

    Records W0, PEFT's residual W_res, A0, B0, the "trained" A, B (A0, B0 plus a random step), the
    converted rank-2r adapter PEFT saves, and the outputs of the trained and converted models.
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 3)
    names = [n for n, _, _ in LAYERS]
    base = Tiny()
    W0 = {n: np_(base.get_submodule(n).weight) for n in names}
    config = LoraConfig(r=2, lora_alpha=3, target_modules=names, init_lora_weights=init)
    model = get_peft_model(base, config)                                       # W0 -> W_res in place
    out, info = {}, {"scale": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model.peft_config["default"].init_lora_weights = True                 # as PEFT's docs say
        model.save_pretrained(f"{tmp}/init")
        for n in names:
            layer = _lora_layer(model, n)
            A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            out.update({f"{n}/W0": W0[n], f"{n}/W_res": np_(layer.base_layer.weight), f"{n}/A0": np_(A),
                        f"{n}/B0": np_(B), f"{n}/b": np_(layer.base_layer.bias)})
            with torch.no_grad():                                              # "training"
                A.add_(0.1 * torch.randn(A.shape, generator=g))
                B.add_(0.1 * torch.randn(B.shape, generator=g))
            out[f"{n}/A"], out[f"{n}/B"] = np_(A), np_(B)
            info["scale"][n] = layer.scaling["default"]
        xs = {n: torch.randn(*ROWS, d_in, generator=g) for n, d_in, _ in LAYERS}
        out.update({f"{n}/x": np_(x) for n, x in xs.items()})
        out.update({f"{n}/y_trained": np_(y) for n, y in model(xs).items()})
        model.save_pretrained(f"{tmp}/converted", path_initial_model_for_weight_conversion=f"{tmp}/init")
        converted = json.loads(Path(f"{tmp}/converted/adapter_config.json").read_text())
        info["converted_config"] = {k: converted[k] for k in ("r", "lora_alpha", "init_lora_weights")}
        fresh = Tiny()
        fresh.load_state_dict({k: torch.tensor(v) for k, v in _base_state(base, W0).items()})
        plain = PeftModel.from_pretrained(fresh, f"{tmp}/converted")
        for n in names:
            layer = _lora_layer(plain, n)
            out[f"{n}/A2"], out[f"{n}/B2"] = np_(layer.lora_A["default"].weight), np_(layer.lora_B["default"].weight)
        out.update({f"{n}/y_converted": np_(y) for n, y in plain(xs).items()})
    return out, info


def _base_state(model, W0):
    """The original layers' state from the wrapped Tiny ``model``: W0 before PiSSA/OLoRA, and the biases."""
    state = {}
    for n in W0:
        state[f"{n}.weight"] = W0[n]
        state[f"{n}.bias"] = np_(model.get_submodule(n).base_layer.bias)
    return state


# --------------------------------------------------------------------------- LoRA+
def loraplus_groups(ratio=16.0, lr=1e-3) -> dict:
    """name -> {"shape", "lr_multiplier"} of PEFT's create_loraplus_optimizer on a DoRA model with biases."""
    model = get_peft_model(Tiny(), LoraConfig(r=2, target_modules=[n for n, _, _ in LAYERS],
                                                      use_dora=True, bias="lora_only"))
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=ratio)
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: {"shape": list(p.shape), "lr_multiplier": group["lr"] / lr}
            for group in opt.param_groups for p in group["params"]}


# --------------------------------------------------------------------------- main
def build_all():
    """Every fixture: ({file: {key: array}}, meta)."""
    files, meta = {"dora": {}, "combine": {}, "init": {}}, {"cases": {}}
    with default_dtype(torch.float64):
        for case, kw in {"plain": {}, "rslora": {"use_rslora": True}, "dropout": {"dropout": True}}.items():
            tensors, info = dora_case(**kw)
            files["dora"].update({f"{case}/{k}": v for k, v in tensors.items()})
            meta["cases"][f"dora/{case}"] = info
        files["combine"], meta["cases"]["combine"] = combine_case()
        meta["loraplus"] = {"ratio": 16.0, "groups": loraplus_groups(16.0)}
        meta["peft_zero_row_output_is_finite"] = zero_row_is_finite_in_peft()
    for init in ("pissa", "olora"):                       # float32: PEFT refuses PiSSA/OLoRA in float64
        tensors, info = init_case(init)
        files["init"].update({f"{init}/{k}": v for k, v in tensors.items()})
        meta["cases"][f"init/{init}"] = info
    meta["versions"] = {"peft": peft.__version__, "torch": torch.__version__, "numpy": np.__version__,
                        "python": sys.version.split()[0]}
    return files, meta


def main():
    from safetensors.numpy import save_file

    warnings.filterwarnings("ignore")
    files, meta = build_all()
    OUT.mkdir(parents=True, exist_ok=True)
    for stem, tensors in files.items():
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(OUT / f"{stem}.safetensors"))
    (OUT / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT} ({sum(f.stat().st_size for f in OUT.iterdir()) / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
