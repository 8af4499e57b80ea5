"""Pictures: class colours, colour label maps, overlays with a legend, per-class IoU bar charts, image grids.

Class colours (:func:`class_colors`): a class whose name is a colour word ("red", "dark blue", "purple": matplotlib's
named colours) is drawn in that colour; every other class gets the PASCAL VOC palette colour of its index (so VOC
predictions look like VOC ground truth), moved to another palette colour when it would be hard to tell from a
colour-word class of the same list. Label PNGs keep the plain VOC palette: their pixel values are the data.

Everything returns or writes ordinary PIL images / PNG files. matplotlib's colour tables are read by
:func:`class_colors`; the chart function draws on its own matplotlib Figure (pyplot is never imported).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from simseg.images import to_rgb


def palette(num_colors: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: (num_colors, 3) uint8, index 0 black, 1 dark red, 2 dark green, ...

    The same bit-interleaving rule as the VOC devkit's ``labelcolormap``, so label PNGs look like VOC ground truth.
    """
    idx = np.arange(num_colors)
    cmap = np.zeros((num_colors, 3), dtype=np.int64)
    c = idx.copy()
    for shift in range(7, -1, -1):  # 8 bit planes, most significant colour bit first
        for channel in range(3):
            cmap[:, channel] |= ((c >> channel) & 1) << shift
        c >>= 3
    return cmap.astype(np.uint8)


_PALETTE = palette(256)  # read-only constant, computed once


