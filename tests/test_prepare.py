"""The converters on tiny hand-made inputs in the official formats, and their CLI."""

import json
import sys
import types
from collections import namedtuple

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from simseg.errors import InputError
from simseg.prepare import (
    COCO_THING_VALUES,
    PASCAL_CONTEXT_IDS,
    cityscapes_lut,
    convert_cityscapes,
    convert_coco_object,
    convert_coco_stuff,
    convert_pascal_context,
)
from simseg.segdata import SegmentationBenchmark


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
    assert not list(root.rglob("*.tmp"))


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


@pytest.mark.parametrize("edit, message", [
    # a repeated image_id would paint both images with both images' masks; a repeated name writes one label twice
    (lambda d: d["images"][1].update(image_id=1), r"images\[1\] repeats the image_id 1 of images\[0\]"),
    (lambda d: d["images"][1].update(file_name="2008_000002.jpg"),
     r"images\[1\] repeats the file_name '2008_000002' of images\[0\]"),
    (lambda d: d["images"].__setitem__(0, 5), r"images\[0\] is not an object"),
    (lambda d: d["images"][0].update(height="abc"), r"images\[0\]\.height is 'abc', not a positive integer"),
    (lambda d: d["images"][0].update(file_name=None), r"images\[0\]\.file_name is None"),
    (lambda d: d["annos_segmentation"][0].update(category_id="sky"),
     r"annos_segmentation\[0\]\.category_id is 'sky', not an integer"),
    (lambda d: d["annos_segmentation"][0]["segmentation"].update(size=[3]), r"bad segmentation of image 2008_000002"),
    # an annotation of no listed image was dropped from every label silently
    (lambda d: d["annos_segmentation"][0].update(image_id=99),
     r"1 annotation of no image in 'images': annos_segmentation\[0\] \(image_id 99\)$"),
    (lambda d: d["annos_segmentation"].extend(dict(d["annos_segmentation"][2], image_id=f"x{i}") for i in range(6)),
     (r"6 annotations of no image in 'images': annos_segmentation\[3\] \(image_id 'x0'\); .*"
      r"annos_segmentation\[7\] \(image_id 'x4'\) \(and 1 more\)$")),
])
def test_convert_pascal_context_malformed_records_name_the_record(tmp_path, edit, message):
    path, data = _context_json(tmp_path)
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"trainval_merged\.json: " + message):
        convert_pascal_context(tmp_path / "VOCdevkit", path)
    assert not list((tmp_path / "VOCdevkit" / "VOC2010").rglob("*.png"))  # checked before any label is written


# ---------------------------------------------------------------------------------------------------------------
# COCO-Stuff 171 and Cityscapes, each mapping checked pixel by pixel against a table written out here

#: stuffthingmap value -> COCO-Stuff 171 label, written out as runs (COCO ids - 1 of the 80 things, then stuff).
COCO_STUFF_RUNS = [(0, 10, 0), (12, 24, 11), (26, 27, 24), (30, 43, 26), (45, 64, 40), (66, 66, 60), (69, 69, 61),
                   (71, 81, 62), (83, 89, 73), (91, 181, 80)]  # (first value, last value, label of the first)
COCO_STUFF_EXPECTED = {v: label + (v - first) for first, last, label in COCO_STUFF_RUNS for v in range(first, last + 1)}
COCO_STUFF_EXPECTED[255] = 255

#: Cityscapes label id -> train id, written out (cityscapesscripts' labels.py); every other id 0..33 is 255.
CITYSCAPES_EXPECTED = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                       26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}



def test_independent_tables_are_complete():
    assert len(COCO_STUFF_EXPECTED) == 172 and sorted(COCO_STUFF_EXPECTED.values())[:171] == list(range(171))
    assert COCO_STUFF_EXPECTED[89] == 79 and COCO_STUFF_EXPECTED[91] == 80 and COCO_STUFF_EXPECTED[181] == 170
    assert sorted(CITYSCAPES_EXPECTED.values()) == list(range(19))


