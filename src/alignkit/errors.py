"""Error types for bad user input.

Every error that a user can fix (a config key, a data row, a model path, a server address)
is an :class:`AlignkitError`. The CLI prints its message on one line and exits with code 2,
without a traceback. Library users catch it like any exception.
"""

from __future__ import annotations


class AlignkitError(Exception):
    """Base class for errors caused by user input; ``exit_code`` is what the CLI returns."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(AlignkitError):
    """A config file or option is missing, unknown or of the wrong type."""


class DataError(AlignkitError):
    """A data file is missing or a record in it is malformed (names file, row and field)."""


class ModelError(AlignkitError):
    """A model string, path or checkpoint cannot be used."""


class BackendError(AlignkitError):
    """A model server cannot be reached or keeps failing."""


class UnsupportedError(AlignkitError):
    """A backend lacks a capability that was asked for (e.g. log-probs, gradients)."""
