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


# ------------------------------------------------------------------ against a direct pydensecrf2 call with the paper's numbers
def _textured_image(h: int = 48, w: int = 64) -> np.ndarray:
    """Colour edges (a red left part, a blue disc), a green ramp and noise: every CRF setting matters on it."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w, 3), np.float64)
    img[..., 0] = 200 * (xx < 28) + 30
    img[..., 1] = 2 * xx
    img[..., 2] = 180 * ((yy - 20) ** 2 + (xx - 40) ** 2 < 150) + 20
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _smooth_map(h: int = 48, w: int = 64) -> np.ndarray:
    """A foreground probability map that is uncertain in many places (values all over [0.05, 0.95])."""
    yy, xx = np.mgrid[:h, :w]
    p = 0.5 + 0.35 * np.sin(xx / 9.0) * np.cos(yy / 7.0) + 0.1 * ((xx // 8 + yy // 8) % 2 - 0.5)
    return np.clip(p, 0, 1).astype(np.float32)


def _direct_crf(image, prob, iterations=3, gauss_sxy=3, gauss_compat=3, bilateral_sxy=40, bilateral_srgb=13,
                bilateral_compat=10):
    """The original's CRF written out with pydensecrf2 itself: 2 labels, unary -log([1 - p, p] + 1e-8), a Gaussian
    kernel (sxy 3, compat 3), a bilateral kernel (sxy 40, srgb 13, compat 10), 3 mean-field iterations, np.argmax.
    Returns the argmax labels and the marginals."""
    dcrf = require_densecrf()
    h, w = prob.shape
    crf = dcrf.DenseCRF2D(w, h, 2)
    unary = -np.log(np.stack([1 - prob, prob]).reshape(2, -1) + 1e-8)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
    crf.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=np.ascontiguousarray(image),
                             compat=bilateral_compat)
    q = np.array(crf.inference(iterations))
    return np.argmax(q, axis=0).reshape(h, w), q


def test_crf_parameters_are_the_papers():
    from simseg.protocols import CRFParams, SimSegParams

    paper = dict(iterations=3, gauss_sxy=3, gauss_compat=3, bilateral_sxy=40, bilateral_srgb=13, bilateral_compat=10)
    assert {k: getattr(CRFParams(), k) for k in paper} == paper
    assert {k: getattr(SimSegParams().crf(), k) for k in paper} == paper
    custom = SimSegParams(crf_iterations=5, crf_gauss_sxy=1, crf_gauss_compat=2, crf_bilateral_sxy=30,
                          crf_bilateral_srgb=7, crf_bilateral_compat=4).crf()
    assert (custom.iterations, custom.gauss_sxy, custom.gauss_compat, custom.bilateral_sxy, custom.bilateral_srgb,
            custom.bilateral_compat) == (5, 1, 2, 30, 7, 4)


def test_crf_equals_a_direct_pydensecrf_call_pixel_for_pixel():
    img, prob = _textured_image(), _smooth_map()
    expected, _ = _direct_crf(img, prob)
    got = dense_crf_binary(img, prob)
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, expected.astype(bool))
    assert 0.2 < expected.mean() < 0.8  # a real decision, not all one label
    # the fixture tells the paper's settings from their neighbours: each change below moves pixels, so a wrong or
    # swapped constant cannot pass the comparison above
    for change in (dict(iterations=2), dict(iterations=4), dict(gauss_sxy=2), dict(gauss_sxy=4), dict(gauss_compat=2),
                   dict(gauss_compat=4), dict(bilateral_sxy=13, bilateral_srgb=40), dict(bilateral_srgb=12),
                   dict(bilateral_srgb=14), dict(bilateral_compat=9), dict(bilateral_compat=11)):
        assert (_direct_crf(img, prob, **change)[0] != expected).sum() >= 5, change
    # other parameters reach the library: the call with them equals the direct call with them
    from simseg.protocols import CRFParams

    other = CRFParams(iterations=2, gauss_sxy=4, gauss_compat=2, bilateral_sxy=30, bilateral_srgb=20,
                      bilateral_compat=6)
    np.testing.assert_array_equal(
        dense_crf_binary(img, prob, other),
        _direct_crf(img, prob, 2, 4, 2, 30, 20, 6)[0].astype(bool))


def test_crf_tie_goes_to_background_as_argmax():
    """p = 0.5 everywhere: both labels get the same unary and the same messages, so the marginals tie exactly, and
    np.argmax (the original's) gives the first label, background, at every pixel."""
    img = _textured_image()
    half = np.full((48, 64), 0.5, np.float32)
    labels, q = _direct_crf(img, half)
    assert np.array_equal(q[0], q[1]) and not labels.any()
    assert not dense_crf_binary(img, half).any()