def test_convert_coco_object_reports_a_decompression_bomb(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 16)  # Pillow refuses images over twice this: 32 pixels
    root, _ = _coco_tree(tmp_path)  # 4 x 4 stuffthingmaps
    Image.fromarray(np.zeros((6, 6), np.uint8), mode="L").save(root / "annotations" / "val2017" / "000000000777.png")
    with pytest.raises(InputError, match=r"1 bad file: .*000000000777\.png: image of 36 pixels exceeds the limit"):
        convert_coco_object(root, nproc=1)
    assert (root / "annotations" / "val2017" / "000000000139_labelTrainIds.png").exists()


def _stuffthing_tree(tmp_path, values: np.ndarray, stem="000000000139"):
    root = tmp_path / "coco_stuff164k"
    (root / "annotations" / "val2017").mkdir(parents=True, exist_ok=True)
    (root / "images" / "val2017").mkdir(parents=True, exist_ok=True)
    Image.fromarray(values, mode="L").save(root / "annotations" / "val2017" / f"{stem}.png")
    Image.new("RGB", (values.shape[1], values.shape[0])).save(root / "images" / "val2017" / f"{stem}.jpg")
    return root


@pytest.mark.parametrize("nproc", [1, 2])
def test_convert_coco_stuff_pixel_by_pixel(tmp_path, nproc):
    valid = np.array(sorted(COCO_STUFF_EXPECTED), dtype=np.uint8).reshape(4, 43)  # all 171 values and 255
    root = _stuffthing_tree(tmp_path, valid)
    (root / "annotations" / "train2017").mkdir()
    Image.fromarray(valid[::-1], mode="L").save(root / "annotations" / "train2017" / "000000000009.png")
    assert convert_coco_stuff(root, nproc=nproc) == {"train2017": 1, "val2017": 1}
    out = Image.open(root / "annotations" / "val2017" / "000000000139_labelTrainIds171.png")
    assert out.mode == "L"
    got = np.asarray(out)
    for (y, x), v in np.ndenumerate(valid):
        assert got[y, x] == COCO_STUFF_EXPECTED[int(v)], (int(v), int(got[y, x]))
    train = np.asarray(Image.open(root / "annotations" / "train2017" / "000000000009_labelTrainIds171.png"))
    assert (train == got[::-1]).all()
    # COCO-Object's converter and this one share the folder; neither takes the other's output for a stuffthingmap
    assert convert_coco_object(root, nproc=1) == {"train2017": 1, "val2017": 1}
    assert convert_coco_stuff(root, nproc=1) == {"train2017": 1, "val2017": 1}
    names = sorted(p.name for p in (root / "annotations" / "val2017").iterdir())
    assert names == ["000000000139.png", "000000000139_labelTrainIds.png", "000000000139_labelTrainIds171.png"]
    stuff = SegmentationBenchmark("coco_stuff", tmp_path)[0][1]
    obj = SegmentationBenchmark("coco_object", tmp_path)[0][1]
    assert (stuff == got).all() and obj.max() == 80 and (obj[valid > 90] == 0).all()


def test_convert_coco_stuff_bad_values_name_file_and_values(tmp_path):
    root = _stuffthing_tree(tmp_path, np.array([[0, 11, 90, 182], [254, 11, 5, 255]], dtype=np.uint8), "000000000777")
    val = root / "annotations" / "val2017"
    Image.fromarray(np.array([[1, 200]], np.uint8), mode="L").save(val / "000000000778.png")
    Image.fromarray(np.array([[1, 2]], np.uint8), mode="L").save(val / "000000000779.png")
    with pytest.raises(InputError) as err:
        convert_coco_stuff(root, nproc=1)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("2 bad files: ")
    assert "000000000777.png: values 11, 90, 182, 254 are not stuffthingmap values" in msg
    assert "000000000778.png: values 200 " in msg
    # the bad files wrote nothing, the good one was converted
    assert not (root / "annotations" / "val2017" / "000000000777_labelTrainIds171.png").exists()
    assert (root / "annotations" / "val2017" / "000000000779_labelTrainIds171.png").exists()
    with pytest.raises(InputError, match="missing"):
        convert_coco_stuff(tmp_path / "missing")


