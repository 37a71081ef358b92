"""Spec: minilora's 4-bit quantization against the live bitsandbytes library, where it is installed.

Skipped cleanly without PyTorch and bitsandbytes (neither is a dependency of minilora); the
committed files of test_quant_bnb.py cover the same ground everywhere. Run it in the side
environment of scripts/make_bnb_fixtures.py:

    .venv-bnb/bin/pip install -e . pytest && .venv-bnb/bin/python -m pytest tests/test_quant_bnb_live.py

Plain 4-bit results must agree bit for bit; double quantization to a tolerance (bitsandbytes'
CPU 8-bit quantizer uses a lookup table, see test_quant_bnb.py). Dequantized weights are compared
with bitsandbytes' reference path, which its CPU kernel does not always match (test_quant_bnb.py).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")
F = pytest.importorskip("bitsandbytes.functional")

from minilora.adapters import quant_codes as qc  # noqa: E402  (after the skips)
from minilora.adapters.qlinear import qlinear_forward  # noqa: E402
from minilora.adapters.quant import dequantize_4bit, quantize_4bit  # noqa: E402
from minilora.adapters.quant_dq import double_dequantize, double_quantize  # noqa: E402
from minilora.adapters.quant_tensor import quantize  # noqa: E402

pytestmark = pytest.mark.slow          # importing PyTorch alone takes seconds

SHAPES = [(33, 64), (5, 127), (256, 128), (1, 1), (3, 1000)]


def reference_dequantize(packed, absmax, state):
    """bitsandbytes' pure-PyTorch dequantization, the reference its kernels are kept equal to."""
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute

    return _dequantize_4bit_compute(packed.reshape(-1), absmax, state.code, state.blocksize, state.shape,
                                    torch.float32).numpy()


def test_tables_equal_the_live_library_bit_for_bit():
    """nf4_code, fp4_code and dynamic_map equal get_4bit_type and create_dynamic_map of the installed version."""
    pairs = [(qc.nf4_code(), F.get_4bit_type("nf4", device="cpu")), (qc.fp4_code(), F.get_4bit_type("fp4", device="cpu")),
             (qc.dynamic_map(), F.create_dynamic_map(signed=True))]
    for mine, theirs in pairs:
        assert np.array_equal(mine.view(np.uint32), theirs.numpy().view(np.uint32)), f"{mine} vs {theirs}"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("blocksize", [32, 64, 4096])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_plain_quantization_equals_quantize_4bit(shape, blocksize, quant_type):
    """Packed bytes, scales and dequantized weights equal the library's for odd shapes and block sizes."""
    w = (np.random.default_rng(sum(shape) + blocksize).standard_normal(shape) * 0.02).astype(np.float32)
    packed_t, state = F.quantize_4bit(torch.from_numpy(w), blocksize=blocksize, quant_type=quant_type)
    packed, absmax = quantize_4bit(w, quant_type, blocksize)
    assert np.array_equal(packed, packed_t.numpy().reshape(-1)), "packed bytes differ"
    assert np.array_equal(absmax, state.absmax.numpy()), "block scales differ"
    expected = reference_dequantize(packed_t, state.absmax, state)
    got = dequantize_4bit(packed, absmax, shape, quant_type, blocksize)
    assert np.array_equal(got, expected), f"max |diff| {np.abs(got - expected).max()}"


def test_double_quantization_is_within_the_library_lookup_table():
    """compress_statistics=True: at most 1% of scale codes differ, by one step; scales within 1%."""
    w = (np.random.default_rng(9).standard_normal((1024, 1024)) * 0.02).astype(np.float32)
    _, state = F.quantize_4bit(torch.from_numpy(w), blocksize=64, quant_type="nf4", compress_statistics=True)
    mine = double_quantize(quantize_4bit(w, "nf4", 64)[1])
    steps = mine.qabsmax.astype(int) - state.absmax.numpy().astype(int)
    assert np.abs(steps).max() <= 1 and np.count_nonzero(steps) <= steps.size // 100, \
        f"{np.count_nonzero(steps)} of {steps.size} codes differ, by up to {np.abs(steps).max()}"
    theirs = (F.dequantize_blockwise(state.absmax, state.state2) + state.offset).numpy()
    change = np.abs(double_dequantize(mine) - theirs) / theirs
    assert change.max() < 0.01, f"scales differ by up to {change.max():.2%}"


def test_qlinear_equals_linear4bit():
    """qlinear_forward on minilora's NF4 weight equals bitsandbytes.nn.Linear4bit's output to float32 rounding."""
    rng = np.random.default_rng(10)
    w = (rng.standard_normal((64, 128)) * 0.02).astype(np.float32)
    x = rng.standard_normal((4, 128)).astype(np.float32)
    layer = bnb.nn.Linear4bit(128, 64, bias=False, quant_type="nf4", compress_statistics=False)
    layer.weight = bnb.nn.Params4bit(torch.from_numpy(w), requires_grad=False, quant_type="nf4",
                                     compress_statistics=False)
    layer = layer.to("cpu")                            # moving the layer is what quantizes its weight
    assert layer.weight.bnb_quantized, "the weight was not quantized"
    expected = layer(torch.from_numpy(x)).detach().numpy()
    y, _ = qlinear_forward(x, quantize(w, "nf4", 64))
    err = np.abs(y - expected).max() / np.abs(expected).max()
    assert err < 1e-5, f"relative difference {err:.2e}"
