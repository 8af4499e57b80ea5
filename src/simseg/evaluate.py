"""Zero-shot semantic segmentation on a benchmark (``simseg eval-seg``).

One code path for one process and for ``torchrun``: image ``i`` is handled by rank ``i % world_size``, each rank
accumulates a confusion matrix, and the matrices are summed (integers, so the result is exact and identical to a
single-process run). Examples::

    simseg eval-seg --dataset pascal_voc --data-root data --checkpoint simseg.vit-s.pth --out runs/voc
    torchrun --nproc_per_node 8 -m simseg eval-seg --dataset coco_object --checkpoint ckpt/ --out runs/coco

Rank 0 prints a per-class table and writes ``metrics.json`` (metrics, the protocol and its parameters, the
checkpoint path and sha256, software versions, bad samples), ``per_class_iou.png`` and a few prediction overlays.
A sample that cannot be read is reported, counted and listed; the command then exits with status 1 unless
``--skip-bad`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simseg.classnames import parse_class_list
from simseg.distributed import all_gather_object
from simseg.errors import InputError
from simseg.metrics import ConfusionMatrix
from simseg.segdata import BENCHMARKS, IGNORE_INDEX, SegmentationBenchmark, resolve_data_root

#: Called on each evaluated sample: (dataset index, sample id, image, ground truth in the segmenter's class
#: indices (255 = ignored), segmentation result).
PredictionCallback = Callable[[int, str, Any, np.ndarray, Any], None]


#: The paper's per-benchmark protocol settings (method.md §3 point 3: the threshold uses the top 30 image-level
#: scores on PASCAL Context, 10 elsewhere). Applied unless the user sets the parameter with --set.
BENCHMARK_PROTOCOL_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "pascal_context": {"simseg": {"top_n": 30}},
    "pascal_context59": {"simseg": {"top_n": 30}},
}


def protocol_parameters(dataset: str, protocol: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The protocol parameters for a benchmark: the paper's per-benchmark defaults, then the user's overrides."""
    return {**BENCHMARK_PROTOCOL_DEFAULTS.get(dataset, {}).get(protocol, {}), **overrides}


def evaluation_classes(dataset_classes: list[str]) -> tuple[list[str], int]:
    """The class list a segmenter is built with for a benchmark, and the offset of the benchmark's labels in it.

    Benchmarks with background (VOC, Context, COCO-Object) are used as they are (offset 0). A background-free
    variant (VOC20, Context59) gets ``background`` prepended, following the project's class-list convention, so
    the segmenter can still leave a pixel unassigned; its ground truth then shifts up by one (offset 1) and the
    background column only counts misses.
    """
    classes = parse_class_list(dataset_classes)
    return classes, len(classes) - len(dataset_classes)


