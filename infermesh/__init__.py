"""InferMesh: a GPU- and network-aware control plane for LLM inference and training."""

__version__ = "0.1.0"
