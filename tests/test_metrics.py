"""The bincount confusion matrix and the metrics computed from it, checked against hand computations."""

import numpy as np
import pytest

from simseg.metrics import ConfusionMatrix, confusion_matrix


def test_confusion_matrix_counts_and_ignores_255():
    gt = np.array([[0, 0, 1], [1, 2, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 1], [1, 0, 2]], dtype=np.int32)
    m = confusion_matrix(pred, gt, 3)
    expected = np.zeros((3, 3), np.int64)
    expected[0, 0] = 1  # rows: ground truth, columns: prediction
    expected[0, 1] = 1
    expected[1, 1] = 2
    expected[2, 0] = 1
    assert m.dtype == np.int64 and (m == expected).all()


def test_confusion_matrix_rejects_out_of_range():
    with pytest.raises(ValueError, match="prediction"):
        confusion_matrix(np.array([3]), np.array([0]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 3)
    with pytest.raises(ValueError, match="ground-truth"):
        confusion_matrix(np.array([0]), np.array([7]), 3)


def test_metrics_against_hand_computation():
    names = ["background", "cat", "dog", "bird"]
    cm = ConfusionMatrix(4)
    # image 1: 4 px bg (3 right, 1 -> cat), 3 px cat (2 right, 1 -> bg); 1 ignored pixel predicted dog
    cm.update(np.array([0, 0, 0, 1, 1, 1, 0, 2]), np.array([0, 0, 0, 0, 1, 1, 1, 255]))
    # image 2: 2 px dog predicted cat; bird never present and never predicted
    cm.update(np.array([1, 1]), np.array([2, 2]))
    r = cm.compute(names)
    # bg: TP 3, FP 1, FN 1 -> IoU 3/5; cat: TP 2, FP 1+2, FN 1 -> 2/6; dog: TP 0, FN 2 -> 0; bird undefined
    assert r["per_class"]["background"]["IoU"] == pytest.approx(60.0)
    assert r["per_class"]["cat"]["IoU"] == pytest.approx(100 * 2 / 6)
    assert r["per_class"]["dog"]["IoU"] == 0.0
    assert r["per_class"]["bird"] == {"IoU": None, "Acc": None}
    assert r["mIoU"] == pytest.approx((60.0 + 100 * 2 / 6 + 0.0) / 3)  # mean over defined classes only
    assert r["aAcc"] == pytest.approx(100 * 5 / 9)
    assert r["per_class"]["background"]["Acc"] == pytest.approx(75.0)
    assert r["mAcc"] == pytest.approx((75.0 + 100 * 2 / 3 + 0.0) / 3)
    assert all(isinstance(r[k], float) for k in ("mIoU", "aAcc", "mAcc"))


def test_dataset_level_not_per_image_average():
    # one image with a big correct cat, one with a tiny wrong one: dataset IoU weights by pixels
    cm = ConfusionMatrix(2)
    cm.update(np.ones(98, int), np.ones(98, int))
    cm.update(np.zeros(2, int), np.ones(2, int))
    assert cm.compute(["background", "cat"])["per_class"]["cat"]["IoU"] == pytest.approx(98.0)


def test_empty_matrix_and_all_reduce_single_process():
    cm = ConfusionMatrix(2)
    r = cm.compute(["a", "b"])
    assert r["mIoU"] is None and r["aAcc"] is None
    cm.update(np.array([0, 1]), np.array([0, 1]))
    cm.all_reduce()  # no process group: a no-op that keeps exact integers
    assert cm.matrix.dtype == np.int64 and cm.matrix.tolist() == [[1, 0], [0, 1]]
    with pytest.raises(ValueError):
        cm.compute(["only one"])


def test_excluded_prediction_only_class():
    # background-free benchmark: gt never 0; predicting background (0) is a miss of the true class
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 1, 1, 2]), np.array([1, 1, 1, 2]))
    r = cm.compute(["background", "cat", "dog"], exclude=[0])
    assert list(r["per_class"]) == ["cat", "dog"]
    assert r["per_class"]["cat"]["IoU"] == pytest.approx(100 * 2 / 3)
    assert r["mIoU"] == pytest.approx((100 * 2 / 3 + 100) / 2)
    assert r["aAcc"] == pytest.approx(75.0)

