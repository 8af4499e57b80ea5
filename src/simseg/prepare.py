"""Converters that build the benchmark label folders from the official annotations (``simseg prepare``).

None needs mmcv, cityscapesscripts or the PASCAL-in-Detail API: Pillow reads and writes the PNGs and pycocotools
decodes the RLEs. Every label file is written to a temporary name and moved into place, so an interrupted run never
leaves a half-written label that a later run would trust; a file that cannot be converted is reported and the
others are still converted.

- COCO-Object from COCO-Stuff 164k ``stuffthingmaps_trainval2017``: values are COCO ids - 1 (things 0..89 with
  COCO's gaps, stuff 91..181, 255 unlabeled); the 80 thing values map to 1..80 in order and everything else,
  stuff and 255 included, to 0 (background). So COCO-Object ground truth has no ignored pixels. Written as
  ``<id>_labelTrainIds.png``.
- COCO-Stuff (171 classes) from the same stuffthingmaps: the 182 values minus the 11 that no COCO category uses,
  in order, map to 0..170 (MMSegmentation's 164k conversion); 255 stays 255 (ignored). Written as
  ``<id>_labelTrainIds171.png``, a name apart from COCO-Object's (see :mod:`simseg.segdata`).
- PASCAL Context from ``trainval_merged.json``: each annotation's mask painted with its category id, then the 60
  category ids of the benchmark mapped to 0..59 in sorted order.
- Cityscapes from ``gtFine/<split>/<city>/*_gtFine_labelIds.png``: the official label id -> train id table (19
  classes, 255 for every id the benchmark ignores), from ``cityscapesscripts`` when it is installed, else the
  copy below. Written as ``*_gtFine_labelTrainIds.png`` beside the source.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from simseg.errors import InputError, one_line
from simseg.files import atomic_write_bytes, atomic_write_text
from simseg.images import pillow_refusal
from simseg.segdata import (
    CITYSCAPES_LABELIDS_SUFFIX,
    CITYSCAPES_TRAINIDS_SUFFIX,
    COCO_OBJECT_SUFFIX,
    COCO_STUFF_SUFFIX,
    IGNORE_INDEX,
)

#: stuffthingmap values (COCO id - 1) that no COCO category uses.
COCO_UNUSED_THING_VALUES = frozenset({11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90})
#: The 80 stuffthingmap values of COCO's thing classes, in COCO category-id order: value -> label index - 1.
COCO_THING_VALUES: tuple[int, ...] = tuple(v for v in range(91) if v not in COCO_UNUSED_THING_VALUES)
#: The 171 stuffthingmap values of COCO-Stuff's classes (80 things, then the 91 stuff values 91..181), in order:
#: value -> COCO-Stuff label index.
COCO_STUFF_VALUES: tuple[int, ...] = COCO_THING_VALUES + tuple(range(91, 182))
COCO_LABEL_SUFFIX = COCO_OBJECT_SUFFIX

#: The 60 PASCAL Context category ids of the 459-category Detail annotations, sorted: id -> label index.
PASCAL_CONTEXT_IDS: tuple[int, ...] = (
    0, 2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113, 115,
    144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326, 347, 349,
    354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458,
)  # fmt: skip

#: The Cityscapes label ids of the 19 evaluated classes (cityscapesscripts' ``labels.py``), in train-id order:
#: ``CITYSCAPES_TRAIN_LABEL_IDS[train_id] = label_id``. Every other id 0..33 has train id 255 (ignored).
CITYSCAPES_TRAIN_LABEL_IDS: tuple[int, ...] = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
#: Label ids 0..33 of the official table (license plate's -1 is never drawn into the PNGs).
CITYSCAPES_NUM_LABEL_IDS = 34

#: How many bad files one error message names before it only counts the rest.
_MAX_NAMED_ERRORS = 5


def save_label_png(label: np.ndarray, path: Path) -> None:
    """Write a grey (L) label PNG atomically: an interrupted run never leaves a half-written label a later run
    would trust."""
    buf = io.BytesIO()
    Image.fromarray(label.astype(np.uint8), mode="L").save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def coco_object_lut() -> np.ndarray:
    """A 256-entry uint8 lookup table from stuffthingmap value to COCO-Object label (0 = background)."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[list(COCO_THING_VALUES)] = np.arange(1, len(COCO_THING_VALUES) + 1, dtype=np.uint8)
    return lut


