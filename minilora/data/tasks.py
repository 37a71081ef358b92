"""The character tokenizer and the shipped character tasks of minilora.

The tasks set up the situation LoRA was made for (Hu et al. 2021, §1): a model pretrained on a
broad mix (copy, reverse, sort) is adapted to related but different downstream tasks. Three of them
are the downstream set every comparison uses (``DOWNSTREAM_TASKS``):

    rotate    close to pretraining: copy with the first letter moved to the end
    double    far from it: arithmetic on digits, which the base never saw (the paper's footnote 6:
              a task far from pretraining may need more rank; full fine-tuning is said to beat
              LoRA on math)
    ordered   classification with a new head: are the letters already in alphabetical order?

``shift`` (each letter one on) and ``palindrome`` stay available. A task knows its prompt tag, its
kind (generation or classification), how to solve a word and its usual word lengths;
``minilora.data.datasets`` turns tasks into seeded datasets.

A generation example is a prompt and an answer, "." ends the answer ("rev:hello=" + "olleh.");
a classification example is a prompt ending in "?" ("ord:abkx?") and a label.
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
DIGITS = string.digits


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
    ``lengths`` is the range of word lengths a dataset uses when the caller gives none;
    ``min_input_len`` the shortest word the task accepts at all.
    """

    name: str
    tag: str
    kind: str  # "generation" | "classification"
    description: str
    solve: Callable = field(repr=False)
    make: Callable = field(repr=False)
    min_input_len: int = 1
    lengths: tuple = (3, 8)

    def prompt(self, word: str) -> str:
        """The prompt text: "tag:word=" (generation) or "tag:word?" (classification)."""
        return f"{self.tag}:{word}" + ("=" if self.kind == "generation" else "?")


def random_word(rng: np.random.Generator, length: int, alphabet: str = LETTERS) -> str:
    """``length`` characters, each uniform over ``alphabet`` (default a..z)."""
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=length))


def pretraining_word(rng: np.random.Generator, length: int) -> str:
    """A word of letters (3 in 4) or of digits (1 in 4): the base learns to read and write digits as
    well as letters, though it never computes with them."""
    return random_word(rng, length, DIGITS if rng.random() < 1 / 4 else LETTERS)


def _generation_task(name: str, tag: str, description: str, solve: Callable, draw: Callable = random_word) -> Task:
    def make(rng, length):
        word = draw(rng, length)
        return word, solve(word)

    return Task(name, tag, "generation", description, solve, make)


# --------------------------------------------------------------------------- double (arithmetic)

def double_number(word: str) -> str:
    """The decimal number ``word`` times two: "1234" -> "2468", "0479" -> "0958" (as many digits)."""
    return str(2 * int(word)).zfill(len(word))


def _make_double(rng, length):
    """A ``length``-digit number whose first digit is 0..4, so its double has as many digits and the
    answer lines up with the question digit by digit, as in copy. Each answer digit is
    (2 d_i + [d_(i+1) >= 5]) mod 10: a carry comes only from the next digit, never further."""
    word = DIGITS[int(rng.integers(0, 5))] + "".join(DIGITS[i] for i in rng.integers(0, 10, size=length - 1))
    return word, double_number(word)


# --------------------------------------------------------------------------- ordered (classification)
def is_ordered(word: str) -> int:
    """1 if the letters of ``word`` are in alphabetical order (repeats allowed), else 0."""
    return int(all(a <= b for a, b in zip(word, word[1:])))


def _make_ordered_example(rng, length, label):
    """(word, label): a sorted random word for label 1; for 0 a near miss (a sorted word with two
    unequal neighbours swapped: same letters, one pair out of order) or a random unsorted word."""
    if label == 1:
        return "".join(sorted(random_word(rng, length))), 1
    if rng.random() < 0.5:
        word = sorted(random_word(rng, length))
        spots = [i for i in range(length - 1) if word[i] != word[i + 1]]
        if spots:                            # "aaa" has no unequal neighbours: fall back to random
            i = spots[int(rng.integers(len(spots)))]
            word[i], word[i + 1] = word[i + 1], word[i]
            return "".join(word), 0
    while True:
        word = random_word(rng, length)
        if not is_ordered(word):
            return word, 0


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


# Downstream tasks reuse what pretraining taught, changed: rotate is a new rearrangement; double keeps
# copy's alignment but computes on digits the base never saw; ordered asks sort's question as a yes/no;
# shift keeps copy's alignment but changes each letter; palindrome compares a word with its reverse,
# which a causal model reading left to right finds hard (full fine-tuning stays near 58% after 400
# steps), so it is not in the downstream set.
TASKS: dict[str, Task] = {t.name: t for t in (
    # pretraining: words of letters or of digits, so the base knows every character it will compute with
    _generation_task("copy", "cpy", "Write the characters unchanged.", lambda w: w, pretraining_word),
    _generation_task("reverse", "rev", "Write the characters in reverse order.", lambda w: w[::-1], pretraining_word),
    _generation_task("sort", "srt", "Write the characters in order.", lambda w: "".join(sorted(w)), pretraining_word),
    _generation_task("shift", "inc", "Move each letter one step on in the alphabet, z round to a.",
                     shift_word),
    _generation_task("rotate", "rol", "Move the first letter to the end.", lambda w: w[1:] + w[:1]),
    Task("palindrome", "pal", "classification",
         "Say whether the letters read the same backwards (1) or not (0).",
         is_palindrome, _make_palindrome_example, min_input_len=2),  # every 1-letter word is one
    Task("double", "dbl", "generation", "Double a number whose first digit is 0..4 (as many digits).",
         double_number, _make_double, lengths=(2, 6)),
    Task("ordered", "ord", "classification", "Say whether the letters are in alphabetical order (1) or not (0).",
         is_ordered, _make_ordered_example, min_input_len=2, lengths=(3, 6)),
)}
PRETRAIN_TASKS = ("copy", "reverse", "sort")
DOWNSTREAM_TASKS = ("rotate", "double", "ordered")


def get_task(name: str) -> Task:
    """The registered task called ``name``; ValueError listing the valid names otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks are {sorted(TASKS)}")
    return TASKS[name]
