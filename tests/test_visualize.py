"""Palette, label PNGs, overlays, charts and grids."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from simseg.visualize import (MIN_COLOR_DISTANCE, class_colors, colorize, colour_word, image_grid, iou_bar_chart,
                              label_image, overlay, palette, save_label_png)


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
    assert bare.width > 60 and (np.asarray(bare)[:, 60:] != 255).any()  # nothing found: the legend says so
    assert overlay(image, labels, ["background", "cat", "dog"], legend=False).size == (60, 40)
    with pytest.raises(ValueError, match="do not match"):
        overlay(image, np.zeros((10, 10), np.int32), ["background"])


def test_colour_word_classes_are_drawn_in_their_colour():
    from matplotlib import colors as mcolors

    names = ["background", "red", "Dark Blue", "purple", "cat", "dark-purple", "car", "light green"]
    table = class_colors(names)
    want = {1: "red", 2: "darkblue", 3: "purple", 5: "xkcd:dark purple", 7: "lightgreen"}
    for index, colour in want.items():
        assert table[index].tolist() == [round(v * 255) for v in mcolors.to_rgb(colour)], names[index]
    # in the overlay and in its legend swatch: a red square on grey is blended towards pure red
    labels = np.zeros((40, 60), np.int32)
    labels[5:35, 5:25] = 1
    labels[5:35, 30:55] = 2
    out = np.asarray(overlay(Image.new("RGB", (60, 40), (100, 100, 100)), labels, names, alpha=1.0))
    assert out[20, 10].tolist() == [255, 0, 0] and out[20, 40].tolist() == [0, 0, 139]
    legend = out[:, 60:].reshape(-1, 3).tolist()
    assert [255, 0, 0] in legend and [0, 0, 139] in legend


def test_every_css4_name_has_matplotlibs_colour():
    """The CSS4 words come from Pillow's table (no matplotlib import on a start): the same colours as matplotlib's."""
    from matplotlib import colors as mcolors

    for name, value in mcolors.CSS4_COLORS.items():
        assert colour_word(name) == tuple(round(v * 255) for v in mcolors.to_rgb(value)), name


def test_other_classes_keep_a_distinct_palette_away_from_the_colour_words():
    voc = ["background", "aeroplane", "bicycle", "bird", "boat"]
    np.testing.assert_array_equal(class_colors(voc), palette()[:5])  # no colour word: the VOC palette as before
    names = ["background", "cat", "dog", "navy", "maroon", "tree", "sky"]  # navy, maroon: VOC colours 1 and 4
    table = class_colors(names).astype(float)
    assert len({tuple(c) for c in table.tolist()}) == len(names)
    for other in (1, 2, 5, 6):
        for word in (3, 4):
            assert np.linalg.norm(table[other] - table[word]) >= MIN_COLOR_DISTANCE, (names[other], names[word])
    # a word matplotlib does not know keeps its palette colour; so does a single xkcd word that names a thing
    assert class_colors(["background", "bluish-ish", "sky"]).tolist() == palette()[:3].tolist()
    assert colour_word("snow") == (255, 250, 250) and colour_word("  ") is None


def test_a_colour_word_pillow_has_already_drawn_with_keeps_its_colour():
    Image.new("RGB", (1, 1), "orchid")  # Pillow then holds the name's parsed tuple in place of its hex string
    assert colour_word("Orchid") == (218, 112, 214)
    assert class_colors(["background", "orchid"])[1].tolist() == [218, 112, 214]


def test_iou_bar_chart_and_grid(tmp_path):
    iou_bar_chart({"background": 80.0, "cat": 41.5, "dog": None}, tmp_path / "c" / "chart.png", "voc (simseg)")
    chart = Image.open(tmp_path / "c" / "chart.png")
    assert chart.width > 100 and chart.height > 100
    a, b = Image.new("RGB", (20, 10), "red"), Image.new("RGB", (10, 10), "blue")
    grid = image_grid([[a, b], [b]], tmp_path / "grid.png", titles=["image", "pred"], cell_height=20)
    assert (tmp_path / "grid.png").is_file()
    assert grid.height >= 2 * 20 and grid.width >= 40 + 20


def test_the_legend_draws_accented_greek_and_cyrillic_class_names():
    from simseg.visualize import overlay

    image = Image.new("RGB", (60, 40), (90, 90, 90))
    labels = np.ones((40, 60), np.int64)

    def legend(name: str) -> np.ndarray:
        return np.asarray(overlay(image, labels, ["background", name]))[:, 60:]

    # a font without these glyphs draws each as the same empty box: the names would be told apart by nothing
    for a, b in (("é", "ß"), ("Ü", "ö"), ("λ", "ж")):
        assert not np.array_equal(legend(f"caf{a}"), legend(f"caf{b}")), (a, b)


def test_past_255_classes_no_class_is_drawn_black_like_background():
    names = ["background"] + [f"class{i}" for i in range(1, 600)]
    for table in (class_colors(names), class_colors(names[:3] + ["red"] + names[4:])):
        black = [c for c in range(1, len(names)) if not table[c].any()]
        assert black == []
    np.testing.assert_array_equal(class_colors(names)[1:256], palette()[1:256])  # the VOC colours as before
    np.testing.assert_array_equal(class_colors(names)[256:511], palette()[1:256])


def test_the_iou_chart_leaves_the_callers_matplotlib_backend_as_it_was(tmp_path):
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a caller's own choice (a notebook's inline backend, a GUI one)
    try:
        iou_bar_chart({"cat": 40.0, "dog": None}, tmp_path / "chart.png", "VOC")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    with Image.open(tmp_path / "chart.png") as chart:
        assert chart.format == "PNG" and chart.width == 700


def test_label_indices_out_of_range_are_refused_not_wrapped_or_recoloured():
    assert np.array_equal(np.asarray(label_image(np.full((2, 2), 65535))), np.full((2, 2), 65535))  # the largest
    with pytest.raises(ValueError, match=r"label_image: class indices must be in 0\.\.65535, got 70000\.\.70000"):
        label_image(np.full((2, 2), 70000))  # uint16 would wrap it to 4464, another class
    with pytest.raises(ValueError, match=r"label_image: .* got -1\.\.0"):
        label_image(np.array([[0, -1]]))
    img = Image.new("RGB", (4, 3))
    with pytest.raises(ValueError, match=r"overlay: class indices must not be negative, got -1"):
        overlay(img, -np.ones((3, 4), np.int32), ["background", "cat"])  # it took the palette's last colour
    with pytest.raises(ValueError, match=r"overlay: alpha must lie in \[0, 1\], got 1\.5"):
        overlay(img, np.ones((3, 4), np.int32), ["background", "cat"], alpha=1.5)
