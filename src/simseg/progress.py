"""Progress bars that read well on a terminal and in a log file.

On a terminal, a plain tqdm bar redrawn in place. When the stream is not a terminal (output redirected to a file, a
job scheduler's log, CI), tqdm's in-place redraws would pile up, joined by carriage returns, into one giant line; there
the same bar writes a whole line at the start, at most every :data:`LOG_INTERVAL_S` seconds, and at the end.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Iterable, TextIO

#: Seconds between two progress lines when the output is not a terminal.
LOG_INTERVAL_S = 30.0


#: A terminal control sequence (tqdm moves the cursor up to redraw a nested bar after a message).
_CONTROL_SEQUENCE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class LineStream:
    """A text stream that turns tqdm's carriage-return redraws into whole lines (blank redraws and cursor movements
    are dropped)."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> int:
        for piece in re.split(r"[\r\n]", _CONTROL_SEQUENCE.sub("", text)):
            piece = piece.rstrip()
            if piece:
                self.stream.write(piece + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str | None = None,
                 unit: str = "it", disable: bool = False, file: TextIO | None = None, leave: bool = True,
                 **kwargs: Any) -> Any:
    """A ``tqdm`` bar over ``iterable`` on ``file`` (default stderr), redrawn in place on a terminal and written as
    separate lines, every :data:`LOG_INTERVAL_S` seconds, elsewhere.

    Args:
        iterable: what to iterate over (None: update the bar by hand).
        total: number of items (default ``len(iterable)`` where it has one).
        desc: the bar's label.
        unit: what one item is called.
        disable: no output at all.
        file: the stream (default ``sys.stderr`` at call time).
        leave: keep the finished bar (on a terminal).
        **kwargs: other tqdm options.
    """
    from tqdm import tqdm

    stream = file if file is not None else sys.stderr
    if is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, file=stream, leave=leave,
                    dynamic_ncols=True, **kwargs)
    kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    kwargs.setdefault("ncols", 100)
    # leave=True: the final state is the last line of the log, whatever the caller wants on a terminal
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, file=LineStream(stream), leave=True,
                ascii=True, **kwargs)
