"""Segmentation benchmarks in the MMSegmentation on-disk layout (method.md §4).

A data root holds the benchmarks side by side, as MMSegmentation's ``data/`` folder does::

    <root>/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation/val.txt}
    <root>/VOCdevkit/VOC2010/{JPEGImages, SegmentationClassContext, ImageSets/SegmentationContext/val.txt}
    <root>/coco_stuff164k/{images/val2017/*.jpg, annotations/val2017/<id>_labelTrainIds.png}

``simseg prepare`` builds the last two label folders from the official annotations. The root comes from
``--data-root`` or the ``SIMSEG_DATA`` environment variable (one variable, as detectron2's ``DETECTRON2_DATASETS``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from simseg.classnames import benchmark_classes
from simseg.errors import InputError
from simseg.images import load_image

#: Environment variable naming the folder that holds VOCdevkit/ and coco_stuff164k/.
DATA_ENV = "SIMSEG_DATA"

IGNORE_INDEX = 255


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where one benchmark's validation split lives under the data root, and how its labels are read.

    Attributes:
        image_dir: folder of images, relative to the data root.
        label_dir: folder of label PNGs, relative to the data root.
        list_file: text file of sample ids, one per line, relative to the data root; None to list ``image_dir``.
        image_suffix: appended to a sample id to name its image.
        label_suffix: appended to a sample id to name its label.
        classes: name of the class list (see :func:`simseg.classnames.benchmark_classes`).
        reduce_zero_label: background-free variant: ground truth 0 becomes 255 (ignored) and every other label
            shifts down by one (MMSegmentation's ``reduce_zero_label``).
    """

    image_dir: str
    label_dir: str
    list_file: str | None
    image_suffix: str
    label_suffix: str
    classes: str
    reduce_zero_label: bool = False


_VOC = BenchmarkSpec(
    image_dir="VOCdevkit/VOC2012/JPEGImages",
    label_dir="VOCdevkit/VOC2012/SegmentationClass",
    list_file="VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt",
    image_suffix=".jpg",
    label_suffix=".png",
    classes="pascal_voc",
)
_CONTEXT = BenchmarkSpec(
    image_dir="VOCdevkit/VOC2010/JPEGImages",
    label_dir="VOCdevkit/VOC2010/SegmentationClassContext",
    list_file="VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt",
    image_suffix=".jpg",
    label_suffix=".png",
    classes="pascal_context",
)

#: Benchmark name -> its definition.
BENCHMARKS: dict[str, BenchmarkSpec] = {
    "pascal_voc": _VOC,
    "pascal_context": _CONTEXT,
    "coco_object": BenchmarkSpec(
        image_dir="coco_stuff164k/images/val2017",
        label_dir="coco_stuff164k/annotations/val2017",
        list_file=None,
        image_suffix=".jpg",
        label_suffix="_labelTrainIds.png",
        classes="coco_object",
    ),
    "pascal_voc20": replace(_VOC, classes="pascal_voc20", reduce_zero_label=True),
    "pascal_context59": replace(_CONTEXT, classes="pascal_context59", reduce_zero_label=True),
}


def resolve_data_root(data_root: str | os.PathLike | None) -> Path:
    """The benchmark data root: the argument if given, else ``$SIMSEG_DATA``.

    Raises:
        InputError: neither is set, or the folder does not exist.
    """
    if data_root is None or str(data_root) == "":
        env = os.environ.get(DATA_ENV, "")
        if not env:
            raise InputError(
                f"no data root: pass --data-root DIR or set {DATA_ENV}=DIR (the folder holding VOCdevkit/ "
                "and coco_stuff164k/)"
            )
        data_root = env
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise InputError(f"{root}: data root not found (not a directory)")
    return root


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG as a uint8 (H, W) array of class indices, without palette conversion.

    VOC labels are palette ("P") PNGs whose pixel values are the class indices; converting them to RGB would
    lose that, so the raw indices are read. Grey ("L") PNGs are read as they are.

    Raises:
        InputError: missing, unreadable, or not a single-channel 8-bit image.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: label file not found")
    try:
        with Image.open(p) as img:
            img.load()
            if img.mode not in ("P", "L"):
                raise InputError(
                    f"{p}: label must be a palette (P) or grey (L) PNG of class indices, got mode {img.mode}"
                )
            return np.array(img, dtype=np.uint8)
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"{p}: not a readable label image") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{p}: corrupt or truncated label image ({e})") from None


