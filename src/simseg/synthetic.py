"""A seeded synthetic world of captioned scenes with pixel masks, for the demo and for tests.

Each scene is a small RGB image (64 x 64 by default) of 1-3 coloured shapes on a textured background, a caption
in one of several phrasings, and ground-truth label maps (colour classes, shape classes) that training never sees.
The world is built so that a tiny ViT + BERT trained contrastively on the captions alone can learn the colour
words in a few minutes on a CPU, which is the paper's central claim made visible:

- six colours far apart in hue (red, yellow, green, cyan, blue, purple), each with slight per-object jitter;
- backgrounds in low-saturation greys and browns, dark or light, in seven textures (stone, stripes, tiles, dots,
  gravel, bricks, rings): 28 kinds, each with words of its own; a texture only modulates brightness, so a background
  pixel never looks like a class colour;
- objects of 12-28 px (at 64 x 64; scaled with ``size``) that never overlap, so every mask pixel is the colour of
  its label;
- captions that always name every object, with one attribute sometimes omitted ("a star and a blue circle"),
  spatial words only when they are true, and the surface the objects lie on, always with its brightness and tint
  ("on dark grey stone", "on a light brown wooden floor"): as in real captions, the background has words of its
  own;
- mostly one or two objects per scene (1: 50 %, 2: 35 %, 3: 15 %).

Exporters write the real on-disk formats (a CSV folder, img2dataset-style webdataset shards, the PASCAL VOC
MMSegmentation layout, a retrieval parquet), so the demo exercises the same readers as real data.

Everything is deterministic given the seed: ``generate_scenes(n, seed)`` returns identical scenes on every call.
"""

from __future__ import annotations

import csv
import io
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from simseg.errors import InputError

#: Colour classes: (name, RGB centre). Hues about 60 degrees apart and saturation >= 0.75, far from the backgrounds.
COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (215, 35, 35)),
    ("yellow", (235, 210, 30)),
    ("green", (40, 170, 50)),
    ("cyan", (30, 200, 215)),
    ("blue", (40, 70, 225)),
    ("purple", (150, 45, 210)),
)

#: Shape classes.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")

#: The background textures, in the order :func:`_background` draws them.
_TEXTURES = ("blotchy", "striped", "checkered", "dotted", "gravel", "brick", "rings")
#: Phrases for each texture; ``{}`` is the brightness and tint ("dark grey"). Brown blotches and stripes read as sand
#: and wood.
_SURFACES: dict[str, tuple[str, ...]] = {
    "grey blotchy": ("{} stone", "a {} stone floor"),
    "brown blotchy": ("{} sand", "a {} sandy beach"),
    "grey striped": ("a {} striped wall", "{} stripes"),
    "brown striped": ("a {} wooden floor", "{} wood"),
    "checkered": ("a {} checkered floor", "{} tiles"),
    "dotted": ("a {} dotted rug", "{} dots"),
    "gravel": ("{} gravel", "a {} gravel path"),
    "brick": ("a {} brick wall", "{} bricks"),
    "rings": ("{} rings", "a {} ring pattern"),
}
#: Background brightness words and the tints.
_BRIGHTNESS = ("dark", "light")
_TINTS = ("grey", "brown")


def _surface_phrases(brightness: str, tint: str, texture: str) -> tuple[str, ...]:
    templates = _SURFACES.get(f"{tint} {texture}") or _SURFACES[texture]
    return tuple(t.format(f"{brightness} {tint}") for t in templates)


#: Background names (brightness, tint and texture, as :func:`_background` draws them) -> the phrases a caption uses
#: for it, the way real captions name the scene around the objects ("on a sandy beach"). Every phrase names the
#: brightness and the tint: a word that some phrases leave out is learned as "no word". The more kinds of background
#: the captions tell apart, the less the background patches collapse onto the part that every caption (and so every
#: colour's class embedding) shares, which is what makes the paper's per-class min-max maps fail.
BACKGROUNDS: dict[str, tuple[str, ...]] = {
    f"{b} {t} {x}": _surface_phrases(b, t, x) for b in _BRIGHTNESS for t in _TINTS for x in _TEXTURES
}
#: Probability that a caption names the background ("... on dark grey stone").
_BACKGROUND_NAMED_PROB = 1.0