def evaluate_segmentation(
    segmenter: Callable[[Any], Any],
    dataset: SegmentationBenchmark,
    limit: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    on_prediction: PredictionCallback | None = None,
    progress: bool = True,
) -> dict:
    """Run a segmenter over a benchmark and compute its metrics.

    Args:
        segmenter: ``segmenter(pil_image) -> result`` with ``result.labels`` an (H, W) integer array of indices into
            :func:`evaluation_classes` of the dataset's classes (as :class:`simseg.segment.Segmenter` built with
            that list returns).
        dataset: the benchmark.
        limit: evaluate only the first ``limit`` images of the dataset (all of them when None).
        rank, world_size: this process's shard: images with ``index % world_size == rank``. With a process group
            the confusion matrices, counts and bad-sample lists are combined over ranks, so every rank returns
            the same totals and each image is counted exactly once.
        on_prediction: optional callback per evaluated sample (e.g. to write overlays).
        progress: show a progress bar (on rank 0).

    Returns:
        ``{"mIoU", "aAcc", "mAcc", "per_class", "num_images", "num_evaluated", "num_bad", "bad_samples",
        "seconds"}``; ``bad_samples`` lists ``{"index", "sample_id", "error"}`` of samples that raised
        :class:`InputError` (unreadable image or label, sizes that differ, ...). Metrics are over the evaluated ones.
    """
    from tqdm import tqdm

    classes, offset = evaluation_classes(dataset.class_names)
    seg_classes = getattr(segmenter, "class_names", None)
    if seg_classes is not None and list(seg_classes) != classes:
        raise ValueError(f"segmenter classes {list(seg_classes)[:4]}... differ from the benchmark's {classes[:4]}...")
    total = len(dataset) if limit is None else min(limit, len(dataset))
    indices = range(rank, total, world_size)
    matrix = ConfusionMatrix(len(classes), ignore_index=IGNORE_INDEX)
    bad: list[dict] = []
    evaluated = 0
    start = time.perf_counter()
    bar = tqdm(indices, desc=f"eval {dataset.name}", unit="img", disable=rank != 0 or not progress,
               dynamic_ncols=True)
    for index in bar:
        sample_id = dataset.sample_ids[index]
        try:
            image, label, sample_id = dataset[index]
            result = segmenter(image)
        except InputError as e:
            bad.append({"index": index, "sample_id": sample_id, "error": str(e)})
            bar.write(f"bad sample {sample_id}: {e}", file=sys.stderr)
            bar.set_postfix(bad=len(bad))
            continue
        pred = np.asarray(result.labels)
        if pred.shape != label.shape:  # the segmenter's contract, not the user's data: a bug
            raise RuntimeError(f"{sample_id}: prediction {pred.shape} does not match ground truth {label.shape}")
        gt = label if offset == 0 else np.where(label == IGNORE_INDEX, IGNORE_INDEX, label.astype(np.int64) + offset)
        matrix.update(pred, gt)
        evaluated += 1
        if on_prediction is not None:
            on_prediction(index, sample_id, image, gt, result)
    bar.close()
    seconds = time.perf_counter() - start
    matrix.all_reduce()
    # Small per-rank facts travel as objects: all_gather_object works with every backend (gloo and NCCL).
    shards = all_gather_object({"evaluated": evaluated, "bad": bad})
    bad = sorted((b for shard in shards for b in shard["bad"]), key=lambda b: b["index"])
    metrics = matrix.compute(classes, exclude=range(offset))
    metrics.update(
        num_images=total,
        num_evaluated=sum(shard["evaluated"] for shard in shards),
        num_bad=len(bad),
        bad_samples=bad,
        seconds=seconds,
    )
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# Report


