"""Properties of minilora.data.datasets: datasets of the shipped tasks, splits, batching and text files.

Every expected value is recomputed here from the task's definition, not by calling the code
under test.
"""
import string
from collections import Counter

import numpy as np
import pytest

from minilora.data.datasets import (ClassificationData, TaskData, TextData, iterate_batches, make_dataset, make_mixture,
                           make_splits, trim_padding)
from minilora.data.tasks import PRETRAIN_TASKS, TASKS, default_tokenizer, get_task

TOK = default_tokenizer()
GENERATION = [name for name, t in TASKS.items() if t.kind == "generation"]


def words_and_answers(data):
    """The input word of each prompt "tag:word=" and the answer without its final "."."""
    return [p[4:-1] for p in data.prompts], [a[:-1] for a in data.answers]


# --------------------------------------------------------------------------- determinism, format
def test_same_seed_gives_identical_data():
    """Two datasets built with the same seed are equal, array for array."""
    for name in TASKS:
        a, b = make_dataset(name, 20, seed=3), make_dataset(name, 20, seed=3)
        assert a.prompts == b.prompts, f"{name}: prompts differ: {a.prompts[:3]} vs {b.prompts[:3]}"
        assert np.array_equal(a.x, b.x), f"{name}: x differs for the same seed"


def test_different_seeds_give_different_data():
    """Datasets built with different seeds differ."""
    for name in TASKS:
        a, b = make_dataset(name, 20, seed=1), make_dataset(name, 20, seed=2)
        assert a.prompts != b.prompts, f"{name}: seeds 1 and 2 both gave {a.prompts[:3]}"


def test_arrays_have_documented_shapes_and_dtypes():
    """Generation: x, y (N, T) int64, mask float32. Classification: last, labels (N,) int64."""
    gen = make_dataset("copy", 5, seed=0, block_size=24)
    got = [(a.shape, a.dtype) for a in (gen.x, gen.y, gen.mask)]
    assert got == [((5, 24), np.int64)] * 2 + [((5, 24), np.float32)], f"got {got}"
    cls = make_dataset("palindrome", 6, seed=0, block_size=24)
    got = [(a.shape, a.dtype) for a in (cls.x, cls.last, cls.labels)]
    assert got == [((6, 24), np.int64), ((6,), np.int64), ((6,), np.int64)], f"got {got}"
    assert (cls.n_classes, cls.class_names) == (2, ("no", "yes")), f"got {cls.n_classes, cls.class_names}"


def test_prompts_are_tag_colon_word_equals():
    """Each generation prompt is "<tag>:<word>=" and each answer ends in "."."""
    for name in GENERATION:
        data, tag = make_dataset(name, 10, seed=0), get_task(name).tag
        for p, a in zip(data.prompts, data.answers):
            assert p.startswith(tag + ":") and p.endswith("="), f"{name}: expected '{tag}:...=', got {p!r}"
            assert a.endswith("."), f"{name}: expected the answer to end in '.', got {a!r}"


def test_targets_are_inputs_shifted_by_one():
    """y[:, :-1] == x[:, 1:]: each target is the next input token."""
    data = make_dataset("reverse", 30, seed=0)
    assert np.array_equal(data.y[:, :-1], data.x[:, 1:]), "expected y[:, :-1] == x[:, 1:]"


def test_mask_covers_exactly_the_answer_tokens():
    """The targets under mask == 1 decode to the answer, and x then y rebuild prompt + answer."""
    for name in GENERATION:
        data = make_dataset(name, 20, seed=5)
        for i, (prompt, answer) in enumerate(zip(data.prompts, data.answers)):
            under = data.y[i][data.mask[i] == 1]
            assert TOK.decode(under) == answer and len(under) == len(answer), (
                f"{name}: expected {answer!r} under the mask, got {TOK.decode(under)!r}")
            whole = TOK.decode(np.r_[data.x[i, :1], data.y[i]])
            assert whole == prompt + answer, f"expected {prompt + answer!r}, got {whole!r}"


