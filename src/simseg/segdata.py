"""Segmentation benchmarks in the MMSegmentation on-disk layouts.

A data root holds the benchmarks side by side, as MMSegmentation's ``data/`` folder does::

    <root>/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation/val.txt}
    <root>/VOCdevkit/VOC2010/{JPEGImages, SegmentationClassContext, ImageSets/SegmentationContext/val.txt}
    <root>/coco_stuff164k/images/val2017/<id>.jpg
    <root>/coco_stuff164k/annotations/val2017/<id>_labelTrainIds.png     COCO-Object, 0..80 (SimSeg's name)
    <root>/coco_stuff164k/annotations/val2017/<id>_instanceTrainIds.png  COCO-Object, 0..80 (training-free family)
    <root>/coco_stuff164k/annotations/val2017/<id>_labelTrainIds171.png  COCO-Stuff, 0..170, 255 ignored
    <root>/cityscapes/leftImg8bit/val/<city>/<id>_leftImg8bit.png
    <root>/cityscapes/gtFine/val/<city>/<id>_gtFine_labelTrainIds.png    0..18, 255 ignored
    <root>/ade/ADEChallengeData2016/{images,annotations}/validation/<id>.{jpg,png}   0 = other (ignored), 1..150
    (or <root>/ADEChallengeData2016/... as the official archive unpacks)

COCO-Stuff's label name: MMSegmentation's converter writes the 171-class labels as ``<id>_labelTrainIds.png``,
the name SimSeg's COCO-Object labels already have in the same folder, and COCO-Object's values (0..80) are valid
171-class values too, so reading one as the other would go unnoticed. simseg therefore writes and reads the
171-class labels as ``<id>_labelTrainIds171.png`` (``simseg prepare coco-stuff`` builds them from the
stuffthingmaps, which MMSegmentation's converter leaves in place) and never reads ``_labelTrainIds.png`` as
COCO-Stuff.

COCO-Object precedence: when the label folder holds any ``<id>_instanceTrainIds.png`` (the training-free family's
COCO-Object conversion), every COCO-Object label is read from those files, and ``<id>_labelTrainIds.png`` is not
used; otherwise ``<id>_labelTrainIds.png`` is. The instance name is unambiguous, while ``_labelTrainIds.png`` in a
folder prepared for that family is MMSegmentation's 171-class COCO-Stuff. Both conversions map the same way
(things 1..80, stuff and unlabeled 0), so either gives the same numbers.

``simseg prepare`` builds the converted label files from the official annotations. The root comes from
``--data-root`` or the ``SIMSEG_DATA`` environment variable (one variable, as detectron2's ``DETECTRON2_DATASETS``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from simseg.classnames import benchmark_classes
from simseg.errors import ImageTooLargeError, InputError, one_line
from simseg.images import load_image, pillow_refusal

#: Environment variable naming the folder that holds VOCdevkit/, coco_stuff164k/, cityscapes/, ade/.
DATA_ENV = "SIMSEG_DATA"

IGNORE_INDEX = 255

#: COCO-Object labels as SimSeg's converter writes them (``simseg prepare coco-object``).
COCO_OBJECT_SUFFIX = "_labelTrainIds.png"
#: COCO-Object labels as the training-free family's converter (``cvt_coco_object.py``) writes them.
COCO_OBJECT_INSTANCE_SUFFIX = "_instanceTrainIds.png"
#: COCO-Stuff 171-class labels as ``simseg prepare coco-stuff`` writes them (a name apart from COCO-Object's).
COCO_STUFF_SUFFIX = "_labelTrainIds171.png"
#: Cityscapes file names: images, the official label-id maps, and the 19-class train-id maps read here.
CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"
CITYSCAPES_LABELIDS_SUFFIX = "_gtFine_labelIds.png"
CITYSCAPES_TRAINIDS_SUFFIX = "_gtFine_labelTrainIds.png"


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where one benchmark's validation split lives under the data root, and how its labels are read.

    Attributes:
        title: the benchmark's column name in result tables.
        image_dir: folder of images, relative to the benchmark's base folder.
        label_dir: folder of label PNGs, relative to the benchmark's base folder.
        list_file: text file of sample ids, one per line, relative to the base folder; None to list ``image_dir``.
        image_suffix: appended to a sample id to name its image.
        label_suffixes: appended to a sample id to name its label; with several, the first one that any file in
            ``label_dir`` has is used for every sample.
        classes: name of the class list (see :func:`simseg.classnames.benchmark_classes`).
        reduce_zero_label: stored label 0 is not a class: it becomes 255 (ignored) and every other label shifts
            down by one (MMSegmentation's ``reduce_zero_label``: VOC20 and Context59 drop background, ADE20K its
            "other" label).
        recursive: images are nested in subfolders of ``image_dir`` (Cityscapes' ``<city>/``); a sample id is then
            the image's path relative to ``image_dir`` without the suffix (``frankfurt/frankfurt_000000_000294``),
            and its label is at the same relative path under ``label_dir``.
        base_dirs: candidate base folders under the data root, the first that exists is used.
        prepare: the command that builds the label files, for messages about missing ones.
    """

    title: str
    image_dir: str
    label_dir: str
    list_file: str | None
    image_suffix: str
    label_suffixes: tuple[str, ...]
    classes: str
    reduce_zero_label: bool = False
    recursive: bool = False
    base_dirs: tuple[str, ...] = ("",)
    prepare: str = ""


