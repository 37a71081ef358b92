"""Experiments: the training loop, pretraining, fine-tuning, the rank analyses, reports and the demo."""
