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

DISTRIBUTION = "mole-cpp"   # the package's name on PyPI (pyproject.toml)

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


def __getattr__(name):
    if name == "__version__":   # looked up on first use: reading the library's needs libmole loaded
        return _version()
    raise AttributeError(f"module 'mole' has no attribute {name!r}")


def _version() -> str:
    """The installed package's version (set once, by CMakeLists.txt's project(mole VERSION ...), through
    pyproject.toml's dynamic version), or in a source tree that is not installed, libmole's mole_version()."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pass
    try:
        from . import _ffi
        L = _ffi.get()
        return L.ffi.string(L.lib.mole_version()).decode()
    except LibraryError as e:
        raise AttributeError(f"mole.__version__: {DISTRIBUTION} is not installed and libmole does not load ({e})") \
            from None


def system_info() -> str:
    """CPU features and kernels libmole chose on this machine."""
    from . import _ffi
    L = _ffi.get()
    return L.ffi.string(L.lib.mole_system_info()).decode()
