"""The synthetic world: determinism, masks that match the pixels, truthful captions, exporters in the real formats."""

from __future__ import annotations

import csv
import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simseg import synthetic
from simseg.errors import InputError
from simseg.synthetic import COLOURS, SHAPES, SceneObject

COLOUR_NAMES = [name for name, _ in COLOURS]
CENTRES = np.array([rgb for _, rgb in COLOURS], dtype=np.float32)


@pytest.fixture(scope="module")
def scenes() -> list[synthetic.Scene]:
    return synthetic.generate_scenes(200, seed=11)


def _words(caption: str) -> set[str]:
    return set(re.findall(r"[a-z]+", caption))


def test_same_seed_same_scenes_and_different_seed_different_scenes():
    a, b = synthetic.generate_scenes(20, seed=3), synthetic.generate_scenes(20, seed=3)
    for x, y in zip(a, b):
        assert np.array_equal(x.image, y.image)
        assert np.array_equal(x.colour_mask, y.colour_mask) and np.array_equal(x.shape_mask, y.shape_mask)
        assert (x.caption, x.objects) == (y.caption, y.objects)
    c = synthetic.generate_scenes(20, seed=4)
    assert not all(np.array_equal(x.image, z.image) for x, z in zip(a, c))
    assert [x.caption for x in a] != [z.caption for z in c]


def test_scene_structure(scenes):
    counts = set()
    for scene in scenes:
        assert scene.image.shape == (64, 64, 3) and scene.image.dtype == np.uint8
        assert scene.colour_mask.shape == scene.shape_mask.shape == (64, 64)
        assert not scene.image.flags.writeable and not scene.colour_mask.flags.writeable
        counts.add(len(scene.objects))
        colours = [obj.colour for obj in scene.objects]
        assert len(set(colours)) == len(colours), "colours within a scene are distinct"
        expected = {COLOUR_NAMES.index(c) + 1 for c in colours}
        assert set(np.unique(scene.colour_mask)) - {0} == expected
        # Colour and shape masks cover the same pixels; every labelled pixel lies inside its object's box.
        assert np.array_equal(scene.colour_mask > 0, scene.shape_mask > 0)
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.bbox
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64 and 12 <= x1 - x0 <= 28 and x1 - x0 == y1 - y0
            own = scene.colour_mask == COLOUR_NAMES.index(obj.colour) + 1
            ys, xs = np.nonzero(own)
            assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
            assert own.sum() >= 0.25 * (x1 - x0) ** 2  # a star is the thinnest shape
            assert np.all(scene.shape_mask[own] == SHAPES.index(obj.shape) + 1)
        combined = scene.colour_shape_mask
        names = synthetic.colour_shape_class_names()
        for obj in scene.objects:
            own = scene.colour_mask == COLOUR_NAMES.index(obj.colour) + 1
            assert {names[v] for v in np.unique(combined[own])} == {f"{obj.colour} {obj.shape}"}
    assert counts == {1, 2, 3}


def test_mask_pixels_have_their_class_colour_and_background_never_looks_like_one(scenes):
    for scene in scenes:
        pixels = scene.image.reshape(-1, 3).astype(np.float32)
        labels = scene.colour_mask.reshape(-1)
        dist = np.linalg.norm(pixels[:, None, :] - CENTRES[None], axis=2)
        fg = labels > 0
        assert np.array_equal(dist[fg].argmin(axis=1) + 1, labels[fg])
        assert dist[fg].min(axis=1).max() < 50
        assert dist[~fg].min() > 60
        bg = pixels[~fg]
        saturation = (bg.max(axis=1) - bg.min(axis=1)) / np.maximum(bg.max(axis=1), 1)
        assert saturation.max() < 0.45


def test_class_lists():
    assert synthetic.colour_class_names() == ["background", *COLOUR_NAMES]
    assert synthetic.shape_class_names() == ["background", *SHAPES]
    assert len(synthetic.colour_shape_class_names()) == 1 + len(COLOURS) * len(SHAPES)
    assert 5 <= len(COLOURS) <= 8 and set(SHAPES) == {"circle", "square", "triangle", "star"}
    with pytest.raises(TypeError):
        COLOURS[0] = ("pink", (255, 0, 255))  # type: ignore[index]


def test_captions_name_every_object_and_nothing_absent(scenes):
    omitted_colour = omitted_shape = 0
    for scene in scenes:
        words = _words(scene.caption)
        present_colours = {o.colour for o in scene.objects}
        present_shapes = {o.shape for o in scene.objects}
        assert words & set(COLOUR_NAMES) <= present_colours, scene.caption
        assert words & set(SHAPES) <= present_shapes, scene.caption
        for obj in scene.objects:
            assert obj.colour in words or obj.shape in words, scene.caption
        omitted_colour += bool(present_colours - words)
        omitted_shape += bool(present_shapes - words)
    assert omitted_colour > 0 and omitted_shape > 0, "attributes are sometimes left out"
    # Colour words dominate: most objects are named by colour, which is what the demo learns.
    named = sum(o.colour in _words(s.caption) for s in scenes for o in s.objects)
    assert named >= 0.7 * sum(len(s.objects) for s in scenes)
    assert len({s.caption for s in scenes}) > 150


