"""The exceptions modula raises.

Every failure a user can cause raises a subclass of :class:`Error` whose message names the
argument, file or field involved and says what to change. A Rust panic never reaches the
interpreter: it is caught and raised as :class:`InternalError`.
"""

__all__ = [
    "Error",
    "ConfigError",
    "DataError",
    "RunError",
    "ArrayError",
    "DTypeError",
    "DivergedError",
    "InternalError",
]


class Error(Exception):
    """Base class of every modula exception."""


class ConfigError(Error, ValueError):
    """A configuration (file, dict or constructor argument) that cannot be read, parsed or
    validated; the message names the file or field."""


class DataError(Error):
    """A data set that cannot be loaded: a missing, truncated or malformed file, or an
    unknown data set name. The message is the one ``modula data info`` prints."""


class RunError(Error):
    """A run directory that cannot be used (it holds another run, another process holds
    it, its checkpoint is missing or foreign), a failed write, or a call out of order
    (``backward`` before ``forward``)."""


class ArrayError(Error, ValueError):
    """An array of the wrong shape or layout (not C-contiguous), or indices out of range."""


class DTypeError(ArrayError, TypeError):
    """An argument that is not a numpy array, or whose dtype is not the one expected
    (float32 for values, an integer dtype for indices)."""


class DivergedError(Error):
    """A loss that is no longer finite; the parameters were left as they were before the
    step."""


class InternalError(Error):
    """A bug in modula: a Rust panic or a broken internal invariant, caught before it could
    crash the interpreter. Please report it with the call that raised it."""