def test_input_lengths_stay_within_min_len_and_max_len():
    """Word lengths lie in [min_len, max_len] and reach both ends."""
    words, _ = words_and_answers(make_dataset("copy", 200, seed=0, min_len=2, max_len=5))
    lengths = {len(w) for w in words}
    assert lengths == {2, 3, 4, 5}, f"expected lengths {{2, 3, 4, 5}}, got {sorted(lengths)}"


# --------------------------------------------------------------------------- task definitions
def test_copy_and_reverse_answers_match_their_definitions():
    """copy answers the word; reverse answers it backwards."""
    for name, rule in (("copy", lambda w: w), ("reverse", lambda w: w[::-1])):
        words, answers = words_and_answers(make_dataset(name, 50, seed=0))
        wrong = [(w, a) for w, a in zip(words, answers) if a != rule(w)]
        assert not wrong, f"{name}: (word, answer) pairs breaking the rule: {wrong[:3]}"


def test_shift_wraps_z_to_a():
    """shift moves each letter one step on and z becomes a ("abz" -> "bca")."""
    table = str.maketrans(string.ascii_lowercase, string.ascii_lowercase[1:] + "a")
    assert get_task("shift").solve("abz") == "bca", f"expected 'bca', got {get_task('shift').solve('abz')!r}"
    words, answers = words_and_answers(make_dataset("shift", 200, seed=0))
    assert any("z" in w for w in words), "expected some word with a 'z' to exercise the wrap"
    wrong = [(w, a) for w, a in zip(words, answers) if a != w.translate(table)]
    assert not wrong, f"(word, answer) pairs that are not shifted by one: {wrong[:3]}"


def test_rotate_moves_first_letter_last():
    """rotate answers the word with its first letter moved to the end ("abcd" -> "bcda")."""
    assert get_task("rotate").solve("abcd") == "bcda", f"got {get_task('rotate').solve('abcd')!r}"
    words, answers = words_and_answers(make_dataset("rotate", 50, seed=0))
    wrong = [(w, a) for w, a in zip(words, answers) if a != w[1:] + w[0]]
    assert not wrong, f"(word, answer) pairs that are not rotated left: {wrong[:3]}"


def test_sort_output_is_sorted_permutation():
    """sort answers a non-decreasing arrangement of the same letters."""
    words, answers = words_and_answers(make_dataset("sort", 50, seed=0))
    for w, a in zip(words, answers):
        assert Counter(a) == Counter(w), f"expected the letters of {w!r}, got {a!r}"
        assert all(p <= q for p, q in zip(a, a[1:])), f"expected {a!r} to be in order"


def test_double_answers_twice_the_number_with_as_many_digits():
    """double: "0479" -> "0958"; the first digit is 0..4, so the answer never grows a digit."""
    assert get_task("double").solve("0479") == "0958", get_task("double").solve("0479")
    words, answers = words_and_answers(make_dataset("double", 300, seed=0))
    wrong = [(w, a) for w, a in zip(words, answers) if int(a) != 2 * int(w) or len(a) != len(w) or w[0] not in "01234"]
    assert not wrong, f"(word, answer) pairs that are not doubled digit for digit: {wrong[:3]}"
    assert {len(w) for w in words} == set(range(2, 7)), f"expected 2..6 digits, got {sorted({len(w) for w in words})}"


def test_pretraining_words_are_letters_or_digits_never_mixed():
    """copy/reverse/sort draw whole words of letters or of digits (about one in four), so the base
    learns to read and write digits without ever computing with them."""
    words, _ = words_and_answers(make_dataset("copy", 600, seed=0))
    kinds = Counter("digits" if w.isdigit() else "letters" if w.isalpha() else "mixed" for w in words)
    assert kinds["mixed"] == 0 and 110 < kinds["digits"] < 190, dict(kinds)


