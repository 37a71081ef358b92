"""Data: the character tokenizer and the shipped tasks (``tasks``), seeded datasets, batches and
text files (``datasets``)."""
