"""Adapters on a frozen GPT.

  * the host: ``adapted`` (add, switch, merge, save and load any adapter), ``files``, which writes
    LoRA adapters in PEFT's format (``peft_format``, ``patterns``: PEFT's rank/alpha pattern rule);
  * LoRA: ``lora`` (the layer), ``config`` (LoraConfig), ``lora_model`` (LoraModel), ``bookkeeping``
    (what trains while an adapter is active; merging adapters in place and back);
  * its successors' math: ``dora``, ``lora_init`` (PiSSA, OLoRA), ``combine``, ``decomposition``;
  * QLoRA's 4-bit storage of the frozen base: ``quant_codes``, ``quant``, ``quant_dq``,
    ``quant_tensor``, ``quant_fast``, ``qlinear``; the quantized model: ``qbase`` (quantize_base),
    ``qmerge`` (merging into 4 or 32 bits), ``qfiles`` (save_quantized, load_quantized);
  * the baselines LoRA is measured against: ``bottleneck`` (adapters), ``bitfit`` (the biases train),
    ``prefix`` (prefix-embedding and prefix-layer tuning, alone or with LoRA; the special positions
    themselves are ``minilora.nn.specials``).
"""
