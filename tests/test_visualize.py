"""Palette, label PNGs, overlays, charts and grids."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from simseg.visualize import colorize, image_grid, iou_bar_chart, overlay, palette, save_label_png


def test_palette_is_the_voc_colour_map():
    p = palette()
    assert p.shape == (256, 3) and p.dtype == np.uint8
    # VOC ground-truth colours: background, aeroplane, bicycle, ..., person (15)
    assert p[0].tolist() == [0, 0, 0]
    assert p[1].tolist() == [128, 0, 0]
    assert p[2].tolist() == [0, 128, 0]
    assert p[15].tolist() == [192, 128, 128]
    assert len({tuple(c) for c in p}) == 256


def test_label_png_is_palette_mode_with_the_indices(tmp_path):
    labels = np.zeros((7, 11), np.int32)
    labels[2:5, 3:9] = 15
    labels[0, 0] = 255
    save_label_png(labels, tmp_path / "x.png")
    img = Image.open(tmp_path / "x.png")
    assert img.mode == "P" and img.size == (11, 7)
    np.testing.assert_array_equal(np.asarray(img), labels)
    assert img.getpalette()[15 * 3:15 * 3 + 3] == [192, 128, 128]
    with pytest.raises(ValueError, match="0..255"):
        save_label_png(np.full((2, 2), 300), tmp_path / "bad.png")


def test_colorize_and_overlay():
    labels = np.zeros((40, 60), np.int32)
    labels[10:30, 5:25] = 1
    labels[10:30, 35:55] = 2
    assert np.asarray(colorize(labels))[15, 10].tolist() == [128, 0, 0]
    image = Image.new("RGB", (60, 40), (200, 200, 200))
    out = overlay(image, labels, ["background", "cat", "dog"], alpha=0.5, scores=[0.1, 0.31, 0.27])
    arr = np.asarray(out)
    assert out.width > 60  # legend strip on the right
    assert arr[0, 0].tolist() == [200, 200, 200]  # background untouched
    assert arr[15, 10].tolist() == [164, 100, 100]  # half grey, half the class colour
    assert (arr[:, 60:] != 255).any()  # something was drawn in the legend
    bare = overlay(image, np.zeros((40, 60), np.int32), ["background"])
    assert bare.size == (60, 40)  # nothing found: no legend
    with pytest.raises(ValueError, match="do not match"):
        overlay(image, np.zeros((10, 10), np.int32), ["background"])


def test_iou_bar_chart_and_grid(tmp_path):
    iou_bar_chart({"background": 80.0, "cat": 41.5, "dog": None}, tmp_path / "c" / "chart.png", "voc (simseg)")
    chart = Image.open(tmp_path / "c" / "chart.png")
    assert chart.width > 100 and chart.height > 100
    a, b = Image.new("RGB", (20, 10), "red"), Image.new("RGB", (10, 10), "blue")
    grid = image_grid([[a, b], [b]], tmp_path / "grid.png", titles=["image", "pred"], cell_height=20)
    assert (tmp_path / "grid.png").is_file()
    assert grid.height >= 2 * 20 and grid.width >= 40 + 20