# --------------------------------------------------------------------------- ordered, palindrome
def test_ordered_labels_are_correct_and_balanced():
    """label 1 exactly when the letters are in alphabetical order; classes balanced; 3..6 letters."""
    data = make_dataset("ordered", 300, seed=1)
    words = [p[4:-1] for p in data.prompts]
    wrong = [(w, y) for w, y in zip(words, data.labels) if y != int(list(w) == sorted(w))]
    assert not wrong, f"(word, label) pairs with the wrong label: {wrong[:3]}"
    assert np.bincount(data.labels).tolist() == [150, 150], np.bincount(data.labels)
    assert {len(w) for w in words} == {3, 4, 5, 6}, sorted({len(w) for w in words})


def test_ordered_negatives_include_near_misses_with_sorted_letter_counts():
    """About half the negatives are a sorted word with one pair swapped: letters alone cannot tell."""
    data = make_dataset("ordered", 400, seed=2)
    negatives = [p[4:-1] for p, y in zip(data.prompts, data.labels) if y == 0]
    near = np.mean([sum(a > b for a, b in zip(w, w[1:])) == 1 and sorted(w) != list(w) for w in negatives])
    assert 0.4 < near < 0.8, f"expected many one-descent near misses among negatives, got {near:.2f}"


def test_trimming_padding_keeps_every_answer_and_the_same_loss_positions():
    """trim_padding cuts only columns no example reaches: masks and '?' positions are unchanged."""
    gen, cls = make_dataset("double", 50, seed=0, block_size=24), make_dataset("ordered", 50, seed=0, block_size=24)
    g, c = trim_padding(gen), trim_padding(cls)
    T = g.x.shape[1]
    assert T < 24 and g.mask.sum() == gen.mask.sum() and not gen.mask[:, T:].any(), T
    assert np.array_equal(g.x, gen.x[:, :T]) and np.array_equal(g.y, gen.y[:, :T])
    assert c.x.shape[1] == cls.last.max() + 1 and np.array_equal(c.x, cls.x[:, :c.x.shape[1]])


def test_word_lengths_default_to_the_task_and_explicit_ones_are_kept():
    """min_len/max_len None take Task.lengths; values the caller gives are used as given."""
    words, _ = words_and_answers(make_dataset("double", 200, seed=0, min_len=3, max_len=3))
    assert {len(w) for w in words} == {3}, sorted({len(w) for w in words})


# --------------------------------------------------------------------------- palindrome
def test_palindrome_classes_are_balanced():
    """An even n gives exactly n/2 of each label; an odd n is off by one."""
    for n in (200, 51):
        labels = make_dataset("palindrome", n, seed=0).labels
        counts = np.bincount(labels, minlength=2)
        assert abs(counts[0] - counts[1]) == n % 2, f"n={n}: expected balanced labels, got {counts}"


def test_palindrome_labels_are_correct():
    """label 1 exactly when the word equals its reverse; last points at the "?"."""
    data = make_dataset("palindrome", 200, seed=1)
    assert isinstance(data, ClassificationData), f"expected ClassificationData, got {type(data)}"
    for i, p in enumerate(data.prompts):
        word = p[4:-1]
        assert data.labels[i] == int(word == word[::-1]), f"{word!r}: got label {data.labels[i]}"
        assert data.x[i, data.last[i]] == TOK.stoi["?"], f"{p!r}: last={data.last[i]} is not the '?'"
        assert TOK.decode(data.x[i]) == p, f"expected x to decode to {p!r}, got {TOK.decode(data.x[i])!r}"


def test_palindrome_task_cannot_be_solved_by_length_or_letter_counts():
    """Both labels come in odd and even lengths, and many negatives have palindrome letter counts."""
    data = make_dataset("palindrome", 400, seed=2)
    words = [p[4:-1] for p in data.prompts]
    for label in (0, 1):
        parities = {len(w) % 2 for w, y in zip(words, data.labels) if y == label}
        assert parities == {0, 1}, f"label {label}: expected odd and even lengths, got {parities}"
    # a word's letters can form a palindrome iff at most one letter occurs an odd number of times
    negatives = [w for w, y in zip(words, data.labels) if y == 0]
    anagram = np.mean([sum(c % 2 for c in Counter(w).values()) <= 1 for w in negatives])
    assert 0.3 < anagram < 0.7, f"expected about half near misses among negatives, got {anagram:.2f}"


