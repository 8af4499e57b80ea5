"""Semantic-segmentation metrics from a bincount confusion matrix.

The matrix is accumulated over a whole dataset (as the paper: per-class intersection and union summed
over all images, label 255 ignored), so IoU is dataset-level, not an average of per-image IoUs. Under
``torchrun`` every rank accumulates its own shard and :meth:`ConfusionMatrix.all_reduce` sums them exactly
(integer counts), as detectron2's ``SemSegEvaluator`` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from simseg.distributed import all_reduce_sum


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Count (ground truth, prediction) pairs of one label map.

    Args:
        pred: predicted class indices, any integer dtype, values in ``[0, num_classes)``.
        gt: ground-truth class indices, same shape; pixels equal to ``ignore_index`` are not counted. Values
            outside ``[0, num_classes)`` other than ``ignore_index`` are an error too (a wrong benchmark).
        num_classes: C.
        ignore_index: ground-truth value to skip.

    Returns:
        ``(C, C)`` int64 matrix, rows = ground truth, columns = prediction.

    Raises:
        ValueError: shapes differ, or a value is out of range (a bug in the caller, not a user error).
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    gt = gt.astype(np.int64, copy=False).ravel()
    pred = pred.astype(np.int64, copy=False).ravel()
    keep = gt != ignore_index
    gt, pred = gt[keep], pred[keep]
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"prediction values must lie in [0, {num_classes}), got [{pred.min()}, {pred.max()}]")
    if gt.size and (gt.min() < 0 or gt.max() >= num_classes):
        raise ValueError(
            f"ground-truth values must lie in [0, {num_classes}) or equal {ignore_index}, got [{gt.min()}, {gt.max()}]"
        )
    counts = np.bincount(gt * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)


class ConfusionMatrix:
    """A dataset-level confusion matrix: ``update`` per image, ``all_reduce`` across ranks, then ``compute``."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one image's prediction / ground-truth pair."""
        self.matrix += confusion_matrix(pred, gt, self.num_classes, self.ignore_index)

    def all_reduce(self) -> None:
        """Sum the matrices of all ranks in place (no-op in a single process)."""
        tensor = torch.from_numpy(self.matrix.copy())  # int64 on CPU: works with gloo; exact integer sums
        try:
            import torch.distributed as dist

            if dist.is_initialized() and dist.get_backend() == "nccl":
                tensor = tensor.cuda()
        except (ImportError, RuntimeError):
            pass
        self.matrix = all_reduce_sum(tensor).cpu().numpy().astype(np.int64)

    def compute(self, class_names: Sequence[str], exclude: Sequence[int] = ()) -> dict:
        """Per-class IoU and accuracy, mIoU, mAcc, aAcc, all in percent.

        IoU of class c = TP / (TP + FP + FN), defined when its union is non-zero; Acc of class c = TP / (TP + FN),
        defined when c occurs in the ground truth. mIoU and mAcc average the defined values only.

        Args:
            class_names: one name per row of the matrix.
            exclude: prediction-only classes left out of ``per_class``, mIoU and mAcc. A background-free benchmark
                (VOC20, Context59) evaluates a segmenter that may still answer "background": that column exists
                so those pixels count as misses of the true class, but background itself is not scored.

        Returns:
            ``{"mIoU", "aAcc", "mAcc": float | None, "per_class": {name: {"IoU": float | None, "Acc": ...}}}``;
            None where undefined (no labelled pixel at all for aAcc).
        """
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for a {self.num_classes}-class confusion matrix")
        scored = np.array([i not in set(exclude) for i in range(self.num_classes)], dtype=bool)
        m = self.matrix.astype(np.float64)
        tp = np.diag(m)
        gt_count = m.sum(axis=1)
        pred_count = m.sum(axis=0)
        union = gt_count + pred_count - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            acc = np.where(gt_count > 0, tp / gt_count, np.nan)
        total = m.sum()

        def pct(x: float) -> float | None:
            return None if np.isnan(x) else float(100.0 * x)

        iou, acc = iou[scored], acc[scored]
        return {
            "mIoU": pct(np.nanmean(iou)) if not np.isnan(iou).all() else None,
            "aAcc": pct(tp.sum() / total) if total > 0 else None,
            "mAcc": pct(np.nanmean(acc)) if not np.isnan(acc).all() else None,
            "per_class": {
                name: {"IoU": pct(iou[j]), "Acc": pct(acc[j])}
                for j, name in enumerate(n for n, keep in zip(class_names, scored) if keep)
            },
        }
