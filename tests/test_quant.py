"""Spec: blockwise absmax quantization to 4 bits, packing and dequantization (minilora.adapters.quant).

Expected values come from the definitions (nearest code, block maximum, high nibble first), from
brute-force searches, and from the QLoRA paper's setting (N(0, 0.02^2) weights, blocks of 64);
test_quant_bnb.py compares the same functions with bitsandbytes' own output.
"""
import numpy as np
import pytest

from minilora.nn import backend
from minilora.adapters import quant as q
from minilora.adapters.quant_codes import QUANT_TYPES, code_for

needs_gpu = pytest.mark.skipif(not backend.cupy_available(), reason="needs CuPy and a CUDA GPU")


def gaussian(shape, seed=0, std=0.02):
    """N(0, std^2) float32 weights, the distribution QLoRA's NF4 is built for."""
    return (np.random.default_rng(seed).standard_normal(shape) * std).astype(np.float32)


# --------------------------------------------------------------------------- nearest code
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
def test_nearest_code_picks_the_closest_table_value(quant_type):
    """Each scaled value gets a code at the smallest distance (a brute-force search over the 16 values)."""
    code = code_for(quant_type)
    scaled = np.random.default_rng(1).uniform(-1, 1, 5000).astype(np.float32)
    idx = q.nearest_code(scaled, code)
    distance = np.abs(code[idx] - scaled)
    best = np.abs(code[None, :] - scaled[:, None]).min(axis=1)
    assert np.array_equal(distance, best), f"{(distance != best).sum()} values not sent to a nearest code"


def test_a_value_on_a_midpoint_goes_to_the_lower_code():
    """A tie between two NF4 values is broken towards the lower one (torch.bucketize's rule)."""
    code = code_for("nf4")
    midpoints = (code[:-1] + code[1:]) / np.float32(2.0)
    idx = q.nearest_code(midpoints, code)
    assert np.array_equal(idx, np.arange(15)), f"expected the lower neighbours 0..14, got {idx}"


def test_fp4_zero_and_tiny_positive_values_use_different_zero_patterns():
    """FP4 keeps two zeros: 0 and tiny negatives map to pattern 0, tiny positives to pattern 8 (as bitsandbytes)."""
    idx = q.nearest_code(np.array([0.0, -1e-3, 1e-3], dtype=np.float32), code_for("fp4"))
    assert idx.tolist() == [0, 0, 8], f"expected [0, 0, 8], got {idx.tolist()}"


# --------------------------------------------------------------------------- packing
def test_packing_puts_the_first_code_in_the_high_nibble():
    """Codes [1, 2, 3] pack to bytes [0x12, 0x30]: first code high, an odd count padded with 0."""
    packed = q.pack_4bit(np.array([1, 2, 3], dtype=np.uint8))
    assert packed.tolist() == [0x12, 0x30], f"expected [0x12, 0x30], got {[hex(b) for b in packed]}"


def test_unpacking_inverts_packing():
    """unpack(pack(codes)) returns every code for even and odd counts."""
    rng = np.random.default_rng(2)
    for n in (1, 2, 7, 64, 129):
        codes = rng.integers(0, 16, n).astype(np.uint8)
        back = q.unpack_4bit(q.pack_4bit(codes), n)
        assert np.array_equal(back, codes), f"n = {n}: expected {codes}, got {back}"


def test_unpacking_rejects_a_byte_count_that_does_not_fit():
    """3 bytes cannot hold 8 codes: a ValueError giving the count needed."""
    with pytest.raises(ValueError, match="need 4"):
        q.unpack_4bit(np.zeros(3, dtype=np.uint8), 8)


def test_an_odd_count_pads_with_the_code_of_zero():
    """NF4 of 3 values fills the last half byte with 7, NF4's exact zero (as bitsandbytes)."""
    packed, _ = q.quantize_4bit(np.array([0.5, -1.0, 1.0], dtype=np.float32), "nf4", 64)
    assert packed[-1] & 0x0F == 7, f"expected padding code 7, got {packed[-1] & 0x0F}"