def software_versions() -> dict[str, str | None]:
    """Versions of the packages that determine a number."""
    import platform
    from importlib import metadata

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("simseg", "torch", "timm", "transformers", "numpy", "pillow", "opencv-python-headless",
                 "pydensecrf2"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


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


def add_eval_seg_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``simseg eval-seg``."""
    parser.add_argument("--dataset", required=True, choices=list(BENCHMARKS), help="benchmark to evaluate on")
    parser.add_argument("--data-root", default=None,
                        help="folder holding VOCdevkit/ and coco_stuff164k/ (default: $SIMSEG_DATA)")
    parser.add_argument("--checkpoint", required=True, help="simseg checkpoint folder, original .pth, or preset")
    parser.add_argument("--tokenizer", default=None, help="folder with vocab.txt (default: the checkpoint's)")
    parser.add_argument("--protocol", default="simseg", choices=["simseg", "dense"],
                        help="simseg: the paper's protocol (default); dense: sliding-window per-pixel protocol")
    parser.add_argument("--no-crf", action="store_true", help="the paper's no-CRF variant of the simseg protocol")
    parser.add_argument("--templates", default="imagenet", choices=["imagenet", "single"],
                        help="prompt templates: the 80 ImageNet ones (default) or a single 'a photo of a {}.'")
    parser.add_argument("--set", dest="params", action="append", default=[], metavar="KEY=VALUE",
                        help="protocol parameter, e.g. --set threshold_std=1.5 (repeatable)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--out", default=None, help="report folder (default: simseg-eval/<dataset>)")
    parser.add_argument("--skip-bad", action="store_true", help="exit 0 even if some samples could not be read")
    parser.add_argument("--num-overlays", type=int, default=4, help="prediction overlays to write (default 4)")
    parser.add_argument("--cache-dir", default=None, help="class-embedding cache folder (default: segment's)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")


def _overlay_writer(out_dir: Path, class_names: list[str], count: int) -> PredictionCallback:
    """A callback that writes prediction and ground-truth overlays of the first ``count`` samples."""
    written = [0]

    def write(index: int, sample_id: str, image: Any, gt: np.ndarray, result: Any) -> None:
        if written[0] >= count:
            return
        from simseg.visualize import overlay

        out_dir.mkdir(parents=True, exist_ok=True)
        scores = getattr(result, "scores", None)
        overlay(image, np.asarray(result.labels), class_names, scores=scores).save(out_dir / f"{sample_id}_pred.png")
        # ignored pixels (255) are drawn as background: the overlay only knows class indices
        shown = np.where(gt == IGNORE_INDEX, 0, gt).astype(np.int32)
        overlay(image, shown, class_names).save(out_dir / f"{sample_id}_gt.png")
        written[0] += 1

    return write


def run_eval_seg(args: argparse.Namespace) -> int:
    """Run ``simseg eval-seg``: evaluate, print the table, write the report; exit 1 on bad samples."""
    import simseg
    from simseg.checkpoint import checkpoint_fingerprint
    from simseg.distributed import get_local_rank, get_rank, get_world_size, init_distributed
    from simseg.segment import Segmenter, parse_set
    from simseg.visualize import iou_bar_chart

    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit: must be at least 1, got {args.limit}")
    if args.num_overlays < 0:
        raise InputError(f"--num-overlays: must be at least 0, got {args.num_overlays}")
    params = protocol_parameters(args.dataset, args.protocol, parse_set(args.params))
    root = resolve_data_root(args.data_root)
    dataset = SegmentationBenchmark(args.dataset, root)
    distributed = init_distributed()
    rank, world_size = get_rank(), get_world_size()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and distributed:
        device = f"cuda:{get_local_rank()}"
    model = simseg.load_model(args.checkpoint, tokenizer=args.tokenizer, device=device)
    classes, offset = evaluation_classes(dataset.class_names)
    segmenter = Segmenter(model, classes, protocol=args.protocol, crf=not args.no_crf, templates=args.templates,
                          cache_dir=args.cache_dir, **params)
    from simseg.config import make_output_dir

    out = make_output_dir(Path(args.out) if args.out else Path("simseg-eval") / args.dataset)
    overlays = _overlay_writer(out / "overlays", classes, args.num_overlays) if rank == 0 else None

    metrics = evaluate_segmentation(segmenter, dataset, limit=args.limit, rank=rank, world_size=world_size,
                                    on_prediction=overlays if args.num_overlays else None)
    if rank == 0:
        protocol = segmenter.protocol_info()
        checkpoint = checkpoint_fingerprint(args.checkpoint)
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
            "background_prepended": bool(offset),
            "checkpoint": checkpoint,
            "versions": software_versions(),
            "device": device,
            "world_size": world_size,
            "seconds": round(metrics["seconds"], 3),
        }
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "metrics.json.tmp"
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, out / "metrics.json")
        params_text = ", ".join(f"{k}={v}" for k, v in protocol.items() if k != "name")
        title = (f"{args.dataset}: {metrics['num_evaluated']}/{metrics['num_images']} images, protocol "
                 f"{protocol.get('name', args.protocol)} ({params_text}), checkpoint {args.checkpoint}")
        iou_bar_chart(report["per_class_IoU"], out / "per_class_iou.png",
                      f"{args.dataset}: mIoU {_cell(metrics['mIoU'])} ({protocol.get('name')}), {args.checkpoint}")
        print(format_table(metrics, title))
        sha = checkpoint["sha256"]
        print(f"checkpoint sha256: {sha if sha else 'n/a (preset)'}")
        print(f"report: {out / 'metrics.json'}")
    if metrics["num_bad"]:
        message = f"{metrics['num_bad']} bad sample(s), listed in the report"
        if args.skip_bad:
            print(f"warning: {message} (skipped with --skip-bad)", file=sys.stderr)
        else:
            print(f"error: {message}; pass --skip-bad to accept them", file=sys.stderr)
            return 1
    return 0