#: Object side at the default 64 x 64 scene size, in pixels (inclusive range); scaled for other sizes.
_OBJECT_SIZE_64 = (12, 28)
#: Smallest scene side that still fits three objects of the smallest size.
_MIN_SIZE = 32
#: Probability of 1, 2 or 3 objects in a scene.
_COUNT_PROBS = (0.5, 0.35, 0.15)
#: Per-channel jitter of an object's colour (uniform, +-), and per-pixel noise (normal sigma), in 0-255 units.
_OBJECT_JITTER = 15
_PIXEL_NOISE = 4.0
#: Placement attempts per object before it is dropped (the scene keeps at least its first object).
_PLACEMENT_TRIES = 30

#: JPEG quality of training exports (img2dataset's default) and of the segmentation split's images.
_TRAIN_JPEG_QUALITY = 95
_SEG_JPEG_QUALITY = 100


class SceneObject(NamedTuple):
    """One shape in a scene.

    Attributes:
        colour: a name from :data:`COLOURS`.
        shape: a name from :data:`SHAPES`.
        bbox: the square box the shape was drawn in, ``(x0, y0, x1, y1)`` in pixels, end exclusive.
    """

    colour: str
    shape: str
    bbox: tuple[int, int, int, int]


@dataclass(frozen=True)
class Scene:
    """One captioned scene with its ground truth. The arrays are read-only.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        caption: the caption a trainer sees.
        colour_mask: (H, W) uint8, 0 = background, i = ``COLOURS`` index + 1.
        shape_mask: (H, W) uint8, 0 = background, i = ``SHAPES`` index + 1.
        objects: the shapes drawn, in drawing order.
        background: the background's name, a key of :data:`BACKGROUNDS` (brightness, tint and texture).
    """

    image: np.ndarray
    caption: str
    colour_mask: np.ndarray
    shape_mask: np.ndarray
    objects: tuple[SceneObject, ...]
    background: str

    @property
    def colour_shape_mask(self) -> np.ndarray:
        """(H, W) uint8 labels of :func:`colour_shape_class_names`: 1 + colour index * len(SHAPES) + shape index."""
        fg = self.colour_mask > 0
        combined = (self.colour_mask.astype(np.int32) - 1) * len(SHAPES) + self.shape_mask.astype(np.int32)
        return np.where(fg, combined, 0).astype(np.uint8)


def colour_class_names() -> list[str]:
    """Colour classes for segmentation, background first: the label values of ``Scene.colour_mask``."""
    return ["background", *(name for name, _ in COLOURS)]


def shape_class_names() -> list[str]:
    """Shape classes, background first: the label values of ``Scene.shape_mask``."""
    return ["background", *SHAPES]


def colour_shape_class_names() -> list[str]:
    """Colour-shape classes ("red circle", ...), background first: the label values of ``Scene.colour_shape_mask``."""
    return ["background", *(f"{colour} {shape}" for colour, _ in COLOURS for shape in SHAPES)]


# ----------------------------------------------------------------------------------------------------------------
# Scenes


def _check_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or size < _MIN_SIZE:
        raise InputError(f"size: scene side must be an integer >= {_MIN_SIZE}, got {size!r}")