# --------------------------------------------------------------------------- blockwise absmax
def test_quantize_blockwise_on_a_worked_example():
    """Blocks of 2: [0.5, -1.0 | 0.25, 0.0] -> scales [1.0, 0.25], values [0.5, -1, 1, 0] -> their nearest NF4 codes."""
    code = code_for("nf4")
    flat = np.array([0.5, -1.0, 0.25, 0.0], dtype=np.float32)
    idx, absmax = q.quantize_blockwise(flat, code, 2)
    scaled = np.array([0.5, -1.0, 1.0, 0.0], dtype=np.float32)
    nearest = np.abs(code[None, :] - scaled[:, None]).argmin(axis=1)      # brute force over the 16 values
    assert absmax.tolist() == [1.0, 0.25], f"expected scales [1.0, 0.25], got {absmax.tolist()}"
    assert idx.tolist() == nearest.tolist(), f"expected codes {nearest.tolist()}, got {idx.tolist()}"


def test_quantize_blockwise_drops_the_padding_of_a_partial_block():
    """5 values in blocks of 4: 5 codes come back (not 8) and 2 scales, the second from the last value alone."""
    flat = np.array([0.1, -0.2, 0.3, -0.4, 0.05], dtype=np.float32)
    idx, absmax = q.quantize_blockwise(flat, code_for("nf4"), 4)
    assert idx.shape == (5,) and absmax.tolist() == [np.float32(0.4), np.float32(0.05)], \
        f"got {idx.shape} codes and scales {absmax.tolist()}"


def test_dequantize_blockwise_multiplies_each_code_by_its_block_scale():
    """Codes [0, 15 | 7, 9], scales [2, 0.5], blocks of 2: [2 code[0], 2 code[15], 0.5 code[7], 0.5 code[9]]."""
    code = code_for("nf4")
    idx = np.array([0, 15, 7, 9], dtype=np.uint8)
    x_hat = q.dequantize_blockwise(idx, np.array([2.0, 0.5], dtype=np.float32), code, 2)
    expected = np.array([2 * code[0], 2 * code[15], 0.5 * code[7], 0.5 * code[9]], dtype=np.float32)
    assert x_hat.dtype == np.float32, f"expected float32, got {x_hat.dtype}"
    assert np.array_equal(x_hat, expected), f"expected {expected}, got {x_hat}"


def test_each_block_is_scaled_by_its_own_largest_magnitude():
    """absmax holds max |x| of each block of 64 in row-major order, the last (partial) block included."""
    x = gaussian((3, 50))                                  # 150 values: blocks of 64, 64 and 22
    _, absmax = q.quantize_4bit(x, "nf4", 64)
    flat = x.reshape(-1)
    expected = [np.abs(flat[i:i + 64]).max() for i in range(0, 150, 64)]
    assert np.array_equal(absmax, expected), f"expected {expected}, got {absmax}"


def test_the_largest_magnitude_of_each_block_is_stored_exactly():
    """The block maximum scales to +-1, a code of every type, so it dequantizes to itself."""
    x = gaussian((16, 64), seed=3)
    for quant_type in QUANT_TYPES:
        x_hat = q.dequantize_4bit(*q.quantize_4bit(x, quant_type, 64), x.shape, quant_type, 64)
        rows = np.arange(16), np.abs(x).argmax(axis=1)     # one block per row here
        assert np.array_equal(x_hat[rows], x[rows]), f"{quant_type}: block maxima changed"


def test_an_all_zero_block_dequantizes_to_zero():
    """A block of zeros gets absmax 0 and comes back as zeros (no 0/0)."""
    x = np.zeros(128, dtype=np.float32)
    x[64:] = gaussian(64)
    packed, absmax = q.quantize_4bit(x, "nf4", 64)
    x_hat = q.dequantize_4bit(packed, absmax, x.shape)
    assert absmax[0] == 0 and np.all(x_hat[:64] == 0), f"absmax {absmax[0]}, values {x_hat[:64]}"


@pytest.mark.parametrize("quant_type", QUANT_TYPES)
def test_quantizing_dequantized_weights_reproduces_them(quant_type):
    """quantize(dequantize(q)) gives back the same weights; for NF4 (one zero) the very same bytes."""
    x = gaussian((37, 41), seed=4)                         # odd count, partial last block
    packed, absmax = q.quantize_4bit(x, quant_type, 64)
    x_hat = q.dequantize_4bit(packed, absmax, x.shape, quant_type, 64)
    packed2, absmax2 = q.quantize_4bit(x_hat, quant_type, 64)
    assert np.array_equal(absmax2, absmax), "block scales changed on re-quantization"
    assert np.array_equal(q.dequantize_4bit(packed2, absmax2, x.shape, quant_type, 64), x_hat), \
        "re-quantized weights dequantize to other values"
    if quant_type == "nf4":
        assert np.array_equal(packed2, packed), f"{(packed2 != packed).sum()} bytes changed"


