"""Exception classes of the mole package; each carries the C library's message."""


class MoleError(Exception):
    """Base class of every error raised by mole."""


class FormatError(MoleError):
    """The file is not a valid mole GGUF (truncated, corrupted, wrong shapes, ...)."""


class ContextFullError(MoleError):
    """The tokens do not fit in the context (n_ctx)."""


class InvalidArgumentError(MoleError, ValueError):
    """A bad argument: token id out of range, n_ctx < 1, unknown option, ..."""


class ModelFileNotFoundError(MoleError, FileNotFoundError):
    """The model file does not exist."""


class ModelIOError(MoleError, OSError):
    """The file exists but could not be opened, read or mapped."""


class ModelMemoryError(MoleError, MemoryError):
    """The library ran out of memory."""


class UnsupportedError(MoleError):
    """The request needs something this build lacks (e.g. a CUDA device)."""


class CancelledError(MoleError):
    """The evaluation was cancelled (mole_context_cancel)."""


class BackendError(MoleError):
    """A compute device reported an error."""


class LibraryError(MoleError):
    """libmole could not be found or loaded, or it is the wrong version."""
