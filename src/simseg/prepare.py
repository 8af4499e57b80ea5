"""Converters that build the benchmark label folders from the official annotations (``simseg prepare``).

Neither needs mmcv or the PASCAL-in-Detail API: Pillow reads and writes the PNGs and pycocotools decodes the RLEs.

- COCO-Object from COCO-Stuff 164k ``stuffthingmaps_trainval2017``: values are COCO ids - 1 (things 0..89 with
  COCO's gaps, stuff 91..181, 255 unlabeled); the 80 thing values map to 1..80 in order and everything else,
  stuff and 255 included, to 0 (background). So COCO-Object ground truth has no ignored pixels.
- PASCAL Context from ``trainval_merged.json``: each annotation's mask painted with its category id, then the 60
  category ids of the benchmark mapped to 0..59 in sorted order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from simseg.errors import InputError

#: stuffthingmap values (COCO id - 1) that no COCO category uses.
COCO_UNUSED_THING_VALUES = frozenset({11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90})
#: The 80 stuffthingmap values of COCO's thing classes, in COCO category-id order: value -> label index - 1.
COCO_THING_VALUES: tuple[int, ...] = tuple(v for v in range(91) if v not in COCO_UNUSED_THING_VALUES)
COCO_LABEL_SUFFIX = "_labelTrainIds.png"

#: The 60 PASCAL Context category ids of the 459-category Detail annotations, sorted: id -> label index.
PASCAL_CONTEXT_IDS: tuple[int, ...] = (
    0, 2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113, 115,
    144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326, 347, 349,
    354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458,
)  # fmt: skip


def coco_object_lut() -> np.ndarray:
    """A 256-entry uint8 lookup table from stuffthingmap value to COCO-Object label (0 = background)."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[list(COCO_THING_VALUES)] = np.arange(1, len(COCO_THING_VALUES) + 1, dtype=np.uint8)
    return lut


def _convert_one_stuffthingmap(path: str) -> str | None:
    """Convert one stuffthingmap PNG; returns an error message instead of raising (runs in a worker)."""
    src = Path(path)
    dst = src.with_name(src.name[: -len(".png")] + COCO_LABEL_SUFFIX)
    try:
        with Image.open(src) as img:
            img.load()
            if img.mode not in ("L", "P"):
                return f"{src}: expected a single-channel stuffthingmap PNG, got mode {img.mode}"
            values = np.asarray(img, dtype=np.uint8)
    except UnidentifiedImageError:
        return f"{src}: not a readable PNG"
    except (OSError, SyntaxError, ValueError) as e:
        return f"{src}: corrupt or truncated PNG ({e})"
    out = Image.fromarray(coco_object_lut()[values], mode="L")
    tmp = dst.with_name(dst.name + ".tmp")
    out.save(tmp, format="PNG")
    os.replace(tmp, dst)  # never leave a half-written label that a later run would trust
    return None


def convert_coco_object(coco_stuff_dir: str | os.PathLike, nproc: int | None = None) -> dict[str, int]:
    """Write ``<id>_labelTrainIds.png`` next to every COCO-Stuff stuffthingmap PNG.

    Args:
        coco_stuff_dir: the ``coco_stuff164k`` folder holding ``annotations/{train2017,val2017}/*.png``.
        nproc: worker processes (default: all cores); 1 converts in this process.

    Returns:
        Files converted per split, e.g. ``{"train2017": 118287, "val2017": 5000}``.

    Raises:
        InputError: the folder has no annotation split, or a PNG is unreadable (every other file is still
            converted; the message names the first bad file and how many there were).
    """
    from tqdm import tqdm

    root = Path(coco_stuff_dir)
    if not root.is_dir():
        raise InputError(f"{root}: COCO-Stuff folder not found")
    splits = [s for s in ("train2017", "val2017") if (root / "annotations" / s).is_dir()]
    if not splits:
        raise InputError(f"{root / 'annotations'}: neither train2017/ nor val2017/ found (expected COCO-Stuff 164k)")
    files: list[str] = []
    counts: dict[str, int] = {}
    for split in splits:
        split_files = sorted(
            str(p) for p in (root / "annotations" / split).glob("*.png") if not p.name.endswith(COCO_LABEL_SUFFIX)
        )
        counts[split] = len(split_files)
        files.extend(split_files)
    if not files:
        raise InputError(f"{root / 'annotations'}: no stuffthingmap PNGs found in {', '.join(splits)}")
    nproc = max(1, min(nproc or os.cpu_count() or 1, len(files)))
    bar = tqdm(total=len(files), desc="coco-object", unit="png")
    errors: list[str] = []
    if nproc == 1:
        results = map(_convert_one_stuffthingmap, files)
        for err in results:
            if err:
                errors.append(err)
            bar.update()
    else:
        from multiprocessing import Pool

        with Pool(nproc) as pool:
            for err in pool.imap_unordered(_convert_one_stuffthingmap, files, chunksize=16):
                if err:
                    errors.append(err)
                bar.update()
    bar.close()
    if errors:
        more = f" (and {len(errors) - 1} more bad files)" if len(errors) > 1 else ""
        raise InputError(errors[0] + more)
    return counts


def _load_detail_json(json_path: Path) -> tuple[list[dict], dict[int, list[dict]]]:
    """Read ``trainval_merged.json``: the image records and each image's segmentation annotations."""
    if not json_path.is_file():
        raise InputError(f"{json_path}: annotation file not found")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{json_path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict) or not {"images", "annos_segmentation"} <= data.keys():
        raise InputError(
            f"{json_path}: expected the PASCAL-in-Detail format with keys 'images' and 'annos_segmentation'"
        )
    images, annotations = data["images"], data["annos_segmentation"]
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise InputError(f"{json_path}: 'images' and 'annos_segmentation' must be lists")
    for i, img in enumerate(images):
        missing = [k for k in ("image_id", "file_name", "height", "width", "phase") if k not in img]
        if missing:
            raise InputError(f"{json_path}: images[{i}] lacks {', '.join(missing)}")
    by_image: dict[int, list[dict]] = {}
    for i, ann in enumerate(annotations):
        missing = [k for k in ("image_id", "category_id", "segmentation") if k not in ann]
        if missing:
            raise InputError(f"{json_path}: annos_segmentation[{i}] lacks {', '.join(missing)}")
        by_image.setdefault(ann["image_id"], []).append(ann)
    return images, by_image


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
        except (KeyError, TypeError, AttributeError, ValueError) as e:
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
        InputError: a missing folder or file, a json without the expected keys, or an undecodable annotation.
    """
    from tqdm import tqdm

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
    for img in tqdm(images, desc="pascal-context", unit="img"):
        phase = img["phase"]
        if phase not in stems:
            continue  # the Detail json may list test images; they have no labels
        label = _context_label(img, by_image.get(img["image_id"], []), json_path)
        stem = Path(img["file_name"]).stem
        Image.fromarray(label, mode="L").save(label_dir / f"{stem}.png")
        stems[phase].append(stem)
    for phase, names in stems.items():
        (list_dir / f"{phase}.txt").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    return {phase: len(names) for phase, names in stems.items()}
