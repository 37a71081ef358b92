"""The character tokenizer and the shipped character tasks of minilora.

The tasks set up the situation LoRA was made for (Hu et al. 2021, §1): a model pretrained on a
broad mix (copy, reverse, sort) is adapted to related but different downstream tasks (shift,
rotate, palindrome). A task knows its prompt tag, its kind (generation or classification) and how
to solve a word; ``minilora.data.datasets`` turns tasks into seeded datasets.

A generation example is a prompt and an answer, "." ends the answer ("rev:hello=" + "olleh.");
a classification example is a prompt ending in "?" ("pal:abcba?") and a label.
"""
from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


# --------------------------------------------------------------------------- tokenizer
PAD = "_"
TASK_CHARS = PAD + "\n " + string.digits + string.ascii_lowercase + ":=.?!,;+-*/<>()|'"
LETTERS = string.ascii_lowercase


class CharTokenizer:
    """One id per character, in the order given; id 0 (the first character) is padding."""

    def __init__(self, chars: str):
        dupes = sorted({c for c in chars if chars.count(c) > 1})
        if not chars or dupes:
            raise ValueError(f"tokenizer characters must be non-empty and distinct; "
                             f"repeated: {dupes}")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.itos = {i: c for i, c in enumerate(chars)}
        self.pad_id = 0

    @property
    def vocab_size(self) -> int:
        """V, the number of ids."""
        return len(self.chars)

    @property
    def pad_char(self) -> str:
        """The character of id 0 ("_" by default); it never appears in data."""
        return self.chars[self.pad_id]

    def encode(self, text: str) -> list[int]:
        """text (length L) -> L ids. Raises ValueError naming the first unknown character."""
        for c in text:
            if c not in self.stoi:
                raise ValueError(
                    f"character {c!r} is not in the tokenizer's vocabulary; "
                    f"valid characters are {self.chars!r}"
                )
        return [self.stoi[c] for c in text]

    def decode(self, ids) -> str:
        """ids (any 1-D sequence of ints) -> text, with padding ids left out."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids {bad[:5]} are outside the vocabulary 0..{self.vocab_size - 1}")
        return "".join(self.itos[i] for i in ids if i != self.pad_id)

    def to_dict(self) -> dict:
        """A JSON-ready description; ``from_dict`` rebuilds the same tokenizer."""
        return {"type": "char", "chars": self.chars}

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        return cls(d["chars"])

    def __eq__(self, other) -> bool:
        return isinstance(other, CharTokenizer) and other.chars == self.chars

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, pad={self.pad_char!r})"


def default_tokenizer() -> CharTokenizer:
    """The tokenizer every shipped task and checkpoint uses: ``CharTokenizer(TASK_CHARS)``."""
    return CharTokenizer(TASK_CHARS)


# --------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class Task:
    """A shipped task.

    solve(word) gives the correct output string (generation) or label (classification).
    make draws one example from a Generator:
        generation:      make(rng, length) -> (word, output)
        classification:  make(rng, length, label) -> (word, label)
    The dataset code chooses the labels, which is how classes come out exactly balanced.
    """

    name: str
    tag: str
    kind: str  # "generation" | "classification"
    description: str
    solve: Callable = field(repr=False)
    make: Callable = field(repr=False)
    min_input_len: int = 1

    def prompt(self, word: str) -> str:
        """The prompt text: "tag:word=" (generation) or "tag:word?" (classification)."""
        return f"{self.tag}:{word}" + ("=" if self.kind == "generation" else "?")


def random_word(rng: np.random.Generator, length: int) -> str:
    """``length`` lowercase letters, each uniform over a..z."""
    return "".join(LETTERS[i] for i in rng.integers(0, 26, size=length))


def _generation_task(name: str, tag: str, description: str, solve: Callable) -> Task:
    def make(rng, length):
        word = random_word(rng, length)
        return word, solve(word)

    return Task(name, tag, "generation", description, solve, make)


def shift_word(word: str) -> str:
    """Each letter one step on in the alphabet, z wrapping to a: "abz" -> "bca"."""
    return "".join(LETTERS[(LETTERS.index(c) + 1) % 26] for c in word)


def is_palindrome(word: str) -> int:
    """1 if ``word`` reads the same backwards, else 0 (the palindrome task's label)."""
    return int(word == word[::-1])


def _palindrome(rng, length):
    """A random palindrome of ``length`` letters: a random half and its mirror image."""
    half = random_word(rng, (length + 1) // 2)  # the middle letter belongs to the first half
    return half + half[: length // 2][::-1]


def _near_miss(rng, length):
    """A palindrome with two unequal neighbours swapped (length >= 3).

    It has the letter counts of a palindrome, so counting letters cannot reject it. It is never
    a palindrome: one of the two swapped positions mirrors a position outside the swap, which
    keeps the old, different letter (the middle pair of an even palindrome is equal, never swapped).
    """
    while True:
        word = list(_palindrome(rng, length))
        spots = [i for i in range(length - 1) if word[i] != word[i + 1]]
        if spots:  # "aaaa" has no unequal neighbours: draw another palindrome
            i = spots[int(rng.integers(len(spots)))]
            word[i], word[i + 1] = word[i + 1], word[i]
            return "".join(word)


def _make_palindrome_example(rng, length, label):
    """(word, label): a palindrome for label 1; a near miss or a random non-palindrome for 0."""
    if label == 1:
        return _palindrome(rng, length), 1
    # about half the negatives are near misses; a 2-letter palindrome ("aa") has nothing to swap
    if length >= 3 and rng.random() < 0.5:
        return _near_miss(rng, length), 0
    while True:
        word = random_word(rng, length)
        if not is_palindrome(word):
            return word, 0


# Downstream tasks reuse what pretraining taught, changed: shift keeps copy's alignment but
# changes each letter; rotate is a new rearrangement; palindrome compares a word with its reverse.
TASKS: dict[str, Task] = {t.name: t for t in (
    _generation_task("copy", "cpy", "Write the letters unchanged.", lambda w: w),
    _generation_task("reverse", "rev", "Write the letters in reverse order.", lambda w: w[::-1]),
    _generation_task("sort", "srt", "Write the letters in alphabetical order.",
                     lambda w: "".join(sorted(w))),
    _generation_task("shift", "inc", "Move each letter one step on in the alphabet, z round to a.",
                     shift_word),
    _generation_task("rotate", "rol", "Move the first letter to the end.", lambda w: w[1:] + w[:1]),
    Task("palindrome", "pal", "classification",
         "Say whether the letters read the same backwards (1) or not (0).",
         is_palindrome, _make_palindrome_example, min_input_len=2),  # every 1-letter word is one
)}
PRETRAIN_TASKS = ("copy", "reverse", "sort")
DOWNSTREAM_TASKS = ("shift", "rotate", "palindrome")


def get_task(name: str) -> Task:
    """The registered task called ``name``; ValueError listing the valid names otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks are {sorted(TASKS)}")
    return TASKS[name]
