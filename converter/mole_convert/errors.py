"""Exceptions of the converter: every failure the user can cause names what was wrong."""


class ConvertError(Exception):
    """Base class of all mole_convert errors."""


class CheckpointError(ConvertError, ValueError):
    """A checkpoint is unusable: bad or incomplete config, missing, mis-shaped or unknown tensor."""
