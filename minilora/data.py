"""Data for minilora: a character tokenizer, the shipped character tasks, and text datasets.

Everything is drawn from a seed with NumPy's ``Generator``; nothing is downloaded. The tasks
set up the situation LoRA was made for (Hu et al. 2021, §1): a model pretrained on a broad mix
(copy, reverse, sort) is adapted to related but different downstream tasks (shift, rotate,
palindrome).

A generation example is a prompt and an answer, "." ends the answer:

    s = "rev:hello=" + "olleh."  (padded with "_" to T + 1 tokens)
    x = s[:-1], y = s[1:], mask[t] = 1 exactly where y[t] is an answer token

so the loss and accuracy count answer tokens only. A classification example is a prompt
ending in "?" ("pal:abcba?") and a label read at the position of the "?".

Shape letters: N examples, B batch, T time (block_size), M characters of a text file.
"""
from __future__ import annotations

import dataclasses
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

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


# --------------------------------------------------------------------------- datasets
@dataclass
class TaskData:
    """Generation examples. x, y: (N, T) int64; mask: (N, T) float32, 1 on answer targets."""

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray
    task: str
    prompts: list[str]
    answers: list[str]

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class ClassificationData:
    """Classification examples. x: (N, T) int64 prompts, padded; last: (N,) int64 index of
    each prompt's "?" in x, where the class is read; labels: (N,) int64, 1 = "yes"."""

    x: np.ndarray
    last: np.ndarray
    labels: np.ndarray
    n_classes: int
    class_names: tuple[str, ...]
    task: str
    prompts: list[str]

    def __len__(self) -> int:
        return len(self.x)


_MAX_REDRAWS = 1000  # draws per example before giving up on finding an unseen input


def _draw(task, n, rng, min_len, max_len, exclude=frozenset()):
    """n (task, word, target) triples; words in ``exclude`` are drawn again."""
    if not task.min_input_len <= min_len <= max_len:
        raise ValueError(f"task {task.name!r} needs {task.min_input_len} <= min_len <= max_len, "
                         f"got min_len={min_len}, max_len={max_len}")
    # classification: exactly balanced labels (off by one when n is odd), in shuffled order
    labels = rng.permutation(np.arange(n) % 2) if task.kind == "classification" else [None] * n
    triples = []
    for label in labels:
        for _ in range(_MAX_REDRAWS):
            length = int(rng.integers(min_len, max_len + 1))
            args = (rng, length) if label is None else (rng, length, label)
            word, target = task.make(*args)
            if word not in exclude:
                break
        else:
            raise ValueError(f"task {task.name!r}: no input outside the {len(exclude)} training "
                             f"inputs in {_MAX_REDRAWS} draws; widen min_len..max_len or ask for "
                             f"fewer examples")
        triples.append((task, word, target))
    return triples


def _fit(ids, size, block_size, task, text, fix):
    if len(ids) > size:
        raise ValueError(f"task {task.name!r}: example {text!r} has {len(ids)} tokens, but "
                         f"block_size={block_size} fits {size}; {fix}")


def _encode_generation(triples, tok, block_size, name) -> TaskData:
    N, T = len(triples), block_size
    x = np.full((N, T), tok.pad_id, np.int64)
    y = np.full((N, T), tok.pad_id, np.int64)
    mask = np.zeros((N, T), np.float32)
    prompts, answers = [], []
    for i, (task, word, output) in enumerate(triples):
        prompt, answer = task.prompt(word), output + "."
        ids = tok.encode(prompt + answer)
        _fit(ids, T + 1, T, task, prompt + answer,
             f"raise block_size to at least {len(ids) - 1} or lower max_len")
        s = np.full(T + 1, tok.pad_id, np.int64)  # (T+1,)
        s[: len(ids)] = ids
        x[i], y[i] = s[:-1], s[1:]
        # y[t] = s[t+1] is an answer token for t + 1 in [P, P + A)
        mask[i, len(prompt) - 1 : len(prompt) - 1 + len(answer)] = 1.0
        prompts.append(prompt)
        answers.append(answer)
    return TaskData(x, y, mask, name, prompts, answers)


