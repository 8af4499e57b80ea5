"""Robust image reading shared by every entry point (segment, evaluation, training data, web page).

One function turns a path or encoded bytes into an RGB ``PIL.Image`` with EXIF orientation applied,
or raises :class:`~simseg.errors.InputError` naming the source and the problem.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from simseg.errors import ImageTooLargeError, InputError, one_line

#: Default guard against decompression bombs: 100 megapixels (a 10000 x 10000 image).
DEFAULT_MAX_PIXELS = 100_000_000


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F, ...) to 8-bit RGB: high bit depths scaled to 0..255,
    transparent pixels composited on white (``Image.convert("RGB")`` would clip 16-bit values and drop alpha).
    An RGB image is returned as it is; any other is a new image."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # High bit depth grey: scale the actual range of the file's type to 0..255.
        arr = np.asarray(img)
        if img.mode.startswith("I;16"):
            arr = arr.astype(np.float32) / 257.0
        elif img.mode == "I":
            arr = arr.astype(np.float32) / (257.0 if arr.max(initial=0) > 255 else 1.0)
        else:  # float images are assumed in [0, 1]
            arr = arr.astype(np.float32) * (255.0 if arr.max(initial=0) <= 1.0 else 1.0)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparent pixels on white rather than on whatever colour they happen to store.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def pillow_refusal(label: str, error: Exception, max_pixels: int | None) -> str:
    """The message for an image Pillow refuses to open as a decompression bomb (over twice its
    ``Image.MAX_IMAGE_PIXELS``, before our own limit is looked at): the image's pixel count and the limit in force."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    size = f"image of {found.group(1)} pixels" if found else "image"
    pillow_limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None
    limits = [v for v in (max_pixels, pillow_limit) if v]
    limit = f"the limit of {min(limits)}" if limits else "the image library's limit"
    return f"{label}: {size} exceeds {limit} (refused by the image library as a possible decompression bomb)"


def load_image(
    source: str | os.PathLike | bytes,
    name: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    exif_transpose: bool = True,
) -> Image.Image:
    """Read an image as 8-bit RGB with its EXIF orientation applied.

    Args:
        source: a file path or the encoded bytes of an image.
        name: how to call the source in error messages (defaults to the path, or "<bytes>").
        max_pixels: refuse images with more pixels than this (decompression-bomb guard); None disables.
        exif_transpose: apply the EXIF orientation tag (False keeps the stored pixel order, e.g. for benchmark
            images whose labels annotate the stored pixels).

    Raises:
        InputError: the file is missing, empty, not an image, truncated, or too large.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "<image bytes>"
        data = bytes(source)
        if not data:
            raise InputError(f"{label}: empty image data (0 bytes)")
        stream = io.BytesIO(data)
    else:
        path = Path(source)
        label = name or str(path)
        if not path.exists():
            raise InputError(f"{label}: file not found")
        if path.is_dir():
            raise InputError(f"{label}: is a directory, not an image")
        if path.stat().st_size == 0:
            raise InputError(f"{label}: empty file (0 bytes)")
        stream = io.BytesIO(path.read_bytes())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # max_pixels decides
            # Pillow's notes on a damaged file that still decodes (corrupt EXIF, a TIFF tag past the end) would be
            # printed without the file's name; the image is read all the same. (Only filters are added here: with
            # several decoding threads, what catch_warnings restores may be another thread's state.)
            warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
            img = Image.open(stream)
            w, h = img.size  # header only: checked before any pixel is decoded
            if max_pixels is not None and w * h > max_pixels:
                raise ImageTooLargeError(f"{label}: image of {w}x{h} = {w * h} pixels exceeds the limit of "
                                         f"{max_pixels}")
            img.load()
            if exif_transpose:
                img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except InputError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(pillow_refusal(label, e, max_pixels)) from None
    except UnidentifiedImageError:
        raise InputError(f"{label}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated data, broken chunks
        raise InputError(f"{label}: corrupt or truncated image ({one_line(e)})") from None
