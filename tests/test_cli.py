"""Specification of the minilora command."""
import json

import numpy as np
import pytest

from minilora import io
from minilora.cli import main
from minilora.adapters.lora_model import LoraModel
from minilora.nn.checkpoint import load_model
from minilora.experiments.pretrain import load_base


def test_help_lists_every_subcommand(capsys):
    """`minilora --help` names demo, pretrain, finetune, merge, analyze and exercises."""
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("demo", "pretrain", "finetune", "merge", "analyze", "exercises"))


def test_finetune_then_merge_gives_a_model_equal_to_the_adapted_one(tmp_path, rng):
    """finetune --out saves an adapter; merge writes a plain model whose logits equal base + adapter."""
    assert main(["finetune", "--task", "rotate", "--steps", "3", "--n-train", "200", "--n-test", "50", "--out", str(tmp_path / "ad")]) == 0
    assert main(["merge", str(tmp_path / "ad"), "--out", str(tmp_path / "merged")]) == 0
    merged, _ = load_model(tmp_path / "merged")
    lm = LoraModel(load_base()[0])
    lm.load_adapter(tmp_path / "ad")
    idx = rng.integers(0, 56, (2, 10))
    assert np.allclose(merged.forward(idx)[0], lm.forward(idx)[0], atol=1e-5)


