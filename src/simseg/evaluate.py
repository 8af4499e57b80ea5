"""Zero-shot semantic segmentation over a benchmark: the dataset loop and its metrics.

One code path for one process and for ``torchrun``: image ``i`` is handled by rank ``i % world_size``, each rank
accumulates a confusion matrix, and the matrices are summed (integers, so the result is exact and identical to a
single-process run). A sample that cannot be read is counted and listed, never silently dropped.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from simseg.classnames import parse_class_list
from simseg.distributed import all_gather_object
from simseg.errors import InputError
from simseg.metrics import ConfusionMatrix
from simseg.segdata import IGNORE_INDEX, LabelValueError, SegmentationBenchmark

#: Called on each evaluated sample: (dataset index, sample id, image, ground truth in the segmenter's class
#: indices (255 = ignored), segmentation result).
PredictionCallback = Callable[[int, str, Any, np.ndarray, Any], None]


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
    crf_workers: int = 0,
    lanes: int = 1,
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
        crf_workers, lanes: with a segmenter that has ``segment_many``, overlap consecutive images through it
            (:meth:`simseg.segment.Segmenter.segment_many`: CRF calls in worker processes, forwards in lanes); the
            labels, hence the metrics, are those of the one-image-at-a-time loop.

    Returns:
        ``{"mIoU", "aAcc", "mAcc", "per_class", "num_images", "num_evaluated", "num_bad", "bad_samples",
        "seconds"}``; ``bad_samples`` lists ``{"index", "sample_id", "error"}`` of samples that raised
        :class:`InputError` (unreadable image or label, sizes that differ, ...). Metrics are over the evaluated ones.

    Raises:
        LabelValueError: a label holds values outside the benchmark's classes (the evaluation stops there).
    """
    from simseg.progress import progress_bar

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
    bar = progress_bar(indices, desc=f"eval {dataset.name}", unit="img", disable=rank != 0 or not progress)
    read: deque = deque()  # (index, sample id, image, label) of the images handed to the segmenter, in order

    def report_bad(index: int, sample_id: str, error: Exception) -> None:
        bad.append({"index": index, "sample_id": sample_id, "error": str(error)})
        bar.write(f"bad sample {sample_id}: {error}", file=sys.stderr)
        bar.set_postfix(bad=len(bad), refresh=False)  # the line above says it; in a log a redraw is one more line

    def images():
        for index in bar:
            sample_id = dataset.sample_ids[index]
            try:
                image, label, sample_id = dataset[index]
            except LabelValueError:
                bar.close()
                raise  # not one bad file: the labels are not this benchmark's, and every number would be wrong
            except InputError as e:
                report_bad(index, sample_id, e)
                continue
            read.append((index, sample_id, image, label))
            yield image

    def one_at_a_time():
        for image in images():
            try:
                yield segmenter(image)
            except InputError as e:
                yield e

    pipelined = hasattr(segmenter, "segment_many") and (crf_workers > 0 or lanes > 1)
    results = (segmenter.segment_many(images(), crf_workers=crf_workers, lanes=lanes, return_exceptions=True)
               if pipelined else one_at_a_time())
    for result in results:
        index, sample_id, image, label = read.popleft()
        if isinstance(result, InputError):
            report_bad(index, sample_id, result)
            continue
        if isinstance(result, Exception):
            raise result
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
