"""mole_convert: the PyTorch side of mole.cpp (model, training, checkpoint loading, conversion to GGUF).
Submodules load on first use, so `import mole_convert` stays cheap and does not import torch."""
from .errors import CheckpointError, ConvertError

__all__ = ["ConvertError", "CheckpointError", "convert", "load_checkpoint", "save_checkpoint",
           "MoleConfig", "MoleForCausalLM", "reparameterize"]

_LAZY = {
    "convert": "convert", "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "MoleConfig": "config", "MoleForCausalLM": "model", "reparameterize": "model",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'mole_convert' has no attribute {name!r}")
