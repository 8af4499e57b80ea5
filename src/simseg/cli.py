"""The ``simseg`` command line.

Each subcommand is one row of :data:`COMMANDS`: the module that implements it, the function that adds its
arguments to an ``argparse`` parser, and the function that runs it with the parsed arguments. Only the
chosen command's module is imported, so ``simseg --help`` is instant.

Expected failures (:class:`~simseg.errors.SimSegError`) print one ``error:`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, add-arguments function, run function, one-line help)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "info": ("simseg.checkpoint", "add_info_arguments", "run_info",
             "print a checkpoint's or preset's config and parameter counts"),
    "convert-checkpoint": ("simseg.checkpoint", "add_convert_arguments", "run_convert",
                           "convert an original SimSeg .pth checkpoint to the simseg format"),
    "segment": ("simseg.segment", "add_segment_arguments", "run_segment",
                "segment your own images with any list of class names"),
    "eval-seg": ("simseg.evaluate", "add_eval_seg_arguments", "run_eval_seg",
                 "zero-shot semantic segmentation on PASCAL VOC / Context / COCO-Object"),
    "prepare": ("simseg.prepare", "add_prepare_arguments", "run_prepare",
                "convert COCO-Stuff or PASCAL Context annotations to the benchmark layout"),
    "eval-retrieval": ("simseg.retrieval", "add_eval_retrieval_arguments", "run_eval_retrieval",
                       "zero-shot image-text retrieval on Flickr30K / MSCOCO"),
    "train": ("simseg.train", "add_train_arguments", "run_train",
              "train a caption-supervised dual encoder (one CPU to many GPUs with torchrun)"),
    "demo": ("simseg.demo", "add_demo_arguments", "run_demo",
             "learn segmentation from captions on a built-in synthetic world, then report"),
    "serve": ("simseg.serve", "add_serve_arguments", "run_serve",
              "a local web page and JSON API to segment your own images"),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<20}{row[3]}" for name, row in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="simseg",
        description="Text-supervised semantic segmentation (SimSeg, CVPR 2023).",
        epilog=f"commands:\n{lines}\n\nRun 'simseg COMMAND --help' for the options of one command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("command", nargs="?", choices=list(COMMANDS), metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    from simseg.errors import SimSegError

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
    module_name, add_name, run_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"simseg {name}", description=help_text)
    getattr(module, add_name)(parser)
    args = parser.parse_args(rest)
    try:
        return int(getattr(module, run_name)(args) or 0)
    except SimSegError as e:
        print(f"simseg {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"simseg {name}: interrupted", file=sys.stderr)
        return 130


def entry() -> None:  # pragma: no cover - console script
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