def _encode_classification(triples, tok, block_size, name) -> ClassificationData:
    N, T = len(triples), block_size
    x = np.full((N, T), tok.pad_id, np.int64)
    last = np.zeros(N, np.int64)
    labels = np.zeros(N, np.int64)
    prompts = []
    for i, (task, word, label) in enumerate(triples):
        prompt = task.prompt(word)
        ids = tok.encode(prompt)
        _fit(ids, T, T, task, prompt, f"raise block_size to at least {len(ids)} or lower max_len")
        x[i, : len(ids)] = ids
        last[i], labels[i] = len(ids) - 1, label
        prompts.append(prompt)
    return ClassificationData(x, last, labels, 2, ("no", "yes"), name, prompts)


def _encode(triples, tokenizer, block_size, name):
    tok = tokenizer or default_tokenizer()
    kind = triples[0][0].kind if triples else get_task(name).kind
    encode = _encode_generation if kind == "generation" else _encode_classification
    return encode(triples, tok, block_size, name)


def make_dataset(task_name: str, n: int, *, seed: int, block_size: int = 32, min_len: int = 3,
                 max_len: int = 8, tokenizer: CharTokenizer | None = None):
    """n examples of one task -> TaskData (T = block_size) or ClassificationData."""
    task = get_task(task_name)
    triples = _draw(task, n, np.random.default_rng(seed), min_len, max_len)
    return _encode(triples, tokenizer, block_size, task.name)


def make_splits(task_name: str, n_train: int, n_test: int, *, seed: int, block_size: int = 32,
                min_len: int = 3, max_len: int = 8, tokenizer: CharTokenizer | None = None):
    """(train, test) of one task, with no test input equal to any train input.

    train is the same as ``make_dataset(task_name, n_train, seed=seed)``: the test examples
    are drawn after it from the same stream, redrawing any input already used for training.
    """
    task, rng = get_task(task_name), np.random.default_rng(seed)
    train = _draw(task, n_train, rng, min_len, max_len)
    test = _draw(task, n_test, rng, min_len, max_len, exclude={word for _, word, _ in train})
    return (_encode(train, tokenizer, block_size, task.name),
            _encode(test, tokenizer, block_size, task.name))


