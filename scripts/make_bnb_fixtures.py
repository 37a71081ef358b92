"""Build the bitsandbytes reference files that tests/test_quant_bnb.py checks minilora against.

minilora never depends on PyTorch or bitsandbytes. This script runs in a side environment that has
them, quantizes small fixed-seed matrices with the real library, and writes what it returns (packed
bytes, block scales, nested state, dequantized weights, a 4-bit matmul and its input gradient)
to tests/fixtures/bnb/, with the library versions in versions.json:

    python3 -m venv .venv-bnb
    .venv-bnb/bin/pip install torch==2.13.0 bitsandbytes numpy safetensors scipy transformers
    .venv-bnb/bin/python scripts/make_bnb_fixtures.py

Everything runs on bitsandbytes' CPU path. scipy (for create_normal_map) and transformers (for the
BitsAndBytesConfig defaults) are optional: without them those entries are left out.

Dequantized weights are taken from bitsandbytes' reference implementation
(``backends.default.ops._dequantize_4bit_compute``, the pure-PyTorch path the library keeps equal
to its kernels), not from ``dequantize_4bit`` on the CPU: with bitsandbytes 0.50.2 on an AVX-512
CPU that kernel returns other values when a row's length is a multiple of 16 but not of the block
size (blocks then straddle rows). The files must not depend on the CPU that made them, so the
script records, per case, how many values the CPU kernel got wrong here (versions.json,
"cpu_kernel_mismatches"), and uses weights 128 wide for the matmul case, where the kernel agrees.
Names inside the files follow bitsandbytes' state dict: for a case "nf4", the packed weight is
"nf4.weight" and its state "nf4.weight.absmax", "nf4.weight.quant_map", ...
"""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import numpy as np
import safetensors
import torch
from safetensors.numpy import save_file

import bitsandbytes
import bitsandbytes.functional as F
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "bnb"
# (start, stop, num) grids for the float32 linspace check: NF4's two grids and some of the dynamic map's
LINSPACES = [(0.9677083, 0.5, 9), (0.9677083, 0.5, 8), (0.1, 1.0, 2), (0.1, 1.0, 17), (0.1, 1.0, 65),
             (0.1, 1.0, 129), (-3.0, 5.0, 101)]
KERNEL_MISMATCHES = {}     # "file/case" -> values where the CPU dequantize_4bit kernel differs from the reference


def gaussian(shape, seed, std=0.02):
    """N(0, std^2) float32 weights from NumPy's seeded generator (the tests read them from the file)."""
    return (np.random.default_rng(seed).standard_normal(shape) * std).astype(np.float32)


def quantized(file, prefix, w, quant_type, compress_statistics, blocksize=64):
    """bitsandbytes' quantize_4bit of w, as named arrays: packed weight, its state dict, the dequantized weight."""
    packed, state = F.quantize_4bit(torch.from_numpy(w), blocksize=blocksize, quant_type=quant_type,
                                    compress_statistics=compress_statistics)
    out = {f"{prefix}.weight": packed.numpy()}
    out.update({f"{prefix}.weight.{k}": v.numpy() for k, v in state.as_dict(packed=True).items()})
    absmax = state.absmax
    if compress_statistics:    # the block scales as bitsandbytes decodes them from 8 bits
        absmax = F.dequantize_blockwise(state.absmax, state.state2) + state.offset
        out[f"{prefix}.absmax_dequantized"] = absmax.numpy()
    reference = _dequantize_4bit_compute(packed.reshape(-1), absmax, state.code, blocksize, state.shape,
                                         torch.float32)
    out[f"{prefix}.dequantized"] = reference.numpy()
    KERNEL_MISMATCHES[f"{file}/{prefix}"] = int((F.dequantize_4bit(packed, state) != reference).sum())
    return out, packed, state


def matmul_case(prefix, packed, state, seed):
    """y = bitsandbytes.matmul_4bit(x, W^T, bias) and dx = dy @ dequant(W) through its autograd."""
    rng = np.random.default_rng(seed)
    d_out, d_in = state.shape
    x = torch.from_numpy(rng.standard_normal((3, 5, d_in)).astype(np.float32)).requires_grad_(True)
    bias = torch.from_numpy(rng.standard_normal(d_out).astype(np.float32) * 0.1)
    dy = torch.from_numpy(rng.standard_normal((3, 5, d_out)).astype(np.float32))
    y = bitsandbytes.matmul_4bit(x, packed.t(), bias=bias, quant_state=state)
    y.backward(dy)
    return {f"{prefix}.x": x.detach().numpy(), f"{prefix}.bias": bias.numpy(), f"{prefix}.y": y.detach().numpy(),
            f"{prefix}.dy": dy.numpy(), f"{prefix}.dx": x.grad.numpy()}