_VOC = BenchmarkSpec(
    title="VOC21",
    image_dir="VOCdevkit/VOC2012/JPEGImages",
    label_dir="VOCdevkit/VOC2012/SegmentationClass",
    list_file="VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt",
    image_suffix=".jpg",
    label_suffixes=(".png",),
    classes="pascal_voc",
)
_CONTEXT = BenchmarkSpec(
    title="Context60",
    image_dir="VOCdevkit/VOC2010/JPEGImages",
    label_dir="VOCdevkit/VOC2010/SegmentationClassContext",
    list_file="VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt",
    image_suffix=".jpg",
    label_suffixes=(".png",),
    classes="pascal_context",
    prepare="simseg prepare pascal-context VOCDEVKIT JSON",
)
_COCO_OBJECT = BenchmarkSpec(
    title="COCO-Object",
    image_dir="coco_stuff164k/images/val2017",
    label_dir="coco_stuff164k/annotations/val2017",
    list_file=None,
    image_suffix=".jpg",
    label_suffixes=(COCO_OBJECT_INSTANCE_SUFFIX, COCO_OBJECT_SUFFIX),
    classes="coco_object",
    prepare="simseg prepare coco-object COCO_STUFF_DIR",
)

#: Benchmark name -> its definition, in the column order of the training-free papers' comparison tables: with
#: background VOC21, Context60, COCO-Object; without VOC20, Context59, COCO-Stuff, Cityscapes, ADE20K.
BENCHMARKS: dict[str, BenchmarkSpec] = {
    "pascal_voc": _VOC,
    "pascal_context": _CONTEXT,
    "coco_object": _COCO_OBJECT,
    "pascal_voc20": replace(_VOC, title="VOC20", classes="pascal_voc20", reduce_zero_label=True),
    "pascal_context59": replace(_CONTEXT, title="Context59", classes="pascal_context59", reduce_zero_label=True),
    "coco_stuff": replace(
        _COCO_OBJECT,
        title="COCO-Stuff",
        label_suffixes=(COCO_STUFF_SUFFIX,),
        classes="coco_stuff",
        prepare="simseg prepare coco-stuff COCO_STUFF_DIR",
    ),
    "cityscapes": BenchmarkSpec(
        title="Cityscapes",
        image_dir="cityscapes/leftImg8bit/val",
        label_dir="cityscapes/gtFine/val",
        list_file=None,
        image_suffix=CITYSCAPES_IMAGE_SUFFIX,
        label_suffixes=(CITYSCAPES_TRAINIDS_SUFFIX,),
        classes="cityscapes",
        recursive=True,
        prepare="simseg prepare cityscapes CITYSCAPES_DIR",
    ),
    "ade20k": BenchmarkSpec(
        title="ADE20K",
        image_dir="images/validation",
        label_dir="annotations/validation",
        list_file=None,
        image_suffix=".jpg",
        label_suffixes=(".png",),
        classes="ade20k",
        reduce_zero_label=True,
        base_dirs=("ade/ADEChallengeData2016", "ADEChallengeData2016"),
    ),
}

