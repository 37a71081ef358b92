"""The README's snippets run as written: "When you outgrow minilora" on a tiny random GPT-2.

The block is read from README.md and executed in a folder where ``gpt2`` is the tiny GPT-2 with its
own byte-level BPE (tests/fixtures/hf_gpt2_bpe_tiny) and ``notes.txt`` a short text; it asserts
itself that PyTorch + PEFT give minilora's logits. Needs torch, transformers, peft and tokenizers.
"""
import re
import shutil
from pathlib import Path

import pytest

from interop_fixtures import FIXTURES

ROOT = Path(__file__).resolve().parents[1]


def readme_block(title: str) -> str:
    """The first ```python block under the README section ``title``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"expected a python block in README section {title!r}"
    return match.group(1)


@pytest.mark.reference
def test_outgrow_snippet_continues_a_minilora_adapter_in_pytorch_and_peft(tmp_path, monkeypatch):
    """Train in NumPy, export, load in PEFT on GPT2LMHeadModel (same logits), train on, save: all as written."""
    for module in ("torch", "transformers", "peft", "tokenizers"):
        pytest.importorskip(module)
    shutil.copytree(FIXTURES / "hf_gpt2_bpe_tiny", tmp_path / "gpt2")
    (tmp_path / "notes.txt").write_text("Low-rank adaptation trains two small matrices per layer; "
                                        "the pretrained weights stay frozen. " * 40)
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(compile(readme_block("When you outgrow minilora"), "README.md", "exec"), ns)
    # and back, as the last comment says: PEFT's further-trained adapter read into minilora
    from minilora.adapters.lora_model import LoraModel
    from minilora.experiments.hf_finetune import load_hf
    from minilora.interop.fused_qkv import load_hf_gpt2_adapter

    back = LoraModel(load_hf(tmp_path / "gpt2")[0])
    load_hf_gpt2_adapter(back, tmp_path / "gpt2-lora-more")
    torch = ns["torch"]
    with torch.no_grad():
        theirs = ns["model"].eval()(ns["ids"]).logits.numpy()
    err = float(abs(back.forward(ns["ids"].numpy())[0] - theirs).max())
    assert err < 1e-4, f"expected PEFT's logits after its own training, max error {err:.2e}"
