"""``simseg prepare``: build a benchmark's label folder from its official annotations (:mod:`simseg.prepare`).

    simseg prepare coco-object data/coco_stuff164k       # <id>_labelTrainIds.png, 81 classes (COCO-Object)
    simseg prepare coco-stuff data/coco_stuff164k        # <id>_labelTrainIds171.png, 171 classes (COCO-Stuff)
    simseg prepare cityscapes data/cityscapes            # *_gtFine_labelTrainIds.png, 19 classes
    simseg prepare pascal-context data/VOCdevkit trainval_merged.json

``coco-object`` writes ``<id>_labelTrainIds.png``, the name under which MMSegmentation's own COCO-Stuff converter
writes its 171-class labels in the same folder. It refuses to overwrite such files (values above 80 in an existing
``_labelTrainIds.png``) unless ``--force`` is given, since another tool may rely on them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from simseg.app.options import check_at_least

HELP = "convert COCO-Stuff, Cityscapes or PASCAL Context annotations to the benchmark layouts"

#: Existing ``_labelTrainIds.png`` files read per split to recognise a 171-class folder (every COCO image but a
#: handful has some stuff pixel, so a few files decide it).
_PROBE_FILES = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``coco-object``, ``coco-stuff``, ``cityscapes`` and ``pascal-context`` sub-commands."""
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    coco = sub.add_parser(
        "coco-object", help="COCO-Stuff 164k stuffthingmaps -> COCO-Object <id>_labelTrainIds.png (81 classes)"
    )
    coco.add_argument("coco_stuff_dir", metavar="COCO_STUFF_DIR", help="the coco_stuff164k folder (annotations/...)")
    _add_nproc(coco)
    coco.add_argument("--force", action="store_true",
                      help="overwrite existing 171-class <id>_labelTrainIds.png files (MMSegmentation's COCO-Stuff)")
    stuff = sub.add_parser(
        "coco-stuff", help="COCO-Stuff 164k stuffthingmaps -> COCO-Stuff <id>_labelTrainIds171.png (171 classes)"
    )
    stuff.add_argument("coco_stuff_dir", metavar="COCO_STUFF_DIR", help="the coco_stuff164k folder (annotations/...)")
    _add_nproc(stuff)
    city = sub.add_parser(
        "cityscapes", help="Cityscapes gtFine *_labelIds.png -> *_gtFine_labelTrainIds.png (19 classes, 255 ignored)"
    )
    city.add_argument("cityscapes_dir", metavar="CITYSCAPES_DIR", help="the cityscapes folder holding gtFine/")
    _add_nproc(city)
    ctx = sub.add_parser("pascal-context", help="PASCAL in Detail trainval_merged.json -> 60-class PNG labels")
    ctx.add_argument("vocdevkit", metavar="VOCDEVKIT", help="the VOCdevkit folder holding VOC2010/")
    ctx.add_argument("json", metavar="JSON", help="trainval_merged.json")


def _add_nproc(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nproc", type=int, default=None, help="worker processes (default: all cores)")


def stuff_labels_in_the_way(coco_stuff_dir: str | Path, probe: int = _PROBE_FILES) -> Path | None:
    """An existing ``<id>_labelTrainIds.png`` with values above 80 (a 171-class COCO-Stuff label), or None.

    The first ``probe`` files of each annotation split are read; COCO-Object labels never exceed 80, and an
    unreadable file is left for the converter to report.
    """
    import numpy as np

    from simseg.errors import InputError
    from simseg.segdata import COCO_OBJECT_SUFFIX, read_label

    for split in ("train2017", "val2017"):
        folder = Path(coco_stuff_dir) / "annotations" / split
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(f"*{COCO_OBJECT_SUFFIX}"))[:probe]:
            try:
                label = read_label(path)
            except InputError:
                continue
            if label.size and int(np.max(label)) > 80:
                return path
    return None


def run(args: argparse.Namespace) -> int:
    """Convert, then print how many label files were written per split (and, for Cityscapes, the id table)."""
    from simseg.errors import InputError
    from simseg.prepare import convert_cityscapes, convert_coco_object, convert_coco_stuff, convert_pascal_context

    note = ""
    if args.dataset in ("coco-object", "coco-stuff", "cityscapes"):
        check_at_least("--nproc", args.nproc, 1)
    if args.dataset == "coco-object":
        clash = None if args.force else stuff_labels_in_the_way(args.coco_stuff_dir)
        if clash is not None:
            raise InputError(
                f"{clash}: a 171-class COCO-Stuff label (values above 80; MMSegmentation's converter writes those "
                "under this name) that coco-object would overwrite; pass --force, or keep them elsewhere (simseg "
                "reads COCO-Stuff from <id>_labelTrainIds171.png: simseg prepare coco-stuff)"
            )
        counts = convert_coco_object(args.coco_stuff_dir, nproc=args.nproc)
        where = Path(args.coco_stuff_dir) / "annotations"
    elif args.dataset == "coco-stuff":
        counts = convert_coco_stuff(args.coco_stuff_dir, nproc=args.nproc)
        where = Path(args.coco_stuff_dir) / "annotations"
    elif args.dataset == "cityscapes":
        counts, table = convert_cityscapes(args.cityscapes_dir, nproc=args.nproc)
        where = Path(args.cityscapes_dir) / "gtFine"
        source = ("cityscapesscripts (installed)" if table == "cityscapesscripts"
                  else "the built-in copy of cityscapesscripts' table (the package is not installed)")
        note = f"; label id -> train id table: {source}"
    else:
        counts = convert_pascal_context(args.vocdevkit, args.json)
        where = Path(args.vocdevkit) / "VOC2010"
    summary = ", ".join(f"{k}: {v}" for k, v in counts.items())
    print(f"wrote {args.dataset} labels under {where} ({summary}){note}")
    return 0
