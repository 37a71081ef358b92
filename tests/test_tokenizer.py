"""Spec of minilora.interop.tokenizer: GPT-2's byte-level BPE read through the ``tokenizers`` library.

The expected ids come from transformers' GPT2TokenizerFast on the same files
(tests/fixtures/hf_gpt2_bpe_tiny/expected.safetensors, scripts/make_reference_fixtures.py).
"""
import shutil

import pytest

from minilora.interop.tokenizer import BPETokenizer, has_tokenizer

from interop_fixtures import FIXTURES, expected

pytest.importorskip("tokenizers")
BPE = FIXTURES / "hf_gpt2_bpe_tiny"
SAMPLE = "The adapted model begins where the pretrained one stands: low rank, small matrices.\n"  # the script's


def test_tokenizer_json_encodes_as_transformers_does():
    """tokenizer.json: the ids GPT2TokenizerFast gives, and decoding gives the text back exactly."""
    tok = BPETokenizer.from_folder(BPE)
    want = expected(BPE)["text_ids"].tolist()
    got = tok.encode(SAMPLE)
    assert got == want, f"expected {want}, received {got}"
    assert tok.decode(got) == SAMPLE, f"expected the text back, received {tok.decode(got)!r}"


def test_original_vocab_and_merges_files_give_the_same_tokenizer(tmp_path):
    """vocab.json + merges.txt (the original GPT-2 layout): the same ids, and <|endoftext|> stays special."""
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(BPE / name, tmp_path / name)
    tok = BPETokenizer.from_folder(tmp_path)
    got = tok.encode(SAMPLE + "<|endoftext|>")
    want = expected(BPE)["text_ids"].tolist() + [tok.eos_id]
    assert tok.eos_id == 0 and got == want, f"expected {want} (eos 0), received {got} (eos {tok.eos_id})"
    assert tok.decode(got) == SAMPLE, "expected decoding to drop the end-of-text token"


def test_vocabulary_size_counts_the_special_token():
    """V = 320, the model's vocab_size in config.json."""
    tok = BPETokenizer.from_folder(BPE)
    assert tok.vocab_size == 320, f"expected 320, received {tok.vocab_size}"


def test_a_folder_without_tokenizer_files_is_a_clear_error(tmp_path):
    """No tokenizer.json and no vocab.json + merges.txt: the message names the files to add."""
    assert not has_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        BPETokenizer.from_folder(tmp_path)
