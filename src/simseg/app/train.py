"""``simseg train``: a preset or YAML file, ``key=value`` overrides, then :func:`simseg.train.train`.

The ``torchrun`` commands for one node, several nodes and SLURM are in :mod:`simseg.train`.
"""

from __future__ import annotations

import argparse
import json

HELP = "train a caption-supervised dual encoder (one CPU to many GPUs with torchrun)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a preset (tiny, simseg-vit-s16, simseg-vit-b16) or a YAML file")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (unknown keys are an error)")
    parser.add_argument("--resume", default="none",
                        help="'auto' (the output folder's newest complete checkpoint), a checkpoint folder, or none")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Train; rank 0 prints the run's summary as JSON."""
    from simseg import distributed as du
    from simseg.config import load_config, to_dict
    from simseg.train import train

    cfg = to_dict(load_config(args.config, args.overrides))
    summary = train(cfg, resume=args.resume, progress=not args.no_progress)
    if du.is_main_process():
        print(json.dumps(summary, indent=2))
    return 0

