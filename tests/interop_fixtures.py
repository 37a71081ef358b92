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
def no_warnings_or_log_records(*loggers):
    """Fail if the block emits any Python warning, or a WARNING+ record on the named loggers."""
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(level=logging.WARNING)
    for name in loggers:
        logging.getLogger(name).addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for name in loggers:
            logging.getLogger(name).removeHandler(handler)
    messages = [f"{w.category.__name__}: {w.message}" for w in caught] + [r.getMessage() for r in records]
    assert not messages, f"expected no warnings, received {messages}"
