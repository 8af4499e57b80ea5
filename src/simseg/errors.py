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


class TextTowerAbsentError(ConfigError):
    """A model loaded without its text tower (``load_model(..., text=False)``) was asked to encode text."""


class ImageTooLargeError(InputError):
    """An image over a pixel limit (ours, or the image library's decompression-bomb guard); the server answers 413."""


def one_line(text: object, limit: int | None = 240) -> str:
    """A message (often a library's) as one complete line, to go inside one of ours.

    Whitespace, newlines included, is collapsed. A text longer than ``limit`` characters is kept up to the last end
    of a sentence within the limit, and its first sentence is always kept whole: a message is never cut in the
    middle of a sentence, a word or a bracket. ``limit=None`` only collapses.
    """
    line = " ".join(str(text).split())
    if limit is None or len(line) <= limit:
        return line
    ends, depth = [], 0
    for i, ch in enumerate(line):
        depth += (ch in "([{") - (ch in ")]}")
        if ch in ".!?" and depth <= 0 and line[i + 1:i + 2] == " ":
            ends.append(i + 1)
    within = [end for end in ends if end <= limit]
    if within:
        return line[:within[-1]]
    return line[:ends[0]] if ends else line


def describe_yaml_error(error: BaseException) -> str:
    """A YAML parser's error in one line: ``line L, column C: problem`` (PyYAML's own text spans several lines and
    repeats the file name and the offending text)."""
    problem = getattr(error, "problem", None)
    mark = getattr(error, "problem_mark", None)
    if problem and mark is not None:
        context = getattr(error, "context", None)
        return f"line {mark.line + 1}, column {mark.column + 1}: {one_line(problem)}" + (
            f" ({one_line(context)})" if context else "")
    return one_line(error)


def describe_read_error(error: BaseException) -> str:
    """Why a text file (YAML, JSON) could not be read, in one line: not UTF-8 (where), a syntax error (line, column,
    problem), or the system's reason."""
    import json

    if isinstance(error, UnicodeDecodeError):
        return f"not UTF-8 text: byte {error.start}"
    if isinstance(error, json.JSONDecodeError):
        return f"invalid JSON: line {error.lineno}, column {error.colno}: {error.msg}"
    if isinstance(error, OSError):
        return one_line(error.strerror or error)
    if getattr(error, "problem_mark", None) is not None:
        return f"invalid YAML: {describe_yaml_error(error)}"
    return f"{type(error).__name__}: {one_line(error)}"