def coco_stuff_lut() -> np.ndarray:
    """A 256-entry int16 lookup table from stuffthingmap value to COCO-Stuff label.

    The 171 class values map to 0..170 in order, 255 (unlabeled) stays 255, and every other value (the 11 unused
    thing ids, 182..254) maps to -1: it is not a stuffthingmap value, and the converter reports it.
    """
    lut = np.full(256, -1, dtype=np.int16)
    lut[list(COCO_STUFF_VALUES)] = np.arange(len(COCO_STUFF_VALUES), dtype=np.int16)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


def cityscapes_lut() -> tuple[np.ndarray, str]:
    """The Cityscapes label id -> train id table as a 256-entry int16 lookup, and where it came from.

    Uses ``cityscapesscripts.helpers.labels`` when that package is installed (``"cityscapesscripts"``), else the
    built-in copy of its table (``"built-in"``). Ids of ignored classes map to 255, and 255 itself stays 255; values
    that are no label id map to -1 (reported by the converter). A train id outside the 19 classes (some forks add
    lane classes) is treated as ignored.
    """
    lut = np.full(256, -1, dtype=np.int16)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    try:
        from cityscapesscripts.helpers.labels import labels
    except ImportError:
        lut[:CITYSCAPES_NUM_LABEL_IDS] = IGNORE_INDEX
        lut[list(CITYSCAPES_TRAIN_LABEL_IDS)] = np.arange(len(CITYSCAPES_TRAIN_LABEL_IDS), dtype=np.int16)
        return lut, "built-in"
    num_train = len(CITYSCAPES_TRAIN_LABEL_IDS)
    for label in labels:
        if 0 <= label.id < IGNORE_INDEX:
            lut[label.id] = label.trainId if 0 <= label.trainId < num_train else IGNORE_INDEX
    return lut, "cityscapesscripts"


def _convert_label_png(job: tuple[str, str], lut: np.ndarray, kind: str) -> str | None:
    """Map one single-channel PNG through ``lut`` and write the result atomically.

    Returns an error message instead of raising (this runs in worker processes). A value the table maps to -1 is
    an error naming every such value.
    """
    src, dst = Path(job[0]), Path(job[1])
    try:
        with Image.open(src) as img:
            img.load()
            if img.mode not in ("L", "P"):
                return f"{src}: expected a single-channel {kind} PNG, got mode {img.mode}"
            values = np.asarray(img, dtype=np.uint8)
    except Image.DecompressionBombError as e:
        return pillow_refusal(str(src), e, None)
    except UnidentifiedImageError:
        return f"{src}: not a readable PNG"
    except (OSError, SyntaxError, ValueError) as e:
        return f"{src}: corrupt or truncated PNG ({e})"
    mapped = lut[values]
    invalid = mapped < 0
    if invalid.any():
        bad = ", ".join(str(v) for v in np.unique(values[invalid]).tolist())
        return f"{src}: values {bad} are not {kind} values"
    save_label_png(mapped, dst)
    return None


def _run_conversions(worker: Callable[[tuple[str, str]], str | None], jobs: Sequence[tuple[str, str]], desc: str,
                     nproc: int | None, progress: bool = True) -> None:
    """Run ``worker`` over ``(source, destination)`` jobs in ``nproc`` processes with a progress bar.

    Raises:
        InputError: some files could not be converted (one line naming the first few and counting the rest); the
            other files are converted all the same.
    """
    from simseg.progress import progress_bar

    nproc = max(1, min(nproc or os.cpu_count() or 1, len(jobs)))
    errors: list[str] = []
    with progress_bar(total=len(jobs), desc=desc, unit="png", disable=not progress) as bar:
        if nproc == 1:
            for err in map(worker, jobs):
                if err:
                    errors.append(err)
                bar.update()
        else:
            from multiprocessing import Pool

            with Pool(nproc) as pool:
                for err in pool.imap_unordered(worker, jobs, chunksize=16):
                    if err:
                        errors.append(err)
                    bar.update()
    if errors:
        errors.sort()
        named = "; ".join(errors[:_MAX_NAMED_ERRORS])
        more = f" (and {len(errors) - _MAX_NAMED_ERRORS} more)" if len(errors) > _MAX_NAMED_ERRORS else ""
        raise InputError(f"{len(errors)} bad file{'s' if len(errors) > 1 else ''}: {named}{more}")


