"""``simseg eval-retrieval``: zero-shot image-text retrieval on Flickr30K / MSCOCO, with a report.

    simseg eval-retrieval --dataset f30k --data-root data --checkpoint simseg.vit-b.pth --out runs/f30k
    torchrun --nproc_per_node 8 -m simseg eval-retrieval --dataset coco --data-root data --checkpoint ckpt/

With no option the protocol is the paper's: ``Resize((324, 324))`` (square: the image is squashed, as the original's
transform), ``CenterCrop(288)``. ``--resize-mode short`` resizes the short side instead; ``metrics.json`` records
which one produced its numbers.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Sequence

from simseg.app.options import add_checkpoint_options, add_device_option, check_at_least, output_dir, resolve_device
from simseg.errors import InputError
from simseg.protocols import RetrievalParams

HELP = "zero-shot image-text retrieval on Flickr30K / MSCOCO"

#: How the built-in dataset names are shown in the table (the seed README's names).
DATASET_TITLES = {"f30k": "Flickr30K", "coco": "MSCOCO"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default=None,
                        help="f30k, coco or another folder name: reads <data-root>/<dataset>/valid.parquet")
    parser.add_argument("--data-root", default=None,
                        help="folder holding <dataset>/valid.parquet (default: $SIMSEG_DATA)")
    parser.add_argument("--csv", default=None, metavar="FILE",
                        help="evaluate a CSV / JSON / JSONL file (image, caption[, image_id, id]) instead of a parquet")
    add_checkpoint_options(parser)
    parser.add_argument("--out", default=None, help="report folder (default: simseg-eval/retrieval-<dataset>)")
    parser.add_argument("--batch-size", type=int, default=64, help="images / captions encoded at once (default 64)")
    parser.add_argument("--resize-size", type=int, default=None,
                        help=f"side after resizing, before the crop (default {RetrievalParams.resize_size}, or the "
                             "checkpoint's recorded one)")
    parser.add_argument("--resize-mode", choices=("square", "short"), default=RetrievalParams.resize_mode,
                        help="square: resize to SIZE x SIZE, squashing the image (the paper's, default); "
                             "short: resize the short side to SIZE, keeping the aspect ratio")
    parser.add_argument("--crop-size", type=int, default=None,
                        help=f"centre crop = model input size (default {RetrievalParams.crop_size}, or the "
                             "checkpoint's recorded one)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="queries scored at once (default 1024)")
    parser.add_argument("--workers", type=int, default=2, help="image decoding threads (default 2)")
    parser.add_argument("--skip-bad", action="store_true", help="evaluate without unreadable images instead of failing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_device_option(parser)


def format_retrieval_table(rows: Sequence[dict], ks: Sequence[int] = (1, 5, 10)) -> str:
    """A Markdown table in the layout of the seed README (Method | Backbone | Dataset | I2T R@K ... | RSUM).

    Args:
        rows: dicts with ``method``, ``backbone``, ``dataset`` and the metric keys.
    """
    headers = ["Method", "Backbone", "Dataset"] + [f"{d} R@{k}" for d in ("I2T", "T2I") for k in ks] + ["RSUM"]
    body = [[str(r["method"]), str(r["backbone"]), str(r["dataset"])]
            + [f"{r[f'{d}_R@{k}']:.1f}" for d in ("I2T", "T2I") for k in ks] + [f"{r['RSUM']:.1f}"] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.center(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join(("-" * (w + 2)) if i == 0 else (":" + "-" * w + ":") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(headers), rule] + [line(b) for b in body])


def backbone_name(model: Any) -> str:
    """A short backbone name (ViT-S / ViT-B / the timm name) for the table."""
    config = getattr(model, "config", None)
    vision = config.get("vision") if isinstance(config, dict) else None
    name = vision.get("name") if isinstance(vision, dict) else None
    if not isinstance(name, str):
        return "?"
    if vision.get("kwargs"):  # widths or depths changed: not the named architecture
        return f"{name.split('.')[0]} (custom)"
    for key, short in (("vit_small", "ViT-S"), ("vit_base", "ViT-B"), ("vit_large", "ViT-L"), ("vit_tiny", "ViT-Ti")):
        if key in name:
            return short
    return name


def _resolve_source(args: argparse.Namespace) -> tuple[Path, str]:
    """The caption file and the dataset name of the arguments."""
    from simseg.segdata import DATA_ENV

    if args.csv:
        if args.dataset is None:
            return Path(args.csv), Path(args.csv).stem
        return Path(args.csv), args.dataset
    if not args.dataset:
        raise InputError("--dataset: required unless --csv is given (f30k, coco or a folder name under --data-root)")
    root = args.data_root or os.environ.get(DATA_ENV, "")
    if not root:
        raise InputError(f"no data root: pass --data-root DIR or set {DATA_ENV}=DIR (the folder holding "
                         f"{args.dataset}/valid.parquet)")
    path = Path(root).expanduser() / args.dataset / "valid.parquet"
    if not path.is_file():
        raise InputError(f"{path}: not found (expected <data-root>/{args.dataset}/valid.parquet)")
    return path, args.dataset


def retrieval_sizes(resize_size: int | None, crop_size: int | None,
                    recorded: dict[str, Any]) -> tuple[int, int, dict[str, int]]:
    """(resize, crop, what of the recorded defaults was used): the paper's sizes, under the checkpoint's recorded
    ``retrieval`` defaults, under ``--resize-size`` / ``--crop-size``."""
    from_checkpoint = recorded.get("retrieval") or {}
    used = {k: v for k, v in from_checkpoint.items()
            if (k == "resize_size" and resize_size is None) or (k == "crop_size" and crop_size is None)}
    resize = resize_size if resize_size is not None else from_checkpoint.get("resize_size", RetrievalParams.resize_size)
    crop = crop_size if crop_size is not None else from_checkpoint.get("crop_size", RetrievalParams.crop_size)
    return int(resize), int(crop), used


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table, write ``metrics.json``; exit 1 on bad images (unless ``--skip-bad``)."""
    from simseg.app.options import describe_recorded
    from simseg.app.report import bad_samples_exit, provenance, write_json
    from simseg.checkpoint import evaluation_defaults, load_model
    from simseg.distributed import get_local_rank, get_rank, get_world_size, init_distributed
    from simseg.retrieval import evaluate_retrieval, protocol_info

    for flag, value in (("--batch-size", args.batch_size), ("--chunk-size", args.chunk_size),
                        ("--resize-size", args.resize_size), ("--crop-size", args.crop_size)):
        check_at_least(flag, value, 1)
    check_at_least("--workers", args.workers, 0)
    resize_size, crop_size, recorded = retrieval_sizes(args.resize_size, args.crop_size,
                                                       evaluation_defaults(args.checkpoint))
    if crop_size > resize_size:
        raise InputError(f"--crop-size {crop_size} is larger than --resize-size {resize_size}")
    path, dataset = _resolve_source(args)
    distributed = init_distributed()
    rank, world_size = get_rank(), get_world_size()
    device = resolve_device(args.device, get_local_rank() if distributed else None)
    out = output_dir(Path(args.out) if args.out else Path("simseg-eval") / f"retrieval-{dataset}")
    # The model keeps its native size: it runs at the crop size with its position embedding resampled per call, the
    # code path training-time evaluation takes too, so both give the same numbers.
    model = load_model(args.checkpoint, tokenizer=args.tokenizer, device=device)
    if crop_size % model.patch_size:
        raise InputError(f"--crop-size {crop_size} is not a multiple of the model's patch size {model.patch_size}")
    note = describe_recorded(args.checkpoint, {"params": recorded}, "--resize-size and --crop-size")
    if note and rank == 0:
        print(note)

    # Unreadable images are always counted and reported; the exit status is decided below, after the report.
    metrics = evaluate_retrieval(model, path, batch_size=args.batch_size, device=device, skip_bad=True,
                                 resize_size=resize_size, crop_size=crop_size, resize_mode=args.resize_mode,
                                 chunk_size=args.chunk_size, num_workers=args.workers, rank=rank,
                                 world_size=world_size, progress=not args.no_progress)
    if rank == 0:
        keys = [k for k in metrics if k.startswith(("I2T_", "T2I_"))] + ["RSUM"]
        backbone = backbone_name(model)
        stamp = provenance(args.checkpoint, device, model=model)
        report = {
            "dataset": dataset,
            "source": str(path),
            **{k: metrics[k] for k in keys},
            "num_rows": metrics["num_rows"],
            "num_images": metrics["num_images"],
            "num_captions": metrics["num_captions"],
            "num_bad_images": metrics["num_bad_images"],
            "num_captions_dropped": metrics["num_captions_dropped"],
            "bad_images": metrics["bad_images"],
            "protocol": protocol_info(model, resize_size, crop_size, args.resize_mode),
            "recorded_defaults_used": recorded,
            "checkpoint": stamp["checkpoint"],
            "backbone": backbone,
            "weights_hash": getattr(model, "weights_hash", None),
            "versions": stamp["versions"],
            "device": stamp["device"],
            "world_size": world_size,
            "batch_size": args.batch_size,
            "seconds": round(metrics["seconds"], 3),
        }
        write_json(out / "metrics.json", report)
        row = {"method": "SimSeg", "backbone": backbone, "dataset": DATASET_TITLES.get(dataset, dataset), **metrics}
        print(f"Zero-shot image-text retrieval: {dataset}, {metrics['num_images']} images / "
              f"{metrics['num_captions']} captions, resize {resize_size} ({args.resize_mode}) + center crop "
              f"{crop_size}, checkpoint {args.checkpoint}")
        print(format_retrieval_table([row]))
        sha = stamp["checkpoint"]["sha256"]
        print(f"checkpoint sha256: {sha if sha else 'n/a (preset)'}")
        print(f"report: {out / 'metrics.json'}")
    ids = ", ".join(repr(b["image_id"]) for b in metrics["bad_images"][:5])
    more = ", ..." if metrics["num_bad_images"] > 5 else ""
    what = (f"{metrics['num_bad_images']} unreadable image(s) (image_id {ids}{more}; "
            f"{metrics['num_captions_dropped']} captions left out), listed in the report")
    return bad_samples_exit(metrics["num_bad_images"], what, args.skip_bad)
