"""Adapters on a frozen GPT: LoRA (its layer, its configuration, ``LoraModel``), the math of its
successors as pure functions (``dora``, ``lora_init`` for PiSSA/OLoRA, ``combine``,
``decomposition``) and the bottleneck adapters it is measured against."""
