"""Benchmarks read from the exact MMSegmentation on-disk layouts."""

import numpy as np
import pytest
from PIL import Image

from simseg.errors import InputError
from simseg.segdata import (
    BENCHMARKS,
    TABLE_ORDER,
    SegmentationBenchmark,
    benchmark_presence,
    parse_benchmark_selection,
    read_label,
    resolve_data_root,
    select_benchmarks,
)


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (bit-interleaved), as in the official devkit."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def write_voc(root, labels: dict[str, np.ndarray], list_name="val.txt"):
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for stem, lab in labels.items():
        Image.fromarray(rng.integers(0, 255, (*lab.shape, 3), dtype=np.uint8)).save(base / "JPEGImages" / f"{stem}.jpg")
        png = Image.fromarray(lab.astype(np.uint8), mode="P")
        png.putpalette(voc_palette())
        png.save(base / "SegmentationClass" / f"{stem}.png")
    (base / "ImageSets" / "Segmentation" / list_name).write_text("".join(f"{s}\n" for s in labels))
    return base


def test_voc_palette_labels_are_class_indices(tmp_path):
    lab = np.array([[0, 15, 15], [255, 20, 1]], dtype=np.uint8)
    base = write_voc(tmp_path, {"2007_000001": lab, "2007_000002": np.zeros((5, 4), np.uint8)})
    assert Image.open(base / "SegmentationClass" / "2007_000001.png").mode == "P"
    ds = SegmentationBenchmark("pascal_voc", tmp_path)
    assert len(ds) == 2 and ds.name == "pascal_voc" and len(ds.class_names) == 21
    image, label, sid = ds[0]
    assert sid == "2007_000001" and image.mode == "RGB" and image.size == (3, 2)
    assert label.dtype == np.uint8 and (label == lab).all()  # no palette -> RGB conversion
    assert ds[1][1].shape == (5, 4)
    with pytest.raises(IndexError):
        ds[2]


def test_voc20_ignores_background_and_shifts(tmp_path):
    write_voc(tmp_path, {"a": np.array([[0, 1, 20, 255]], dtype=np.uint8)})
    ds = SegmentationBenchmark("pascal_voc20", tmp_path)
    assert ds.class_names[0] == "aeroplane" and len(ds.class_names) == 20
    assert ds[0][1].tolist() == [[255, 0, 19, 255]]


def test_context_and_coco_layouts(tmp_path):
    ctx = tmp_path / "VOCdevkit" / "VOC2010"
    for sub in ("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"):
        (ctx / sub).mkdir(parents=True)
    Image.new("RGB", (4, 3)).save(ctx / "JPEGImages" / "2008_000002.jpg")
    Image.fromarray(np.full((3, 4), 59, np.uint8), mode="L").save(ctx / "SegmentationClassContext" / "2008_000002.png")
    (ctx / "ImageSets" / "SegmentationContext" / "val.txt").write_text("2008_000002\n")
    assert SegmentationBenchmark("pascal_context", tmp_path)[0][1].max() == 59
    assert SegmentationBenchmark("pascal_context59", tmp_path)[0][1].max() == 58

    coco = tmp_path / "coco_stuff164k"
    (coco / "images" / "val2017").mkdir(parents=True)
    (coco / "annotations" / "val2017").mkdir(parents=True)
    for stem in ("000000000285", "000000000139"):
        Image.new("RGB", (6, 2)).save(coco / "images" / "val2017" / f"{stem}.jpg")
        label_path = coco / "annotations" / "val2017" / f"{stem}_labelTrainIds.png"
        Image.fromarray(np.full((2, 6), 80, np.uint8)).save(label_path)
    ds = SegmentationBenchmark("coco_object", tmp_path)
    assert ds.sample_ids == ["000000000139", "000000000285"] and len(ds.class_names) == 81
    assert ds[1][1].max() == 80 and ds[1][2] == "000000000285"



