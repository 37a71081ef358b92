"""LoRA's bookkeeping as pure functions on the model's flat params dict (Hu et al. 2021, §4.1-4.2).

Two questions every LoRA implementation answers besides the layer's math:

  * which parameters train while an adapter is active (``trainable_names``): they, and only
    they, get a gradient and optimizer state, which is where LoRA's memory saving comes from
    (§4.2: "we do not need to store the optimizer states for the frozen parameters");
  * which adapters are merged into the frozen weights (``merge_adapters``, ``unmerge_adapters``):
    W = W0 + s B A per adapted module (§4.1, "No Additional Inference Latency"), done in place,
    never twice, all or nothing, and undone last-merged-first.

Names follow ``minilora.adapters.adapted``: an adapter keeps its own tensors in ``params`` under
"{file key}.{adapter}", so adapter ``name`` of module ``m`` (such as "blocks.0.attn.wq") keeps
A (r, d_in) in ``params[f"{m}.lora_A.weight.{name}"]``, B (d_out, r) in
``params[f"{m}.lora_B.weight.{name}"]``, and its own copy of a bias in ``f"{m}.bias.{name}"``;
W0 (d_out, d_in) is ``params[f"{m}.weight"]``.
"""
from __future__ import annotations

from minilora.adapters.lora import merge_weights, unmerge_weights
from minilora.nn.backend import xp

BIAS_MODES = ("none", "all", "lora_only")


def own_name(key: str, adapter: str) -> str:
    """Where adapter ``adapter`` keeps its tensor with file key ``key`` ("ln_f.weight") in params."""
    return f"{key}.{adapter}"


def lora_keys(module: str, adapter: str) -> tuple[str, str]:
    """The params keys of an adapter's A and B on one module (PEFT's file keys, then the adapter)."""
    return own_name(f"{module}.lora_A.weight", adapter), own_name(f"{module}.lora_B.weight", adapter)


# --------------------------------------------------------------------------- what trains
def trainable_names(modules, adapter: str, *, bias: str = "none", linear_modules=(), saved=()) -> set[str]:
    """The names of the parameters that train while ``adapter`` is active (PEFT's
    ``mark_only_lora_as_trainable``, with its ``bias`` and ``modules_to_save``).

    modules:        the module names this adapter adapts ("blocks.0.attn.wq", ...);
    bias:           "none"; "all": every module in ``linear_modules`` trains a bias; "lora_only":
                    the adapted modules do;
    linear_modules: the model's linear layers (read when bias = "all");
    saved:          the base parameters of ``modules_to_save`` ("ln_f.weight", "head.bias", ...), as
                    ``minilora.adapters.adapted.saved_param_names`` resolves them.
    What trains is the adapter's own: its A and B, and its own copy of every bias and saved
    parameter (so that switching adapters switches them too). The base parameters themselves,
    every W0 included, and every other adapter's tensors stay frozen (§4.1).
    Raises ValueError for an unknown bias mode.
    """
    if bias not in BIAS_MODES:
        raise ValueError(f"bias must be one of {BIAS_MODES}, got {bias!r}")
    ### BEGIN SOLUTION
    names = {key for m in modules for key in lora_keys(m, adapter)}
    with_bias = {"none": (), "all": linear_modules, "lora_only": modules}[bias]
    names |= {own_name(f"{m}.bias", adapter) for m in with_bias}
    names |= {own_name(p, adapter) for p in saved}
    ### END SOLUTION
    return names


# --------------------------------------------------------------------------- merging (§4.1)
def _check_known(adapters: dict, names) -> None:
    unknown = [n for n in names if n not in adapters]
    if unknown:
        raise ValueError(f"no adapter named {unknown}; have {sorted(adapters)}")


def merge_adapters(params, adapters: dict, merged, names, *, safe_merge: bool = False) -> list[str]:
    """Merge the adapters ``names`` into the frozen weights, in place, in order (§4.1).

    params:   name -> array; each adapted W0 (d_out, d_in) becomes W0 + s B A in place, so every
              reference to the array (a model, a hook) sees the merged weight;
    adapters: adapter name -> {module: (r, scale)}, as LoraModel.modules;
    merged:   the adapters merged already, in merge order (read, not changed);
    names:    the adapters to merge now, in this order.
    Returns the new merge list: ``merged`` followed by ``names``.
    All or nothing: refuses (ValueError, no weight changed) an unknown adapter, one merged
    already or named twice (its B A would be added twice) and, with ``safe_merge``, any merged
    weight that holds NaN or inf.
    """
    names = [names] if isinstance(names, str) else list(names)
    _check_known(adapters, names)
    ### BEGIN SOLUTION
    twice = [n for i, n in enumerate(names) if n in merged or n in names[:i]]
    if twice:
        raise ValueError(f"adapter {twice[0]!r} is merged already; merging it again would add its B A twice")
    new = {}                                                   # module -> merged weight, none written yet
    for name in names:
        for m, (_, scale) in adapters[name].items():
            A_key, B_key = lora_keys(m, name)
            W = new.get(m, params[m + ".weight"])
            new[m] = merge_weights(W, params[A_key], params[B_key], scale)
    if safe_merge:
        bad = [m for m, W in new.items() if not bool(xp.isfinite(W).all())]
        if bad:
            raise ValueError(f"safe_merge: merging gives NaN or inf in {bad}; nothing was changed")
    for m, W in new.items():
        W0 = params[m + ".weight"]
        W0[...] = W                                            # in place: references stay valid
    return list(merged) + list(names)
    ### END SOLUTION


def unmerge_adapters(params, adapters: dict, merged, names=None) -> list[str]:
    """Subtract merged adapters from the weights again, in place, the last merged first.

    params, adapters: as for ``merge_adapters``; merged: the merge list it returned;
    names: the adapters to unmerge (default: all of ``merged``).
    Returns the adapters still merged, in merge order. Refuses (ValueError, nothing changed) an
    adapter that is not merged. W0 comes back up to float rounding only: W0 + s B A - s B A is
    not W0 bit for bit in float32.
    """
    names = list(merged) if names is None else [names] if isinstance(names, str) else list(names)
    _check_known(adapters, names)
    ### BEGIN SOLUTION
    absent = [n for n in names if n not in merged]
    if absent:
        raise ValueError(f"adapter {absent[0]!r} is not merged; merged are {list(merged)}")
    for name in sorted(names, key=list(merged).index, reverse=True):      # last merged first
        for m, (_, scale) in adapters[name].items():
            A_key, B_key = lora_keys(m, name)
            W = params[m + ".weight"]
            W[...] = unmerge_weights(W, params[A_key], params[B_key], scale)
    return [n for n in merged if n not in names]
    ### END SOLUTION