def test_captions_name_the_background_with_its_brightness_and_tint(scenes):
    """Real captions name the scene around the objects; here every caption says what the objects lie on, with the
    surface's brightness and tint, so background patches have words of their own, and the words are true."""
    kinds = set()
    for scene in scenes:
        assert scene.background in synthetic.BACKGROUNDS
        brightness, tint, _texture = scene.background.split()
        phrase = scene.caption.rsplit(" on ", 1)[-1]
        assert phrase in synthetic.BACKGROUNDS[scene.background], scene.caption
        words = _words(phrase)
        assert {brightness, tint} <= words, scene.caption
        assert ({"grey", "brown"} - {tint}).isdisjoint(_words(scene.caption))
        assert ({"dark", "light"} - {brightness}).isdisjoint(_words(scene.caption))
        bg = scene.image.reshape(-1, 3)[scene.colour_mask.reshape(-1) == 0].astype(np.float32)
        # the tint is true of the pixels: grey backgrounds have (almost) no saturation, brown ones some
        saturation = np.median((bg.max(axis=1) - bg.min(axis=1)) / np.maximum(bg.max(axis=1), 1))
        assert (saturation < 0.08) == (tint == "grey"), (scene.background, saturation)
        # and so is the brightness (the objects cover a little of the background the word was chosen from)
        mean = bg.mean()
        assert (mean < 127.5) == (brightness == "dark") or abs(mean - 127.5) < 5, (scene.background, mean)
        kinds.add(scene.background)
    assert kinds == set(synthetic.BACKGROUNDS)
    # every kind has its own phrases: no phrase names two kinds
    phrases = [p for ps in synthetic.BACKGROUNDS.values() for p in ps]
    assert len(phrases) == len(set(phrases))
    with pytest.raises(InputError, match="background"):
        synthetic.caption_variants(scenes[0].objects, np.random.default_rng(0), background="lava")


def test_most_scenes_hold_one_or_two_objects(scenes):
    counts = np.bincount([len(scene.objects) for scene in scenes], minlength=4)[1:]
    assert counts.min() > 0 and counts[0] > counts[1] > counts[2]


def test_spatial_words_are_true():
    left = SceneObject("red", "circle", (2, 20, 22, 40))
    right = SceneObject("blue", "star", (40, 22, 60, 42))
    top = SceneObject("green", "square", (20, 0, 40, 20))
    bottom = SceneObject("yellow", "triangle", (22, 40, 42, 60))
    rng = np.random.default_rng(0)
    pattern = re.compile(r"an? (?:(\w+) )?(\w+) (to the left of|to the right of|above|below) an? (?:(\w+) )?(\w+)")
    seen = set()
    for pair, truth in (((left, right), {"to the left of", "to the right of"}), ((top, bottom), {"above", "below"})):
        for caption in (synthetic.caption_variants(pair, rng)[0] for _ in range(300)):
            match = pattern.search(caption)
            if not match:
                continue
            words_a, relation = {match.group(1), match.group(2)}, match.group(3)
            first = pair[0] if words_a & {pair[0].colour, pair[0].shape} else pair[1]
            assert relation in truth, caption
            seen.add(relation)
            first_is_left_or_top = first is pair[0]
            assert (relation in ("to the left of", "above")) == first_is_left_or_top, caption
    assert seen == {"to the left of", "to the right of", "above", "below"}


def test_caption_variants_are_distinct_and_validated():
    objects = (SceneObject("red", "circle", (0, 0, 20, 20)), SceneObject("cyan", "star", (30, 30, 50, 50)))
    variants = synthetic.caption_variants(objects, np.random.default_rng(1), n=3)
    assert len(variants) == 3 and len(set(variants)) == 3
    with pytest.raises(InputError, match="objects"):
        synthetic.caption_variants((), np.random.default_rng(0))


def test_caption_corpus_is_deterministic_and_covers_the_vocabulary():
    corpus = synthetic.caption_corpus(500, seed=2)
    assert len(corpus) == 500 and corpus == synthetic.caption_corpus(500, seed=2)
    assert corpus != synthetic.caption_corpus(500, seed=3)
    words = set().union(*map(_words, corpus))
    assert set(COLOUR_NAMES) | set(SHAPES) <= words


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="size"):
        synthetic.generate_scenes(1, seed=0, size=16)
    with pytest.raises(InputError, match="n:"):
        synthetic.generate_scenes(-1, seed=0)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="file"):
        synthetic.export_csv_folder(synthetic.generate_scenes(1, seed=0), blocker / "out")
    with pytest.raises(InputError, match="shard_size"):
        synthetic.export_webdataset([], tmp_path / "wds", shard_size=0)


def test_other_sizes_scale_objects():
    scene = synthetic.generate_scenes(1, seed=0, size=96)[0]
    assert scene.image.shape == (96, 96, 3)
    for obj in scene.objects:
        assert 18 <= obj.bbox[2] - obj.bbox[0] <= 42


