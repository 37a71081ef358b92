"""Spec of the commands that lead out to the ecosystem: generate, export, import-hf, finetune --hf.

NumPy only, except the ``reference`` tests, which load the exports with transformers and PEFT. Logits
of the tiny models are O(1); float32 products in another order agree to ~1e-6.
"""
import numpy as np
import pytest

from minilora import io
from minilora.adapters.lora_model import LoraModel
from minilora.cli import main
from minilora.experiments.pretrain import load_base
from minilora.interop import fused_qkv
from minilora.interop.hf_gpt2 import read_hf_gpt2
from minilora.nn.checkpoint import load_model
from minilora.nn.generate import generate
from minilora.nn.model import GPT

from interop_fixtures import FIXTURES, HF_TINY, expected, max_abs

BPE = FIXTURES / "hf_gpt2_bpe_tiny"
TEXT = ("Low-rank adaptation freezes the pretrained weights and trains two small matrices per layer. "
        "The update starts at zero, so the adapted model begins where the pretrained one stands. ") * 12


@pytest.fixture(scope="module")
def shift_adapter(tmp_path_factory):
    """An adapter the CLI trained briefly on shift (on the shipped base)."""
    out = tmp_path_factory.mktemp("cli") / "shift"
    assert main(["finetune", "--task", "shift", "--steps", "5", "--n-train", "100", "--n-test", "20",
                 "--out", str(out)]) == 0
    return out


def test_generate_prints_the_greedy_answer_of_a_task(capsys):
    """`generate --task reverse --prompt hello` prints the prompt and the greedy answer up to '.'."""
    base, tok = load_base()
    want = tok.decode(generate(base, tok.encode("rev:hello="), 22, temperature=0, stop_id=tok.encode(".")[0]))
    assert main(["generate", "--task", "reverse", "--prompt", "hello"]) == 0
    got = capsys.readouterr().out.strip()
    assert got == want and got.endswith("."), f"expected {want!r}, received {got!r}"


def test_generate_with_an_adapter_uses_it(shift_adapter, capsys):
    """With --adapter the text is the adapted model's (the same as generate on LoraModel + that adapter)."""
    base, tok = load_base()
    lm = LoraModel(base)
    lm.load_adapter(shift_adapter)
    want = tok.decode(generate(lm, tok.encode("inc:abc="), 24, temperature=0, stop_id=tok.encode(".")[0]))
    assert main(["generate", "--task", "shift", "--prompt", "abc", "--adapter", str(shift_adapter)]) == 0
    got = capsys.readouterr().out.strip()
    assert got == want, f"expected {want!r}, received {got!r}"


def test_generate_refuses_a_classification_task(capsys):
    """palindrome answers with a class: exit 2 and the reason."""
    assert main(["generate", "--task", "palindrome", "--prompt", "abba"]) == 2
    assert "classification" in capsys.readouterr().err


def test_export_writes_a_gpt2_folder_and_a_fused_adapter_with_the_same_logits(shift_adapter, tmp_path, rng):
    """export --format hf-gpt2 --adapter: the base as GPT-2 (read back: the base's logits) and the adapter on
    c_attn (read back onto it: the adapted logits)."""
    assert main(["export", str(tmp_path / "out"), "--format", "hf-gpt2", "--adapter", str(shift_adapter)]) == 0
    base, _ = load_base()
    lm = LoraModel(load_base()[0])
    lm.load_adapter(shift_adapter)
    exported = LoraModel(GPT(*read_hf_gpt2(tmp_path / "out")))
    idx = rng.integers(0, base.config.vocab_size, (2, 12))
    base_err = max_abs(exported.forward(idx)[0], base.forward(idx)[0])
    fused_qkv.load_hf_gpt2_adapter(exported, tmp_path / "out" / "adapter")
    err = max_abs(exported.forward(idx)[0], lm.forward(idx)[0])
    assert base_err < 1e-5 and err < 1e-5, f"expected the base and adapted logits, errors {base_err:.2e}, {err:.2e}"


def test_export_with_merge_writes_the_merged_model(shift_adapter, tmp_path, rng):
    """export --merge: one plain GPT-2 whose logits are the adapted model's."""
    assert main(["export", str(tmp_path), "--format", "hf-gpt2", "--adapter", str(shift_adapter), "--merge"]) == 0
    lm = LoraModel(load_base()[0])
    lm.load_adapter(shift_adapter)
    idx = rng.integers(0, lm.config.vocab_size, (2, 12))
    err = max_abs(GPT(*read_hf_gpt2(tmp_path)).forward(idx)[0], lm.forward(idx)[0])
    assert not (tmp_path / "adapter").exists() and err < 1e-5, f"expected the adapted logits, error {err:.2e}"