def test_dequantize_returns_float32_products_in_the_asked_dtype():
    """A float64 result holds exactly the float32 products code * absmax (as bitsandbytes casts)."""
    x = gaussian((8, 16))
    packed, absmax = q.quantize_4bit(x, "nf4", 64)
    x64 = q.dequantize_4bit(packed, absmax, x.shape, dtype=np.float64)
    x32 = q.dequantize_4bit(packed, absmax, x.shape)
    assert x64.dtype == np.float64 and x32.dtype == np.float32, f"dtypes {x64.dtype}, {x32.dtype}"
    assert np.array_equal(x64, x32), f"max |diff| {np.abs(x64 - x32).max()}"


# --------------------------------------------------------------------------- error
def test_nf4_error_is_below_int4_and_fp4_on_gaussian_weights():
    """On N(0, 0.02^2) weights, blocks of 64: relative error NF4 ~0.092 < INT4 ~0.108 < FP4 ~0.122."""
    x = gaussian((512, 512), seed=5)
    err = {t: q.relative_error(x, q.dequantize_4bit(*q.quantize_4bit(x, t, 64), x.shape, t, 64))
           for t in QUANT_TYPES}
    assert 0.085 < err["nf4"] < 0.099, f"NF4 relative error {err['nf4']:.4f}, expected about 0.092"
    assert 0.100 < err["int4"] < 0.115, f"INT4 relative error {err['int4']:.4f}, expected about 0.108"
    assert err["nf4"] + 0.01 < err["int4"] < err["fp4"], f"expected NF4 < INT4 < FP4 with a margin, got {err}"


def test_smaller_blocks_give_smaller_errors():
    """Blocks of 32 < 64 < 256 < 4096 in NF4 relative error: fewer values share each scale."""
    x = gaussian((256, 256), seed=6)
    errs = [q.relative_error(x, q.dequantize_4bit(*q.quantize_4bit(x, "nf4", b), x.shape, "nf4", b))
            for b in (32, 64, 256, 4096)]
    assert errs == sorted(errs), f"errors for blocks 32, 64, 256, 4096: {errs}"


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("blocksize", [48, 0, 1, 100, 8192, 64.0, True, "64"])
def test_a_block_size_that_does_not_split_into_bytes_is_refused(blocksize):
    """Block sizes other than a power of two from 2 to 4096 are a ValueError saying what to use."""
    with pytest.raises(ValueError, match="power of two|must be an int"):
        q.quantize_4bit(gaussian(128), "nf4", blocksize)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused(bad):
    """A NaN or infinite weight is a ValueError counting the bad values (it would spoil its whole block)."""
    x = gaussian(100)
    x[7] = bad
    with pytest.raises(ValueError, match="1 of 100 values are NaN or infinite"):
        q.quantize_4bit(x)


@pytest.mark.parametrize("x, message", [(np.arange(8), "floating-point"), (np.zeros((0, 4), np.float32), "empty")])
def test_integer_or_empty_tensors_are_refused(x, message):
    """Integer and empty arrays cannot be quantized: a ValueError says which."""
    with pytest.raises(ValueError, match=message):
        q.quantize_4bit(x)


def test_dequantize_refuses_a_scale_count_that_does_not_match_the_shape():
    """Scales for 2 blocks with a shape of 3 blocks is a ValueError giving the expected count."""
    packed, absmax = q.quantize_4bit(gaussian(128))
    with pytest.raises(ValueError, match="expected 3"):
        q.dequantize_4bit(packed, absmax, (192,))


# --------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
def test_cupy_quantization_matches_numpy_bit_for_bit(quant_type):
    """On CuPy the packed bytes, scales and dequantized weights equal NumPy's exactly."""
    x = gaussian((96, 200), seed=7)                        # partial last block
    packed, absmax = q.quantize_4bit(x, quant_type, 64)
    x_hat = q.dequantize_4bit(packed, absmax, x.shape, quant_type, 64)
    backend.set_backend("cupy")
    packed_gpu, absmax_gpu = q.quantize_4bit(backend.asarray(x), quant_type, 64)
    x_hat_gpu = q.dequantize_4bit(packed_gpu, absmax_gpu, x.shape, quant_type, 64)
    assert np.array_equal(backend.to_numpy(packed_gpu), packed), "packed bytes differ"
    assert np.array_equal(backend.to_numpy(absmax_gpu), absmax), "block scales differ"
    assert np.array_equal(backend.to_numpy(x_hat_gpu), x_hat), "dequantized weights differ"
