"""Adapters on a frozen GPT: LoRA (its layer, its configuration, ``LoraModel``) and the bottleneck
adapters it is measured against."""