def _object_size_range(size: int) -> tuple[int, int]:
    lo, hi = _OBJECT_SIZE_64
    return max(6, round(lo * size / 64)), max(8, round(hi * size / 64))


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """A textured (size, size, 3) float background in a low-saturation grey or brown, and its name (a key of
    :data:`BACKGROUNDS`: brightness, tint and texture, e.g. ``"dark grey blotchy"``). The brightness word is true of
    the pixels: "dark" when the mean channel value is below half of 255.

    The texture multiplies all three channels by the same factor, which leaves the HSV saturation unchanged, so no
    background pixel drifts towards a class colour however strong the texture.
    """
    value = rng.uniform(0.3, 0.8)
    if rng.random() < 0.5:  # grey, with the faintest tint
        tint, hue, sat = "grey", rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.06)
    else:  # brown / beige
        tint, hue, sat = "brown", rng.uniform(20 / 360, 45 / 360), rng.uniform(0.1, 0.3)
    base = np.array(_hsv_to_rgb(hue, sat, value)) * 255.0

    kind = int(rng.integers(len(_TEXTURES)))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == 0:  # blotches: low-frequency noise
        cells = int(rng.integers(3, 9))
        coarse = Image.fromarray(rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32), mode="F")
        texture = np.asarray(coarse.resize((size, size), Image.BILINEAR)) * rng.uniform(0.1, 0.25)
    elif kind == 1:  # stripes / wood grain at a random angle
        angle, period = rng.uniform(0, np.pi), rng.uniform(4.0, 16.0)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period)
        texture = np.sin(phase + rng.uniform(0, 2 * np.pi)) * rng.uniform(0.06, 0.18)
    elif kind == 2:  # checkerboard tiles
        tile = int(rng.integers(4, 17))
        texture = (((yy // tile) + (xx // tile)) % 2 * 2.0 - 1.0) * rng.uniform(0.05, 0.15)
    elif kind == 3:  # light dots on a grid
        spacing = rng.uniform(6.0, 12.0)
        radius = spacing * rng.uniform(0.2, 0.35)
        ox, oy = rng.uniform(0, spacing, 2)
        dx, dy = (xx + ox) % spacing - spacing / 2, (yy + oy) % spacing - spacing / 2
        texture = np.where(dx * dx + dy * dy <= radius * radius, 1.0, -0.3) * rng.uniform(0.1, 0.2)
    elif kind == 4:  # gravel: fine 2-px grain
        fine = Image.fromarray(rng.uniform(-1.0, 1.0, (size // 2, size // 2)).astype(np.float32), mode="F")
        texture = np.asarray(fine.resize((size, size), Image.NEAREST)) * rng.uniform(0.1, 0.2)
    elif kind == 5:  # bricks: offset rows with dark mortar lines
        height = int(rng.integers(5, 10))
        shift = ((yy // height) % 2) * height
        mortar = ((yy % height) < 1) | (((xx + shift) % (2 * height)) < 1)
        texture = np.where(mortar, -1.0, 0.3) * rng.uniform(0.15, 0.3)
    else:  # rings around a random centre
        cx, cy = rng.uniform(0, size, 2)
        period = rng.uniform(5.0, 12.0)
        texture = np.sin(np.hypot(xx - cx, yy - cy) * 2 * np.pi / period) * rng.uniform(0.08, 0.18)
    grain = rng.normal(0.0, 0.04, (size, size))
    factor = (1.0 + texture + grain).astype(np.float32)
    image = factor[:, :, None] * base[None, None, :].astype(np.float32)
    brightness = "dark" if image.mean() < 127.5 else "light"
    return image, f"{brightness} {tint} {_TEXTURES[kind]}"


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def _shape_polygon(shape: str, x0: int, y0: int, side: int, angle: float) -> list[tuple[float, float]] | None:
    """Vertices of a polygonal shape inscribed in the box at (x0, y0) of the given side; None for a circle."""
    cx, cy, r = x0 + (side - 1) / 2, y0 + (side - 1) / 2, (side - 1) / 2
    if shape == "circle":
        return None
    if shape == "square":
        # A square rotated by up to 20 degrees still fits its box when its half-diagonal is at most r.
        half = r / (abs(np.cos(angle)) + abs(np.sin(angle)))
        corners = [(-half, -half), (half, -half), (half, half), (-half, half)]
        c, s = np.cos(angle), np.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in corners]
    if shape == "triangle":
        thetas = [angle - np.pi / 2 + k * 2 * np.pi / 3 for k in range(3)]
        return [(cx + r * np.cos(t), cy + r * np.sin(t)) for t in thetas]
    if shape == "star":
        points = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.5
            t = angle - np.pi / 2 + k * np.pi / 5
            points.append((cx + rad * np.cos(t), cy + rad * np.sin(t)))
        return points
    raise ValueError(f"unknown shape {shape!r}")


def _layout(rng: np.random.Generator, size: int) -> tuple[SceneObject, ...]:
    """Choose 1-3 objects with distinct colours and place them without overlap (1 px gap between boxes)."""
    lo, hi = _object_size_range(size)
    count = int(rng.choice(3, p=_COUNT_PROBS)) + 1
    colour_ids = rng.permutation(len(COLOURS))[:count]
    objects: list[SceneObject] = []
    for colour_id in colour_ids:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        for _ in range(_PLACEMENT_TRIES):
            side = int(rng.integers(lo, hi + 1))
            x0, y0 = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
            box = (x0, y0, x0 + side, y0 + side)
            if all(_boxes_apart(box, other.bbox) for other in objects):
                objects.append(SceneObject(COLOURS[colour_id][0], shape, box))
                break
    return tuple(objects)


def _boxes_apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int = 1) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _render(
    rng: np.random.Generator, objects: Sequence[SceneObject], size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Draw the objects on a fresh background; return (image, colour_mask, shape_mask, background name)."""
    image, background_name = _background(rng, size)
    colour_mask = np.zeros((size, size), np.uint8)
    shape_mask = np.zeros((size, size), np.uint8)
    colour_index = {name: i for i, (name, _) in enumerate(COLOURS)}
    for obj in objects:
        # Aliased drawing: every pixel is either fully object or fully background, so the mask is exact.
        canvas = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(canvas)
        x0, y0, x1, _ = obj.bbox
        angle = rng.uniform(-np.pi / 9, np.pi / 9)
        polygon = _shape_polygon(obj.shape, x0, y0, x1 - x0, angle)
        if polygon is None:
            draw.ellipse([x0, y0, x1 - 1, obj.bbox[3] - 1], fill=1)
        else:
            draw.polygon(polygon, fill=1)
        # PIL may round a polygon edge one pixel outward; the box is a promise, so clip to it.
        inside = np.zeros((size, size), dtype=bool)
        inside[y0 : obj.bbox[3], x0:x1] = np.asarray(canvas, dtype=bool)[y0 : obj.bbox[3], x0:x1]
        ci = colour_index[obj.colour]
        rgb = np.asarray(COLOURS[ci][1], np.float32) + rng.uniform(-_OBJECT_JITTER, _OBJECT_JITTER, 3)
        image[inside] = rgb
        colour_mask[inside] = ci + 1
        shape_mask[inside] = SHAPES.index(obj.shape) + 1
    # Sensor-like noise: per channel on objects, shared by the channels on the background so that dark background
    # pixels keep their low saturation.
    noise = rng.normal(0.0, _PIXEL_NOISE, image.shape).astype(np.float32)
    background = colour_mask == 0
    noise[background] = noise[background][:, :1]
    image += noise
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), colour_mask, shape_mask, background_name


def generate_scene(rng: np.random.Generator, size: int = 64) -> Scene:
    """Draw one scene from ``rng``.

    Args:
        rng: the random generator; the scene is a function of its state alone.
        size: image side in pixels (>= 32).

    Raises:
        InputError: ``size`` is too small.
    """
    _check_size(size)
    objects = _layout(rng, size)
    image, colour_mask, shape_mask, background = _render(rng, objects, size)
    caption = caption_variants(objects, rng, background=background)[0]
    for array in (image, colour_mask, shape_mask):
        array.flags.writeable = False
    return Scene(image=image, caption=caption, colour_mask=colour_mask, shape_mask=shape_mask, objects=objects,
                 background=background)


def generate_scenes(n: int, seed: int, size: int = 64) -> list[Scene]:
    """``n`` scenes from ``seed``: the same seed always gives the same scenes, different seeds different ones.

    Raises:
        InputError: ``n`` is negative, or ``size`` is too small.
    """
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise InputError(f"n: number of scenes must be a non-negative integer, got {n!r}")
    _check_size(size)
    rng = np.random.default_rng(seed)
    return [generate_scene(rng, size) for _ in range(n)]


# ----------------------------------------------------------------------------------------------------------------
# Captions

_ONE = ("{a}", "a photo of {a}", "a picture of {a}", "there is {a}", "an image of {a}")
_TWO = ("{a} and {b}", "{a} next to {b}", "there is {a} and {b}", "a picture of {a} and {b}", "{a} with {b}", "{rel}")
_THREE = (
    "{a}, {b} and {c}",
    "a picture of {a}, {b} and {c}",
    "three shapes: {a}, {b} and {c}",
    "{a} next to {b} and {c}",
)


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _describe(obj: SceneObject, rng: np.random.Generator) -> str:
    """A noun phrase for one object; one attribute is sometimes left out, never both."""
    u = rng.random()
    if u < 0.75:
        words = f"{obj.colour} {obj.shape}"
    elif u < 0.9:
        words = obj.shape
    else:
        words = f"{obj.colour} {('shape', 'object')[int(rng.integers(2))]}"
    return _article(words)


def _relation(a: SceneObject, b: SceneObject) -> str:
    """Where ``a`` is relative to ``b``, in words; "next to" when no direction clearly dominates."""
    ax, ay = (a.bbox[0] + a.bbox[2]) / 2, (a.bbox[1] + a.bbox[3]) / 2
    bx, by = (b.bbox[0] + b.bbox[2]) / 2, (b.bbox[1] + b.bbox[3]) / 2
    dx, dy = bx - ax, by - ay
    if abs(dx) >= abs(dy) and abs(dx) >= 4:
        return "to the left of" if dx > 0 else "to the right of"
    if abs(dy) > abs(dx) and abs(dy) >= 4:
        return "above" if dy > 0 else "below"
    return "next to"


def _caption(objects: Sequence[SceneObject], rng: np.random.Generator, background: str | None = None) -> str:
    text = _objects_phrase(objects, rng)
    if background is not None and rng.random() < _BACKGROUND_NAMED_PROB:
        phrases = BACKGROUNDS[background]
        text += " on " + phrases[int(rng.integers(len(phrases)))]
    return text


def _objects_phrase(objects: Sequence[SceneObject], rng: np.random.Generator) -> str:
    order = [objects[i] for i in rng.permutation(len(objects))]
    phrases = [_describe(obj, rng) for obj in order]
    if len(order) == 1:
        template = _ONE[int(rng.integers(len(_ONE)))]
        return template.format(a=phrases[0])
    if len(order) == 2:
        template = _TWO[int(rng.integers(len(_TWO)))]
        rel = f"{phrases[0]} {_relation(order[0], order[1])} {phrases[1]}"
        return template.format(a=phrases[0], b=phrases[1], rel=rel)
    template = _THREE[int(rng.integers(len(_THREE)))]
    return template.format(a=phrases[0], b=phrases[1], c=phrases[2])


def caption_variants(objects: Sequence[SceneObject], rng: np.random.Generator, n: int = 1,
                     background: str | None = None) -> list[str]:
    """``n`` captions of the same objects, distinct where the phrasings allow.

    Every object is named (by its colour, its shape or both) in a random order; only colours and shapes present
    are mentioned, and spatial words ("to the left of", "above") are used only when true of the boxes. With a
    ``background`` (a key of :data:`BACKGROUNDS`), the caption ends with where the objects lie ("... on dark
    grey stone").

    Raises:
        InputError: no objects, ``n`` < 1, or an unknown background.
    """
    if background is not None and background not in BACKGROUNDS:
        raise InputError(f"background: expected one of {', '.join(BACKGROUNDS)}, got {background!r}")
    if not objects:
        raise InputError("objects: a caption needs at least one object")
    if n < 1:
        raise InputError(f"n: number of captions must be >= 1, got {n}")
    captions: list[str] = []
    for _ in range(20 * n):
        caption = _caption(objects, rng, background)
        if caption not in captions:
            captions.append(caption)
        if len(captions) == n:
            break
    while len(captions) < n:  # a single plain object has few phrasings; repeats are then the honest answer
        captions.append(_caption(objects, rng, background))
    return captions


def caption_corpus(n: int, seed: int) -> list[str]:
    """``n`` captions from the scene distribution, without rendering images (e.g. to train a WordPiece vocab)."""
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise InputError(f"n: number of captions must be a non-negative integer, got {n!r}")
    rng = np.random.default_rng(seed)
    names = list(BACKGROUNDS)
    return [caption_variants(_layout(rng, 64), rng, background=names[int(rng.integers(len(names)))])[0]
            for _ in range(n)]


# ----------------------------------------------------------------------------------------------------------------
# Exporters


def _make_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{path}: cannot create output folder ({e.strerror or e})") from None
    if not os.access(path, os.W_OK):
        raise InputError(f"{path}: output folder is not writable")
    return path


def _encode(image: np.ndarray, fmt: str, quality: int = _TRAIN_JPEG_QUALITY) -> bytes:
    buffer = io.BytesIO()
    pil = Image.fromarray(image, mode="RGB")
    if fmt in ("jpg", "jpeg"):
        # 4:4:4 chroma at quality 100 (the segmentation split) keeps colours sharp at object borders.
        subsampling = 0 if quality >= 100 else -1
        pil.save(buffer, format="JPEG", quality=quality, subsampling=subsampling)
    elif fmt == "png":
        pil.save(buffer, format="PNG")
    else:
        raise InputError(f"image_format: expected 'png' or 'jpg', got {fmt!r}")
    return buffer.getvalue()


def _key(index: int) -> str:
    return f"{index:09d}"


def export_csv_folder(scenes: Sequence[Scene], out_dir: str | os.PathLike, image_format: str = "png") -> Path:
    """Write ``<out_dir>/images/<key>.<ext>`` and ``<out_dir>/train_anno.csv`` (columns ``image``, ``caption``).

    The ``image`` column holds paths relative to the CSV's folder (``images/000000000.png``).

    Returns:
        The CSV path.
    """
    root = _make_dir(Path(out_dir))
    images = _make_dir(root / "images")
    ext = "jpg" if image_format in ("jpg", "jpeg") else image_format
    csv_path = root / "train_anno.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for i, scene in enumerate(scenes):
            name = f"{_key(i)}.{ext}"
            (images / name).write_bytes(_encode(scene.image, ext))
            writer.writerow([f"images/{name}", scene.caption])
    return csv_path


def export_webdataset(scenes: Sequence[Scene], out_dir: str | os.PathLike, shard_size: int = 1000) -> list[str]:
    """Write tar shards as img2dataset does: ``00000.tar, 00001.tar, ...``, each holding ``{key}.jpg`` (quality 95)
    and ``{key}.txt`` (the caption, UTF-8) per sample, keys the 9-digit zero-padded sample index.

    Members carry a fixed mtime, so the same scenes give byte-identical shards.

    Returns:
        The shard paths, in order.

    Raises:
        InputError: ``shard_size`` < 1, or the folder cannot be written.
    """
    if shard_size < 1:
        raise InputError(f"shard_size: must be >= 1, got {shard_size}")
    root = _make_dir(Path(out_dir))
    shards: list[str] = []
    for start in range(0, len(scenes), shard_size):
        path = root / f"{len(shards):05d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(start, min(start + shard_size, len(scenes))):
                scene = scenes[i]
                _add_member(tar, f"{_key(i)}.jpg", _encode(scene.image, "jpg", _TRAIN_JPEG_QUALITY))
                _add_member(tar, f"{_key(i)}.txt", scene.caption.encode("utf-8"))
        shards.append(str(path))
    return shards


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def export_segmentation_split(scenes: Sequence[Scene], out_dir: str | os.PathLike, name: str = "synthetic_voc") -> Path:
    """Write the scenes as a PASCAL VOC validation split in the MMSegmentation layout, labelled by colour class.

    Layout under ``<out_dir>/<name>/`` (a data root that ``simseg.segdata`` reads as ``pascal_voc``)::

        VOCdevkit/VOC2012/JPEGImages/<id>.jpg            JPEG quality 100, 4:4:4 chroma
        VOCdevkit/VOC2012/SegmentationClass/<id>.png     palette ("P") PNG, pixel values = colour class indices
        VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt the ids, one a line
        classes.txt                                      colour_class_names(), one a line, background first

    Returns:
        The data root ``<out_dir>/<name>``.
    """
    root = _make_dir(Path(out_dir) / name)
    voc = root / "VOCdevkit" / "VOC2012"
    image_dir, label_dir = _make_dir(voc / "JPEGImages"), _make_dir(voc / "SegmentationClass")
    list_dir = _make_dir(voc / "ImageSets" / "Segmentation")
    from simseg.visualize import palette as voc_palette

    palette = voc_palette(256).tobytes()
    ids = []
    for i, scene in enumerate(scenes):
        sample_id = f"{i:06d}"
        (image_dir / f"{sample_id}.jpg").write_bytes(_encode(scene.image, "jpg", _SEG_JPEG_QUALITY))
        label = Image.fromarray(np.ascontiguousarray(scene.colour_mask), mode="L").convert("P")
        label.putpalette(palette)
        label.save(label_dir / f"{sample_id}.png")
        ids.append(sample_id)
    (list_dir / "val.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in colour_class_names()), encoding="utf-8")
    return root


def export_retrieval_parquet(
    scenes: Sequence[Scene],
    out_dir: str | os.PathLike,
    name: str = "synthetic",
    captions_per_image: int = 2,
    seed: int = 0,
) -> Path:
    """Write ``<out_dir>/<name>/valid.parquet`` in the retrieval benchmarks' layout, one row per caption.

    Columns: ``imbytes`` (PNG bytes), ``caption``, ``image_id`` (scene index), ``id`` (caption index). Each image
    gets ``captions_per_image`` distinct phrasings where possible, the scene's own caption first; the extra ones are
    drawn from ``seed``.

    Returns:
        The parquet path.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if captions_per_image < 1:
        raise InputError(f"captions_per_image: must be >= 1, got {captions_per_image}")
    root = _make_dir(Path(out_dir) / name)
    rng = np.random.default_rng(seed)
    imbytes: list[bytes] = []
    captions: list[str] = []
    image_ids: list[int] = []
    for image_id, scene in enumerate(scenes):
        encoded = _encode(scene.image, "png")
        texts = [scene.caption]
        for _ in range(20 * captions_per_image):
            if len(texts) == captions_per_image:
                break
            candidate = caption_variants(scene.objects, rng, background=scene.background)[0]
            if candidate not in texts:
                texts.append(candidate)
        while len(texts) < captions_per_image:
            texts.append(caption_variants(scene.objects, rng, background=scene.background)[0])
        for text in texts:
            imbytes.append(encoded)
            captions.append(text)
            image_ids.append(image_id)
    table = pa.table(
        {
            "imbytes": pa.array(imbytes, type=pa.binary()),
            "caption": pa.array(captions, type=pa.string()),
            "image_id": pa.array(image_ids, type=pa.int64()),
            "id": pa.array(range(len(captions)), type=pa.int64()),
        }
    )
    path = root / "valid.parquet"
    pq.write_table(table, path)
    return path