def test_export_csv_folder_reads_back(scenes, tmp_path):
    subset = scenes[:5]
    csv_path = synthetic.export_csv_folder(subset, tmp_path / "csv")
    assert csv_path == tmp_path / "csv" / "train_anno.csv"
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["caption"] for r in rows] == [s.caption for s in subset]
    for row, scene in zip(rows, subset):
        with Image.open(csv_path.parent / row["image"]) as img:
            assert np.array_equal(np.asarray(img.convert("RGB")), scene.image)  # PNG: lossless
    jpg_csv = synthetic.export_csv_folder(subset[:1], tmp_path / "csvjpg", image_format="jpg")
    with open(jpg_csv, newline="", encoding="utf-8") as f:
        (row,) = list(csv.DictReader(f))
    assert row["image"] == "images/000000000.jpg"
    with Image.open(jpg_csv.parent / row["image"]) as img:
        assert img.format == "JPEG"


def test_export_webdataset_shards_read_back(scenes, tmp_path):
    subset = scenes[:10]
    shards = synthetic.export_webdataset(subset, tmp_path / "wds", shard_size=4)
    assert [p.rsplit("/", 1)[-1] for p in shards] == ["00000.tar", "00001.tar", "00002.tar"]
    members: dict[str, bytes] = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            for info in tar.getmembers():
                members[info.name] = tar.extractfile(info).read()
    assert sorted(members) == sorted(f"{i:09d}.{ext}" for i in range(10) for ext in ("jpg", "txt"))
    for i, scene in enumerate(subset):
        assert members[f"{i:09d}.txt"].decode("utf-8") == scene.caption
        with Image.open(io.BytesIO(members[f"{i:09d}.jpg"])) as img:
            assert img.format == "JPEG" and img.size == (64, 64)
            diff = np.abs(np.asarray(img.convert("RGB"), np.int16) - scene.image.astype(np.int16))
            assert diff.mean() < 6
    # The same scenes give byte-identical shards (fixed member mtimes).
    again = synthetic.export_webdataset(subset, tmp_path / "wds2", shard_size=4)
    assert [Path(a).read_bytes() for a in shards] == [Path(b).read_bytes() for b in again]
    # webdataset itself groups each key's members into one sample.
    import webdataset as wds

    samples = list(wds.WebDataset(shards, shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(10)]
    assert [s["txt"].decode() for s in samples] == [s.caption for s in subset]


def test_export_segmentation_split_reads_back(scenes, tmp_path):
    subset = scenes[:6]
    root = synthetic.export_segmentation_split(subset, tmp_path, name="voc_synth")
    assert root == tmp_path / "voc_synth"
    voc = root / "VOCdevkit" / "VOC2012"
    ids = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    assert len(ids) == 6
    assert (root / "classes.txt").read_text().splitlines() == synthetic.colour_class_names()
    for sample_id, scene in zip(ids, subset):
        with Image.open(voc / "SegmentationClass" / f"{sample_id}.png") as label:
            assert label.mode == "P"
            assert label.getpalette()[3:6] == [128, 0, 0]  # VOC colour map: class 1 is dark red
            assert np.array_equal(np.asarray(label), scene.colour_mask)
        with Image.open(voc / "JPEGImages" / f"{sample_id}.jpg") as img:
            assert img.format == "JPEG"
            diff = np.abs(np.asarray(img.convert("RGB"), np.int16) - scene.image.astype(np.int16))
            assert diff.mean() < 3
    # The project's own benchmark reader takes it as a PASCAL VOC data root.
    from simseg.segdata import SegmentationBenchmark

    bench = SegmentationBenchmark("pascal_voc", root)
    assert len(bench) == 6
    image, label, sample_id = bench[2]
    assert sample_id == ids[2] and np.array_equal(label, subset[2].colour_mask) and image.size == (64, 64)


def test_export_retrieval_parquet_reads_back(scenes, tmp_path):
    import pyarrow.parquet as pq

    subset = scenes[:8]
    path = synthetic.export_retrieval_parquet(subset, tmp_path)
    assert path == tmp_path / "synthetic" / "valid.parquet"
    table = pq.read_table(path).to_pydict()
    assert set(table) == {"imbytes", "caption", "image_id", "id"}
    assert table["image_id"] == [i for i in range(8) for _ in range(2)]
    assert table["id"] == list(range(16))
    for row in range(16):
        scene = subset[table["image_id"][row]]
        with Image.open(io.BytesIO(table["imbytes"][row])) as img:
            assert np.array_equal(np.asarray(img.convert("RGB")), scene.image)
        words = _words(table["caption"][row])
        assert words & set(COLOUR_NAMES) <= {o.colour for o in scene.objects}
    for i, scene in enumerate(subset):
        first, second = table["caption"][2 * i], table["caption"][2 * i + 1]
        assert first == scene.caption
        if len(scene.objects) > 1:
            assert first != second
