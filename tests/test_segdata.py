"""Benchmarks read from the exact MMSegmentation on-disk layouts."""

import numpy as np
import pytest
from PIL import Image

from simseg.errors import InputError
from simseg.segdata import BENCHMARKS, SegmentationBenchmark, read_label, resolve_data_root


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


def test_bad_layouts_name_the_path(tmp_path):
    with pytest.raises(InputError, match="VOC2012/JPEGImages"):
        SegmentationBenchmark("pascal_voc", tmp_path)
    base = write_voc(tmp_path, {"a": np.zeros((2, 2), np.uint8)})
    (base / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(InputError, match="val.txt"):
        SegmentationBenchmark("pascal_voc", tmp_path)
    with pytest.raises(InputError, match="unknown dataset"):
        SegmentationBenchmark("ade20k", tmp_path)


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
    with pytest.raises(InputError, match=r"odd\.png.*30"):
        ds[3]
    rgb_label = tmp_path / "rgb.png"
    Image.new("RGB", (2, 2)).save(rgb_label)
    with pytest.raises(InputError, match="rgb.png.*mode RGB"):
        read_label(rgb_label)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(InputError, match="broken.png"):
        read_label(tmp_path / "broken.png")


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
    assert set(BENCHMARKS) == {"pascal_voc", "pascal_context", "coco_object", "pascal_voc20", "pascal_context59"}