def test_export_is_one_save_that_can_replace_itself(shift_adapter, tmp_path, capsys):
    """Model, tokenizer and adapter are one folder save: exporting again into it works, and a folder holding
    other files is refused before any work (a save replaces the whole folder)."""
    for _ in range(2):
        assert main(["export", str(tmp_path / "out"), "--format", "hf-gpt2", "--hf", str(BPE)]) == 0
    assert (tmp_path / "out" / "tokenizer.json").is_file(), "expected the tokenizer to travel with the weights"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    assert main(["export", str(tmp_path / "other"), "--format", "hf-gpt2"]) == 2
    assert "notes.txt" in capsys.readouterr().err and (tmp_path / "other" / "notes.txt").is_file()


def test_finetune_hf_refuses_options_it_would_ignore(tmp_path, capsys):
    """--resume (or --method full) with --hf is refused by name, not silently dropped."""
    assert main(["finetune", "--hf", str(BPE), "--text", str(tmp_path / "t.txt"), "--resume", str(tmp_path)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_import_hf_writes_a_minilora_model_with_the_tokenizer(tmp_path):
    """import-hf: a minilora checkpoint giving transformers' logits, with the tokenizer files next to it."""
    assert main(["import-hf", str(HF_TINY), "--out", str(tmp_path / "tiny")]) == 0
    assert main(["import-hf", str(BPE), "--out", str(tmp_path / "bpe")]) == 0
    ref = expected(HF_TINY)
    model, extra = load_model(tmp_path / "tiny")
    err = max_abs(model.forward(ref["tokens"])[0], ref["logits"])
    assert err < 1e-5 and extra["imported_from"] == str(HF_TINY), f"error {err:.2e}, extra {extra}"
    assert (tmp_path / "bpe" / "tokenizer.json").is_file(), "expected the tokenizer copied"


def test_finetune_hf_then_generate_and_export_end_to_end(tmp_path, capsys):
    """finetune --hf on a text file (BPE) lowers the validation loss, saves both adapter folders, and generate
    --hf with either folder continues a prompt the same way."""
    pytest.importorskip("tokenizers")
    text = tmp_path / "notes.txt"
    text.write_text(TEXT)
    assert main(["finetune", "--hf", str(BPE), "--text", str(text), "--steps", "30", "--lr", "3e-3",
                 "--block-size", "16", "--batch-size", "8", "--out", str(tmp_path / "ad"),
                 "--export-peft", str(tmp_path / "peft"), "--sample", "The"]) == 0
    out = capsys.readouterr().out
    before, after = (float(x) for x in out.split("validation loss ")[1].split(",")[0].split(" -> "))
    assert after < before, f"expected the validation loss to fall, received {before} -> {after}"
    texts = []
    for adapter in ("ad", "peft"):
        assert main(["generate", "--hf", str(BPE), "--adapter", str(tmp_path / adapter), "--prompt", "The",
                     "--temperature", "0", "--max-new-tokens", "12"]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and texts[0].startswith("The"), f"expected one continuation, received {texts}"
    assert io.read_json(tmp_path / "peft" / "adapter_config.json")["fan_in_fan_out"] is True


# --------------------------------------------------------------------------- the real libraries
@pytest.mark.reference
def test_transformers_and_peft_load_the_export_to_minilora_logits(shift_adapter, tmp_path, rng):
    """GPT2LMHeadModel.from_pretrained(OUT) + PeftModel.from_pretrained(OUT/adapter): the adapted logits."""
    torch, transformers, peft = (pytest.importorskip(m) for m in ("torch", "transformers", "peft"))
    assert main(["export", str(tmp_path), "--format", "hf-gpt2", "--adapter", str(shift_adapter)]) == 0
    lm = LoraModel(load_base()[0])
    lm.load_adapter(shift_adapter)
    model = peft.PeftModel.from_pretrained(transformers.GPT2LMHeadModel.from_pretrained(tmp_path), tmp_path / "adapter")
    idx = rng.integers(0, lm.config.vocab_size, (2, 12))
    with torch.no_grad():
        theirs = model.eval()(torch.from_numpy(idx)).logits.numpy()
    err = max_abs(lm.forward(idx)[0], theirs)
    assert err < 1e-4, f"expected max |minilora - transformers + PEFT| < 1e-4, received {err:.2e}"
