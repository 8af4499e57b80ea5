"""The dense CRF and the closing of the simseg protocol."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from simseg.crf import binary_unary, closing, dense_crf_binary, require_densecrf
from simseg.errors import ConfigError


def _two_colour_image(h: int = 64, w: int = 64, split: int = 32) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :split] = (230, 40, 40)
    img[:, split:] = (30, 40, 200)
    return img


def test_crf_snaps_an_uncertain_map_to_the_colour_edge():
    img = _two_colour_image()
    prob = np.full((64, 64), 0.4, np.float32)
    prob[:, :40] = 0.6  # the map overshoots the red/blue edge at column 32 by 8 pixels
    mask = dense_crf_binary(img, prob)
    assert mask.dtype == np.bool_ and mask.shape == (64, 64)
    expected = np.zeros((64, 64), bool)
    expected[:, :32] = True
    np.testing.assert_array_equal(mask, expected)


def test_crf_keeps_confident_maps():
    img = _two_colour_image()
    assert dense_crf_binary(img, np.ones((64, 64), np.float32)).all()
    assert not dense_crf_binary(img, np.zeros((64, 64), np.float32)).any()


def test_crf_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="differ in size"):
        dense_crf_binary(_two_colour_image(), np.ones((10, 10), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        dense_crf_binary(_two_colour_image().astype(np.float32), np.ones((64, 64), np.float32))


def test_unary_is_the_originals_float32_negative_log():
    p = np.array([[0.0, 0.25], [1.0, 0.5]], np.float32)
    u = binary_unary(p)
    assert u.dtype == np.float32 and u.shape == (2, 4) and u.flags["C_CONTIGUOUS"]
    probs = np.append(1 - p[None], p[None], axis=0)  # the original's construction
    np.testing.assert_array_equal(u, (-np.log(probs + 1e-8)).reshape(2, -1).astype(np.float32))
    assert u[1, 0] == pytest.approx(-np.log(1e-8), rel=1e-6)  # p = 0: finite thanks to the epsilon


def test_missing_pydensecrf_gives_an_actionable_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    with pytest.raises(ConfigError, match=r"simseg\[crf\].*--no-crf"):
        require_densecrf()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closing_equals_the_originals_dilate_then_erode(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((61, 47)) > 0.97
    mask[20:40, 10:30] = True
    mask[25:28, 15:18] = False  # a small hole the closing fills
    kernel = np.ones((7, 7), np.uint8)
    binary = mask.astype(np.uint8) * 255
    # the original's call: 5 and 3 land in OpenCV's dst argument, so each operation runs once
    original = cv2.erode(cv2.dilate(binary, kernel, 5), kernel, 3) > 0
    np.testing.assert_array_equal(closing(mask, 7), original)
    # and it is not the 5-times / 3-times reading of those numbers
    repeated = cv2.erode(cv2.dilate(binary, kernel, iterations=5), kernel, iterations=3) > 0
    assert not np.array_equal(closing(mask, 7), repeated)


def test_closing_fills_holes_and_keeps_border_objects():
    mask = np.zeros((30, 30), bool)
    mask[:12, :12] = True  # touches the image border: erosion must not eat it
    mask[4:7, 4:7] = False  # a 3 x 3 hole
    out = closing(mask, 7)
    assert out[:12, :12].all()
    assert not out[13:, 13:].any()
    np.testing.assert_array_equal(closing(mask, 1), mask)
    np.testing.assert_array_equal(closing(mask.astype(np.uint8) * 255, 0), mask)
