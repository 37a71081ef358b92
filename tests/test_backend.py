"""Specification of the backend switch: one module decides NumPy or CuPy, and says so clearly."""
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from minilora.nn import backend
from minilora.nn.backend import xp

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "minilora"
needs_gpu = pytest.mark.skipif(not backend.cupy_available(), reason="needs CuPy and a CUDA GPU")


def test_numpy_is_the_default_backend():
    """Without MINILORA_BACKEND the array module is NumPy and the dtype float32."""
    assert backend.backend_name() == "numpy" and xp.zeros(2).__class__ is np.ndarray
    assert backend.default_dtype() is np.float32


def test_unknown_backend_is_a_clear_error():
    """Only numpy and cupy exist; the message lists them."""
    with pytest.raises(ValueError, match="choose one of"):
        backend.set_backend("jax")


@pytest.mark.skipif(backend.cupy_available(), reason="this machine has a GPU")
def test_asking_for_cupy_without_a_gpu_is_a_clear_error():
    """set_backend('cupy') without CuPy or a GPU raises, naming the extra to install and the fallback."""
    with pytest.raises(RuntimeError, match=r"minilora\[gpu\].*MINILORA_BACKEND=numpy"):
        backend.set_backend("cupy")
    assert backend.backend_name() == "numpy"


@pytest.mark.skipif(backend.cupy_available(), reason="this machine has a GPU")
def test_environment_variable_asking_for_cupy_fails_clearly_at_import():
    """MINILORA_BACKEND=cupy on a machine without a GPU stops at import with the same clear message."""
    env = dict(os.environ, MINILORA_BACKEND="cupy")
    proc = subprocess.run([sys.executable, "-c", "import minilora.nn.model"], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "CuPy is not installed or sees no CUDA GPU" in proc.stderr


def test_no_module_but_the_backend_imports_cupy():
    """The one-switch rule: `import cupy` appears in backend.py and nowhere else in the package."""
    offenders = [p.name for p in PACKAGE.glob("*.py") if p.name != "backend.py"
                 and re.search(r"^\s*(import cupy|from cupy)", p.read_text(), re.M)]
    assert offenders == [], f"cupy imported outside backend.py: {offenders}"


def test_no_module_uses_pickle():
    """Files are safetensors + JSON: nothing in the package imports pickle or allows it in np.load."""
    offenders = [p.name for p in PACKAGE.glob("*.py")
                 if re.search(r"^\s*import pickle|allow_pickle\s*=\s*True", p.read_text(), re.M)]
    assert offenders == []


def test_float64_default_dtype_reaches_new_parameters():
    """set_default_dtype(float64) makes new models float64 (for gradient checks)."""
    from minilora.nn.model import GPT, GPTConfig

    backend.set_default_dtype(np.float64)
    assert GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4)).dtype == np.float64


def test_seeded_generator_gives_the_same_numbers_twice():
    """backend.rng(seed) is NumPy's Generator: the same seed gives the same draws."""
    assert np.array_equal(backend.rng(5).standard_normal(4), backend.rng(5).standard_normal(4))


# --------------------------------------------------------------------------- on a GPU
@pytest.mark.gpu
@needs_gpu
def test_cupy_forward_and_backward_match_numpy():
    """The same model on CuPy gives NumPy's logits and gradients at float32 tolerance."""
    from minilora.adapters.config import LoraConfig
    from minilora.adapters.lora_model import LoraModel
    from minilora.nn.model import GPT, GPTConfig
    from minilora.nn.loss import loss_and_grads

    cfg = GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32)
    rng = np.random.default_rng(0)
    batch = {"x": rng.integers(0, 32, (4, 16)), "y": rng.integers(0, 32, (4, 16)), "mask": np.ones((4, 16), np.float32)}
    results = {}
    for name in ("numpy", "cupy"):
        backend.set_backend(name)
        lm = LoraModel(GPT(cfg, seed=0), LoraConfig(r=4, target_modules=["wq", "wv", "fc"]))
        for k in lm.params:
            if ".lora_B." in k:
                lm.params[k][...] = backend.asarray(0.05 * np.random.default_rng(1).standard_normal(lm.params[k].shape))
        loss, grads = loss_and_grads(lm, {k: backend.asarray(v) for k, v in batch.items()})
        logits = lm.forward(backend.asarray(batch["x"]))[0]
        results[name] = (loss, backend.to_numpy(logits), {k: backend.to_numpy(g) for k, g in grads.items()})
    backend.set_backend("numpy")
    (l_np, z_np, g_np), (l_cp, z_cp, g_cp) = results["numpy"], results["cupy"]
    assert abs(l_np - l_cp) < 1e-5 * abs(l_np)
    assert np.allclose(z_np, z_cp, rtol=1e-4, atol=1e-5)
    for k in g_np:
        assert np.allclose(g_np[k], g_cp[k], rtol=1e-3, atol=1e-5), k
