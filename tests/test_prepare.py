"""The two converters on tiny hand-made inputs in the official formats, and their CLI."""

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from simseg.errors import InputError
from simseg.prepare import COCO_THING_VALUES, PASCAL_CONTEXT_IDS, convert_coco_object, convert_pascal_context


def test_coco_thing_table():
    assert len(COCO_THING_VALUES) == 80 and COCO_THING_VALUES[:3] == (0, 1, 2)
    assert COCO_THING_VALUES[10:12] == (10, 12)  # COCO id 12 (value 11) is unused
    assert COCO_THING_VALUES[-1] == 89  # toothbrush, COCO id 90
    assert len(PASCAL_CONTEXT_IDS) == 60 and list(PASCAL_CONTEXT_IDS) == sorted(PASCAL_CONTEXT_IDS)


def _coco_tree(tmp_path):
    root = tmp_path / "coco_stuff164k"
    for split in ("train2017", "val2017"):
        (root / "annotations" / split).mkdir(parents=True)
    # person(0), bicycle(1), gap 11, stop sign(12), toothbrush(89), unused 90, stuff 91 / 181, unlabeled 255
    stuffthing = np.array([[0, 1, 11, 12], [89, 90, 91, 181], [255, 255, 0, 0], [10, 13, 45, 50]], dtype=np.uint8)
    # 45: wine glass (41), 50: bowl (46)
    expected = np.array([[1, 2, 0, 12], [80, 0, 0, 0], [0, 0, 1, 1], [11, 13, 41, 46]], dtype=np.uint8)
    Image.fromarray(stuffthing, mode="L").save(root / "annotations" / "val2017" / "000000000139.png")
    Image.fromarray(stuffthing, mode="L").save(root / "annotations" / "train2017" / "000000000009.png")
    return root, expected


@pytest.mark.parametrize("nproc", [1, 2])
def test_convert_coco_object(tmp_path, nproc):
    root, expected = _coco_tree(tmp_path)
    counts = convert_coco_object(root, nproc=nproc)
    assert counts == {"train2017": 1, "val2017": 1}
    out = Image.open(root / "annotations" / "val2017" / "000000000139_labelTrainIds.png")
    assert out.mode == "L" and (np.asarray(out) == expected).all()
    # a second run skips its own outputs and rewrites the same labels
    assert convert_coco_object(root, nproc=1) == counts
    assert not list(root.rglob("*_labelTrainIds_labelTrainIds.png"))


def test_convert_coco_object_bad_input(tmp_path):
    with pytest.raises(InputError, match="missing"):
        convert_coco_object(tmp_path / "missing")
    (tmp_path / "annotations").mkdir()
    with pytest.raises(InputError, match="train2017"):
        convert_coco_object(tmp_path)
    root, _ = _coco_tree(tmp_path / "x")
    (root / "annotations" / "val2017" / "000000000777.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    with pytest.raises(InputError, match="000000000777.png"):
        convert_coco_object(root, nproc=1)
    # the good files were still converted
    assert (root / "annotations" / "val2017" / "000000000139_labelTrainIds.png").exists()


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}  # json holds str counts


def _context_json(tmp_path):
    h, w = 3, 4
    sky = np.zeros((h, w), bool)
    sky[0, :] = True
    person = np.zeros((h, w), bool)
    person[:, 1] = True  # painted after sky: wins at (0, 1)
    wood = np.zeros((h, w), bool)
    wood[2, 3] = True
    data = {
        "images": [
            {"image_id": 1, "file_name": "2008_000002.jpg", "height": h, "width": w, "phase": "train"},
            {"image_id": 2, "file_name": "2008_000003.jpg", "height": h, "width": w, "phase": "val"},
        ],
        "annos_segmentation": [
            {"image_id": 1, "category_id": 360, "segmentation": _rle(sky)},  # sky -> 47
            {"image_id": 1, "category_id": 284, "segmentation": _rle(person)},  # person -> 37
            {"image_id": 2, "category_id": 458, "segmentation": _rle(wood)},  # wood -> 59
        ],
    }
    path = tmp_path / "trainval_merged.json"
    path.write_text(json.dumps(data))
    (tmp_path / "VOCdevkit" / "VOC2010").mkdir(parents=True)
    return path, data


def test_convert_pascal_context(tmp_path):
    path, _ = _context_json(tmp_path)
    assert convert_pascal_context(tmp_path / "VOCdevkit", path) == {"train": 1, "val": 1}
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    a = Image.open(voc / "SegmentationClassContext" / "2008_000002.png")
    assert a.mode == "L"
    assert np.asarray(a).tolist() == [[47, 37, 47, 47], [0, 37, 0, 0], [0, 37, 0, 0]]
    b = np.asarray(Image.open(voc / "SegmentationClassContext" / "2008_000003.png"))
    assert b[2, 3] == 59 and b.sum() == 59
    assert (voc / "ImageSets" / "SegmentationContext" / "train.txt").read_text() == "2008_000002\n"
    assert (voc / "ImageSets" / "SegmentationContext" / "val.txt").read_text() == "2008_000003\n"
    # the written tree is a loadable benchmark
    (voc / "JPEGImages").mkdir()
    Image.new("RGB", (4, 3)).save(voc / "JPEGImages" / "2008_000003.jpg")
    from simseg.segdata import SegmentationBenchmark

    assert SegmentationBenchmark("pascal_context", tmp_path)[0][1][2, 3] == 59


def test_convert_pascal_context_bad_input(tmp_path):
    path, data = _context_json(tmp_path)
    with pytest.raises(InputError, match="VOC2010"):
        convert_pascal_context(tmp_path / "nowhere", path)
    with pytest.raises(InputError, match="missing.json"):
        convert_pascal_context(tmp_path / "VOCdevkit", tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(InputError, match="bad.json.*annos_segmentation"):
        convert_pascal_context(tmp_path / "VOCdevkit", bad)
    data["annos_segmentation"][0]["category_id"] = 1  # not a PASCAL Context id
    bad.write_text(json.dumps(data))
    with pytest.raises(InputError, match="bad.json.*2008_000002.*category id 1"):
        convert_pascal_context(tmp_path / "VOCdevkit", bad)
    bad.write_text("{not json")
    with pytest.raises(InputError, match="bad.json"):
        convert_pascal_context(tmp_path / "VOCdevkit", bad)


