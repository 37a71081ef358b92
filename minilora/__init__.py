"""minilora: LoRA from first principles in NumPy, with every backward pass written by hand."""
__version__ = "0.1.0"
