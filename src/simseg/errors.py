"""Errors that carry a user-facing message.

Every expected failure (a missing file, a corrupt image, a wrong checkpoint, a bad argument) raises a
subclass of :class:`SimSegError` whose message names the file or argument and the problem. The CLI
prints that message on one line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class SimSegError(Exception):
    """Base class for errors whose message is meant for the user."""


class InputError(SimSegError, ValueError):
    """A file or argument given by the user is missing, unreadable or malformed."""


class CheckpointError(SimSegError):
    """A checkpoint cannot be read, or does not match the model it should build."""


class ConfigError(SimSegError, KeyError):
    """A configuration key or value is invalid."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""
