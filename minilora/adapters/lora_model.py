"""``LoraModel``: LoRA adapters on a frozen GPT, with PEFT's vocabulary (Hu et al. 2021, §4).

``add_adapter``, ``set_adapter``, ``disable_adapter``, ``merge_adapter``, ``unmerge_adapter``,
``merge_and_unload``, ``delete_adapter``, ``save_adapter``, ``load_adapter`` mean what they mean in
PEFT; they are the general adapter host's (``minilora.adapters.adapted.AdaptedModel``). Each adapted
layer is the linear kind "lora" (``minilora.adapters.lora``) reading W0, b, A and B, or "dora"
(``minilora.adapters.dora``) reading the magnitude m too:

    params["blocks.0.attn.wq.lora_A.weight.default"]   A (r, d_in) of adapter "default"
    params["blocks.0.attn.wq.lora_B.weight.default"]   B (d_out, r)
    params["blocks.0.attn.wq.lora_magnitude_vector.default"]   m (d_out,), with use_dora

Files use PEFT's key names (``blocks.0.attn.wq.lora_A.weight``) and record a fingerprint of the
base model, so an adapter is never loaded onto a base it was not trained on.

Two PEFT operations that make new adapters from trained ones live here too:
``add_weighted_adapter`` (combine adapters: cat, linear, svd; ``minilora.adapters.combine``) and
``convert_to_plain_lora`` (a PiSSA/OLoRA adapter as a plain rank-2r LoRA on the original W0;
``minilora.adapters.lora_init``).

Shapes: B batch, T time, C channels, r rank.
"""
from __future__ import annotations

import dataclasses

from minilora.adapters.adapted import AdaptedModel
from minilora.adapters.combine import combine_adapters
from minilora.adapters.config import WEIGHT_INITS, LoraConfig, initial_factors, resolve_targets
from minilora.adapters.lora_init import converted_lora_alpha, to_plain_lora
from minilora.nn.backend import xp
from minilora.nn.model import GPT


