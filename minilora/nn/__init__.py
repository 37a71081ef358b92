"""The network and its math: the backend switch, layers as forward/backward pairs, attention, the
GPT, the linear-layer registry, gradient checks and optimizers."""
