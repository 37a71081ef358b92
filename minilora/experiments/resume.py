"""Training checkpoints: everything a killed run needs to continue exactly where it stopped.

A checkpoint folder is one save (``minilora.io.atomic_folder``) of

    the model's own files            model.safetensors + config.json, or the active adapter's files,
                                     so the folder loads like any model or adapter folder
    training_state.safetensors       every trainable parameter "param/{name}" and every optimizer
                                     array "opt/{name}/{key}" (AdamW: m and v, each of its param's shape)
    training_state.json              the step, the TrainConfig, the optimizer's counters (AdamW's t),
                                     the data position, the dropout generator's state, the history so
                                     far, and fingerprints of the frozen weights, the training data and
                                     of this file bound to the tensors

The data position is (seed, batches drawn): the batch stream is rebuilt from the seed and the
batches already used are drawn again and dropped, which costs a few milliseconds and needs no
copy of a shuffled order. With these, a resumed run on the CPU with a fixed worker count ends
bit for bit where the uninterrupted run ends (tests/test_resume.py). No pickle: safetensors + JSON.
"""
from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np

from minilora import io
from minilora.adapters import files
from minilora.nn import backend
from minilora.nn import checkpoint as model_files

FORMAT, VERSION = "minilora.training", 1
STATE_FILES = ("training_state.json", "training_state.safetensors")


def model_file_names(model) -> tuple:
    """The files of the model's own save: an adapter host saves its active adapter, a GPT itself."""
    return files.FILES if hasattr(model, "adapter_state") else model_files.FILES


def write_model_files(model, folder) -> None:
    """The model's own files, so a checkpoint folder loads with load_model or load_adapter."""
    if hasattr(model, "adapter_state"):
        files.write_adapter(model, folder, model.active_adapter)
    else:
        model_files.write_model(model, folder)


def rng_owner(model):
    """The object whose ``rng`` draws dropout masks (the GPT inside an adapter host)."""
    return getattr(model, "model", model)


def data_fingerprint(data) -> str:
    """A fingerprint of the training examples, so a run resumes only on the data it started on."""
    names = ("ids",) if hasattr(data, "ids") else ("x", "y", "mask") if hasattr(data, "y") else ("x", "last", "labels")
    return io.fingerprint({n: np.asarray(getattr(data, n)) for n in names})


def optimizer_facts(optimizer) -> dict:
    """The optimizer's kind (its class in minilora.nn.optim, whatever subclass) and hyperparameters, as JSON."""
    kind = next((c.__name__ for c in type(optimizer).__mro__ if c.__module__ == "minilora.nn.optim"),
                type(optimizer).__name__)
    hyper = {k: getattr(optimizer, k) for k in ("betas", "eps", "weight_decay", "momentum") if hasattr(optimizer, k)}
    return json.loads(json.dumps({"type": kind, **hyper}))


def frozen_fingerprint(model) -> str:
    """A fingerprint of every parameter that does not train (the base), which must not change."""
    return io.fingerprint({k: v for k, v in model.params.items() if k not in model.trainable})


# --------------------------------------------------------------------------- writing
def write_state(folder, *, model, optimizer, step: int, config, history: dict, fingerprints: dict,
                run: dict | None = None) -> None:
    """Write training_state.{json,safetensors} into ``folder`` (inside an atomic folder save)."""
    tensors = {f"param/{k}": model.params[k] for k in sorted(model.trainable)}
    counters = {}
    for name, entry in optimizer.state.items():
        for key, value in entry.items():
            if backend.is_array(value):
                tensors[f"opt/{name}/{key}"] = value
            else:
                counters.setdefault(name, {})[key] = value
    described = json.loads(json.dumps({
        "format": FORMAT, "version": VERSION, "step": step, "train_config": asdict(config),
        "optimizer": {"facts": optimizer_facts(optimizer), "counters": counters},
        "rng": rng_owner(model).rng.bit_generator.state, "history": history,
        "fingerprints": fingerprints, "run": run or {}}))
    io.save_tensors(folder / "training_state.safetensors", tensors)
    io.write_json(folder / "training_state.json", {**described, "fingerprint": io.fingerprint(tensors, described)})


