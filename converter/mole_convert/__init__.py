"""mole_convert: the PyTorch side of mole.cpp (model, training, checkpoint loading, conversion to GGUF).
Submodules load on first use, so `import mole_convert` stays cheap and does not import torch."""
import sys
import types

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


class _Package(types.ModuleType):
    """`mole_convert.convert` is the function convert(), as DESIGN.md documents, though a submodule of that
    name exists too (for `python -m mole_convert.convert`): importing the submodule binds it on the package
    with setattr, and this puts the submodule's function there instead. The module stays importable as
    `mole_convert.convert` (sys.modules) for `from mole_convert.convert import ...`."""

    def __setattr__(self, name, value):
        if name == "convert" and isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.convert":
            value = value.convert
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
