"""Datasets for minilora: seeded examples of the shipped tasks (``minilora.data.tasks``), batches, and
text files.

Everything is drawn from a seed with NumPy's ``Generator``; nothing is downloaded. A generation
example is a prompt and an answer, "." ends the answer:

    s = "rev:hello=" + "olleh."  (padded with "_" to T + 1 tokens)
    x = s[:-1], y = s[1:], mask[t] = 1 exactly where y[t] is an answer token

so the loss and accuracy count answer tokens only. A classification example is a prompt
ending in "?" ("pal:abcba?") and a label read at the position of the "?".

Shape letters: N examples, B batch, T time (block_size), M characters of a text file.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from minilora.data.tasks import CharTokenizer, default_tokenizer, get_task

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


def _lengths(task, min_len, max_len) -> tuple[int, int]:
    """The word lengths to draw: the caller's, or the task's usual range where the caller gave None."""
    return (task.lengths[0] if min_len is None else min_len, task.lengths[1] if max_len is None else max_len)


def _draw(task, n, rng, min_len, max_len, exclude=frozenset()):
    """n (task, word, target) triples; words in ``exclude`` are drawn again."""
    min_len, max_len = _lengths(task, min_len, max_len)
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


def make_dataset(task_name: str, n: int, *, seed: int, block_size: int = 32, min_len: int | None = None,
                 max_len: int | None = None, tokenizer: CharTokenizer | None = None):
    """n examples of one task -> TaskData (T = block_size) or ClassificationData.

    Word lengths are drawn uniformly from min_len..max_len; None takes the task's own range
    (``Task.lengths``: 3..8 letters for most tasks).
    """
    task = get_task(task_name)
    triples = _draw(task, n, np.random.default_rng(seed), min_len, max_len)
    return _encode(triples, tokenizer, block_size, task.name)


def make_splits(task_name: str, n_train: int, n_test: int, *, seed: int, block_size: int = 32,
                min_len: int | None = None, max_len: int | None = None, tokenizer: CharTokenizer | None = None):
    """(train, test) of one task, with no test input equal to any train input.

    train is the same as ``make_dataset(task_name, n_train, seed=seed)``: the test examples
    are drawn after it from the same stream, redrawing any input already used for training.
    """
    task, rng = get_task(task_name), np.random.default_rng(seed)
    train = _draw(task, n_train, rng, min_len, max_len)
    test = _draw(task, n_test, rng, min_len, max_len, exclude={word for _, word, _ in train})
    return (_encode(train, tokenizer, block_size, task.name),
            _encode(test, tokenizer, block_size, task.name))


def make_mixture(task_names, n: int, *, seed: int, block_size: int = 32, min_len: int | None = None,
                 max_len: int | None = None, tokenizer: CharTokenizer | None = None) -> TaskData:
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


def trim_padding(data):
    """The same examples with the padding columns that no example reaches cut off the right end.

    TaskData keeps x, y, mask up to the last answer target of the longest example; ClassificationData
    keeps x up to the furthest "?". A causal model's output at position t reads only positions <= t,
    so every loss and prediction is the same, and a batch of T' < T columns costs about T'/T of the
    time. (Text windows have no padding; TextData comes back unchanged.)
    """
    if isinstance(data, TaskData):
        cols = np.flatnonzero(data.mask.any(axis=0))
        T = int(cols.max()) + 1 if cols.size else 1
        return dataclasses.replace(data, x=data.x[:, :T].copy(), y=data.y[:, :T].copy(), mask=data.mask[:, :T].copy())
    if isinstance(data, ClassificationData):
        T = int(data.last.max()) + 1 if len(data) else 1
        return dataclasses.replace(data, x=data.x[:, :T].copy())
    return data


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

    n_replaced and replaced_chars count the characters outside the vocabulary that became " ";
    a text that is mostly such characters is refused (it would train on spaces).
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
        if 2 * len(replaced) > len(text):
            examples = "".join(sorted(set(replaced))[:10])
            raise ValueError(f"{source}: {len(replaced)} of {len(text)} characters are not in the tokenizer's "
                             f"vocabulary (e.g. {examples!r}); they would all become spaces and the model would "
                             f"learn nothing from the text. Give text written in {tok.chars[1:]!r}")
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