def test_unknown_task_is_reported_with_the_valid_names(capsys):
    """A bad --task exits with status 2 and lists the tasks."""
    assert main(["finetune", "--task", "translate", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "translate" in err and "shift" in err


def test_merging_an_adapter_onto_the_wrong_base_is_refused(tmp_path, capsys):
    """merge checks the base fingerprint and exits 2 with the reason."""
    assert main(["finetune", "--task", "shift", "--steps", "1", "--n-train", "100", "--n-test", "20", "--out", str(tmp_path / "ad")]) == 0
    weights = tmp_path / "ad" / "adapter_model.safetensors"
    tensors, meta = io.load_tensors(weights)
    facts = json.loads(meta["minilora"])                      # minilora's facts ride in the header
    io.save_tensors(weights, tensors, {**meta, "minilora": json.dumps({**facts, "base_model_fingerprint": "0" * 16})})
    assert main(["merge", str(tmp_path / "ad"), "--out", str(tmp_path / "m")]) == 2
    assert "different base model" in capsys.readouterr().err


def test_finetune_on_a_plain_text_file_saves_an_adapter(tmp_path):
    """`finetune --text FILE` trains on any text file (characters outside the vocabulary become spaces)."""
    text = tmp_path / "notes.txt"
    text.write_text("LoRA freezes W0 and trains B A. " * 30)
    assert main(["finetune", "--text", str(text), "--steps", "2", "--out", str(tmp_path / "ad")]) == 0
    assert (tmp_path / "ad" / "adapter_model.safetensors").is_file()


# --------------------------------------------------------------------------- mistakes: exit 2, one line, nothing saved
QUICK = ["--task", "shift", "--n-train", "64", "--n-test", "8"]


@pytest.mark.parametrize("options, field", [
    (["--alpha", "0"], "lora_alpha"), (["--lr", "0"], "lr"), (["--steps", "0"], "steps"), (["--steps", "-1"], "steps"),
    (["--r", "0"], "LoraConfig.r"), (["--n-test", "0"], "n_test"), (["--n-train", "0"], "n_train"),
    (["--save-every", "0", "--checkpoint-dir", "ck"], "save_every"),
])
def test_a_value_the_user_gave_is_never_replaced_and_a_bad_one_saves_nothing(tmp_path, capsys, options, field):
    """--alpha 0, --lr 0, --steps 0/-1, --n-test 0: exit 2 naming the setting, and no adapter is written."""
    code = main(["finetune", *QUICK, "--steps", "1", *options, "--out", str(tmp_path / "ad")])
    err = capsys.readouterr().err
    assert code == 2 and field in err, f"expected exit 2 naming {field}, got {code}: {err}"
    assert not (tmp_path / "ad").exists(), "an adapter was saved although the options were refused"


def test_out_is_checked_before_any_training(tmp_path, capsys):
    """--out that is a file, under a file, or a folder of other files: refused before the first step."""
    (tmp_path / "file").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    for out, says in (("file", "is a file"), ("file/sub", "is a file"), ("mine", "notes.txt")):
        assert main(["finetune", *QUICK, "--steps", "1", "--out", str(tmp_path / out)]) == 2
        captured = capsys.readouterr()
        assert says in captured.err and "accuracy" not in captured.out, f"--out {out}: {captured}"
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("argv", [
    ["merge", "{tmp}/file", "--out", "{tmp}/m"],                       # NotADirectoryError
    ["merge", "{tmp}/nothing", "--out", "{tmp}/m"],                    # FileNotFoundError
    ["merge", "{tmp}/ad", "--out", "{tmp}/file"],                      # FileExistsError
    ["finetune", "--base", "{tmp}/file", "--steps", "1"],              # not a model folder
    ["finetune", "--text", "{tmp}", "--steps", "1"],                   # a folder, not a text file
    ["finetune", *QUICK, "--n-test", "0", "--steps", "1"],             # was a ZeroDivisionError
    ["pretrain", "--steps", "1", "--out", "{tmp}/file"],               # was a FileExistsError after training
])
def test_every_user_mistake_exits_2_with_one_line_and_no_traceback(tmp_path, capsys, argv):
    """The paths that raised TypeError, ZeroDivisionError, FileExistsError or OSError now end in one line, status 2."""
    (tmp_path / "file").write_text("x")
    (tmp_path / "ad").mkdir()
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("minilora") and "Traceback" not in err[0], (code, err)


def test_a_bug_keeps_its_traceback(monkeypatch):
    """An unexpected exception (here a TypeError from inside) is not dressed up as a user mistake."""
    import minilora.experiments.finetune as finetune_module

    def broken(*args, **kwargs):
        raise TypeError("a bug")
    monkeypatch.setattr(finetune_module, "finetune", broken)
    with pytest.raises(TypeError, match="a bug"):
        main(["finetune", *QUICK, "--steps", "1"])


def test_seed_also_seeds_the_lora_initialisation(tmp_path):
    """--seed 7 reaches the LoRA config (A's initialisation) as well as the data and the batch order."""
    assert main(["finetune", *QUICK, "--steps", "1", "--seed", "7", "--out", str(tmp_path / "ad")]) == 0
    _, header = io.load_tensors(tmp_path / "ad" / "adapter_model.safetensors")
    assert json.loads(header["minilora"])["config"]["seed"] == 7, "the seed rides in minilora's facts (header)"


def test_a_text_file_of_unknown_characters_is_refused_and_a_partly_unknown_one_reported(tmp_path, capsys):
    """All unknown: exit 2 instead of training on spaces; some unknown: how many were replaced is printed."""
    (tmp_path / "greek.txt").write_text("αβγδε ζηθικ " * 40, encoding="utf-8")
    assert main(["finetune", "--text", str(tmp_path / "greek.txt"), "--steps", "1"]) == 2
    assert "are not in the tokenizer's vocabulary" in capsys.readouterr().err
    (tmp_path / "mixed.txt").write_text("LoRA trains B A; W0 stays frozen. ÄÖ " * 20, encoding="utf-8")
    assert main(["finetune", "--text", str(tmp_path / "mixed.txt"), "--steps", "1"]) == 0
    assert "40 of 740 characters are outside the vocabulary" in capsys.readouterr().out


def test_merging_an_adapter_with_nan_weights_is_refused_and_writes_nothing(tmp_path, capsys):
    """`minilora merge` of a broken adapter exits 2 naming NaN, instead of saving a NaN model with exit 0."""
    from minilora.adapters.config import LoraConfig

    lm = LoraModel(load_base()[0], LoraConfig(r=2))
    for key in lm.adapter_state():
        lm.params[lm.param_name(key)][...] = np.nan
    lm.save_adapter(tmp_path / "ad")
    assert main(["merge", str(tmp_path / "ad"), "--out", str(tmp_path / "m")]) == 2
    assert "NaN or inf" in capsys.readouterr().err and not (tmp_path / "m").exists()


def test_resume_takes_the_runs_options_from_the_checkpoint_and_refuses_others(tmp_path, capsys):
    """--resume DIR with other options is an error (they would be ignored); a checkpoint of another command too."""
    ck = str(tmp_path / "ck")
    assert main(["finetune", *QUICK, "--steps", "2", "--save-every", "1", "--checkpoint-dir", ck]) == 0
    assert main(["finetune", "--resume", str(tmp_path / "ck"), "--steps", "5"]) == 2
    assert "leave out --steps" in capsys.readouterr().err
    assert main(["pretrain", "--resume", str(tmp_path / "ck")]) == 2
    assert "not of `minilora pretrain`" in capsys.readouterr().err
