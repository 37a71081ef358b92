"""Adapters on a frozen GPT.

  * the host: ``adapted`` (add, switch, merge, save and load any adapter), ``files``;
  * LoRA: ``lora`` (the layer), ``config`` (LoraConfig), ``lora_model`` (LoraModel);
  * its successors' math: ``dora``, ``lora_init`` (PiSSA, OLoRA), ``combine``, ``decomposition``;
  * QLoRA's 4-bit storage of the frozen base: ``quant_codes``, ``quant``, ``quant_dq``,
    ``quant_tensor``, ``qlinear``;
  * the bottleneck adapters LoRA is measured against: ``bottleneck``.
"""