def _stuffthingmap_jobs(coco_stuff_dir: str | os.PathLike, suffix: str) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """The stuffthingmap PNGs of ``annotations/{train2017,val2017}`` and the label file each one becomes."""
    root = Path(coco_stuff_dir)
    if not root.is_dir():
        raise InputError(f"{root}: COCO-Stuff folder not found")
    splits = [s for s in ("train2017", "val2017") if (root / "annotations" / s).is_dir()]
    if not splits:
        raise InputError(f"{root / 'annotations'}: neither train2017/ nor val2017/ found (expected COCO-Stuff 164k)")
    jobs: list[tuple[str, str]] = []
    counts: dict[str, int] = {}
    for split in splits:
        # Converted labels (ours and the field's: *_labelTrainIds*.png, *_instanceTrainIds.png) all say "TrainIds";
        # the stuffthingmaps are plain <id>.png.
        sources = sorted(p for p in (root / "annotations" / split).glob("*.png") if "TrainIds" not in p.name)
        counts[split] = len(sources)
        jobs.extend((str(p), str(p.with_name(p.name[: -len(".png")] + suffix))) for p in sources)
    if not jobs:
        raise InputError(f"{root / 'annotations'}: no stuffthingmap PNGs found in {', '.join(splits)}")
    return jobs, counts


def convert_coco_object(coco_stuff_dir: str | os.PathLike, nproc: int | None = None,
                        progress: bool = True) -> dict[str, int]:
    """Write ``<id>_labelTrainIds.png`` (COCO-Object, 0..80) next to every COCO-Stuff stuffthingmap PNG.

    Args:
        coco_stuff_dir: the ``coco_stuff164k`` folder holding ``annotations/{train2017,val2017}/*.png``.
        nproc: worker processes (default: all cores); 1 converts in this process.
        progress: show a progress bar.

    Returns:
        Files converted per split, e.g. ``{"train2017": 118287, "val2017": 5000}``.

    Raises:
        InputError: the folder has no annotation split, or some PNGs are unreadable (every other file is still
            converted; the message names the bad files).
    """
    jobs, counts = _stuffthingmap_jobs(coco_stuff_dir, COCO_OBJECT_SUFFIX)
    worker = partial(_convert_label_png, lut=coco_object_lut().astype(np.int16), kind="stuffthingmap")
    _run_conversions(worker, jobs, "coco-object", nproc, progress)
    return counts


def convert_coco_stuff(coco_stuff_dir: str | os.PathLike, nproc: int | None = None,
                       progress: bool = True) -> dict[str, int]:
    """Write ``<id>_labelTrainIds171.png`` (COCO-Stuff, 0..170, 255 ignored) next to every stuffthingmap PNG.

    Args:
        coco_stuff_dir: the ``coco_stuff164k`` folder holding ``annotations/{train2017,val2017}/*.png``.
        nproc: worker processes (default: all cores); 1 converts in this process.
        progress: show a progress bar.

    Returns:
        Files converted per split, e.g. ``{"train2017": 118287, "val2017": 5000}``.

    Raises:
        InputError: the folder has no annotation split, or some PNGs are unreadable or hold values that are no
            stuffthingmap value (every other file is still converted; the message names the files and values).
    """
    jobs, counts = _stuffthingmap_jobs(coco_stuff_dir, COCO_STUFF_SUFFIX)
    worker = partial(_convert_label_png, lut=coco_stuff_lut(), kind="stuffthingmap")
    _run_conversions(worker, jobs, "coco-stuff", nproc, progress)
    return counts


