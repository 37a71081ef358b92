"""``LoraModel``: LoRA adapters on a frozen GPT, with PEFT's vocabulary (Hu et al. 2021, §4).

``add_adapter``, ``set_adapter``, ``disable_adapter``, ``merge_adapter``, ``unmerge_adapter``,
``merge_and_unload``, ``delete_adapter``, ``save_adapter``, ``load_adapter`` mean what they mean in
PEFT; they are the general adapter host's (``minilora.adapters.adapted.AdaptedModel``). Each adapted
layer is the linear kind "lora" (``minilora.adapters.lora``) reading W0, b, A and B:

    params["blocks.0.attn.wq.lora_A.weight.default"]   A (r, d_in) of adapter "default"
    params["blocks.0.attn.wq.lora_B.weight.default"]   B (d_out, r)

Files use PEFT's key names (``blocks.0.attn.wq.lora_A.weight``) and record a fingerprint of the
base model, so an adapter is never loaded onto a base it was not trained on.

Shapes: B batch, T time, C channels, r rank.
"""
from __future__ import annotations

from minilora.adapters.adapted import AdaptedModel
from minilora.adapters.config import LoraConfig
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