class LoraModel(AdaptedModel):
    """A frozen GPT with named LoRA adapters; one is active at a time (PEFT's vocabulary)."""

    def __init__(self, model: GPT, config: LoraConfig | None = None, adapter_name: str = "default"):
        super().__init__(model, config, adapter_name)

    @property
    def modules(self) -> dict[str, dict[str, tuple[int, float]]]:
        """adapter -> {module: (r, scale)} for every LoRA layer of that adapter."""
        return {name: {m: (int(self.model.params[s.tensors["lora_A"]].shape[0]), s.options["scale"])
                       for m, s in layout.items() if "lora_A" in s.tensors}
                for name, layout in self.layouts.items()}

    def lora_factors(self, module: str, adapter: str | None = None):
        """(A (r, d_in), B (d_out, r), scale) of ``module`` in ``adapter`` (default: the active one)."""
        name = adapter or self._require_active("read")
        spec = self.layouts[name].get(module)
        if spec is None or "lora_A" not in spec.tensors:
            raise KeyError(f"{module} has no LoRA layer in adapter {name!r}; adapted: {sorted(self.modules[name])}")
        return self.model.params[spec.tensors["lora_A"]], self.model.params[spec.tensors["lora_B"]], \
            spec.options["scale"]

    def _new_adapter_from(self, adapter_name: str, config: LoraConfig, fill) -> None:
        """Add ``adapter_name`` built from ``config``, then ``fill(key) -> array or None`` sets each of its
        tensors; the active adapter stays what it was (as in PEFT)."""
        active = self.active_adapter
        self.add_adapter(adapter_name, config)
        try:
            for key in self.own_keys[adapter_name]:
                value = fill(key)
                if value is not None:
                    self.model.params[self.param_name(key, adapter_name)][...] = value
        except Exception:
            self.delete_adapter(adapter_name)
            raise
        finally:
            if active is not None and active in self.adapters:
                self.set_adapter(active)

    # ---------------------------------------------------------------- PiSSA / OLoRA -> plain LoRA
    def convert_to_plain_lora(self, adapter_name: str | None = None, new_adapter_name: str | None = None) -> str:
        """Add a plain LoRA adapter on the original W0 that computes what PiSSA/OLoRA adapter ``adapter_name``
        computes on its residual; returns its name (default "{adapter_name}_lora").

        W_res + s B A = W0 + s [B | -B0] [A ; A0] (``lora_init.to_plain_lora``; PEFT's
        ``save_pretrained(path_initial_model_for_weight_conversion=...)``): rank 2r, the same scale,
        A0 and B0 recomputed from W0 as the init made them. A DoRA magnitude carries over unchanged
        (the adapted weight V is the same), and so do trained biases and saved modules. The result
        can be switched, shared and exported like any LoRA adapter.
        """
        name = adapter_name or self._require_active("convert")
        config = self.adapters[name]
        if not isinstance(config, LoraConfig) or config.init_lora_weights not in WEIGHT_INITS:
            raise ValueError(f"adapter {name!r} is not a PiSSA/OLoRA adapter (init_lora_weights in {WEIGHT_INITS}); "
                             f"it already works on the original W0")
        new = new_adapter_name or f"{name}_lora"
        targets = resolve_targets(self.model, config)
        factors = {}
        for module, (r, scale) in targets.items():
            A0, B0, W_res = initial_factors(config.init_lora_weights, self.model.params[module + ".weight"], r, scale)
            kept = self.model.params[self.param_name(module + ".weight", name)]
            gap = float(xp.abs(kept - W_res).max() / xp.abs(W_res).max())
            if gap > 1e-4:
                raise ValueError(f"{module}: adapter {name!r}'s residual is not W0 - s B0 A0 of this base (relative "
                                 f"gap {gap:.1e}); it was made on another base model or its residual was changed")
            A, B_, _ = self.lora_factors(module, name)
            factors[module] = to_plain_lora(A0, B0, A, B_)

        def alpha2(alpha):                                    # 2 alpha, or sqrt(2) alpha with rsLoRA: same scale
            return converted_lora_alpha(config.r, alpha, config.use_rslora)[1]
        plain = dataclasses.replace(config, init_lora_weights="gaussian", r=2 * config.r,
                                    lora_alpha=alpha2(config.lora_alpha),
                                    rank_pattern={k: 2 * v for k, v in config.rank_pattern.items()},
                                    alpha_pattern={k: alpha2(v) for k, v in config.alpha_pattern.items()})
        old = self.adapter_state(name)

        def fill(key):
            module, _, role = key.rpartition(".lora_")
            if role in ("A.weight", "B.weight"):
                return factors[module][0 if role == "A.weight" else 1]
            return old[key]                                   # magnitude, biases, saved modules
        self._new_adapter_from(new, plain, fill)
        return new

    # ---------------------------------------------------------------- combining adapters
    def add_weighted_adapter(self, adapters, weights, adapter_name: str, combination_type: str = "svd",
                             svd_rank: int | None = None) -> dict[str, float]:
        """Add ``adapter_name`` = the weighted sum of trained adapters, as PEFT's ``add_weighted_adapter``.

        Per module the target is dW = sum_i w_i s_i B_i A_i; "cat" gives it exactly (rank sum r_i),
        "linear" mixes the factors (equal ranks; an approximation), "svd" truncates dW to rank
        ``svd_rank`` (default max r_i). The new adapter has scale 1 (lora_alpha = r) and stays
        inactive, as in PEFT. Returns {module: ||dW - B A||_F / ||dW||_F}, the combination's error.

        Refused (PEFT would silently drop what they trained): DoRA adapters (PEFT gives the new
        adapter fresh magnitudes ||W0||), trained biases and modules_to_save (the combination holds
        only A and B), PiSSA/OLoRA adapters (each works on its own residual: convert_to_plain_lora
        first), and adapters on different modules. A name in use is an error, not a silent no-op.
        """
        adapters, weights = list(adapters), [float(w) for w in weights]
        if adapter_name in self.adapters:
            raise ValueError(f"adapter {adapter_name!r} exists already; pick a new name for the combination")
        for a in adapters:
            if a not in self.adapters:
                raise KeyError(f"no adapter named {a!r}; have {sorted(self.adapters)}")
            _check_combinable(a, self.adapters[a])
        modules = [sorted(self.modules[a]) for a in adapters]
        if any(m != modules[0] for m in modules):
            raise ValueError(f"adapters {adapters} adapt different modules; combine adapters on the same modules")
        results = {m: combine_adapters([self.lora_factors(m, a) for a in adapters], weights, combination_type,
                                       svd_rank) for m in modules[0]}
        ranks = {m: int(res.A.shape[0]) for m, res in results.items()}
        r = ranks[modules[0][0]]
        pattern = {m: k for m, k in ranks.items() if k != r}
        config = dataclasses.replace(self.adapters[adapters[0]], r=r, lora_alpha=float(r), rank_pattern=pattern,
                                     alpha_pattern={m: float(k) for m, k in pattern.items()}, use_rslora=False)

        def fill(key):
            module, _, role = key.rpartition(".lora_")
            return results[module].A if role == "A.weight" else results[module].B
        self._new_adapter_from(adapter_name, config, fill)
        return {m: res.relative_error for m, res in results.items()}


def _check_combinable(name: str, config) -> None:
    """Refuse what a weighted sum of B A cannot hold (see ``add_weighted_adapter``)."""
    if not isinstance(config, LoraConfig):
        raise ValueError(f"adapter {name!r} is a {type(config).__name__}, not LoRA: only B A updates combine")
    why = [(config.use_dora, "it is a DoRA adapter: its trained magnitudes do not add up like B A (PEFT keeps "
                             "the new adapter's fresh m = ||W0|| and loses them); merge_and_unload it instead"),
           (config.init_lora_weights in WEIGHT_INITS, "it works on its own PiSSA/OLoRA residual; call "
                                                       "convert_to_plain_lora first and combine the result"),
           (config.bias != "none", f"it trains biases (bias={config.bias!r}), which the combination would lose"),
           (bool(config.modules_to_save), f"it trains modules_to_save {config.modules_to_save}, which the "
                                          f"combination would lose")]
    for bad, reason in why:
        if bad:
            raise ValueError(f"cannot combine adapter {name!r}: {reason}")