def _colors_for(labels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 colours; indices >= 256 reuse the palette cyclically."""
    return _PALETTE[np.asarray(labels, dtype=np.int64) % 256]


#: Palette colours closer than this (Euclidean RGB distance) to a colour-word class's colour are not used for
#: another class of the same list.
MIN_COLOR_DISTANCE = 90.0


def colour_word(name: str) -> tuple[int, int, int] | None:
    """The RGB colour a class name stands for, or None when it is not a colour word.

    The CSS4 names (Pillow's table, the same names and values as matplotlib's), matched case-insensitively with
    spaces, hyphens and underscores removed ("Dark Blue", "dark-blue" -> darkblue), and matplotlib's xkcd survey
    names of two or more words ("dark purple", "light brown"; single xkcd words such as "sky" or "banana" name things
    more often than colours). matplotlib is imported only for a name of several words that CSS4 lacks.
    """
    from PIL import ImageColor

    key = " ".join(re.split(r"[\s_-]+", name.strip().lower())).strip()
    if not key:
        return None
    hex_value = ImageColor.colormap.get(key.replace(" ", ""))
    if hex_value is None and " " in key:
        from matplotlib import colors as mcolors

        hex_value = mcolors.XKCD_COLORS.get(f"xkcd:{key}")
    if hex_value is None:
        return None
    # Pillow's getrgb replaces a name's entry in its table with the parsed tuple once the name was used (a fill="red")
    r, g, b = (hex_value if isinstance(hex_value, tuple) else ImageColor.getrgb(hex_value))[:3]
    return r, g, b


def _foreground_color(index: int) -> np.ndarray:
    """VOC palette colour ``index`` for 1..255; past that, colours 1..255 again (colour 0, black, is background's)."""
    return _PALETTE[1 + (index - 1) % 255]


def class_colors(class_names: Sequence[str]) -> np.ndarray:
    """(N, 3) uint8 colours for a class list (index 0, background, is black and never painted).

    Colour words are drawn in their colour (:func:`colour_word`); class ``c`` otherwise gets VOC palette colour
    ``c``, or, when that is within :data:`MIN_COLOR_DISTANCE` of a colour word's colour or already taken, the next
    palette colour that is not. Past 255 classes the palette's colours 1..255 repeat: no class is black.
    """
    n = len(class_names)
    out = np.zeros((max(n, 1), 3), dtype=np.uint8)
    named = {c: colour_word(class_names[c]) for c in range(1, n)}
    taken = [np.array(rgb, dtype=np.float64) for rgb in named.values() if rgb is not None]
    spare = iter(range(max(n, 1), 10 * 256))  # palette indices past the list, tried in order

    def free(rgb: np.ndarray) -> bool:
        return all(np.linalg.norm(rgb.astype(np.float64) - t) >= MIN_COLOR_DISTANCE for t in taken)

    for c in range(1, n):
        if named[c] is not None:
            out[c] = named[c]
            continue
        candidate = _foreground_color(c)
        if taken and not free(candidate):
            for index in spare:
                candidate = _foreground_color(index)
                if free(candidate) or index >= 10 * 256 - 1:
                    break
        out[c] = candidate
        if taken:  # only a list with colour words needs the later classes kept apart from this one
            taken.append(candidate.astype(np.float64))
    return out[:n] if n else out[:0]


def colorize(labels: np.ndarray) -> Image.Image:
    """An RGB picture of a label map in the fixed palette."""
    return Image.fromarray(_colors_for(labels), mode="RGB")


def label_image(labels: np.ndarray) -> Image.Image:
    """A label map as an image whose pixel values are the class indices: a VOC-palette "P" image for indices up to
    255, 16-bit grey above (for very long class lists).

    Raises:
        ValueError: an index is negative or above 65535 (it would wrap around and name another class).
    """
    arr = np.asarray(labels)
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise ValueError(f"label_image: class indices must be in 0..65535, got {arr.min()}..{arr.max()}")
    if arr.size and arr.max() > 255:
        return Image.fromarray(arr.astype(np.uint16))
    img = Image.fromarray(arr.astype(np.uint8), mode="P")
    img.putpalette(_PALETTE.tobytes())
    return img


def save_label_png(labels: np.ndarray, path: str | os.PathLike) -> None:
    """Write a label map as a palette ("P" mode) PNG whose pixel values are the class indices (as VOC's ground truth).

    Raises:
        ValueError: an index is negative or above 255 (a palette PNG holds 8-bit indices).
    """
    arr = np.asarray(labels)
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"save_label_png: class indices must be in 0..255, got {arr.min()}..{arr.max()}")
    label_image(arr).save(path)


def _font(size: int) -> ImageFont.ImageFont:
    """DejaVu Sans, which matplotlib ships (Latin, Greek and Cyrillic: class names such as 'café' or 'Straße'), found
    without importing matplotlib; else Pillow's default font, whose glyphs are ASCII only."""
    import importlib.util

    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            try:
                return ImageFont.truetype(str(path), size)
            except OSError:  # a damaged install: the default font still draws ASCII
                break
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def _label_colors(labels: np.ndarray, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) colours of a label map by :func:`class_colors`, and the per-index table used (indices past the
    class list keep the VOC palette)."""
    lab = np.asarray(labels, dtype=np.int64)
    top = max(int(lab.max()) + 1 if lab.size else 0, len(class_names))
    table = _PALETTE[np.arange(top) % 256].copy()
    table[: len(class_names)] = class_colors(class_names)
    return table[lab], table


def overlay(
    image: Image.Image,
    labels: np.ndarray,
    class_names: Sequence[str],
    alpha: float = 0.5,
    scores: Sequence[float] | np.ndarray | None = None,
    legend: bool = True,
) -> Image.Image:
    """Blend the coloured label map on the image and add a legend of the classes present.

    Background (index 0) is left unpainted. Colours are :func:`class_colors` of ``class_names`` (colour words in
    their colour). The legend lists each non-background class present, with its colour and, when ``scores``
    (indexed like ``class_names``) is given, its score; with no class present it says so.

    Args:
        image: the image the labels were predicted for (same size as ``labels``).
        labels: (H, W) class indices.
        class_names: names indexed by label.
        alpha: opacity of the colour mask.
        scores: optional per-class scores to print in the legend.
        legend: add the legend strip on the right (False: the blend alone, same size as the image, for callers
            that show the legend themselves, e.g. the web page).

    Returns:
        An RGB image: the blend, with the legend in a strip on the right.
    """
    base = to_rgb(image)
    lab = np.asarray(labels)
    if lab.shape != (base.height, base.width):
        raise ValueError(f"overlay: labels {lab.shape} do not match the image size {base.height}x{base.width}")
    if lab.size and lab.min() < 0:  # a negative index would take a colour from the palette's end
        raise ValueError(f"overlay: class indices must not be negative, got {lab.min()}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"overlay: alpha must lie in [0, 1], got {alpha}")
    rgb = np.asarray(base, dtype=np.float32)
    colors, table = _label_colors(lab, class_names)
    painted = (lab != 0)[..., None]
    blended = np.where(painted, (1 - alpha) * rgb + alpha * colors.astype(np.float32), rgb)
    out = Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8), mode="RGB")
    if not legend:
        return out

    present = [int(c) for c in np.unique(lab) if c != 0]
    font_size = max(10, min(24, base.height // 20))
    font = _font(font_size)
    entries: list[tuple[int | None, str]] = []
    for c in present:
        name = class_names[c] if c < len(class_names) else f"class {c}"
        if scores is not None and c < len(scores):
            name = f"{name} {float(scores[c]):.3f}"
        entries.append((c, name))
    if not entries:
        entries.append((None, "no class found"))
    measure = ImageDraw.Draw(out)
    line = font_size + 6
    text_w = max(int(measure.textlength(text, font=font)) for _, text in entries)
    strip_w = line + text_w + 12
    canvas = Image.new("RGB", (out.width + strip_w, max(out.height, line * len(entries) + 8)), (255, 255, 255))
    canvas.paste(out, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (c, text) in enumerate(entries):
        y = 4 + i * line
        x = out.width + 4
        if c is not None:
            draw.rectangle([x, y, x + font_size, y + font_size], fill=tuple(int(v) for v in table[c]),
                           outline=(0, 0, 0))
        draw.text((x + font_size + 6, y), text, fill=(0, 0, 0), font=font)
    return canvas


def iou_bar_chart(per_class: Mapping[str, float | None], path: str | os.PathLike, title: str) -> None:
    """Write a horizontal bar chart of per-class IoU (percent); classes with no defined IoU are marked "n/a".

    Args:
        per_class: class name -> IoU in percent, or None where it is undefined (class absent from predictions and
            ground truth).
        path: output image path (PNG).
        title: chart title (say which dataset, protocol and checkpoint).
    """
    from matplotlib.figure import Figure  # not pyplot: the caller's backend and figures are left as they are

    names = list(per_class)
    values = [per_class[n] for n in names]
    fig_h = max(2.5, 0.22 * len(names) + 1.2)
    fig = Figure(figsize=(7, fig_h))
    ax = fig.subplots()
    ypos = np.arange(len(names))
    ax.barh(ypos, [v if v is not None else 0.0 for v in values], color="#4878cf")
    for y, v in zip(ypos, values):
        ax.text((v or 0.0) + 0.5, y, "n/a" if v is None else f"{v:.1f}", va="center", fontsize=7)
    ax.set_yticks(ypos)
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("IoU (%)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def image_grid(
    rows: Sequence[Sequence[Image.Image]],
    path: str | os.PathLike | None = None,
    titles: Sequence[str] | None = None,
    cell_height: int = 160,
    gap: int = 4,
) -> Image.Image:
    """Tile images in rows (each scaled to ``cell_height``), with optional column titles; save when ``path`` is given.

    Args:
        rows: the images, row by row (rows may differ in length).
        path: where to write the grid (PNG); None only returns it.
        titles: one title per column, written above the first row.
        cell_height: height every image is scaled to, keeping its aspect ratio.
        gap: pixels between cells.

    Returns:
        The grid as an RGB image.
    """
    scaled = [[im.convert("RGB").resize((max(1, round(im.width * cell_height / im.height)), cell_height),
                                        Image.BILINEAR) for im in row] for row in rows]
    ncols = max((len(r) for r in scaled), default=0)
    if ncols == 0:
        raise ValueError("image_grid: no images")
    col_w = [max((r[j].width for r in scaled if j < len(r)), default=0) for j in range(ncols)]
    font = _font(12)
    title_h = 18 if titles else 0
    width = sum(col_w) + gap * (ncols + 1)
    height = title_h + len(scaled) * (cell_height + gap) + gap
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    xs = [gap + sum(col_w[:j]) + gap * j for j in range(ncols)]
    if titles:
        for j, t in enumerate(titles[:ncols]):
            draw.text((xs[j], 2), str(t), fill=(0, 0, 0), font=font)
    for i, row in enumerate(scaled):
        y = title_h + gap + i * (cell_height + gap)
        for j, im in enumerate(row):
            grid.paste(im, (xs[j], y))
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
    return grid