def tables():
    """The published code tables, bitsandbytes' own construction of them, and torch.linspace grids."""
    out = {"nf4_code": F.get_4bit_type("nf4", device="cpu").numpy(),
           "fp4_code": F.get_4bit_type("fp4", device="cpu").numpy(),
           "dynamic_map_signed": F.create_dynamic_map(signed=True).numpy(),
           "dynamic_map_unsigned": F.create_dynamic_map(signed=False).numpy()}
    try:
        out["normal_map"] = F.create_normal_map().numpy()                 # needs scipy
    except ImportError:
        print("scipy missing: create_normal_map left out")
    for i, (start, stop, num) in enumerate(LINSPACES):
        out[f"linspace{i}"] = torch.linspace(start, stop, num).numpy()
    return out


def library_defaults():
    """The 4-bit defaults users get without asking: Linear4bit's and transformers' BitsAndBytesConfig's."""
    import inspect

    sig = inspect.signature(bitsandbytes.nn.Linear4bit.__init__).parameters
    out = {"Linear4bit": {k: str(sig[k].default) for k in ("quant_type", "compress_statistics")},
           "quantize_4bit": {k: str(v.default) for k, v in inspect.signature(F.quantize_4bit).parameters.items()
                             if k in ("blocksize", "compress_statistics", "quant_type")}}
    try:
        import transformers

        cfg = transformers.BitsAndBytesConfig(load_in_4bit=True)
        out["BitsAndBytesConfig(load_in_4bit=True)"] = {
            "bnb_4bit_quant_type": cfg.bnb_4bit_quant_type, "bnb_4bit_use_double_quant": cfg.bnb_4bit_use_double_quant,
            "bnb_4bit_compute_dtype": str(cfg.bnb_4bit_compute_dtype)}
        out["transformers_version"] = transformers.__version__
    except ImportError:
        print("transformers missing: BitsAndBytesConfig defaults left out")
    return out


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    cases = {}

    # 1. plain NF4 and FP4, blocks of 64, two whole blocks per row: 48 x 128 = 6144 values = 96 blocks
    w = gaussian((48, 128), seed=1)
    files = {"plain_48x128": {"input": w}}
    for qt in ("nf4", "fp4"):
        arrays, packed, state = quantized("plain_48x128", qt, w, qt, False)
        files["plain_48x128"].update(arrays)
        files["plain_48x128"].update(matmul_case(f"{qt}.matmul", packed, state, seed=11))
    cases["plain_48x128"] = "N(0, 0.02^2) 48 x 128, blocksize 64, nf4 and fp4 without double quantization; " \
                            "matmul_4bit forward and input gradient on x (3, 5, 128)"

    # 2. blocks that straddle rows: 8 x 96 = 768 values = 12 blocks, every other one across two rows
    w = gaussian((8, 96), seed=4)
    files["straddle_8x96"] = {"input": w}
    for qt in ("nf4", "fp4"):
        files["straddle_8x96"].update(quantized("straddle_8x96", qt, w, qt, False)[0])
    cases["straddle_8x96"] = "N(0, 0.02^2) 8 x 96, blocksize 64 (blocks straddle rows), nf4 and fp4"

    # 3. double quantization: 96 x 200 = 19200 values = 300 blocks = one full and one partial block of 256 scales
    w = gaussian((96, 200), seed=2)
    files["nested_96x200"] = {"input": w}
    for qt in ("nf4", "fp4"):
        arrays, _, _ = quantized("nested_96x200", f"{qt}_dq", w, qt, True)
        if qt == "fp4":   # keep the file small: fp4's dequantized weight adds nothing the scales do not show
            del arrays["fp4_dq.dequantized"]
        files["nested_96x200"].update(arrays)
    cases["nested_96x200"] = "N(0, 0.02^2) 96 x 200, blocksize 64, compress_statistics=True (nested blocks of 256)"

    # 4. an odd count and a partial last block: 7 x 45 = 315 values = 4 blocks of 64 + 59
    w = gaussian((7, 45), seed=3, std=1.0)
    files["partial_7x45"] = {"input": w}
    for qt in ("nf4", "fp4"):
        for dq in (False, True):
            files["partial_7x45"].update(quantized("partial_7x45", f"{qt}{'_dq' if dq else ''}", w, qt, dq)[0])
    cases["partial_7x45"] = "N(0, 1) 7 x 45 (odd count, partial last block), nf4 and fp4, with and without " \
                            "compress_statistics"

    files["tables"] = tables()
    for name, arrays in files.items():
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, OUT / f"{name}.safetensors")

    state_keys = sorted(k.removeprefix("nf4_dq.weight.") for k in files["nested_96x200"]
                        if k.startswith("nf4_dq.weight."))
    info = {"versions": {"bitsandbytes": bitsandbytes.__version__, "torch": torch.__version__,
                         "numpy": np.__version__, "safetensors": safetensors.__version__,
                         "python": platform.python_version()},
            "device": "cpu", "cases": cases, "linspaces": LINSPACES,
            "nested_state_dict_keys": state_keys, "defaults": library_defaults(),
            "cpu_kernel_mismatches": KERNEL_MISMATCHES,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "command": " ".join([Path(sys.executable).name] + sys.argv)}
    (OUT / "versions.json").write_text(json.dumps(info, indent=2) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(files)} files and versions.json to {OUT} ({total / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
