"""``simseg prepare``: build a benchmark's label folder from its official annotations (:mod:`simseg.prepare`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from simseg.app.options import check_at_least

HELP = "convert COCO-Stuff or PASCAL Context annotations to the benchmark layout"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``coco-object`` and ``pascal-context`` sub-commands."""
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    coco = sub.add_parser(
        "coco-object", help="COCO-Stuff 164k stuffthingmaps -> COCO-Object <id>_labelTrainIds.png (81 classes)"
    )
    coco.add_argument("coco_stuff_dir", metavar="COCO_STUFF_DIR", help="the coco_stuff164k folder (annotations/...)")
    coco.add_argument("--nproc", type=int, default=None, help="worker processes (default: all cores)")
    ctx = sub.add_parser("pascal-context", help="PASCAL in Detail trainval_merged.json -> 60-class PNG labels")
    ctx.add_argument("vocdevkit", metavar="VOCDEVKIT", help="the VOCdevkit folder holding VOC2010/")
    ctx.add_argument("json", metavar="JSON", help="trainval_merged.json")


def run(args: argparse.Namespace) -> int:
    """Convert, then print how many label files were written per split."""
    from simseg.prepare import convert_coco_object, convert_pascal_context

    if args.dataset == "coco-object":
        check_at_least("--nproc", args.nproc, 1)
        counts = convert_coco_object(args.coco_stuff_dir, nproc=args.nproc)
        where = Path(args.coco_stuff_dir) / "annotations"
    else:
        counts = convert_pascal_context(args.vocdevkit, args.json)
        where = Path(args.vocdevkit) / "VOC2010"
    summary = ", ".join(f"{k}: {v}" for k, v in counts.items())
    print(f"wrote {args.dataset} labels under {where} ({summary})")
    return 0