#: The benchmarks of a results table, in the papers' column order.
TABLE_ORDER: tuple[str, ...] = tuple(BENCHMARKS)


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
        InputError: missing, unreadable, not a single-channel 8-bit image, or refused by the image library as a
            possible decompression bomb.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: {'is a directory, not a label file' if p.is_dir() else 'label file not found'}")
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
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(pillow_refusal(str(p), e, None)) from None
    except UnidentifiedImageError:
        raise InputError(f"{p}: not a readable label image") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{p}: corrupt or truncated label image ({one_line(e)})") from None


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
        data_root: the folder holding ``VOCdevkit/``, ``coco_stuff164k/``, ... (see :func:`resolve_data_root`).
        class_names: the classes the label values index, for data in a benchmark's layout with classes of its own
            (e.g. the synthetic split of ``simseg demo``); default: the benchmark's list.

    Attributes:
        label_suffix: the label file suffix in use (for COCO-Object, see the precedence rule in the module notes).

    Raises:
        InputError: unknown name, a missing folder or list file, a sample listed twice, no samples, or no label file
            of any of the benchmark's suffixes (the message names the path, and the ``simseg prepare`` command when
            there is one).
    """

    def __init__(self, name: str, data_root: str | os.PathLike, class_names: list[str] | None = None) -> None:
        if name not in BENCHMARKS:
            raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(BENCHMARKS)}")
        self.name = name
        self.spec = BENCHMARKS[name]
        self.root = Path(data_root)
        self.class_names: list[str] = list(class_names) if class_names else benchmark_classes(self.spec.classes)
        base = self._base_dir()
        self.image_dir = base / self.spec.image_dir
        self.label_dir = base / self.spec.label_dir
        self.list_path = base / self.spec.list_file if self.spec.list_file else None
        for folder in (self.root, self.image_dir, self.label_dir):
            if not folder.is_dir():
                raise InputError(f"{folder}: {name} folder not found (expected the MMSegmentation layout)")
        self.sample_ids: list[str] = self._list_ids()
        if not self.sample_ids:
            raise InputError(f"{self.list_path or self.image_dir}: no {name} samples listed")
        self.label_suffix: str = self._label_suffix()

    def _base_dir(self) -> Path:
        for base in self.spec.base_dirs:
            if (self.root / base).is_dir():
                return self.root / base
        return self.root / self.spec.base_dirs[0]  # absent: the folder checks name the preferred path

    def _files(self, folder: Path, suffix: str):
        return folder.rglob(f"*{suffix}") if self.spec.recursive else folder.glob(f"*{suffix}")

    def _list_ids(self) -> list[str]:
        if self.list_path is None:
            suffix = self.spec.image_suffix
            return sorted(p.relative_to(self.image_dir).as_posix()[: -len(suffix)]
                          for p in self._files(self.image_dir, suffix))
        if not self.list_path.is_file():
            raise InputError(f"{self.list_path}: {self.name} list file not found")
        try:
            lines = self.list_path.read_text(encoding="utf-8-sig").splitlines()  # a byte-order mark dropped
        except UnicodeDecodeError as e:
            raise InputError(f"{self.list_path}: cannot read list file (not UTF-8 text: byte {e.start})") from None
        except OSError as e:
            raise InputError(f"{self.list_path}: cannot read list file ({e.strerror or e})") from None
        first_line: dict[str, int] = {}
        for number, line in enumerate(lines, start=1):
            sample_id = line.strip()
            if sample_id in first_line:  # evaluated twice, it would weigh twice in every number
                raise InputError(f"{self.list_path}: line {number}: sample id {sample_id!r} is listed twice "
                                 f"(first on line {first_line[sample_id]})")
            if sample_id:
                first_line[sample_id] = number
        return list(first_line)

    def _label_suffix(self) -> str:
        for suffix in self.spec.label_suffixes:
            if next(iter(self._files(self.label_dir, suffix)), None) is not None:
                return suffix
        names = " or ".join(f"*{s}" for s in self.spec.label_suffixes)
        hint = f" (run {self.spec.prepare})" if self.spec.prepare else ""
        raise InputError(f"{self.label_dir}: no {self.name} label files {names}{hint}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def image_path(self, index: int) -> Path:
        return self.image_dir / f"{self.sample_ids[index]}{self.spec.image_suffix}"

    def label_path(self, index: int) -> Path:
        return self.label_dir / f"{self.sample_ids[index]}{self.label_suffix}"

    def __getitem__(self, index: int) -> tuple[Image.Image, np.ndarray, str]:
        """Return ``(image as PIL RGB, label as uint8 (H, W), sample id)``.

        Labels hold class indices of :attr:`class_names`, 255 where ignored (after ``reduce_zero_label``).

        Raises:
            InputError: the image or label is missing or corrupt, or their sizes differ.
            LabelValueError: the label holds values that are neither a class index nor 255 (the message names the
                file and lists every such value).
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
        # Valid stored values: the classes, plus the stored 0 that reduce_zero_label drops.
        stored_classes = self.num_classes + int(self.spec.reduce_zero_label)
        check_label_values(label, stored_classes, label_path, self.name)
        if self.spec.reduce_zero_label:
            # 0 (background, or ADE's "other") becomes ignored and class c >= 1 becomes c - 1; 255 stays ignored.
            label = np.where((label == 0) | (label == IGNORE_INDEX), IGNORE_INDEX, label - 1).astype(np.uint8)
        return image, label, self.sample_ids[index]