# --------------------------------------------------------------------------- reading
def read_state(directory) -> tuple[dict, dict]:
    """(training_state.json, its tensors) from a checkpoint folder, the binding fingerprint checked."""
    folder = io.saved_folder(directory)
    path = folder / "training_state.json"
    meta = io.read_json(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise io.CheckpointError(f"{path} is not a minilora training checkpoint (format {FORMAT}, version "
                                 f"{VERSION}); give the folder a run saved with --save-every / checkpoint_dir")
    tensors, _ = io.load_tensors(folder / "training_state.safetensors")
    if io.fingerprint(tensors, {k: v for k, v in meta.items() if k != "fingerprint"}) != meta.get("fingerprint"):
        raise io.CheckpointError(f"{directory}: training_state.json does not describe training_state.safetensors "
                                 f"(fingerprint differs): a file was edited or comes from another save")
    return meta, tensors


def restore(directory, *, model, optimizer, config, fingerprints: dict) -> tuple[int, dict]:
    """Put a checkpoint's state into ``model`` and ``optimizer``; returns (steps done, history so far).

    Refuses a checkpoint of another run: another TrainConfig (progress aside), optimizer, base
    weights, training data or set of trainable parameters. Nothing is changed when it refuses.
    """
    meta, tensors = read_state(directory)
    ours = json.loads(json.dumps(asdict(config)))
    differ = sorted(k for k in ours if k != "progress" and meta["train_config"].get(k) != ours[k])
    if differ:
        then, now = [meta["train_config"].get(k) for k in differ], [ours[k] for k in differ]
        raise ValueError(f"{directory} is a checkpoint of another run: TrainConfig differs in {differ} "
                         f"(checkpoint {then}, now {now})")
    if meta["optimizer"]["facts"] != optimizer_facts(optimizer):
        raise ValueError(f"{directory} was trained with the optimizer {meta['optimizer']['facts']}, "
                         f"not {optimizer_facts(optimizer)}")
    for what, value in fingerprints.items():
        if meta["fingerprints"].get(what) != value:
            raise ValueError(f"{directory} is a checkpoint of another run: its {what} differ from this run's "
                             f"(fingerprint {meta['fingerprints'].get(what)} vs {value})")
    saved = {k[len("param/"):] for k in tensors if k.startswith("param/")}
    if saved != set(model.trainable):
        raise ValueError(f"{directory} trains other parameters than this model (only in the checkpoint: "
                         f"{sorted(saved - model.trainable)[:3]}, only here: {sorted(model.trainable - saved)[:3]})")
    wrong = [n for n in saved if tuple(tensors[f"param/{n}"].shape) != tuple(model.params[n].shape)]
    if wrong:
        name = wrong[0]
        raise ValueError(f"{directory}: {name} has shape {tuple(tensors[f'param/{name}'].shape)} in the checkpoint "
                         f"but {tuple(model.params[name].shape)} here; it is a checkpoint of another run")
    for name in saved:
        model.params[name][...] = backend.asarray(tensors[f"param/{name}"], dtype=model.params[name].dtype)
    optimizer.state = {}
    for key, value in tensors.items():
        if key.startswith("opt/"):
            name, field = key[len("opt/"):].rsplit("/", 1)
            optimizer.state.setdefault(name, {})[field] = backend.asarray(value, dtype=model.params[name].dtype)
    for name, counters in meta["optimizer"]["counters"].items():
        optimizer.state.setdefault(name, {}).update(counters)
    rng_owner(model).rng.bit_generator.state = meta["rng"]
    return meta["step"], meta["history"]


def read_run_info(directory) -> dict:
    """What the caller stored about the run (the command line's options, for ``minilora ... --resume``)."""
    return read_state(directory)[0]["run"]