def test_a_list_file_with_a_byte_order_mark_windows_line_ends_and_blank_lines(tmp_path):
    base = write_voc(tmp_path, {"2007_000001": np.zeros((2, 3), np.uint8), "2007_000002": np.ones((2, 3), np.uint8)})
    val = base / "ImageSets" / "Segmentation" / "val.txt"
    val.write_bytes(b"\xef\xbb\xbf2007_000001\r\n\r\n  \r\n2007_000002\r\n")
    ds = SegmentationBenchmark("pascal_voc", tmp_path)
    assert [ds[i][2] for i in range(len(ds))] == ["2007_000001", "2007_000002"]
    val.write_bytes("2007_000001\n2007_00000\u00e9\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"val\.txt: cannot read list file \(not UTF-8 text: byte 22\)"):
        SegmentationBenchmark("pascal_voc", tmp_path)


def test_a_sample_listed_twice_is_refused_not_counted_twice(tmp_path):
    base = write_voc(tmp_path, {"2007_000001": np.zeros((2, 3), np.uint8), "2007_000002": np.ones((2, 3), np.uint8)})
    val = base / "ImageSets" / "Segmentation" / "val.txt"
    val.write_text("2007_000001\n2007_000002\n\n 2007_000001 \n")
    with pytest.raises(InputError,
                       match=r"val\.txt: line 4: sample id '2007_000001' is listed twice \(first on line 1"):
        SegmentationBenchmark("pascal_voc", tmp_path)
    presence = benchmark_presence("pascal_voc", tmp_path)  # --dataset all: shown as missing, with the reason
    assert not presence.present and "listed twice" in presence.reason


def test_bad_layouts_name_the_path(tmp_path):
    with pytest.raises(InputError, match="VOC2012/JPEGImages"):
        SegmentationBenchmark("pascal_voc", tmp_path)
    base = write_voc(tmp_path, {"a": np.zeros((2, 2), np.uint8)})
    (base / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(InputError, match="val.txt"):
        SegmentationBenchmark("pascal_voc", tmp_path)
    with pytest.raises(InputError, match="unknown dataset"):
        SegmentationBenchmark("ade847", tmp_path)


def test_bad_samples_name_their_files(tmp_path):
    base = write_voc(tmp_path, {"ok": np.zeros((2, 2), np.uint8), "big": np.zeros((3, 3), np.uint8),
                                "gone": np.zeros((2, 2), np.uint8), "odd": np.full((2, 2), 30, np.uint8)})
    Image.new("RGB", (5, 5)).save(base / "JPEGImages" / "big.jpg")  # label 3x3 vs image 5x5
    (base / "SegmentationClass" / "gone.png").unlink()
    ds = SegmentationBenchmark("pascal_voc", tmp_path)
    ds[0]
    with pytest.raises(InputError, match=r"big\.png.*big\.jpg"):
        ds[1]
    with pytest.raises(InputError, match=r"gone\.png.*not found"):
        ds[2]
    with pytest.raises(InputError, match=r"odd\.png.*values 30 "):
        ds[3]
    rgb_label = tmp_path / "rgb.png"
    Image.new("RGB", (2, 2)).save(rgb_label)
    with pytest.raises(InputError, match="rgb.png.*mode RGB"):
        read_label(rgb_label)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(InputError, match="broken.png"):
        read_label(tmp_path / "broken.png")
    (tmp_path / "folder.png").mkdir()  # said "label file not found"
    with pytest.raises(InputError, match=r"folder\.png: is a directory, not a label file$"):
        read_label(tmp_path / "folder.png")


def test_a_label_refused_as_a_decompression_bomb_is_a_bad_sample(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 16)  # Pillow refuses images over twice this: 32 pixels
    base = write_voc(tmp_path, {"huge": np.zeros((6, 6), np.uint8)})
    Image.new("RGB", (4, 4)).save(base / "JPEGImages" / "huge.jpg")  # the image itself passes
    with pytest.raises(InputError, match=r"huge\.png: image of 36 pixels exceeds the limit of 32"):
        SegmentationBenchmark("pascal_voc", tmp_path)[0]


def test_exif_orientation_is_not_applied_to_benchmark_images(tmp_path):
    # Labels annotate the stored pixels; a rotated-by-EXIF JPEG must still line up with its label.
    base = write_voc(tmp_path, {"rot": np.zeros((2, 4), np.uint8)})
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    Image.new("RGB", (4, 2), (200, 10, 10)).save(base / "JPEGImages" / "rot.jpg", exif=exif.tobytes())
    image, label, _ = SegmentationBenchmark("pascal_voc", tmp_path)[0]
    assert image.size == (4, 2) and label.shape == (2, 4)


def test_resolve_data_root(tmp_path, monkeypatch):
    monkeypatch.delenv("SIMSEG_DATA", raising=False)
    with pytest.raises(InputError, match="SIMSEG_DATA"):
        resolve_data_root(None)
    monkeypatch.setenv("SIMSEG_DATA", str(tmp_path))
    assert resolve_data_root(None) == tmp_path
    assert resolve_data_root(str(tmp_path / ".")) == tmp_path / "."
    with pytest.raises(InputError, match="nope"):
        resolve_data_root(tmp_path / "nope")
    assert set(BENCHMARKS) == {"pascal_voc", "pascal_context", "coco_object", "pascal_voc20", "pascal_context59",
                               "coco_stuff", "cityscapes", "ade20k"}


# ---------------------------------------------------------------------------------------------------------------
# The three benchmarks of the training-free family, each in its exact layout


def write_coco(root, stems_labels: dict[str, dict[str, np.ndarray]]):
    """``coco_stuff164k`` with val2017 images and, per stem, label files named by suffix."""
    coco = root / "coco_stuff164k"
    (coco / "images" / "val2017").mkdir(parents=True, exist_ok=True)
    (coco / "annotations" / "val2017").mkdir(parents=True, exist_ok=True)
    for stem, files in stems_labels.items():
        shape = next(iter(files.values())).shape
        Image.new("RGB", (shape[1], shape[0])).save(coco / "images" / "val2017" / f"{stem}.jpg")
        for suffix, lab in files.items():
            Image.fromarray(lab.astype(np.uint8), mode="L").save(coco / "annotations" / "val2017" / f"{stem}{suffix}")
    return coco


def write_cityscapes(root, labels: dict[str, np.ndarray]):
    """``cityscapes/{leftImg8bit,gtFine}/val/<city>/``; keys are ``<city>/<stem>``."""
    base = root / "cityscapes"
    for key, lab in labels.items():
        city, stem = key.split("/")
        for sub in ("leftImg8bit", "gtFine"):
            (base / sub / "val" / city).mkdir(parents=True, exist_ok=True)
        image_path = base / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png"
        Image.new("RGB", (lab.shape[1], lab.shape[0])).save(image_path)
        gt = base / "gtFine" / "val" / city
        Image.fromarray(lab.astype(np.uint8), mode="L").save(gt / f"{stem}_gtFine_labelTrainIds.png")
        Image.fromarray(np.full(lab.shape, 7, np.uint8), mode="L").save(gt / f"{stem}_gtFine_labelIds.png")
    return base


def write_ade(root, labels: dict[str, np.ndarray], base="ade/ADEChallengeData2016"):
    ade = root / base
    (ade / "images" / "validation").mkdir(parents=True, exist_ok=True)
    (ade / "annotations" / "validation").mkdir(parents=True, exist_ok=True)
    for stem, lab in labels.items():
        Image.new("RGB", (lab.shape[1], lab.shape[0])).save(ade / "images" / "validation" / f"{stem}.jpg")
        Image.fromarray(lab.astype(np.uint8), mode="L").save(ade / "annotations" / "validation" / f"{stem}.png")
    return ade


def test_coco_stuff_171_coexists_with_coco_object(tmp_path):
    obj = np.array([[0, 1, 80]], dtype=np.uint8)
    stuff = np.array([[170, 255, 0]], dtype=np.uint8)
    write_coco(tmp_path, {"000000000139": {"_labelTrainIds.png": obj, "_labelTrainIds171.png": stuff}})
    ds = SegmentationBenchmark("coco_stuff", tmp_path)
    assert ds.label_suffix == "_labelTrainIds171.png" and ds.num_classes == 171
    assert ds.class_names[0] == "person" and ds.class_names[80] == "banner" and ds.class_names[-1] == "wood"
    assert ds[0][1].tolist() == [[170, 255, 0]]  # 255 stays ignored, no shift
    assert SegmentationBenchmark("coco_object", tmp_path)[0][1].tolist() == [[0, 1, 80]]


def test_coco_stuff_never_reads_the_colliding_name(tmp_path):
    # MMSegmentation's 171-class labels are called _labelTrainIds.png too; simseg does not guess
    write_coco(tmp_path, {"000000000139": {"_labelTrainIds.png": np.full((2, 2), 100, np.uint8)}})
    with pytest.raises(InputError, match=r"_labelTrainIds171\.png.*simseg prepare coco-stuff"):
        SegmentationBenchmark("coco_stuff", tmp_path)
    # read as COCO-Object, the 171-class values are out of range: a loud error naming the file and value
    with pytest.raises(InputError, match=r"000000000139_labelTrainIds\.png: label values 100 .*0\.\.80"):
        SegmentationBenchmark("coco_object", tmp_path)[0]
    write_coco(tmp_path, {"000000000139": {"_labelTrainIds171.png": np.full((2, 2), 171, np.uint8)}})
    with pytest.raises(InputError, match=r"_labelTrainIds171\.png: label values 171 .*0\.\.170"):
        SegmentationBenchmark("coco_stuff", tmp_path)[0]


def test_coco_object_prefers_instance_train_ids(tmp_path):
    mmseg_171 = np.array([[150, 120]], dtype=np.uint8)  # what _labelTrainIds.png holds in a training-free tree
    instance = np.array([[0, 7]], dtype=np.uint8)
    write_coco(tmp_path, {"a": {"_labelTrainIds.png": mmseg_171, "_instanceTrainIds.png": instance},
                          "b": {"_labelTrainIds.png": mmseg_171}})
    ds = SegmentationBenchmark("coco_object", tmp_path)
    assert ds.label_suffix == "_instanceTrainIds.png"
    assert ds.label_path(0).name == "a_instanceTrainIds.png" and ds[0][1].tolist() == [[0, 7]]
    # the choice holds for every sample: one without an instance file is a bad sample, not silently the other name
    with pytest.raises(InputError, match=r"b_instanceTrainIds\.png.*not found"):
        ds[1]
    # only SimSeg's own name: that one is read
    (tmp_path / "coco_stuff164k" / "annotations" / "val2017" / "a_instanceTrainIds.png").unlink()
    assert SegmentationBenchmark("coco_object", tmp_path).label_suffix == "_labelTrainIds.png"


def test_cityscapes_nested_by_city(tmp_path):
    a = np.array([[0, 18, 255], [5, 5, 5]], dtype=np.uint8)
    b = np.array([[1, 2, 3], [4, 255, 6]], dtype=np.uint8)
    write_cityscapes(tmp_path, {"frankfurt/frankfurt_000000_000294": a, "lindau/lindau_000001_000019": b})
    ds = SegmentationBenchmark("cityscapes", tmp_path)
    assert ds.sample_ids == ["frankfurt/frankfurt_000000_000294", "lindau/lindau_000001_000019"]
    assert ds.num_classes == 19 and ds.class_names[6] == "traffic light" and ds.class_names[-1] == "bicycle"
    image, label, sid = ds[1]
    assert sid == "lindau/lindau_000001_000019" and image.size == (3, 2)
    assert ds.image_path(1).name == "lindau_000001_000019_leftImg8bit.png"
    assert ds.label_path(1).name == "lindau_000001_000019_gtFine_labelTrainIds.png"
    assert label.tolist() == b.tolist()  # 255 stays ignored, no shift
    assert ds[0][1].tolist() == a.tolist()
    bad = tmp_path / "cityscapes" / "gtFine" / "val" / "lindau" / "lindau_000001_000019_gtFine_labelTrainIds.png"
    Image.fromarray(np.array([[19, 33, 255], [19, 0, 254]], np.uint8), mode="L").save(bad)
    with pytest.raises(InputError, match=r"lindau_000001_000019_gtFine_labelTrainIds\.png: label values 19, 33, 254 "):
        ds[1]


def test_cityscapes_without_train_ids_names_the_converter(tmp_path):
    base = write_cityscapes(tmp_path, {"ulm/ulm_000000_000019": np.zeros((2, 2), np.uint8)})
    (base / "gtFine" / "val" / "ulm" / "ulm_000000_000019_gtFine_labelTrainIds.png").unlink()
    with pytest.raises(InputError, match=r"gtFine_labelTrainIds\.png \(run simseg prepare cityscapes"):
        SegmentationBenchmark("cityscapes", tmp_path)


@pytest.mark.parametrize("base", ["ade/ADEChallengeData2016", "ADEChallengeData2016"])
def test_ade20k_zero_label_is_ignored(tmp_path, base):
    write_ade(tmp_path, {"ADE_val_00000001": np.array([[0, 1, 150, 255], [2, 0, 75, 149]], dtype=np.uint8)}, base)
    ds = SegmentationBenchmark("ade20k", tmp_path)
    assert ds.num_classes == 150 and ds.class_names[:3] == ["wall", "building", "sky"] and ds.class_names[-1] == "flag"
    assert ds[0][1].tolist() == [[255, 0, 149, 255], [1, 255, 74, 148]]
    write_ade(tmp_path, {"ADE_val_00000001": np.array([[151, 200, 151]], dtype=np.uint8)}, base)
    with pytest.raises(InputError, match=r"ADE_val_00000001\.png: label values 151, 200 .*0\.\.150"):
        ds[0]


def test_out_of_range_values_are_all_named(tmp_path):
    write_voc(tmp_path, {"x": np.array([[21, 40, 21, 255, 0, 254]], dtype=np.uint8)})
    with pytest.raises(InputError, match=r"x\.png: label values 21, 40, 254 are not class indices of pascal_voc"):
        SegmentationBenchmark("pascal_voc", tmp_path)[0]


def test_table_order_and_titles():
    assert TABLE_ORDER == ("pascal_voc", "pascal_context", "coco_object", "pascal_voc20", "pascal_context59",
                           "coco_stuff", "cityscapes", "ade20k")
    assert [BENCHMARKS[n].title for n in TABLE_ORDER] == [
        "VOC21", "Context60", "COCO-Object", "VOC20", "Context59", "COCO-Stuff", "Cityscapes", "ADE20K"]


def test_parse_benchmark_selection():
    assert parse_benchmark_selection("all") == (list(TABLE_ORDER), False)
    assert parse_benchmark_selection(" ade20k, pascal_voc ,ade20k") == (["pascal_voc", "ade20k"], True)
    assert parse_benchmark_selection(["cityscapes"]) == (["cityscapes"], True)
    with pytest.raises(InputError, match="'ade847'"):
        parse_benchmark_selection("pascal_voc,ade847")
    with pytest.raises(InputError, match="no dataset"):
        parse_benchmark_selection(" , ")
    # said "unknown dataset(s) 'all'; choose all or some of ..."
    with pytest.raises(InputError, match=r"^dataset 'all' cannot be combined with dataset names \(all, pascal_voc\)"):
        parse_benchmark_selection("all,pascal_voc")
    assert parse_benchmark_selection("all, all") == (list(TABLE_ORDER), False)


def test_select_all_lists_missing_benchmarks(tmp_path):
    write_voc(tmp_path, {"a": np.zeros((2, 2), np.uint8)})
    write_ade(tmp_path, {"b": np.ones((2, 2), np.uint8)})
    write_coco(tmp_path, {"c": {"_labelTrainIds.png": np.zeros((2, 2), np.uint8)}})
    found = select_benchmarks(tmp_path, "all")
    assert [p.name for p in found] == list(TABLE_ORDER)
    present = {p.name: p.present for p in found}
    assert present == {"pascal_voc": True, "pascal_context": False, "coco_object": True, "pascal_voc20": True,
                       "pascal_context59": False, "coco_stuff": False, "cityscapes": False, "ade20k": True}
    by_name = {p.name: p for p in found}
    assert by_name["pascal_voc"].num_samples == 1 and by_name["pascal_voc"].reason == ""
    assert "VOC2010" in by_name["pascal_context"].reason and by_name["pascal_context"].num_samples == 0
    assert "prepare coco-stuff" in by_name["coco_stuff"].reason
    assert "cityscapes/leftImg8bit/val" in by_name["cityscapes"].reason
    # named explicitly, a missing benchmark is an error naming each missing one
    assert [p.name for p in select_benchmarks(tmp_path, "ade20k,pascal_voc")] == ["pascal_voc", "ade20k"]
    with pytest.raises(InputError, match=r"coco_stuff label files.*; .*cityscapes folder not found"):
        select_benchmarks(tmp_path, ["pascal_voc", "cityscapes", "coco_stuff"])
    with pytest.raises(InputError, match="unknown dataset"):
        benchmark_presence("ade847", tmp_path)


def test_all_eight_benchmarks_in_one_root(tmp_path):
    write_voc(tmp_path, {"2007_000001": np.array([[0, 20]], np.uint8)})
    ctx = tmp_path / "VOCdevkit" / "VOC2010"
    for sub in ("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"):
        (ctx / sub).mkdir(parents=True)
    Image.new("RGB", (2, 1)).save(ctx / "JPEGImages" / "2008_000002.jpg")
    Image.fromarray(np.array([[0, 59]], np.uint8), mode="L").save(ctx / "SegmentationClassContext" / "2008_000002.png")
    (ctx / "ImageSets" / "SegmentationContext" / "val.txt").write_text("2008_000002\n")
    write_coco(tmp_path, {"000000000139": {"_labelTrainIds.png": np.array([[0, 80]], np.uint8),
                                           "_labelTrainIds171.png": np.array([[170, 255]], np.uint8)}})
    write_cityscapes(tmp_path, {"munster/munster_000000_000019": np.array([[18, 255]], np.uint8)})
    write_ade(tmp_path, {"ADE_val_00000001": np.array([[0, 150]], np.uint8)})
    found = select_benchmarks(tmp_path)
    assert all(p.present and p.num_samples == 1 for p in found), [p.reason for p in found if not p.present]
    labels = {p.name: SegmentationBenchmark(p.name, tmp_path)[0][1].tolist() for p in found}
    assert labels == {"pascal_voc": [[0, 20]], "pascal_context": [[0, 59]], "coco_object": [[0, 80]],
                      "pascal_voc20": [[255, 19]], "pascal_context59": [[255, 58]], "coco_stuff": [[170, 255]],
                      "cityscapes": [[18, 255]], "ade20k": [[255, 149]]}
