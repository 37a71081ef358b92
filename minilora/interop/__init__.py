"""The way out to the ecosystem: minilora's models and adapters in the files PyTorch users load.

minilora's GPT is GPT-2 exactly (Radford et al. 2019), and its adapter files follow PEFT's
format, so a model or an adapter trained here can be taken to transformers and PEFT, and one
made there can be read here. Every function in this package is a pure translation between
minilora's names and shapes and those of the other library; nothing here imports PyTorch.

  hf_gpt2       a Hugging Face GPT-2 folder (config.json + model.safetensors) <-> GPTConfig + params
  fused_qkv     adapters on separate Wq, Wk, Wv <-> one adapter on GPT-2's fused c_attn
  tokenizer     GPT-2's byte-level BPE from a Hugging Face folder (the optional ``tokenizers`` library)

LoRA-tuning a Hugging Face GPT-2 on a text file uses the training loop, so it lives with the other
experiments (``minilora.experiments.hf_finetune``); the command line is ``minilora.cli_interop``.

PEFT's adapter format and its pattern rules are the adapters' own file format, so they live in
``minilora.adapters`` (``peft_format``, ``patterns``): every LoRA adapter minilora saves is a PEFT
adapter folder.

docs/interop.md shows the files and the name tables.
"""
