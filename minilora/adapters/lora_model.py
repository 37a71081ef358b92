"""``LoraModel``: LoRA adapters on a frozen GPT, with PEFT's vocabulary (Hu et al. 2021, §4).

``LoraConfig``, ``add_adapter``, ``set_adapter``, ``disable_adapter``, ``merge_adapter``,
``unmerge_adapter``, ``merge_and_unload``, ``delete_adapter``, ``save_adapter``, ``load_adapter``
mean what they mean in PEFT. Adapter weights live in the model's params dict as
``{module}.lora_A.{adapter}`` (r, d_in) and ``{module}.lora_B.{adapter}`` (d_out, r); a hook in
``model.linear_hooks`` routes each adapted layer through ``minilora.adapters.lora.lora_forward``. Files use
PEFT's key names (``...wq.lora_A.weight``) and record a fingerprint of the base model, so an
adapter is never loaded onto a base it was not trained on.

Shapes: B batch, T time, C channels, r rank, N = B*T rows.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict
from pathlib import Path

import numpy as np

from minilora.nn import backend
from minilora import io
from minilora.nn.backend import xp
from minilora.adapters.lora import (LoraConfig, init_lora_pair, lora_backward, lora_forward, merge_weights,
                           resolve_targets, unmerge_weights)
from minilora.nn.model import GPT, WrappedModel, param_shapes


# --------------------------------------------------------------------------- the hook
class _LoraHook:
    """Routes one adapted linear layer of the model through lora_forward/lora_backward."""

    def __init__(self, lora_model: "LoraModel"):
        self.lm = lora_model

    def forward(self, model, name, x, training):
        A, B_, scale = self.lm._active_pair(name)
        mask = self.lm._dropout_mask(x.shape) if training else None
        return lora_forward(x, model.params[name + ".weight"], model.params[name + ".bias"],
                            A, B_, scale, mask)

    def backward(self, model, name, dh, cache, grads):
        dx, dA, dB = lora_backward(dh, cache)
        a_key, b_key = self.lm._keys(name, self.lm.active_adapter)
        if a_key in model.trainable:
            grads[a_key], grads[b_key] = dA, dB
        if name + ".bias" in model.trainable:                 # bias="all" or "lora_only"
            grads[name + ".bias"] = dh.reshape(-1, dh.shape[-1]).sum(axis=0)
        return dx


# --------------------------------------------------------------------------- adapters on a model
class LoraModel(WrappedModel):
    """A frozen GPT with named LoRA adapters; one is active at a time (PEFT's vocabulary).

    It offers the model's interface (params, trainable, forward, classify, backward,
    num_params), so the same ``train`` loop trains a LoRA model and a fully fine-tuned one.
    """

    def __init__(self, model: GPT, config: LoraConfig | None = None, adapter_name: str = "default"):
        super().__init__(model)
        self.adapters: dict[str, LoraConfig] = {}
        self.modules: dict[str, dict[str, tuple[int, float]]] = {}   # adapter -> module -> (r, scale)
        self.saved: dict[str, dict] = {}       # adapter -> its own copies of modules_to_save / biases
        self.base_saved: dict = {}             # the base model's values of those parameters
        self.active_adapter: str | None = None
        self.merged = False
        self.disabled = False
        self.base_fingerprint = io.fingerprint(self._pure_base())
        self._rng = backend.rng(0)
        model.freeze()                         # §4.1: the pre-trained weights stay frozen
        if config is not None:
            self.add_adapter(adapter_name, config)

    # ---------------------------------------------------------------- model interface
    def backward(self, dlogits, cache):
        if self.merged:
            raise RuntimeError(f"adapter {self.active_adapter!r} is merged into the weights, so A and B get no "
                               f"gradient; call unmerge_adapter() before training")
        return self.model.backward(dlogits, cache)

    # ---------------------------------------------------------------- adding adapters
    def _pure_base(self) -> dict:
        return {k: self.model.params[k] for k in param_shapes(self.model.config)}

    @staticmethod
    def _keys(module: str, adapter: str) -> tuple[str, str]:
        return f"{module}.lora_A.{adapter}", f"{module}.lora_B.{adapter}"

    def _saved_names(self, config: LoraConfig, modules) -> list[str]:
        """Parameters an adapter trains fully and carries in its file (modules_to_save, biases)."""
        names = []
        for m in config.modules_to_save:
            found = [k for k in self.model.params if (k.startswith(m + ".") or f".{m}." in k) and ".lora_" not in k]
            if not found:
                raise ValueError(f"modules_to_save entry {m!r} matches no parameter; e.g. 'head' (after "
                                 f"add_classification_head) or 'ln_f'")
            names += found
        if config.bias == "all":
            names += [f"{n}.bias" for n in self.model.config.linear_names()]
        elif config.bias == "lora_only":
            names += [f"{n}.bias" for n in modules]
        return sorted(set(names))

    def add_adapter(self, adapter_name: str, config: LoraConfig):
        """Create adapter ``adapter_name``: A random, B = 0 for every target (§4.1); make it active."""
        if adapter_name in self.adapters:
            raise ValueError(f"adapter {adapter_name!r} exists already; delete_adapter it or pick another name")
        if "." in adapter_name or not adapter_name:
            raise ValueError(f"adapter names must be non-empty and contain no '.', got {adapter_name!r}")
        if self.merged:
            raise RuntimeError("unmerge_adapter() before adding an adapter")
        modules = resolve_targets(self.model, config)
        self._restore_base_saved()             # another adapter's head must not become "the base"
        for k, (name, (r, _)) in enumerate(modules.items()):
            d_out, d_in = self.model.params[name + ".weight"].shape
            # One generator per (seed, r, module): an r = 8 A is not the first 8 rows of an r = 64 A,
            # which would make the two adapters share directions before any training (§7.2 compares them).
            A, B_ = init_lora_pair(d_out, d_in, r, init=config.init_lora_weights, std=config.init_std,
                                   rng=backend.rng([config.seed, r, k]), dtype=self.dtype)
            a_key, b_key = self._keys(name, adapter_name)
            self.model.params[a_key], self.model.params[b_key] = A, B_
        self.adapters[adapter_name], self.modules[adapter_name] = config, modules
        saved = self._saved_names(config, modules)
        for k in saved:
            self.base_saved.setdefault(k, self.model.params[k])
        self.saved[adapter_name] = {k: self.base_saved[k].copy() for k in saved}
        self._rng = backend.rng(config.seed + 1)
        self.set_adapter(adapter_name)
        return self

    # ---------------------------------------------------------------- switching
    def set_adapter(self, adapter_name: str):
        """Make ``adapter_name`` the active, trainable adapter (and swap in its saved modules)."""
        if adapter_name not in self.adapters:
            raise KeyError(f"no adapter named {adapter_name!r}; have {sorted(self.adapters)}")
        if self.merged:
            raise RuntimeError(f"adapter {self.active_adapter!r} is merged; unmerge_adapter() before switching")
        self.active_adapter = adapter_name
        self.disabled = False
        self._apply()
        return self

    def _apply(self):
        """Install hooks, saved modules and the trainable set for the current state."""
        self._restore_base_saved()
        self.model.freeze()
        self.model.linear_hooks = {}
        name = self.active_adapter
        if name is None or self.disabled:
            return
        self.model.params.update(self.saved[name])            # this adapter's own head / biases
        if not self.merged:
            hook = _LoraHook(self)
            self.model.linear_hooks = {m: hook for m in self.modules[name]}
            self.model.trainable |= {k for m in self.modules[name] for k in self._keys(m, name)}
            self.model.trainable |= set(self.saved[name])

    def _restore_base_saved(self):
        self.model.params.update(self.base_saved)

    def _active_pair(self, module: str):
        a_key, b_key = self._keys(module, self.active_adapter)
        return self.model.params[a_key], self.model.params[b_key], self.modules[self.active_adapter][module][1]

    @property
    def stochastic(self) -> bool:
        """True when a training forward draws random dropout masks (minilora.experiments.step then keeps
        the batch on one thread, so the masks come in a reproducible order)."""
        return self.active_adapter is not None and self.adapters[self.active_adapter].lora_dropout > 0.0

    def _dropout_mask(self, shape):
        p = self.adapters[self.active_adapter].lora_dropout
        if p == 0.0:
            return None
        keep = self._rng.random(shape) >= p                    # drawn on the CPU: same masks on any backend
        return backend.asarray(keep / (1.0 - p), dtype=self.dtype)

    @contextlib.contextmanager
    def disable_adapter(self):
        """Within the block the model is exactly the base model (no hook, base modules)."""
        if self.merged:
            raise RuntimeError("disable_adapter() needs unmerged weights; call unmerge_adapter() first")
        self.disabled = True
        self._apply()
        try:
            yield self
        finally:
            self.disabled = False
            self._apply()

    def delete_adapter(self, adapter_name: str):
        """Remove an adapter's weights and config; if it was active, no adapter is active after."""
        if adapter_name not in self.adapters:
            raise KeyError(f"no adapter named {adapter_name!r}; have {sorted(self.adapters)}")
        if self.merged and adapter_name == self.active_adapter:
            raise RuntimeError(f"adapter {adapter_name!r} is merged; unmerge_adapter() before deleting it")
        for m in self.modules[adapter_name]:
            for k in self._keys(m, adapter_name):
                del self.model.params[k]
        del self.adapters[adapter_name], self.modules[adapter_name], self.saved[adapter_name]
        if self.active_adapter == adapter_name:
            self.active_adapter = None
        self._apply()

    # ---------------------------------------------------------------- merging (§4.1)
    def merge_adapter(self, *, safe_merge: bool = False):
        """W0 <- W0 + s B A for every adapted module: inference then costs nothing extra.

        safe_merge=True computes every merged weight first and refuses (changing nothing) if any
        is NaN or inf.
        """
        name = self._require_active("merge")
        if self.merged:
            raise RuntimeError(f"adapter {name!r} is already merged; merging twice would add B A twice")
        merged = {}
        for m, (_, scale) in self.modules[name].items():
            A, B_, _ = self._active_pair(m)
            merged[m] = merge_weights(self.model.params[m + ".weight"], A, B_, scale)
            if safe_merge and not bool(xp.isfinite(merged[m]).all()):
                raise ValueError(f"safe_merge: merging adapter {name!r} into {m} gives NaN or inf; "
                                 f"nothing was changed. The adapter weights are broken")
        for m, W in merged.items():
            self.model.params[m + ".weight"][...] = W            # in place: references stay valid
        self.merged = True
        self._apply()

    def unmerge_adapter(self):
        """W <- W - s B A: back to W0 up to float rounding (measured in the tests, ~1e-8 in float32).

        The rounding is real: after a merge/unmerge cycle some base weights differ from W0 in the
        last bits, so ``disable_adapter`` then matches the base to float32 tolerance rather than
        bit for bit. ``base_fingerprint`` (taken when the LoraModel was made) still identifies the base.
        """
        name = self._require_active("unmerge")
        if not self.merged:
            raise RuntimeError(f"adapter {name!r} is not merged; there is nothing to unmerge")
        for m, (_, scale) in self.modules[name].items():
            A, B_, _ = self._active_pair(m)
            W = self.model.params[m + ".weight"]
            W[...] = unmerge_weights(W, A, B_, scale)
        self.merged = False
        self._apply()

    def merge_and_unload(self) -> GPT:
        """Merge the active adapter and return a plain GPT without any adapter weights or hooks.

        The returned model owns copies of the weights: later calls on this LoraModel cannot change it.
        """
        if not self.merged:
            self.merge_adapter()
        params = {k: v.copy() for k, v in self.model.params.items() if ".lora_" not in k}
        plain = GPT(self.model.config, params)
        plain.freeze()
        return plain

    def _require_active(self, what):
        if self.active_adapter is None:
            raise RuntimeError(f"no active adapter to {what}; add_adapter or set_adapter first")
        return self.active_adapter

    # ---------------------------------------------------------------- reports
    def trainable_report(self) -> dict:
        """Trainable and total parameter counts, percent, and bytes of weights and Adam state."""
        n_train = self.num_params(trainable_only=True)
        n_all = sum(int(v.size) for k, v in self.model.params.items()
                    if ".lora_" not in k or k.endswith("." + str(self.active_adapter)))
        itemsize = np.dtype(self.dtype).itemsize
        return {"trainable": n_train, "total": n_all, "percent": 100.0 * n_train / n_all,
                "trainable_bytes": n_train * itemsize, "adam_state_bytes": 2 * n_train * itemsize}

    def print_trainable_parameters(self):
        rep = self.trainable_report()
        print(f"trainable params: {rep['trainable']:,} || all params: {rep['total']:,} "
              f"|| trainable%: {rep['percent']:.4f}")

    # ---------------------------------------------------------------- files
    def adapter_state(self, adapter_name: str | None = None) -> dict:
        """The tensors of one adapter under PEFT's file names ({module}.lora_A.weight, ...)."""
        name = adapter_name or self._require_active("save")
        if name not in self.adapters:
            raise KeyError(f"no adapter named {name!r}; have {sorted(self.adapters)}")
        out = {}
        for m in self.modules[name]:
            a_key, b_key = self._keys(m, name)
            out[f"{m}.lora_A.weight"], out[f"{m}.lora_B.weight"] = self.model.params[a_key], self.model.params[b_key]
        out.update(self.saved[name])           # the active adapter trains these very arrays in place
        return out

    def save_adapter(self, directory, adapter_name: str | None = None) -> Path:
        """adapter_model.safetensors (A, B, saved modules) + adapter_config.json, both atomic."""
        name = adapter_name or self._require_active("save")
        directory = Path(directory)
        io.save_tensors(directory / "adapter_model.safetensors", self.adapter_state(name))
        cfg = self.adapters[name].to_dict()
        io.write_json(directory / "adapter_config.json", {
            "format": "minilora.adapter", "version": 1, "peft_type": "LORA", "adapter_name": name,
            **cfg, "base_model_fingerprint": self.base_fingerprint,
            "base_model_config": asdict(self.model.config)})
        return directory

    def load_adapter(self, directory, adapter_name: str | None = None, *, set_active: bool = True):
        """Load an adapter saved by ``save_adapter``; refuses one made for another base model."""
        directory = Path(directory)
        meta = io.read_json(directory / "adapter_config.json")
        if meta.get("format") != "minilora.adapter":
            raise io.CheckpointError(f"{directory / 'adapter_config.json'} is not a minilora adapter config")
        if meta.get("base_model_fingerprint") != self.base_fingerprint:
            raise io.CheckpointError(
                f"the adapter in {directory} was trained on a different base model (fingerprint "
                f"{meta.get('base_model_fingerprint')} vs this base {self.base_fingerprint}); load it onto "
                f"the base it was made for (and unmerge any merged adapter first)")
        name = adapter_name or meta.get("adapter_name", "default")
        config = LoraConfig.from_dict(meta)
        tensors, _ = io.load_tensors(directory / "adapter_model.safetensors")
        was_active = self.active_adapter
        self.add_adapter(name, config)
        try:
            self._fill_from_file(name, tensors, directory)
        except Exception:
            self.delete_adapter(name)
            if was_active is not None:
                self.set_adapter(was_active)
            raise
        if not set_active and was_active is not None:
            self.set_adapter(was_active)
        else:
            self.set_adapter(name)
        return name

    def _fill_from_file(self, name, tensors, directory):
        expected = set(self.adapter_state(name))
        if set(tensors) != expected:
            missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
            raise io.CheckpointError(f"{directory}: adapter tensors do not match its config "
                                     f"(missing {missing[:4]}, unexpected {extra[:4]})")
        for key, value in tensors.items():
            if key.endswith((".lora_A.weight", ".lora_B.weight")):
                module, kind = key.rsplit(".", 2)[0], key.split(".")[-2]
                target = self.model.params[f"{module}.{kind}.{name}"]
            else:
                target = self.saved[name][key]
            if tuple(value.shape) != tuple(target.shape):
                raise io.CheckpointError(f"{directory}: {key} has shape {tuple(value.shape)} but this model "
                                         f"needs {tuple(target.shape)}; the adapter was made for another model")
            target[...] = backend.asarray(value, dtype=self.dtype)
