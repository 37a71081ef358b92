"""Shared by the interop specs: the committed reference artefacts and the live-library helpers.

tests/fixtures/ is written by scripts/make_reference_fixtures.py with torch, transformers and PEFT
(versions in tests/fixtures/VERSIONS.json); the specs read it with NumPy only.
"""
import contextlib
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from minilora import io

FIXTURES = Path(__file__).resolve().parent / "fixtures"
HF_TINY = FIXTURES / "hf_gpt2_tiny"
HF_TINY_ORIGINAL = FIXTURES / "hf_gpt2_tiny_original"
ADAPTERS = FIXTURES / "peft_adapters"


def expected(folder) -> dict:
    """The fixture's expected outputs: tokens (B, T), logits (B, T, V) or (B, K), maybe last (B,)."""
    tensors, _ = io.load_tensors(Path(folder) / "expected.safetensors")
    return tensors


def max_abs(received, expected_) -> float:
    return float(np.max(np.abs(np.asarray(received, dtype=np.float64) - np.asarray(expected_, dtype=np.float64))))


def torch_mirror():
    """benchmarks/torch_gpt.py (minilora's GPT in PyTorch, same parameter names); skips without torch."""
    pytest.importorskip("torch")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import torch_gpt
    return torch_gpt


@contextlib.contextmanager
def captured_warnings(*loggers):
    """Collect, into the yielded list, every Python warning and WARNING+ record on the named loggers."""
    messages, records = [], []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(level=logging.WARNING)
    for name in loggers:
        logging.getLogger(name).addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
    finally:
        for name in loggers:
            logging.getLogger(name).removeHandler(handler)
        messages += [f"{w.category.__name__}: {w.message}" for w in caught] + [r.getMessage() for r in records]


@contextlib.contextmanager
def no_warnings_or_log_records(*loggers, allowed=()):
    """Fail if the block emits a warning (or a WARNING+ log record) that is not in ``allowed``."""
    with captured_warnings(*loggers) as messages:
        yield
    unexpected = [m for m in messages if m not in allowed]
    assert not unexpected, f"expected no warnings, received {unexpected}"


# --------------------------------------------------------------------------- adapters merged by the textbook formula
CASES_LM = ("lora_wq_wv", "rank_alpha_patterns", "bias_lora_only", "bias_all", "layers_to_transform")
ALL_CASES = CASES_LM + ("modules_to_save_head", "dora")


def adapted_names(tensors) -> list[str]:
    return sorted(k.removesuffix(".lora_A.weight") for k in tensors if k.endswith(".lora_A.weight"))


def merged_model(tensors: dict, scales: dict, *, dtype=np.float64):
    """The fixture's base GPT with every adapter merged: W = W0 + s B A (Hu et al. 2021, eq. 3), or for
    DoRA W = m * V / ||V||_row with V = W0 + s B A (Liu et al. 2024, eq. 5); every other tensor in
    ``tensors`` (trained biases, saved modules) replaces the base's own."""
    from minilora.interop.hf_gpt2 import read_hf_gpt2
    from minilora.nn.model import GPT

    config, params = read_hf_gpt2(HF_TINY, dtype=dtype)
    for module, s in scales.items():
        A, B_ = tensors[module + ".lora_A.weight"], tensors[module + ".lora_B.weight"]
        W = params[module + ".weight"] + s * (B_.astype(dtype) @ A.astype(dtype))
        m = tensors.get(module + ".lora_magnitude_vector")
        if m is not None:
            W = m.astype(dtype)[:, None] * W / np.linalg.norm(W, axis=1, keepdims=True)
        params[module + ".weight"] = W
    for key, value in tensors.items():
        if ".lora_" not in key:
            params[key] = value.astype(dtype)
    return GPT(config, params)


def lora_modules(lora_model, adapter="default") -> dict:
    """module -> (r, lora_alpha) of a LoraModel's adapter (alpha recovered from its scale)."""
    rs = lora_model.adapters[adapter].use_rslora
    return {m: (r, s * (r ** 0.5 if rs else r)) for m, (r, s) in lora_model.modules[adapter].items()}