def _load_benchmark_image(path: Path) -> Image.Image:
    """Read a benchmark image in its stored pixel orientation.

    Benchmark labels annotate the stored pixels, so an EXIF orientation tag (a few COCO images carry one) must
    not be applied here, unlike for a user's photo. ``load_image`` still does the checks (missing, corrupt, bomb).
    """
    return load_image(path, exif_transpose=False)


class SegmentationBenchmark:
    """A map-style benchmark split: ``dataset[i] -> (image, label, sample_id)``.

    Args:
        name: a key of :data:`BENCHMARKS`.
        data_root: the folder holding ``VOCdevkit/`` / ``coco_stuff164k/`` (see :func:`resolve_data_root`).
        class_names: the classes the label values index, for data in a benchmark's layout with classes of its own
            (e.g. the synthetic split of ``simseg demo``); default: the benchmark's list.

    Raises:
        InputError: unknown name, or a missing folder or list file (the message names the path).
    """

    def __init__(self, name: str, data_root: str | os.PathLike, class_names: list[str] | None = None) -> None:
        if name not in BENCHMARKS:
            raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(BENCHMARKS)}")
        self.name = name
        self.spec = BENCHMARKS[name]
        self.root = Path(data_root)
        self.class_names: list[str] = list(class_names) if class_names else benchmark_classes(self.spec.classes)
        self.image_dir = self.root / self.spec.image_dir
        self.label_dir = self.root / self.spec.label_dir
        for folder in (self.root, self.image_dir, self.label_dir):
            if not folder.is_dir():
                raise InputError(f"{folder}: {name} folder not found (expected the MMSegmentation layout)")
        self.sample_ids: list[str] = self._list_ids()
        if not self.sample_ids:
            where = self.root / self.spec.list_file if self.spec.list_file else self.image_dir
            raise InputError(f"{where}: no {name} samples listed")

    def _list_ids(self) -> list[str]:
        if self.spec.list_file is None:
            suffix = self.spec.image_suffix
            return sorted(p.name[: -len(suffix)] for p in self.image_dir.glob(f"*{suffix}"))
        list_path = self.root / self.spec.list_file
        if not list_path.is_file():
            raise InputError(f"{list_path}: {self.name} list file not found")
        try:
            lines = list_path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{list_path}: cannot read list file ({e})") from None
        return [line.strip() for line in lines if line.strip()]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def image_path(self, index: int) -> Path:
        return self.image_dir / f"{self.sample_ids[index]}{self.spec.image_suffix}"

    def label_path(self, index: int) -> Path:
        return self.label_dir / f"{self.sample_ids[index]}{self.spec.label_suffix}"

    def __getitem__(self, index: int) -> tuple[Image.Image, np.ndarray, str]:
        """Return ``(image as PIL RGB, label as uint8 (H, W), sample id)``.

        Raises:
            InputError: the image or label is missing or corrupt, their sizes differ, or the label holds a value
                that is neither a class index nor 255.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image_path, label_path = self.image_path(index), self.label_path(index)
        image = _load_benchmark_image(image_path)
        label = read_label(label_path)
        if label.shape != (image.height, image.width):
            raise InputError(
                f"{label_path}: label size {label.shape[1]}x{label.shape[0]} differs from image {image_path} "
                f"size {image.width}x{image.height}"
            )
        # Valid stored values: the base benchmark's class indices (one more than ours when background is dropped).
        stored_classes = self.num_classes + int(self.spec.reduce_zero_label)
        bad = (label >= stored_classes) & (label != IGNORE_INDEX)
        if bad.any():
            raise InputError(
                f"{label_path}: label value {int(label[bad][0])} is not a class index of {self.name} "
                f"(0..{stored_classes - 1}, or {IGNORE_INDEX} for ignored pixels)"
            )
        if self.spec.reduce_zero_label:
            # Background (0) becomes ignored and class c >= 1 becomes c - 1; 255 stays ignored.
            label = np.where((label == 0) | (label == IGNORE_INDEX), IGNORE_INDEX, label - 1).astype(np.uint8)
        return image, label, self.sample_ids[index]