# --------------------------------------------------------------------------- splits, mixtures
def test_split_test_inputs_never_appear_in_train():
    """No test word is a train word, even when the word space (26^2) forces collisions."""
    train, test = make_splits("copy", 300, 100, seed=0, min_len=2, max_len=2)
    shared = set(words_and_answers(train)[0]) & set(words_and_answers(test)[0])
    assert len(test) == 100 and not shared, f"expected 100 unseen test words, shared: {sorted(shared)[:5]}"


def test_split_train_part_equals_make_dataset_with_the_same_seed():
    """make_splits' train set is make_dataset's set for the same seed."""
    train, _ = make_splits("palindrome", 40, 10, seed=4)
    alone = make_dataset("palindrome", 40, seed=4)
    assert train.prompts == alone.prompts, f"expected {alone.prompts[:3]}, got {train.prompts[:3]}"


def test_split_with_exhausted_word_space_raises_clear_error():
    """Asking for unseen test words when every word was used for training raises."""
    with pytest.raises(ValueError, match="training inputs"):
        make_splits("copy", 500, 5, seed=0, min_len=1, max_len=1)


def test_mixture_contains_each_task_evenly():
    """Each task gets n / k examples (off by one at most), shuffled rather than in blocks."""
    tag_to_name = {t.tag: t.name for t in TASKS.values()}
    for n in (300, 301):
        data = make_mixture(PRETRAIN_TASKS, n, seed=0)
        counts = Counter(tag_to_name[p[:3]] for p in data.prompts)
        assert set(counts) == set(PRETRAIN_TASKS), f"expected {PRETRAIN_TASKS}, got {dict(counts)}"
        assert max(counts.values()) - min(counts.values()) <= 1, f"n={n}: uneven {dict(counts)}"
    first = {p[:3] for p in data.prompts[:20]}
    assert len(first) == 3, f"expected all tags among the first 20 examples, got {first}"


def test_mixture_rejects_classification_tasks():
    """A mixture of generation and classification tasks raises ValueError."""
    with pytest.raises(ValueError, match="generation"):
        make_mixture(("copy", "palindrome"), 10, seed=0)


# --------------------------------------------------------------------------- errors
def test_too_long_example_raises_clear_error():
    """An example longer than block_size + 1 names the task, its length and the fix."""
    with pytest.raises(ValueError) as err:
        make_dataset("copy", 20, seed=0, block_size=12, min_len=8, max_len=8)
    for part in ("'copy'", "has 22 tokens", "block_size", "max_len"):  # "cpy:" + 8 + "=" + 8 + "."
        assert part in str(err.value), f"expected {part!r} in the message, got: {err.value}"


def test_unknown_task_error_lists_valid_names():
    """get_task and make_dataset reject an unknown name and list the valid ones."""
    with pytest.raises(ValueError) as err:
        make_dataset("cpoy", 5, seed=0)
    for name in TASKS:
        assert name in str(err.value), f"expected {name!r} in the message, got: {err.value}"


def test_palindrome_rejects_one_letter_words():
    """min_len = 1 is refused for palindrome, where every one-letter word is a palindrome."""
    with pytest.raises(ValueError, match="min_len"):
        make_dataset("palindrome", 10, seed=0, min_len=1)


# --------------------------------------------------------------------------- batches
def numbered_rows(n, T=4):
    """A TaskData whose row i is filled with i, so a batch's rows can be identified."""
    x = np.repeat(np.arange(n)[:, None], T, axis=1)
    return TaskData(x, x + 1, np.ones((n, T), np.float32), "rows", [""] * n, [""] * n)


def test_iterate_batches_gives_each_row_at_most_once_per_epoch():
    """Each epoch yields N // B full batches of distinct rows."""
    batches = list(iterate_batches(numbered_rows(10), 3, np.random.default_rng(0), epochs=2))
    assert len(batches) == 6, f"expected 2 epochs x 3 batches, got {len(batches)}"
    assert all(b["x"].shape == (3, 4) and set(b) == {"x", "y", "mask"} for b in batches), "bad batch"
    for e in range(2):
        rows = np.concatenate([b["x"][:, 0] for b in batches[3 * e : 3 * e + 3]])
        assert len(set(rows)) == 9, f"epoch {e}: expected 9 distinct rows, got {sorted(rows)}"


