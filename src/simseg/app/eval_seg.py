"""``simseg eval-seg``: zero-shot semantic segmentation on a benchmark, with a report.

    simseg eval-seg --dataset pascal_voc --data-root data --checkpoint simseg.vit-s.pth --out runs/voc
    torchrun --nproc_per_node 8 -m simseg eval-seg --dataset coco_object --checkpoint ckpt/ --out runs/coco

Rank 0 prints a per-class table and writes ``metrics.json`` (metrics, the protocol and its parameters, the
checkpoint path and sha256, software versions, bad samples), ``per_class_iou.png`` and a few prediction overlays.
A sample that cannot be read is reported, counted and listed; the command then exits with status 1 unless
``--skip-bad`` is given.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from simseg.app.options import (add_checkpoint_options, add_device_option, add_protocol_options, check_at_least,
                                describe_recorded, output_dir, parse_set, resolve_device, resolve_protocol)
from simseg.segdata import BENCHMARKS

HELP = "zero-shot semantic segmentation on PASCAL VOC / Context / COCO-Object"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=list(BENCHMARKS), help="benchmark to evaluate on")
    parser.add_argument("--data-root", default=None,
                        help="folder holding VOCdevkit/ and coco_stuff164k/ (default: $SIMSEG_DATA)")
    add_checkpoint_options(parser)
    add_protocol_options(parser)
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--out", default=None, help="report folder (default: simseg-eval/<dataset>)")
    parser.add_argument("--skip-bad", action="store_true", help="exit 0 even if some samples could not be read")
    parser.add_argument("--num-overlays", type=int, default=4, help="prediction overlays to write (default 4)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device_option(parser)


def _cell(v: float | None) -> str:
    return f"{v:6.2f}" if v is not None else "   n/a"


def format_table(metrics: dict, title: str) -> str:
    """A plain-text table: one row per class (IoU, Acc), then mIoU / aAcc / mAcc."""
    width = max([len("class")] + [len(n) for n in metrics["per_class"]])
    lines = [title, f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}", "-" * (width + 16)]
    for name, row in metrics["per_class"].items():
        lines.append(f"{name:<{width}}  {_cell(row['IoU'])}  {_cell(row['Acc'])}")
    lines.append("-" * (width + 16))
    for key in ("mIoU", "aAcc", "mAcc"):
        lines.append(f"{key:<{width}}  {_cell(metrics[key])}")
    return "\n".join(lines)


def overlay_writer(out_dir: Path, class_names: list[str], count: int):
    """A prediction callback that writes prediction and ground-truth overlays of the first ``count`` samples."""
    from simseg.segdata import IGNORE_INDEX

    written = [0]

    def write(index: int, sample_id: str, image: Any, gt: Any, result: Any) -> None:
        import numpy as np

        from simseg.visualize import overlay

        if written[0] >= count:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        scores = getattr(result, "scores", None)
        overlay(image, np.asarray(result.labels), class_names, scores=scores).save(out_dir / f"{sample_id}_pred.png")
        # ignored pixels (255) are drawn as background: the overlay only knows class indices
        shown = np.where(gt == IGNORE_INDEX, 0, gt).astype(np.int32)
        overlay(image, shown, class_names).save(out_dir / f"{sample_id}_gt.png")
        written[0] += 1

    return write


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table, write the report; exit 1 on bad samples (unless ``--skip-bad``)."""
    import simseg
    from simseg.app.report import bad_samples_exit, describe_protocol, provenance, write_json
    from simseg.checkpoint import evaluation_defaults
    from simseg.distributed import get_local_rank, get_rank, get_world_size, init_distributed
    from simseg.evaluate import evaluate_segmentation, evaluation_classes
    from simseg.protocols import BENCHMARK_DEFAULTS
    from simseg.segdata import SegmentationBenchmark, resolve_data_root
    from simseg.segment import Segmenter
    from simseg.visualize import iou_bar_chart

    check_at_least("--limit", args.limit, 1)
    check_at_least("--num-overlays", args.num_overlays, 0)
    # the paper's per-benchmark settings, under the checkpoint's recorded defaults, under --protocol / --set
    protocol, params, recorded = resolve_protocol(args.protocol, parse_set(args.params),
                                                  evaluation_defaults(args.checkpoint),
                                                  base=BENCHMARK_DEFAULTS.get(args.dataset, {}))
    root = resolve_data_root(args.data_root)
    dataset = SegmentationBenchmark(args.dataset, root)
    distributed = init_distributed()
    rank, world_size = get_rank(), get_world_size()
    device = resolve_device(args.device, get_local_rank() if distributed else None)
    out = output_dir(Path(args.out) if args.out else Path("simseg-eval") / args.dataset)
    model = simseg.load_model(args.checkpoint, tokenizer=args.tokenizer, device=device)
    classes, offset = evaluation_classes(dataset.class_names)
    segmenter = Segmenter(model, classes, protocol=protocol, crf=not args.no_crf, templates=args.templates,
                          cache_dir=args.cache_dir, **params)
    overlays = overlay_writer(out / "overlays", classes, args.num_overlays) if rank == 0 else None
    note = describe_recorded(args.checkpoint, recorded, "--protocol and --set")
    if note and rank == 0:
        print(note)

    metrics = evaluate_segmentation(segmenter, dataset, limit=args.limit, rank=rank, world_size=world_size,
                                    on_prediction=overlays if args.num_overlays else None,
                                    progress=not args.no_progress)
    if rank == 0:
        protocol = segmenter.protocol_info()
        stamp = provenance(args.checkpoint, device, world_size=world_size)
        report = {
            "dataset": args.dataset,
            "split": "val",
            "data_root": str(root),
            "num_classes": len(dataset.class_names),
            "mIoU": metrics["mIoU"],
            "aAcc": metrics["aAcc"],
            "mAcc": metrics["mAcc"],
            "per_class_IoU": {name: row["IoU"] for name, row in metrics["per_class"].items()},
            "per_class_Acc": {name: row["Acc"] for name, row in metrics["per_class"].items()},
            "num_images": metrics["num_images"],
            "num_evaluated": metrics["num_evaluated"],
            "num_bad": metrics["num_bad"],
            "bad_samples": metrics["bad_samples"],
            "limit": args.limit,
            "protocol": protocol,
            "recorded_defaults_used": recorded,
            "background_prepended": bool(offset),
            **stamp,
            "seconds": round(metrics["seconds"], 3),
        }
        write_json(out / "metrics.json", report)
        title = (f"{args.dataset}: {metrics['num_evaluated']}/{metrics['num_images']} images, protocol "
                 f"{describe_protocol(protocol)}, checkpoint {args.checkpoint}")
        iou_bar_chart(report["per_class_IoU"], out / "per_class_iou.png",
                      f"{args.dataset}: mIoU {_cell(metrics['mIoU'])} ({protocol.get('name')}), {args.checkpoint}")
        print(format_table(metrics, title))
        sha = stamp["checkpoint"]["sha256"]
        print(f"checkpoint sha256: {sha if sha else 'n/a (preset)'}")
        print(f"report: {out / 'metrics.json'}")
    return bad_samples_exit(metrics["num_bad"], f"{metrics['num_bad']} bad sample(s), listed in the report",
                            args.skip_bad)
