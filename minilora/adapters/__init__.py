"""Adapters on a frozen GPT: LoRA (its layer, its configuration, ``LoraModel``), the bottleneck
adapters it is measured against, and QLoRA's 4-bit storage of the frozen base (``quant_codes``,
``quant``, ``quant_dq``, ``quant_tensor``, ``qlinear``)."""