def test_iterate_batches_runs_forever_without_epochs():
    """epochs=None keeps yielding past the end of the data."""
    it = iterate_batches(numbered_rows(5), 2, 0)
    got = [next(it) for _ in range(20)]
    assert len(got) == 20, f"expected 20 batches, got {len(got)}"


def test_iterate_batches_of_classification_data_carry_labels():
    """Classification batches hold x, last and labels of the same rows."""
    data = make_dataset("palindrome", 10, seed=0)
    batch = next(iterate_batches(data, 4, 0))
    assert set(batch) == {"x", "last", "labels"}, f"got keys {set(batch)}"
    ends = batch["x"][np.arange(4), batch["last"]]
    assert (ends == TOK.stoi["?"]).all(), f"expected '?' at last in each row, got {ends}"


# --------------------------------------------------------------------------- text files
def test_text_file_dataset_replaces_unknown_characters(tmp_path):
    """Upper case is lowered; a tab, "ä" and the padding "_" become spaces and are counted."""
    path = tmp_path / "tiny.txt"
    path.write_text("Hello, World!\tÄ_\n" * 3, encoding="utf-8")
    data = TextData.from_file(path, block_size=16)
    expected = "hello, world!   \n" * 3
    assert TOK.decode(data.ids) == expected, f"expected {expected!r}, got {TOK.decode(data.ids)!r}"
    assert data.n_replaced == 9, f"expected 9 replaced characters, got {data.n_replaced}"
    assert data.replaced_chars == ["\t", "_", "ä"], f"got {data.replaced_chars}"


def test_text_dataset_missing_file_error(tmp_path):
    """A missing file raises FileNotFoundError naming the path."""
    path = tmp_path / "nowhere.txt"
    with pytest.raises(FileNotFoundError) as err:
        TextData.from_file(path)
    assert str(path) in str(err.value), f"expected {str(path)!r} in: {err.value}"


def test_text_shorter_than_one_window_raises_clear_error():
    """Text with at most block_size characters cannot give a window plus its target."""
    with pytest.raises(ValueError, match="block_size=32 needs at least 33"):
        TextData.from_text("a" * 32)


def test_text_sample_targets_are_windows_shifted_by_one():
    """x rows are contiguous windows of the text, y is x one step on, mask is all ones."""
    data = TextData(np.arange(50, dtype=np.int64), TOK, block_size=8)
    batch = data.sample(400, np.random.default_rng(0))
    x, y = batch["x"], batch["y"]
    assert np.array_equal(x, x[:, :1] + np.arange(8)), "expected contiguous windows"
    assert np.array_equal(y, x + 1), "expected y == x shifted by one position"
    assert batch["mask"].dtype == np.float32 and batch["mask"].all(), "expected a float32 mask of ones"
    assert (x.min(), y.max()) == (0, 49), f"expected both ends reachable, got {x.min(), y.max()}"


def test_text_split_keeps_file_order():
    """train then val, concatenated, give back the whole text."""
    data = TextData.from_text("the quick brown fox jumps over the lazy dog. " * 10, block_size=8)
    train, val = data.split(0.9)
    assert np.array_equal(np.r_[train.ids, val.ids], data.ids), "expected train + val == the text"
    assert len(train) == int(0.9 * len(data)), f"expected {int(0.9 * len(data))}, got {len(train)}"


def test_a_text_that_is_mostly_unknown_characters_is_refused(tmp_path):
    """A file none of whose characters the tokenizer knows would train on spaces: refused, with the counts."""
    path = tmp_path / "greek.txt"
    path.write_text("αβγδε ζηθικ λμνξο " * 10, encoding="utf-8")
    with pytest.raises(ValueError, match=r"150 of 180 characters are not in the tokenizer's vocabulary"):
        TextData.from_file(path, block_size=8)
