"""The ``simseg`` command line: one row per command, naming the module that implements it.

Each command module has ``add_arguments(parser)`` and ``run(args) -> exit status`` (``checkpoints`` has two
commands). Command modules import only light modules at the top and the library inside ``run``, so
``simseg --help`` and argument errors are instant.

Expected failures (:class:`~simseg.errors.SimSegError`) print one ``simseg COMMAND: error: ...`` line and exit
with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Callable
from typing import NamedTuple, NoReturn

class Command(NamedTuple):
    """A command: its module, imported only when the command runs (a start imports one command's module, not all),
    and the names of its help text and functions there."""

    module: str
    help_name: str = "HELP"
    add_name: str = "add_arguments"
    run_name: str = "run"

    def load(self) -> tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]:
        module = importlib.import_module(self.module)
        return getattr(module, self.help_name), getattr(module, self.add_name), getattr(module, self.run_name)


COMMANDS: dict[str, Command] = {
    "info": Command("simseg.app.checkpoints", "INFO_HELP", "add_info_arguments", "run_info"),
    "convert-checkpoint": Command("simseg.app.checkpoints", "CONVERT_HELP", "add_convert_arguments", "run_convert"),
    "segment": Command("simseg.app.segment"),
    "eval-seg": Command("simseg.app.eval_seg"),
    "prepare": Command("simseg.app.prepare"),
    "eval-retrieval": Command("simseg.app.eval_retrieval"),
    "train": Command("simseg.app.train"),
    "vocab": Command("simseg.app.vocab"),
    "demo": Command("simseg.app.demo"),
    "serve": Command("simseg.app.serve"),
    "export": Command("simseg.app.export"),
    "push-to-hub": Command("simseg.app.hub"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with each error on one line: the problem, and where the options are listed (argparse's usage block
    before the error would make it several lines, the first not saying what is wrong)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see '{self.prog} --help')\n")


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<20}{command.load()[0]}" for name, command in COMMANDS.items())
    parser = _Parser(
        prog="simseg",
        description="Text-supervised semantic segmentation (SimSeg, CVPR 2023).",
        epilog=f"commands:\n{lines}\n\nRun 'simseg COMMAND --help' for the options of one command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("command", nargs="?", choices=list(COMMANDS), metavar="COMMAND")
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Options may stand before, between or after positional arguments (``train CONFIG a=1 --resume auto b=2``);
    a command with sub-commands (``prepare``) is parsed the ordinary way."""
    has_subcommands = any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
    return parser.parse_args(argv) if has_subcommands else parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    from simseg.errors import SimSegError, one_line

    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] not in COMMANDS:
        args = top.parse_args(argv[:1])
        if args.version:
            from simseg import __version__

            print(f"simseg {__version__}")
            return 0
        top.print_help()
        return 0 if not argv else 2
    name, rest = argv[0], argv[1:]
    help_text, add_arguments, run = COMMANDS[name].load()
    parser = _Parser(prog=f"simseg {name}", description=help_text)
    add_arguments(parser)
    args = _parse(parser, rest)

    def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"simseg {name}: warning: {one_line(message, limit=None)}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warning
            return int(run(args) or 0)
    except SimSegError as e:
        # one line whatever the message holds (a library's text can span several)
        print(f"simseg {name}: error: {one_line(e, limit=None)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"simseg {name}: interrupted", file=sys.stderr)
        return 130


def entry() -> None:  # pragma: no cover - console script
    """The console script: the process-wide allocator setting (:mod:`simseg.allocator`), then :func:`main`.

    A reader that stops early (``simseg info CKPT | head -3``) ends the command quietly, as other command-line tools
    end: exit status 1 and no traceback."""
    import os

    from simseg.allocator import from_environment

    try:
        from_environment(dict(os.environ))
    except ValueError as err:
        print(f"simseg: error: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # stdout's reader is gone: what is still buffered would fail again as Python exits, so it goes nowhere
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
