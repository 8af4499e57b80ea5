"""`simseg eval-seg`: the rank-sharded dataset loop, bad samples, the report, and the CLI end to end."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from simseg.errors import InputError
from simseg.evaluate import evaluate_segmentation, evaluation_classes
from simseg.protocols import benchmark_parameters
from simseg.segdata import SegmentationBenchmark

VOC_PALETTE = [c for i in range(256) for c in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)]


def write_voc(root, labels: dict[str, np.ndarray]) -> None:
    """A PASCAL VOC 2012 tree in the exact layout: JPEGs, palette PNG labels, the val list."""
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for stem, lab in labels.items():
        pixels = rng.integers(0, 255, (*lab.shape, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(base / "JPEGImages" / f"{stem}.jpg", quality=95)
        png = Image.fromarray(lab.astype(np.uint8), mode="P")
        png.putpalette(VOC_PALETTE)
        png.save(base / "SegmentationClass" / f"{stem}.png")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("".join(f"{s}\n" for s in labels))


class OracleSegmenter:
    """Predicts a fixed function of the ground truth it is given by file, to make metrics predictable."""

    def __init__(self, dataset, class_names, wrong=()):
        self.labels = {}
        for i in range(len(dataset)):
            try:
                self.labels[dataset.sample_ids[i]] = dataset[i][1]
            except InputError:  # a bad sample: the evaluation must report it, the oracle cannot know it
                pass
        self.class_names = class_names
        self.wrong = set(wrong)
        self.calls = []

    def __call__(self, image):
        # identify the image by its size (each test image has a distinct one)
        stem = next(s for s, lab in self.labels.items() if lab.shape == (image.height, image.width))
        self.calls.append(stem)
        lab = self.labels[stem].astype(np.int32)
        pred = np.where(lab == 255, 0, lab)
        if stem in self.wrong:
            pred = np.zeros_like(pred)
        return SimpleNamespace(labels=pred)


@pytest.fixture
def voc_root(tmp_path):
    labels = {}
    for i in range(5):
        lab = np.zeros((6 + i, 8), np.uint8)
        lab[2:5, 2:6] = i + 1
        lab[0, 0] = 255
        labels[f"2007_00000{i}"] = lab
    write_voc(tmp_path, labels)
    return tmp_path


def test_perfect_and_imperfect_predictions(voc_root):
    ds = SegmentationBenchmark("pascal_voc", voc_root)
    classes, offset = evaluation_classes(ds.class_names)
    assert classes == ds.class_names and offset == 0
    perfect = evaluate_segmentation(OracleSegmenter(ds, classes), ds)
    assert perfect["mIoU"] == pytest.approx(100.0) and perfect["aAcc"] == pytest.approx(100.0)
    assert perfect["num_images"] == 5 and perfect["num_evaluated"] == 5 and perfect["num_bad"] == 0
    assert perfect["per_class"]["aeroplane"]["IoU"] == pytest.approx(100.0)
    assert perfect["per_class"]["monitor"]["IoU"] is None  # never present, never predicted
    seg = OracleSegmenter(ds, classes, wrong={"2007_000004"})
    r = evaluate_segmentation(seg, ds, limit=5)
    assert r["per_class"]["bottle"]["IoU"] == 0.0  # image 4 holds class 5 (bottle), predicted as background
    bg_tp = sum(6 + i for i in range(5)) * 8 - 5 * 12 - 5  # all pixels - objects - ignored
    assert r["per_class"]["background"]["IoU"] == pytest.approx(100 * bg_tp / (bg_tp + 12))
    assert r["mIoU"] == pytest.approx((4 * 100 + 0 + r["per_class"]["background"]["IoU"]) / 6)


def test_sharding_counts_every_image_once(voc_root):
    ds = SegmentationBenchmark("pascal_voc", voc_root)
    classes, _ = evaluation_classes(ds.class_names)
    seen = []
    shards = []
    for rank in range(3):
        seg = OracleSegmenter(ds, classes, wrong={"2007_000001"})
        r = evaluate_segmentation(seg, ds, limit=4, rank=rank, world_size=3,
                                  on_prediction=lambda i, sid, img, gt, res: seen.append(i))
        shards.append(r)
    assert sorted(seen) == [0, 1, 2, 3]  # limit 4: image 4 never touched, none twice
    assert sum(r["num_evaluated"] for r in shards) == 4  # without a process group each rank reports its shard


def _distributed_worker(rank: int, world_size: int, root: str, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        ds = SegmentationBenchmark("pascal_voc", root)
        seg = OracleSegmenter(ds, evaluation_classes(ds.class_names)[0], wrong={"2007_000001", "2007_000004"})
        r = evaluate_segmentation(seg, ds, rank=rank, world_size=world_size)
        if rank == 0:
            with open(out_file, "w") as f:
                json.dump(r, f)
    finally:
        dist.destroy_process_group()


def test_torchrun_style_sharding_equals_single_process(voc_root, tmp_path):
    import torch.multiprocessing as mp

    (voc_root / "VOCdevkit" / "VOC2012" / "JPEGImages" / "2007_000002.jpg").write_bytes(b"")  # one bad sample
    out = tmp_path / "r.json"
    mp.spawn(_distributed_worker, args=(2, str(voc_root), str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    sharded = json.loads(out.read_text())
    ds = SegmentationBenchmark("pascal_voc", voc_root)
    seg = OracleSegmenter(ds, evaluation_classes(ds.class_names)[0], wrong={"2007_000001", "2007_000004"})
    single = evaluate_segmentation(seg, ds)
    assert sharded["num_evaluated"] == single["num_evaluated"] == 4  # every image exactly once
    assert sharded["num_bad"] == 1 and sharded["bad_samples"][0]["sample_id"] == "2007_000002"
    assert 0 < sharded["mIoU"] < 100
    for key in ("mIoU", "aAcc", "mAcc", "per_class"):
        assert sharded[key] == single[key]  # integer counts summed: bit-identical


def test_bad_samples_are_counted_and_named(voc_root, capsys):
    base = voc_root / "VOCdevkit" / "VOC2012"
    (base / "JPEGImages" / "2007_000002.jpg").write_bytes(b"")  # 0-byte image
    Image.new("RGB", (3, 3)).save(base / "JPEGImages" / "2007_000003.jpg")  # size differs from its label
    ds = SegmentationBenchmark("pascal_voc", voc_root)
    classes, _ = evaluation_classes(ds.class_names)
    r = evaluate_segmentation(OracleSegmenter(ds, classes), ds)
    assert r["num_evaluated"] == 3 and r["num_bad"] == 2 and r["num_images"] == 5
    assert [b["sample_id"] for b in r["bad_samples"]] == ["2007_000002", "2007_000003"]
    assert "2007_000002.jpg" in r["bad_samples"][0]["error"] and "empty" in r["bad_samples"][0]["error"]
    assert "2007_000003.png" in r["bad_samples"][1]["error"]
    assert r["mIoU"] == pytest.approx(100.0)
    # in a log: a line per bad sample, and the bar's start and end (it also redrew at each bad sample)
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in err] == ["eval pascal_voc", "bad sample 2007_000002",
                                                     "bad sample 2007_000003", "eval pascal_voc"], err


def test_background_free_variant_counts_background_as_miss(voc_root):
    ds = SegmentationBenchmark("pascal_voc20", voc_root)
    classes, offset = evaluation_classes(ds.class_names)
    assert offset == 1 and classes[0] == "background" and classes[1:] == ds.class_names
    seg = OracleSegmenter(SegmentationBenchmark("pascal_voc", voc_root), classes, wrong={"2007_000000"})
    r = evaluate_segmentation(seg, ds)
    assert "background" not in r["per_class"] and len(r["per_class"]) == 20
    assert r["per_class"]["aeroplane"]["IoU"] == 0.0  # predicted background everywhere on image 0
    assert r["per_class"]["bicycle"]["IoU"] == pytest.approx(100.0)
    assert r["aAcc"] == pytest.approx(100 * 4 / 5)  # only object pixels are labelled, 12 each
    assert r["mIoU"] == pytest.approx(400 / 5)


def test_segmenter_with_other_classes_is_refused(voc_root):
    ds = SegmentationBenchmark("pascal_voc", voc_root)
    with pytest.raises(ValueError, match="classes"):
        evaluate_segmentation(SimpleNamespace(class_names=["background", "cat"]), ds)


def test_paper_top_n_per_benchmark():
    assert benchmark_parameters("pascal_context", "simseg", {}) == {"top_n": 30}
    assert benchmark_parameters("pascal_context59", "simseg", {"top_n": 12}) == {"top_n": 12}
    assert benchmark_parameters("pascal_voc", "simseg", {"threshold_std": 1.5}) == {"threshold_std": 1.5}
    assert benchmark_parameters("pascal_context", "dense", {}) == {}


def test_paper_top_n_is_30_on_both_context_variants_and_10_elsewhere():
    from simseg.protocols import make_params
    from simseg.segdata import BENCHMARKS

    context = {"pascal_context", "pascal_context59"}
    assert context <= set(BENCHMARKS)
    for name in BENCHMARKS:
        params = make_params("simseg", **benchmark_parameters(name, "simseg", {}))
        assert params.top_n == (30 if name in context else 10), name
        assert (params.threshold_std, params.candidates) == (1.0, 5), name





def test_pipelined_evaluation_equals_the_one_image_loop(tmp_path, tiny_model):
    """CRF workers and forward lanes change nothing in the metrics, the bad-sample list or the predictions' order."""
    import torch

    from simseg.segment import Segmenter

    labels = {}
    for i in range(6):
        lab = np.zeros((60 + 7 * i, 80), np.uint8)
        lab[10:40, 10 + i: 50] = 1 + 3 * i
        labels[f"2007_00000{i}"] = lab
    write_voc(tmp_path, labels)
    (tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages" / "2007_000003.jpg").write_bytes(b"")  # one bad sample
    ds = SegmentationBenchmark("pascal_voc", tmp_path)
    seg = Segmenter(tiny_model, ds.class_names, crf=True, templates="single", cache_dir=tmp_path / "cache",
                    threshold_std=0.0)  # the walk keeps every candidate above the mean: several classes per image
    emb = torch.randn(len(seg.class_names), seg.class_emb.shape[1], generator=torch.Generator().manual_seed(5))
    seg.class_emb = emb / emb.norm(dim=-1, keepdim=True)  # scores that spread: a few classes per image
    runs = []
    for crf_workers, lanes in ((0, 1), (2, 2)):
        seen = []
        r = evaluate_segmentation(seg, ds, crf_workers=crf_workers, lanes=lanes, progress=False,
                                  on_prediction=lambda i, sid, img, gt, res: seen.append((i, sid, res.labels)))
        runs.append((r, seen))
    (serial, seen_serial), (piped, seen_piped) = runs
    assert serial["num_evaluated"] == 5 and serial["num_bad"] == 1
    assert sum(len(np.unique(lab)) > 1 for _, _, lab in seen_serial) >= 3  # the CRF's masks made it into the labels
    for key in ("mIoU", "aAcc", "mAcc", "per_class", "num_evaluated", "num_bad", "bad_samples"):
        assert piped[key] == serial[key], key
    assert [(i, sid) for i, sid, _ in seen_piped] == [(i, sid) for i, sid, _ in seen_serial]
    for (_, _, a), (_, _, b) in zip(seen_serial, seen_piped):
        np.testing.assert_array_equal(a, b)
