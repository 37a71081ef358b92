"""Adapters on a frozen GPT, as data: add, switch, disable, merge, save and load them (PEFT's words).

An adapter config (``LoraConfig``, ``AdapterConfig``, ...) builds an adapter's parts for a model:

    tensors   its own tensors by file key, e.g. "blocks.0.attn.wq.lora_A.weight" -> A (r, C)
    specs     the linear layers it changes, as ``LinearSpec``s reading base params or its own keys
    saved     base params it keeps its own copy of (modules_to_save, biases), e.g. "head.weight"
    frozen    own keys that do not train (PiSSA's residual copy of W0, LoRA-FA's A)
    specials  prefix tuning's special positions (``minilora.nn.specials.SpecialPositions``), their
              states named by own keys; installed as ``model.specials`` while the adapter is active

``AdaptedModel`` stores each tensor in ``model.params`` as "{key}.{adapter}" and keeps each
adapter's layout (module -> spec, pointing at those names). Setting an adapter installs its layout
into ``model.linears``; disabling restores the base specs. Switching adapters swaps specs, which
are data; no array moves. Merging folds each layer that can be folded (its kind has ``merge``)
into W0, in place, and runs the plain layer until ``unmerge_adapter``.

It offers the model's interface (params, trainable, config, dtype, kernels, forward, classify,
backward, num_params), so one training loop trains a GPT and an adapted GPT alike.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minilora import io
from minilora.adapters import files, qmerge
from minilora.nn import backend
from minilora.nn.backend import xp
from minilora.nn.linears import LinearSpec, get_kind
from minilora.nn.model import GPT, SHORT_NAMES

BASE_KINDS = ("linear", "qlinear")       # the base model's own layers: float, or frozen in 4 bits (QLoRA)


@dataclass
class AdapterParts:
    """What a config builds for one adapter (see the module docstring)."""
    tensors: dict                                   # file key -> array: the adapter's own tensors
    specs: dict                                     # module -> LinearSpec (refers to base names or own keys)
    saved: list = field(default_factory=list)       # base params it keeps a copy of (besides modules_to_save)
    frozen: set = field(default_factory=set)        # own keys that stay frozen (PiSSA's residual, LoRA-FA's A)
    specials: object = None                         # SpecialPositions reading own keys (prefix tuning), or None


def saved_param_names(modules: dict, names) -> list[str]:
    """The params of the modules named in ``names`` ("head", "ln_f", "wq", "blocks.0.mlp.fc", ...).

    ``modules``: module name -> {role: param name}, for the linear layers and layer norms. A name
    matches a module equal to it or ending in ".{name}"; short block names are expanded ("wq" ->
    "attn.wq"). The tied LM head shares wte with the embedding, so it cannot be copied.
    """
    found_params = []
    for m in names:
        full = SHORT_NAMES.get(m, m)
        found = [n for n in modules if n == full or n.endswith("." + full)]
        if not found or "lm_head" in found:
            raise ValueError(f"modules_to_save entry {m!r} matches no module that can be trained as a copy; "
                             f"e.g. 'head' (after add_classification_head), 'ln_f' or a block linear such as 'wq'")
        found_params += [p for n in found for p in modules[n].values()]
    return sorted(set(found_params))


class AdaptedModel:
    """A frozen GPT with named adapters; one is active at a time."""

    def __init__(self, model: GPT, config=None, adapter_name: str = "default"):
        adapted = sorted(m for m, s in model.linears.items() if s.kind not in BASE_KINDS)
        if adapted or model.specials is not None:
            raise ValueError(f"this GPT already carries adapters ({adapted[:3]} ...): another adapter model wraps "
                             f"it. Add this adapter to that one with add_adapter (one model hosts adapters of any "
                             f"type), or merge_and_unload() it first")
        self.model = model
        self.adapters: dict = {}                 # adapter -> its config
        self.own_keys: dict[str, list] = {}      # adapter -> file keys of its own tensors
        self.saved: dict[str, list] = {}         # adapter -> base params it has its own copy of
        self.layouts: dict[str, dict] = {}       # adapter -> {module: LinearSpec} it installs
        self.trainables: dict[str, set] = {}     # adapter -> param names that train while it is active
        self.active_adapter: str | None = None
        self.merged = False
        self.disabled = False
        self._merge_states: dict = {}            # module -> what its kind's unmerge needs
        self.base_linears = dict(model.linears)
        self.base_norms = {n: dict(t) for n, t in model.norms.items()}
        self.norm_layouts: dict[str, dict] = {}  # adapter -> {layer norm: {role: param}} it redirects
        self.special_layouts: dict = {}          # adapter -> its SpecialPositions (params renamed), or None
        self.base_fingerprint = io.fingerprint({k: model.params[k] for k in model.base_param_names()})
        model.freeze()                           # Hu et al. 2021, §4.1: the pre-trained weights stay frozen
        if config is not None:
            self.add_adapter(adapter_name, config)

    # ---------------------------------------------------------------- the model interface
    params = property(lambda self: self.model.params)
    trainable = property(lambda self: self.model.trainable)
    config = property(lambda self: self.model.config)
    dtype = property(lambda self: self.model.dtype)
    stochastic = property(lambda self: self.model.stochastic)

    @property
    def kernels(self):
        return self.model.kernels

    @kernels.setter
    def kernels(self, value):
        self.model.kernels = value

    def forward(self, idx, *, training=False):
        return self.model.forward(idx, training=training)

    def classify(self, idx, last, *, training=False):
        return self.model.classify(idx, last, training=training)

    def backward(self, dlogits, cache):
        if self.merged:
            raise RuntimeError(f"adapter {self.active_adapter!r} is merged into the weights, so it gets no "
                               f"gradient; call unmerge_adapter() before training")
        return self.model.backward(dlogits, cache)

    def num_params(self, trainable_only: bool = False) -> int:
        return self.model.num_params(trainable_only)

    def param_name(self, key: str, adapter: str | None = None) -> str:
        """Where an adapter's tensor with file key ``key`` lives in ``params``: "{key}.{adapter}"."""
        return f"{key}.{adapter or self._require_active('name')}"

    # ---------------------------------------------------------------- adding adapters
    def add_adapter(self, adapter_name: str, config):
        """Build adapter ``adapter_name`` from ``config`` (it starts equal to the base) and make it active."""
        if adapter_name in self.adapters:
            raise ValueError(f"adapter {adapter_name!r} exists already; delete_adapter it or pick another name")
        if "." in adapter_name or not adapter_name:
            raise ValueError(f"adapter names must be non-empty and contain no '.', got {adapter_name!r}")
        if self.merged:
            raise RuntimeError("unmerge_adapter() before adding an adapter")
        for m, spec in self.model.linears.items():          # a head added after wrapping
            self.base_linears.setdefault(m, spec)
        parts = config.build(self.model, self.base_linears)
        base_modules = {**{m: s.tensors for m, s in self.base_linears.items()}, **self.base_norms}
        saved = sorted(set(parts.saved) | set(saved_param_names(base_modules, config.modules_to_save)))
        in_4bit = sorted(set(saved) & {p for ps in self.model.weight_parts.values() for p in ps})
        if in_4bit:
            raise ValueError(f"modules_to_save would train a copy of a 4-bit weight ({in_4bit[:2]} ...), which has no "
                             f"gradient; adapt that layer with LoRA instead, or save only float modules (head, ln_f)")
        tensors = dict(parts.tensors)
        for p in saved:                       # the adapter's own copy starts from the base, unless the config
            tensors.setdefault(p, self.model.params[p].copy())   # gave its start (PiSSA's residual W0 - s B A)
        own = set(tensors)
        rename = {k: self.param_name(k, adapter_name) for k in own}
        touched = {m: s for m, s in self.base_linears.items() if set(s.tensors.values()) & set(saved)}
        layout = {m: LinearSpec(s.kind, {role: rename.get(ref, ref) for role, ref in s.tensors.items()},
                                dict(s.options)) for m, s in {**touched, **parts.specs}.items()}
        norms = {n: {role: rename.get(ref, ref) for role, ref in roles.items()}
                 for n, roles in self.base_norms.items() if set(roles.values()) & set(saved)}
        for key, value in tensors.items():
            self.model.params[rename[key]] = value
        self.adapters[adapter_name], self.own_keys[adapter_name] = config, sorted(own)
        self.saved[adapter_name], self.layouts[adapter_name] = saved, layout
        self.norm_layouts[adapter_name] = norms
        self.special_layouts[adapter_name] = None if parts.specials is None else dataclasses.replace(
            parts.specials, states={i: rename[k] for i, k in parts.specials.states.items()})
        self.trainables[adapter_name] = {rename[k] for k in own - set(parts.frozen)}
        self.model.rng = backend.rng(config.seed + 1)        # dropout masks, reproducible per adapter
        return self.set_adapter(adapter_name)

    # ---------------------------------------------------------------- switching
    def set_adapter(self, adapter_name: str):
        """Make ``adapter_name`` the active, trainable adapter: install its layout."""
        if adapter_name not in self.adapters:
            raise KeyError(f"no adapter named {adapter_name!r}; have {sorted(self.adapters)}")
        if self.merged:
            raise RuntimeError(f"adapter {self.active_adapter!r} is merged; unmerge_adapter() before switching")
        self.active_adapter, self.disabled = adapter_name, False
        self._apply()
        return self

    def _apply(self):
        """Install the specs and the trainable set of the current state (base, active, merged)."""
        self.model.freeze()
        self.model.linears.update(self.base_linears)
        self.model.norms.update({n: dict(roles) for n, roles in self.base_norms.items()})
        self.model.specials = None
        name = self.active_adapter
        if name is None or self.disabled:
            return
        self.model.norms.update(self.norm_layouts[name])
        self.model.specials = self.special_layouts[name]     # prefix positions stay after a merge: they cannot fold
        layout = self.layouts[name]
        if self.merged:                          # merged layers run as plain layers on the merged W
            layout = {m: (LinearSpec("linear", {r: s.tensors[r] for r in ("weight", "bias") if r in s.tensors})
                          if m in self._merge_states else s) for m, s in layout.items()}
        self.model.linears.update(layout)
        if not self.merged:
            self.model.trainable |= self.trainables[name]

    @contextlib.contextmanager
    def disable_adapter(self):
        """Within the block the model is exactly the base model (base specs, base modules)."""
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
        """Remove an adapter's tensors and config; if it was active, no adapter is active after."""
        if adapter_name not in self.adapters:
            raise KeyError(f"no adapter named {adapter_name!r}; have {sorted(self.adapters)}")
        if self.merged and adapter_name == self.active_adapter:
            raise RuntimeError(f"adapter {adapter_name!r} is merged; unmerge_adapter() before deleting it")
        for key in self.own_keys[adapter_name]:
            del self.model.params[self.param_name(key, adapter_name)]
        for table in (self.adapters, self.own_keys, self.saved, self.layouts, self.norm_layouts, self.trainables,
                      self.special_layouts):
            del table[adapter_name]
        if self.active_adapter == adapter_name:
            self.active_adapter = None
        self._apply()

    def _require_active(self, what):
        if self.active_adapter is None:
            raise RuntimeError(f"no active adapter to {what}; add_adapter or set_adapter first")
        return self.active_adapter

    def _tensors(self, spec: LinearSpec) -> dict:
        return {role: self.model.params[ref] for role, ref in spec.tensors.items()}

    # ---------------------------------------------------------------- merging (Hu et al. 2021, §4.1)
    def merge_adapter(self, *, safe_merge: bool = True):
        """Fold the active adapter into the frozen weights (LoRA: W0 <- W0 + s B A): no extra latency.

        Every merged weight is computed first and checked: if any is NaN or inf nothing is changed
        and a ValueError says so (PEFT's safe_merge; here always on, the flag is accepted for parity).
        """
        name = self._require_active("merge")
        if self.merged:
            raise RuntimeError(f"adapter {name!r} is already merged; merging twice would add its update twice")
        if self.model.weight_parts:
            raise ValueError(qmerge.IN_PLACE_MERGE_REFUSED)
        merged, states = {}, {}
        for m, spec in self.layouts[name].items():
            kind = get_kind(spec.kind)
            if kind.name in BASE_KINDS:
                continue
            if kind.merge is None:
                raise ValueError(f"{m} is a {kind.name!r} layer, which cannot be folded into one weight matrix; "
                                 f"only linear updates (LoRA and its variants) merge")
            W, states[m] = kind.merge(self._tensors(spec), **spec.options)
            if not bool(xp.isfinite(W).all()):
                raise ValueError(f"merging adapter {name!r} into {m} gives NaN or inf; nothing was changed. "
                                 f"The adapter's weights are broken (check its training for divergence)")
            merged[spec.tensors["weight"]] = W
        for weight_name, W in merged.items():
            self.model.params[weight_name][...] = W           # in place: references stay valid
        self._merge_states, self.merged = states, True
        self._apply()

    def unmerge_adapter(self):
        """Undo ``merge_adapter`` (LoRA: W <- W - s B A): W0 again, up to float rounding.

        The rounding is real: after a merge/unmerge cycle some base weights differ from W0 in the
        last bits, so ``disable_adapter`` then matches the base to float32 tolerance rather than
        bit for bit. ``base_fingerprint`` (taken when the model was wrapped) still names the base.
        """
        name = self._require_active("unmerge")
        if not self.merged:
            raise RuntimeError(f"adapter {name!r} is not merged; there is nothing to unmerge")
        for m, state in self._merge_states.items():
            spec = self.layouts[name][m]
            W = self.model.params[spec.tensors["weight"]]
            W[...] = get_kind(spec.kind).unmerge(W, self._tensors(spec), state, **spec.options)
        self._merge_states, self.merged = {}, False
        self._apply()

    def merge_and_unload(self, *, requantize: bool = False) -> GPT:
        """Merge the active adapter and return a plain GPT (own copies, no adapter tensors).

        The adapter's trained copies (a head, biases) become the plain model's parameters. On a
        4-bit base (QLoRA) the result is a float32 GPT, W = dequant(W0) + s B A, what QLoRA users
        do; ``requantize=True`` stores the merged weights in 4 bits again, which loses part of a
        small update (``minilora.adapters.qmerge``).
        """
        if self.special_layouts.get(self.active_adapter) is not None:
            raise ValueError(f"adapter {self.active_adapter!r} has special positions (prefix tuning): their trained "
                             f"activations are extra positions of every sequence, not a weight, so no plain GPT "
                             f"computes them. Keep the adapter model (merge_adapter folds any LoRA part)")
        if self.model.weight_parts or requantize:
            return qmerge.merge_and_unload_4bit(self, requantize=requantize)
        if not self.merged:
            self.merge_adapter()
        name = self.active_adapter
        params = {k: self.model.params[k].copy() for k in self.model.own_param_names()}
        for p in self.saved[name]:
            params[p] = self.model.params[self.param_name(p, name)].copy()
        plain = GPT(self.model.config, params)
        plain.freeze()
        return plain

    # ---------------------------------------------------------------- reports
    def trainable_report(self) -> dict:
        """Trainable and total parameter counts (base + active adapter), percent, bytes of Adam state."""
        n_train = self.num_params(trainable_only=True)
        size = lambda adapter: sum(int(self.model.params[self.param_name(k, adapter)].size)  # noqa: E731
                                   for k in self.own_keys.get(adapter, []))
        # the base (a 4-bit weight counted by its weights: GPT.num_params) plus the active adapter only
        n_all = self.model.num_params() - sum(size(a) for a in self.adapters) + size(self.active_adapter)
        itemsize = np.dtype(self.dtype).itemsize
        return {"trainable": n_train, "total": n_all, "percent": 100.0 * n_train / n_all,
                "trainable_bytes": n_train * itemsize, "adam_state_bytes": 2 * n_train * itemsize}

    def print_trainable_parameters(self):
        rep = self.trainable_report()
        print(f"trainable params: {rep['trainable']:,} || all params: {rep['total']:,} "
              f"|| trainable%: {rep['percent']:.4f}")

    # ---------------------------------------------------------------- files
    def adapter_state(self, adapter_name: str | None = None) -> dict:
        """The tensors of one adapter by file key ({module}.lora_A.weight, head.weight, ...)."""
        name = adapter_name or self._require_active("save")
        if name not in self.adapters:
            raise KeyError(f"no adapter named {name!r}; have {sorted(self.adapters)}")
        return {k: self.model.params[self.param_name(k, name)] for k in self.own_keys[name]}

    def save_adapter(self, directory, adapter_name: str | None = None) -> Path:
        """adapter_model.safetensors (the adapter's tensors) + adapter_config.json (minilora.adapters.files)."""
        return files.save_adapter(self, directory, adapter_name or self._require_active("save"))

    def load_adapter(self, directory, adapter_name: str | None = None, *, set_active: bool = True) -> str:
        """Load an adapter saved by ``save_adapter``; refuses one made for another base model."""
        return files.load_adapter(self, directory, adapter_name, set_active=set_active)