def make_mixture(task_names, n: int, *, seed: int, block_size: int = 32, min_len: int = 3,
                 max_len: int = 8, tokenizer: CharTokenizer | None = None) -> TaskData:
    """n generation examples, the tasks in equal shares (off by at most one), in shuffled order.

    ``task`` of the result is the names joined by "+"; each prompt's tag names its own task.
    """
    tasks = [get_task(name) for name in task_names]
    if not tasks or any(t.kind != "generation" for t in tasks):
        raise ValueError(f"a mixture needs one or more generation tasks, got {list(task_names)}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(np.arange(n) % len(tasks))  # (N,) task index of each example
    triples = [t for k in order for t in _draw(tasks[k], 1, rng, min_len, max_len)]
    return _encode_generation(triples, tokenizer or default_tokenizer(), block_size,
                              "+".join(t.name for t in tasks))


def iterate_batches(data, batch_size: int, rng, *, epochs: int | None = None) -> Iterator[dict]:
    """Random full batches of rows: {"x", "y", "mask"}: (B, T) each, or {"x": (B, T),
    "last": (B,), "labels": (B,)} for ClassificationData.

    Each epoch shuffles the rows and yields N // B batches; the few rows left over are dropped
    (different ones each epoch) so that every batch has the same shape. epochs=None: forever.
    ``rng`` is a Generator or a seed.
    """
    if not isinstance(data, (TaskData, ClassificationData)):
        raise TypeError(f"iterate_batches takes TaskData or ClassificationData, got "
                        f"{type(data).__name__} (TextData has .sample)")
    fields = ("x", "y", "mask") if isinstance(data, TaskData) else ("x", "last", "labels")
    if not 1 <= batch_size <= len(data):
        raise ValueError(f"batch_size must be in 1..{len(data)} (the number of rows), "
                         f"got {batch_size}")
    rng = np.random.default_rng(rng)  # returns a Generator unchanged
    epoch = 0
    while epochs is None or epoch < epochs:
        order = rng.permutation(len(data))
        for start in range(0, len(data) - batch_size + 1, batch_size):
            rows = order[start : start + batch_size]  # (B,)
            yield {f: getattr(data, f)[rows] for f in fields}
        epoch += 1


# --------------------------------------------------------------------------- text files
@dataclass
class TextData:
    """A character-level corpus. ids: (M,) int64; windows of T = block_size are sampled from it.

    n_replaced and replaced_chars count the characters outside the vocabulary that became " ".
    """

    ids: np.ndarray
    tokenizer: CharTokenizer
    block_size: int = 32
    n_replaced: int = 0
    replaced_chars: list[str] = field(default_factory=list)
    source: str = "<text>"

    def __post_init__(self):
        if len(self.ids) < self.block_size + 1:  # one window x plus its shifted target y
            raise ValueError(f"{self.source} has {len(self.ids)} characters but block_size="
                             f"{self.block_size} needs at least {self.block_size + 1}; "
                             f"use more text or a smaller block_size")

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_text(cls, text: str, tokenizer: CharTokenizer | None = None, *, block_size: int = 32,
                  lowercase: bool = True, source: str = "<text>") -> "TextData":
        """Encode ``text``, replacing characters the tokenizer lacks by " "."""
        tok = tokenizer or default_tokenizer()
        if " " not in tok.stoi:
            raise ValueError("the tokenizer needs a ' ' to stand in for unknown characters")
        text = text.lower() if lowercase else text
        # padding is not text: a "_" in the file is treated like any unknown character
        known = set(tok.chars) - {tok.pad_char}
        replaced = [c for c in text if c not in known]
        clean = "".join(c if c in known else " " for c in text)
        ids = np.array(tok.encode(clean), dtype=np.int64)
        return cls(ids, tok, block_size, len(replaced), sorted(set(replaced)), source)

    @classmethod
    def from_file(cls, path, tokenizer: CharTokenizer | None = None, *, block_size: int = 32,
                  lowercase: bool = True) -> "TextData":
        """Read a UTF-8 text file (any plain text) and encode it as ``from_text`` does."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no text file at {str(path)!r}; "
                                    f"give the path of a UTF-8 text file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{str(path)!r} is not UTF-8 text ({e})") from None
        return cls.from_text(text, tokenizer, block_size=block_size, lowercase=lowercase,
                             source=str(path))

    def sample(self, batch_size: int, rng) -> dict:
        """Random windows: {"x": (B, T), "y": (B, T) = x shifted by one, "mask": (B, T) ones}."""
        rng, T = np.random.default_rng(rng), self.block_size
        starts = rng.integers(0, len(self.ids) - T, size=batch_size)  # leaves room for y's last id
        idx = starts[:, None] + np.arange(T)  # (B, T)
        return {"x": self.ids[idx], "y": self.ids[idx + 1],
                "mask": np.ones((batch_size, T), np.float32)}

    def split(self, fraction: float = 0.9) -> tuple["TextData", "TextData"]:
        """(train, val): the first ``fraction`` of the text and the rest, in file order."""
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
        cut = int(len(self.ids) * fraction)
        return (dataclasses.replace(self, ids=self.ids[:cut], source=f"{self.source}[:{cut}]"),
                dataclasses.replace(self, ids=self.ids[cut:], source=f"{self.source}[{cut}:]"))