def _cityscapes_tree(tmp_path, label_ids: dict[str, np.ndarray]):
    """``gtFine/<split>/<city>/<stem>_gtFine_labelIds.png`` (+ the images, for reading the result back)."""
    base = tmp_path / "cityscapes"
    for key, ids in label_ids.items():
        split, city, stem = key.split("/")
        (base / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
        (base / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
        Image.fromarray(ids, mode="L").save(base / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
        img = base / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
        Image.new("RGB", (ids.shape[1], ids.shape[0])).save(img)
    return base


@pytest.mark.parametrize("nproc", [1, 2])
def test_convert_cityscapes_pixel_by_pixel(tmp_path, nproc):
    ids = np.arange(34, dtype=np.uint8).reshape(2, 17)
    base = _cityscapes_tree(tmp_path, {"val/frankfurt/frankfurt_000000_000294": ids,
                                       "val/lindau/lindau_000000_000019": ids.T.copy(),
                                       "train/aachen/aachen_000000_000019": np.full((2, 2), 26, np.uint8)})
    counts, table = convert_cityscapes(base, nproc=nproc)
    assert counts == {"train": 1, "val": 2} and table == "built-in"
    out = Image.open(base / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000294_gtFine_labelTrainIds.png")
    assert out.mode == "L"
    got = np.asarray(out)
    for (y, x), v in np.ndenumerate(ids):
        assert got[y, x] == CITYSCAPES_EXPECTED.get(int(v), 255), (int(v), int(got[y, x]))
    aachen = base / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_labelTrainIds.png"
    assert (np.asarray(Image.open(aachen)) == 13).all()
    # the written tree is the benchmark, nested by city
    ds = SegmentationBenchmark("cityscapes", tmp_path)
    assert ds.sample_ids == ["frankfurt/frankfurt_000000_000294", "lindau/lindau_000000_000019"]
    assert (ds[1][1] == got.T).all()
    assert convert_cityscapes(base, nproc=1)[0] == counts  # its own outputs are not sources
    assert not list(base.rglob("*.tmp"))


def test_convert_cityscapes_bad_input(tmp_path):
    with pytest.raises(InputError, match="gtFine"):
        convert_cityscapes(tmp_path)
    base = _cityscapes_tree(tmp_path, {"val/ulm/ulm_000000_000019": np.array([[7, 34, 254, 255]], np.uint8)})
    with pytest.raises(InputError, match=r"1 bad file: .*ulm_000000_000019_gtFine_labelIds\.png: values 34, 254 are"):
        convert_cityscapes(base, nproc=1)


def test_cityscapes_table_from_cityscapesscripts_when_installed(monkeypatch):
    label = namedtuple("Label", ["name", "id", "trainId"])
    fake = types.ModuleType("cityscapesscripts.helpers.labels")
    fake.labels = [label("unlabeled", 0, 255), label("road", 7, 0), label("bicycle", 33, 18),
                   label("lane", 34, 19), label("license plate", -1, -1)]
    monkeypatch.setitem(sys.modules, "cityscapesscripts", types.ModuleType("cityscapesscripts"))
    monkeypatch.setitem(sys.modules, "cityscapesscripts.helpers", types.ModuleType("cityscapesscripts.helpers"))
    monkeypatch.setitem(sys.modules, "cityscapesscripts.helpers.labels", fake)
    lut, table = cityscapes_lut()
    assert table == "cityscapesscripts"
    assert lut[0] == 255 and lut[7] == 0 and lut[33] == 18 and lut[255] == 255
    assert lut[34] == 255  # a train id outside the 19 classes is ignored
    assert lut[8] == -1  # not in that table: reported as a bad value


def test_builtin_cityscapes_table_matches_the_installed_package():
    labels = pytest.importorskip("cityscapesscripts.helpers.labels")
    lut, table = cityscapes_lut()
    assert table == "cityscapesscripts"
    for entry in labels.labels:
        if 0 <= entry.id <= 33:
            assert lut[entry.id] == CITYSCAPES_EXPECTED.get(entry.id, 255)
