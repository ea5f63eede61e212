"""Errors lenx raises for bad input: one clear message, raised before expensive work starts."""


class LenxError(Exception):
    """Base class: a problem with the user's input or environment, reported without a traceback dump."""


class ConfigError(LenxError, ValueError):
    """An impossible or inconsistent configuration value (non-positive length, heads not dividing width, ...)."""


class CorpusError(LenxError):
    """A corpus that cannot be loaded: missing path, empty, not UTF-8, hub unreachable, too short."""


class OutOfRangeError(LenxError, IndexError):
    """A position past what a learned table holds. The evaluator records it as 'out of range' instead of failing."""


class CheckpointError(LenxError):
    """A missing, truncated or foreign checkpoint file."""
