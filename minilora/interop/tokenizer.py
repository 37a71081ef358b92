"""GPT-2's byte-level BPE, read from a Hugging Face folder through Hugging Face's ``tokenizers``.

GPT-2 (Radford et al. 2019, §2.2) tokenizes bytes, not characters: the text's UTF-8 bytes are
mapped to 256 printable symbols, split into words by a regular expression, and each word is merged
into larger pieces by the learned merge list (byte-pair encoding, Sennrich et al. 2016). Any text
can be encoded and decoding gives it back exactly. minilora does not write its own BPE: it loads
the folder's files with the ``tokenizers`` library, an optional extra
(``pip install 'minilora[hf]'``), imported only when a BPE is needed.

A folder holds ``tokenizer.json`` (what ``save_pretrained`` writes; preferred) or the original GPT-2
files ``vocab.json`` + ``merges.txt``. The tokenizer offers what minilora's ``CharTokenizer`` offers
(``encode``, ``decode``, ``vocab_size``), so the text datasets and the generation loop take either.
"""
from __future__ import annotations

from pathlib import Path

END_OF_TEXT = "<|endoftext|>"          # GPT-2's one special token: separates documents, ends a generation


def require_tokenizers():
    """The ``tokenizers`` module, or an ImportError that says how to install it."""
    try:
        import tokenizers
    except ImportError:
        raise ImportError("reading a Hugging Face tokenizer needs the optional 'tokenizers' library: "
                          "pip install 'minilora[hf]' (or pip install tokenizers)") from None
    return tokenizers


class BPETokenizer:
    """GPT-2's byte-level BPE (a ``tokenizers.Tokenizer``) with minilora's tokenizer interface."""

    def __init__(self, tokenizer, source: str = "<tokenizer>"):
        self.tokenizer = tokenizer
        self.source = source
        self.eos_id = tokenizer.token_to_id(END_OF_TEXT)        # None when the vocabulary has no such token

    @classmethod
    def from_folder(cls, directory) -> "BPETokenizer":
        """Read ``tokenizer.json``, or ``vocab.json`` + ``merges.txt``, from a Hugging Face folder."""
        tokenizers = require_tokenizers()
        directory = Path(directory)
        if (directory / "tokenizer.json").is_file():
            return cls(tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json")), str(directory))
        vocab, merges = directory / "vocab.json", directory / "merges.txt"
        if not (vocab.is_file() and merges.is_file()):
            raise FileNotFoundError(f"{directory} has no tokenizer.json and no vocab.json + merges.txt; copy the "
                                    f"model's tokenizer files there (AutoTokenizer.save_pretrained writes them)")
        # GPT-2's original setup: BPE over the byte-level alphabet, no prefix space, byte-level decoding.
        tok = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(vocab), str(merges)))
        tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tokenizers.decoders.ByteLevel()
        if tok.token_to_id(END_OF_TEXT) is not None:            # in vocab.json: make it special, as GPT-2's is
            tok.add_special_tokens([END_OF_TEXT])
        return cls(tok, str(directory))

    @property
    def vocab_size(self) -> int:
        """V: the number of ids, special tokens included."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """text -> ids (no special tokens are added: GPT-2 adds none)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        """ids -> text; the end-of-text token is dropped."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, source={self.source!r})"


def has_tokenizer(directory) -> bool:
    """Whether ``directory`` holds tokenizer files ``BPETokenizer.from_folder`` reads."""
    d = Path(directory)
    return (d / "tokenizer.json").is_file() or ((d / "vocab.json").is_file() and (d / "merges.txt").is_file())
