"""mole: run Mixture-of-Lookup-Experts language models with libmole (numpy + cffi, no torch).

    import mole
    with mole.Model(mole.demo_model_path()) as m:
        print(m.generate("It is a truth universally acknowledged", max_tokens=40))
"""
from pathlib import Path as _Path

from .errors import (BackendError, CancelledError, ContextFullError, FormatError, InvalidArgumentError,
                     LibraryError, ModelFileNotFoundError, ModelIOError, ModelMemoryError, MoleError,
                     UnsupportedError)
from .model import Model

__version__ = "0.1.0"

__all__ = ["Model", "demo_model_path", "MoleError", "FormatError", "ContextFullError", "InvalidArgumentError",
           "ModelFileNotFoundError", "ModelIOError", "ModelMemoryError", "UnsupportedError", "CancelledError",
           "BackendError", "LibraryError", "system_info"]

DEMO_MODEL = "demo.gguf"


def demo_model_path() -> str:
    """Path of the demo model bundled with the package."""
    p = _Path(__file__).resolve().parent / "data" / DEMO_MODEL
    if not p.is_file():
        raise ModelFileNotFoundError(f"the bundled demo model is missing: {p}")
    return str(p)


def system_info() -> str:
    """CPU features and kernels libmole chose on this machine."""
    from . import _ffi
    L = _ffi.get()
    return L.ffi.string(L.lib.mole_system_info()).decode()
