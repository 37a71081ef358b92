"""Properties of minilora.data.tasks: the character tokenizer and the registry of shipped tasks.

Every expected value is recomputed here from the definitions, not by calling the code under test.
"""
import json

import numpy as np
import pytest

from minilora.data.tasks import (DOWNSTREAM_TASKS, PRETRAIN_TASKS, TASK_CHARS, TASKS, CharTokenizer, default_tokenizer,
                            get_task)

TOK = default_tokenizer()


# --------------------------------------------------------------------------- tokenizer
def test_tokenizer_round_trips_every_vocabulary_character():
    """decode(encode(s)) == s for a string holding every non-padding character."""
    text = TASK_CHARS[1:]
    ids = TOK.encode(text)
    assert ids == list(range(1, TOK.vocab_size)), f"expected ids 1..{TOK.vocab_size - 1}, got {ids}"
    assert TOK.decode(ids) == text, f"expected {text!r}, got {TOK.decode(ids)!r}"


def test_default_vocabulary_has_padding_first_and_fits_in_64():
    """TASK_CHARS starts with the padding "_", has no repeats, and holds at most 64 characters."""
    assert TASK_CHARS[0] == "_" and TOK.pad_id == 0, f"expected '_' at id 0, got {TASK_CHARS[0]!r}"
    assert len(set(TASK_CHARS)) == len(TASK_CHARS), f"repeated characters in {TASK_CHARS!r}"
    assert TOK.vocab_size <= 64, f"expected at most 64 characters, got {TOK.vocab_size}"


def test_decode_leaves_out_padding():
    """Padding ids decode to nothing."""
    ids = [0] + TOK.encode("ab") + [0, 0]
    assert TOK.decode(np.array(ids)) == "ab", f"expected 'ab', got {TOK.decode(ids)!r}"


def test_unknown_character_error_names_it():
    """Encoding a character outside the vocabulary names it and the valid set."""
    with pytest.raises(ValueError) as err:
        TOK.encode("abcQ")
    assert "'Q'" in str(err.value), f"expected the message to name 'Q', got: {err.value}"
    assert repr(TASK_CHARS) in str(err.value), f"expected the valid set in: {err.value}"


def test_tokenizer_survives_a_json_round_trip():
    """from_dict(json(to_dict())) rebuilds an equal tokenizer."""
    back = CharTokenizer.from_dict(json.loads(json.dumps(TOK.to_dict())))
    assert back == TOK and back.stoi == TOK.stoi, f"expected {TOK.chars!r}, got {back.chars!r}"



# --------------------------------------------------------------------------- the registry
def test_task_lists_name_registered_tasks():
    """PRETRAIN_TASKS are generation tasks; every DOWNSTREAM_TASKS name is registered."""
    assert all(get_task(n).kind == "generation" for n in PRETRAIN_TASKS), f"got {PRETRAIN_TASKS}"
    assert set(DOWNSTREAM_TASKS) <= set(TASKS), f"unregistered: {set(DOWNSTREAM_TASKS) - set(TASKS)}"
