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
           "BackendError", "LibraryError", "system_info", "get_cmake_dir", "get_pkgconfig_dir"]

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


def get_cmake_dir() -> str:
    """The folder holding the installed package's moleConfig.cmake (as pybind11.get_cmake_dir()): an app's CMake
    build links the wheel's libmole with `cmake -Dmole_DIR=<it>`, find_package(mole) and target mole::mole."""
    return str(_installed_dir("cmake", "moleConfig.cmake"))


def get_pkgconfig_dir() -> str:
    """The folder holding the installed package's mole.pc: `PKG_CONFIG_PATH=<it> pkg-config --cflags --libs mole`."""
    return str(_installed_dir("pkgconfig", "mole.pc"))


def _installed_dir(folder: str, name: str) -> _Path:
    """mole/<folder> of the installed package: beside this file, or, for an editable install (whose Python files
    stay in the source tree), in the distribution's own files."""
    from importlib import metadata

    candidates = [_Path(__file__).resolve().parent / folder]
    try:
        candidates.append(_Path(metadata.distribution(DISTRIBUTION).locate_file(f"mole/{folder}")))
    except metadata.PackageNotFoundError:
        pass
    for d in candidates:
        if (d / name).is_file():
            return d
    raise LibraryError(f"{name} not found in {' or '.join(map(str, candidates))}: the CMake and pkg-config files come "
                       f"with the installed package (pip install .)")
