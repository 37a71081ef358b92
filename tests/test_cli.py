"""Specification of the minilora command."""
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
    meta = io.read_json(tmp_path / "ad" / "adapter_config.json")
    meta["base_model_fingerprint"] = "0" * 16
    io.write_json(tmp_path / "ad" / "adapter_config.json", meta)
    assert main(["merge", str(tmp_path / "ad"), "--out", str(tmp_path / "m")]) == 2
    assert "different base model" in capsys.readouterr().err


def test_finetune_on_a_plain_text_file_saves_an_adapter(tmp_path):
    """`finetune --text FILE` trains on any text file (characters outside the vocabulary become spaces)."""
    text = tmp_path / "notes.txt"
    text.write_text("LoRA freezes W0 and trains B A. " * 30)
    assert main(["finetune", "--text", str(text), "--steps", "2", "--out", str(tmp_path / "ad")]) == 0
    assert (tmp_path / "ad" / "adapter_model.safetensors").is_file()
