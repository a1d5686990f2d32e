"""Loads libmole with cffi (ABI mode) from the declarations in mole.h, so the binding never drifts
from the header; checks the ABI version; turns status codes into exceptions.

MOLE_LIB=/path/to/libmole.so overrides which library is loaded (development builds).
"""
from __future__ import annotations

import os
import re
import sys
import threading
from pathlib import Path

import cffi

from . import errors

ABI_VERSION = 3  # what this binding was written for; must equal MOLE_ABI_VERSION of the library

_HERE = Path(__file__).resolve().parent
_lock = threading.Lock()
_loaded = None


def _header_path() -> Path:
    for p in (_HERE / "include" / "mole.h", _HERE.parent.parent / "runtime" / "include" / "mole.h"):
        if p.is_file():
            return p
    raise errors.LibraryError(f"mole.h not found beside {_HERE} (is the package installed?)")


def _library_path() -> Path:
    env = os.environ.get("MOLE_LIB")
    if env:
        return Path(env)
    names = {"darwin": "libmole.dylib", "win32": "mole.dll"}
    return _HERE / names.get(sys.platform, "libmole.so")


def _cdef_text(header: str) -> str:
    """mole.h minus what cffi's parser does not take: preprocessor lines, the extern "C" braces
    (the header's only lines that are exactly 'extern "C" {' and '}'), and MOLE_API."""
    keep = [ln for ln in header.splitlines()
            if not ln.strip().startswith("#") and ln.strip() not in ('extern "C" {', "}")]
    return "\n".join(keep).replace("MOLE_API ", "")


class _Lib:
    def __init__(self):
        header = _header_path().read_text()
        m = re.search(r"#define\s+MOLE_ABI_VERSION\s+(\d+)", header)
        header_abi = int(m.group(1)) if m else -1
        self.ffi = cffi.FFI()
        self.ffi.cdef(_cdef_text(header))
        path = _library_path()
        if not path.is_file():
            raise errors.LibraryError(f"libmole not found at {path} (build it, or set MOLE_LIB)")
        try:
            self.lib = self.ffi.dlopen(str(path))
        except OSError as e:
            raise errors.LibraryError(f"cannot load {path}: {e}") from None
        lib_abi = self.lib.mole_abi_version()
        if lib_abi != ABI_VERSION or header_abi != ABI_VERSION:
            raise errors.LibraryError(
                f"ABI mismatch: this mole package speaks ABI {ABI_VERSION}, the header says {header_abi} "
                f"and {path} says {lib_abi}; reinstall mole so the library and package match")
        self.path = path
        self.OK = self.lib.MOLE_STATUS_OK
        self.BUFFER_TOO_SMALL = self.lib.MOLE_STATUS_BUFFER_TOO_SMALL
        self.status_errors = {getattr(self.lib, name): cls for name, cls in _STATUS_CLASSES.items()}


def get() -> _Lib:
    """The loaded library (loaded on first use, once)."""
    global _loaded
    if _loaded is None:
        with _lock:
            if _loaded is None:
                _loaded = _Lib()
    return _loaded


# The exception of each status, by the header's names: the values are the loaded library's (lib.MOLE_STATUS_*).
# A status not listed (MOLE_STATUS_INTERNAL_ERROR) raises MoleError itself.
_STATUS_CLASSES = {
    "MOLE_STATUS_INVALID_ARGUMENT": errors.InvalidArgumentError,
    "MOLE_STATUS_FILE_NOT_FOUND": errors.ModelFileNotFoundError,
    "MOLE_STATUS_IO_ERROR": errors.ModelIOError,
    "MOLE_STATUS_FORMAT_ERROR": errors.FormatError,
    "MOLE_STATUS_OUT_OF_MEMORY": errors.ModelMemoryError,
    "MOLE_STATUS_CONTEXT_FULL": errors.ContextFullError,
    "MOLE_STATUS_UNSUPPORTED": errors.UnsupportedError,
    "MOLE_STATUS_CANCELLED": errors.CancelledError,
    "MOLE_STATUS_BACKEND_ERROR": errors.BackendError,
}


def check(status: int, what: str = "") -> None:
    """Raise the exception for a non-OK status, carrying mole_last_error()."""
    L = get()
    if status == L.OK:
        return
    msg = L.ffi.string(L.lib.mole_last_error()).decode("utf-8", "replace")
    if not msg:
        msg = L.ffi.string(L.lib.mole_status_string(status)).decode()
    if what:
        msg = f"{what}: {msg}"
    raise L.status_errors.get(status, errors.MoleError)(msg)


def call_sized(fn, *args, initial: int = 256, kind: str = "char", what: str = ""):
    """Calls fn(*args, buf, capacity, n_out) and grows buf on BUFFER_TOO_SMALL; returns (buf, n)."""
    L = get()
    cap = max(1, initial)
    n_out = L.ffi.new("size_t *")
    while True:
        buf = L.ffi.new(f"{kind}[]", cap)
        st = fn(*args, buf, cap, n_out)
        if st == L.BUFFER_TOO_SMALL and n_out[0] >= cap:
            cap = int(n_out[0]) + 1
            continue
        check(st, what)
        return buf, int(n_out[0])


def _fields(struct) -> dict:
    """A params struct (cdata pointer) as {field: value}."""
    return {name: getattr(struct, name) for name, _ in get().ffi.typeof(struct).item.fields}


def sampler_defaults() -> dict:
    """mole_sampler_default_params() as a dict (temperature, top_k, top_p, min_p, repeat_penalty,
    repeat_last_n, seed): the library owns the sampling defaults, Python reads them."""
    L = get()
    p = L.ffi.new("struct mole_sampler_params *")
    L.lib.mole_sampler_default_params(p)
    return _fields(p)


def context_defaults() -> dict:
    """mole_context_default_params() as a dict (n_ctx 0 = the model's context_length, n_threads 0 = one per
    physical core, n_batch, lut_cache_mb, n_seq_max)."""
    L = get()
    p = L.ffi.new("struct mole_context_params *")
    L.lib.mole_context_default_params(p)
    return _fields(p)


def show(value) -> str:
    """A default read from C for --help: a float32 0.8 reads as 0.8, not 0.800000011920929."""
    return f"{value:.6g}" if isinstance(value, float) else str(value)