def _load_detail_json(json_path: Path) -> tuple[list[dict], dict[int, list[dict]]]:
    """Read ``trainval_merged.json``: the image records and each image's segmentation annotations."""
    if not json_path.is_file():
        raise InputError(f"{json_path}: annotation file not found")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{json_path}: not a readable JSON file ({one_line(e)})") from None
    if not isinstance(data, dict) or not {"images", "annos_segmentation"} <= data.keys():
        raise InputError(
            f"{json_path}: expected the PASCAL-in-Detail format with keys 'images' and 'annos_segmentation'"
        )
    images, annotations = data["images"], data["annos_segmentation"]
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise InputError(f"{json_path}: 'images' and 'annos_segmentation' must be lists")
    first: dict[tuple[str, object], int] = {}  # (key, value) -> the images[] entry that has it
    for i, img in enumerate(images):
        if not isinstance(img, dict):
            raise InputError(f"{json_path}: images[{i}] is not an object")
        missing = [k for k in ("image_id", "file_name", "height", "width", "phase") if k not in img]
        if missing:
            raise InputError(f"{json_path}: images[{i}] lacks {', '.join(missing)}")
        for key in ("height", "width"):
            if not _is_int(img[key]) or img[key] < 1:
                raise InputError(f"{json_path}: images[{i}].{key} is {img[key]!r}, not a positive integer")
        if not isinstance(img["file_name"], str) or not Path(img["file_name"]).stem:
            raise InputError(f"{json_path}: images[{i}].file_name is {img['file_name']!r}, not a file name")
        if not _is_int(img["image_id"]) and not isinstance(img["image_id"], str):
            raise InputError(f"{json_path}: images[{i}].image_id is {img['image_id']!r}, not an integer or string")
        # a repeated id would give both images each other's masks; a repeated name, one label file for two images
        for key, value in (("image_id", img["image_id"]), ("file_name", Path(img["file_name"]).stem)):
            if (key, value) in first:
                raise InputError(f"{json_path}: images[{i}] repeats the {key} {value!r} of images[{first[key, value]}]")
            first[key, value] = i
    by_image: dict[int, list[dict]] = {}
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise InputError(f"{json_path}: annos_segmentation[{i}] is not an object")
        missing = [k for k in ("image_id", "category_id", "segmentation") if k not in ann]
        if missing:
            raise InputError(f"{json_path}: annos_segmentation[{i}] lacks {', '.join(missing)}")
        if not _is_int(ann["category_id"]):
            raise InputError(f"{json_path}: annos_segmentation[{i}].category_id is {ann['category_id']!r}, "
                             "not an integer")
        if not _is_int(ann["image_id"]) and not isinstance(ann["image_id"], str):
            raise InputError(f"{json_path}: annos_segmentation[{i}].image_id is {ann['image_id']!r}, "
                             "not an integer or string")
        by_image.setdefault(ann["image_id"], []).append(ann)
    # an annotation of no listed image would be lost from every label; like the other bad records, it stops the run
    orphans = [f"annos_segmentation[{i}] (image_id {ann['image_id']!r})" for i, ann in enumerate(annotations)
               if ("image_id", ann["image_id"]) not in first]
    if orphans:
        named = "; ".join(orphans[:_MAX_NAMED_ERRORS])
        more = f" (and {len(orphans) - _MAX_NAMED_ERRORS} more)" if len(orphans) > _MAX_NAMED_ERRORS else ""
        raise InputError(f"{json_path}: {len(orphans)} annotation{'s' if len(orphans) > 1 else ''} of no image in "
                         f"'images': {named}{more}")
    return images, by_image


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _context_label(img: dict, anns: list[dict], json_path: Path) -> np.ndarray:
    """Paint one image's annotations (later ones on top, as the Detail API's getMask) and map ids to 0..59."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise InputError("pascal-context conversion needs pycocotools: pip install 'simseg[data]'") from None

    h, w = int(img["height"]), int(img["width"])
    ids = np.zeros((h, w), dtype=np.int32)
    for ann in anns:
        try:
            rle = ann["segmentation"]
            if isinstance(rle.get("counts"), list):  # uncompressed RLE
                rle = mask_utils.frPyObjects(rle, h, w)
            m = mask_utils.decode(rle)
        except (KeyError, TypeError, AttributeError, ValueError, IndexError) as e:
            raise InputError(f"{json_path}: bad segmentation of image {img['file_name']} ({e!r})") from None
        if m.shape != (h, w):
            raise InputError(
                f"{json_path}: a mask of image {img['file_name']} is {m.shape[1]}x{m.shape[0]}, the image {w}x{h}"
            )
        ids[m.astype(bool)] = int(ann["category_id"])
    table = np.asarray(PASCAL_CONTEXT_IDS)
    index = np.searchsorted(table, ids).clip(0, len(table) - 1)
    unmapped = table[index] != ids
    if unmapped.any():
        # MMSegmentation's converter asserts here rather than guessing: the merged json holds only the 60 ids,
        # so another id means a different annotation file, and turning it into background would hide that.
        raise InputError(
            f"{json_path}: image {img['file_name']} has category id {int(ids[unmapped][0])}, "
            "not one of the 60 PASCAL Context ids (is this trainval_merged.json?)"
        )
    return index.astype(np.uint8)


def convert_pascal_context(vocdevkit: str | os.PathLike, json_path: str | os.PathLike) -> dict[str, int]:
    """Write PASCAL Context labels and id lists into ``VOCdevkit/VOC2010``.

    Writes ``SegmentationClassContext/<stem>.png`` (grey, values 0..59) and
    ``ImageSets/SegmentationContext/{train,val}.txt`` (stems in the json's order).

    Args:
        vocdevkit: the ``VOCdevkit`` folder (holding ``VOC2010/``).
        json_path: ``trainval_merged.json`` of PASCAL in Detail.

    Returns:
        Images written per phase, e.g. ``{"train": 4996, "val": 5104}``.

    Raises:
        InputError: a missing folder or file, a json without the expected keys, a malformed record, an annotation of
            no listed image, or an undecodable annotation.
    """
    from simseg.progress import progress_bar

    voc2010 = Path(vocdevkit) / "VOC2010"
    if not voc2010.is_dir():
        raise InputError(f"{voc2010}: folder not found (pass the VOCdevkit folder that holds VOC2010/)")
    json_path = Path(json_path)
    images, by_image = _load_detail_json(json_path)
    label_dir = voc2010 / "SegmentationClassContext"
    list_dir = voc2010 / "ImageSets" / "SegmentationContext"
    label_dir.mkdir(parents=True, exist_ok=True)
    list_dir.mkdir(parents=True, exist_ok=True)
    stems: dict[str, list[str]] = {"train": [], "val": []}
    for img in progress_bar(images, desc="pascal-context", unit="img"):
        phase = img["phase"]
        if phase not in stems:
            continue  # the Detail json may list test images; they have no labels
        label = _context_label(img, by_image.get(img["image_id"], []), json_path)
        stem = Path(img["file_name"]).stem
        save_label_png(label, label_dir / f"{stem}.png")
        stems[phase].append(stem)
    for phase, names in stems.items():
        atomic_write_text(list_dir / f"{phase}.txt", "".join(f"{n}\n" for n in names))
    return {phase: len(names) for phase, names in stems.items()}


def convert_cityscapes(cityscapes_dir: str | os.PathLike, nproc: int | None = None,
                       progress: bool = True) -> tuple[dict[str, int], str]:
    """Write ``*_gtFine_labelTrainIds.png`` (19 classes, 255 ignored) next to every ``*_gtFine_labelIds.png``.

    Args:
        cityscapes_dir: the folder holding ``gtFine/{train,val,test}/<city>/``.
        nproc: worker processes (default: all cores); 1 converts in this process.
        progress: show a progress bar.

    Returns:
        Files converted per split (e.g. ``{"train": 2975, "val": 500, "test": 1525}``), and which id table was
        used: ``"cityscapesscripts"`` (the package is installed) or ``"built-in"``.

    Raises:
        InputError: no ``gtFine`` split or no label-id PNG, or some PNGs are unreadable or hold values that are no
            Cityscapes label id (every other file is still converted; the message names the files and values).
    """
    gtfine = Path(cityscapes_dir) / "gtFine"
    if not gtfine.is_dir():
        raise InputError(f"{gtfine}: folder not found (pass the Cityscapes folder that holds gtFine/)")
    splits = [s for s in ("train", "val", "test") if (gtfine / s).is_dir()]
    if not splits:
        raise InputError(f"{gtfine}: none of train/, val/, test/ found")
    jobs: list[tuple[str, str]] = []
    counts: dict[str, int] = {}
    for split in splits:
        sources = sorted((gtfine / split).rglob(f"*{CITYSCAPES_LABELIDS_SUFFIX}"))
        counts[split] = len(sources)
        stems = (p.name[: -len(CITYSCAPES_LABELIDS_SUFFIX)] for p in sources)
        jobs.extend((str(p), str(p.with_name(stem + CITYSCAPES_TRAINIDS_SUFFIX))) for p, stem in zip(sources, stems))
    if not jobs:
        raise InputError(f"{gtfine}: no *{CITYSCAPES_LABELIDS_SUFFIX} files in {', '.join(splits)}")
    lut, table = cityscapes_lut()
    worker = partial(_convert_label_png, lut=lut, kind="Cityscapes label-id")
    _run_conversions(worker, jobs, "cityscapes", nproc, progress)
    return counts, table