class LabelValueError(InputError):
    """A label map holds values that are no class index of its benchmark.

    Unlike an unreadable file, this says the labels are not the benchmark's (a wrong conversion, or another
    benchmark's files under the same name), so an evaluation stops on it instead of skipping the sample.
    """


def check_label_values(label: np.ndarray, num_values: int, path: str | os.PathLike, dataset: str) -> None:
    """Check that a label map holds only ``0..num_values - 1`` and :data:`IGNORE_INDEX`.

    Raises:
        LabelValueError: naming the file and every distinct value out of range.
    """
    bad = (label >= num_values) & (label != IGNORE_INDEX)
    if bad.any():
        values = ", ".join(str(v) for v in np.unique(label[bad]).tolist())
        raise LabelValueError(
            f"{path}: label values {values} are not class indices of {dataset} "
            f"(0..{num_values - 1}, or {IGNORE_INDEX} for ignored pixels)"
        )


@dataclass(frozen=True)
class BenchmarkPresence:
    """Whether a benchmark can be read under a data root.

    Attributes:
        name: the benchmark (a key of :data:`BENCHMARKS`).
        title: its column name in result tables.
        present: its folders, sample list and label files are there.
        reason: why it is not present (the message that reading it raises); empty when present.
        num_samples: the number of samples listed (0 when not present).
    """

    name: str
    title: str
    present: bool
    reason: str = ""
    num_samples: int = 0


def benchmark_presence(name: str, data_root: str | os.PathLike) -> BenchmarkPresence:
    """Whether benchmark ``name`` is present under ``data_root``, and why not.

    It is present when :class:`SegmentationBenchmark` can be built (folders, list file, samples, label files);
    single samples are not opened.

    Raises:
        InputError: unknown benchmark name.
    """
    if name not in BENCHMARKS:
        raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(BENCHMARKS)}")
    title = BENCHMARKS[name].title
    try:
        dataset = SegmentationBenchmark(name, data_root)
    except InputError as e:
        return BenchmarkPresence(name, title, present=False, reason=str(e))
    return BenchmarkPresence(name, title, present=True, num_samples=len(dataset))


def parse_benchmark_selection(selection: str | Sequence[str]) -> tuple[list[str], bool]:
    """Benchmark names from ``"all"``, a comma-separated string or a list of names.

    Returns:
        The names in :data:`TABLE_ORDER` (each once), and whether they were named explicitly (False for
        ``"all"``).

    Raises:
        InputError: an empty selection, ``all`` beside names, or an unknown name.
    """
    items = selection.split(",") if isinstance(selection, str) else list(selection)
    items = [str(item).strip() for item in items if str(item).strip()]
    if not items:
        raise InputError(f"no dataset given; choose all or some of {', '.join(BENCHMARKS)}")
    if set(items) == {"all"}:
        return list(TABLE_ORDER), False
    if "all" in items:
        raise InputError(f"dataset 'all' cannot be combined with dataset names ({', '.join(items)}); give all alone "
                         "or some of " + ", ".join(BENCHMARKS))
    unknown = [item for item in items if item not in BENCHMARKS]
    if unknown:
        raise InputError(
            f"unknown dataset(s) {', '.join(map(repr, unknown))}; choose all or some of {', '.join(BENCHMARKS)}"
        )
    return [name for name in TABLE_ORDER if name in items], True


def select_benchmarks(data_root: str | os.PathLike, selection: str | Sequence[str] = "all") -> list[BenchmarkPresence]:
    """The benchmarks to evaluate, present or not, in the papers' column order.

    With ``"all"`` every benchmark is listed and a missing one is only marked as such (``present=False`` with the
    reason), so a results table can show it as missing. Benchmarks named explicitly must all be present.

    Args:
        data_root: the data root (see :func:`resolve_data_root`).
        selection: ``"all"``, or benchmark names (a list or a comma-separated string).

    Raises:
        InputError: an unknown name, or an explicitly named benchmark that is missing (the message gives every
            missing one and why).
    """
    names, explicit = parse_benchmark_selection(selection)
    found = [benchmark_presence(name, data_root) for name in names]
    missing = [p for p in found if not p.present]
    if explicit and missing:
        raise InputError("; ".join(p.reason for p in missing))
    return found
