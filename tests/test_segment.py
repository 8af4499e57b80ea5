"""The zero-shot segmentation protocols (the paper's and the dense one), class embeddings and ``simseg segment``."""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from simseg.classnames import IMAGENET_TEMPLATES
from simseg.embeddings import class_embeddings
from simseg.errors import ConfigError, InputError
from simseg.protocols import make_params
from simseg.segment import (
    SegmentationResult,
    Segmenter,
    _dense_labels,
    _window_starts,
    composite_labels,
    minmax,
    rebuild_uint8,
    select_classes,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def model(tiny_model):
    """A private copy of the session's tiny model."""
    return copy.deepcopy(tiny_model)


# ------------------------------------------------------------------ decisions of the simseg protocol (pure)
def test_threshold_is_mean_plus_unbiased_std_of_the_top_n():
    scores = torch.tensor([0.10, 0.30, 0.25, 0.05, 0.20, 0.00, 0.12], dtype=torch.float32)
    accepted, threshold = select_classes(scores, top_n=4, threshold_std=1.0, candidates=5)
    top = np.array([0.30, 0.25, 0.20, 0.12])
    assert threshold == pytest.approx(top.mean() + top.std(ddof=1), abs=1e-6)  # 0.2175 + 0.0759
    assert accepted == [1]  # 0.30 clears 0.2934; 0.25 does not, and the walk stops there
    _, loose = select_classes(scores, top_n=4, threshold_std=0.5, candidates=5)
    assert loose == pytest.approx(top.mean() + 0.5 * top.std(ddof=1), abs=1e-6)


def test_background_is_skipped_without_ending_the_walk():
    scores = torch.tensor([0.9, 0.8, 0.79, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    accepted, threshold = select_classes(scores, top_n=10)
    assert threshold < 0.79
    assert accepted == [1, 2]  # background (index 0) had the top score and is never segmented
    # with no background class, index 0 is an ordinary class
    assert select_classes(scores, top_n=10, background=None)[0] == [0, 1, 2]


def test_walk_stops_at_the_first_class_below_threshold_and_at_candidates():
    scores = torch.tensor([0.0, 0.9, 0.5, 0.85, 0.84, 0.83, 0.82, 0.81])
    accepted, threshold = select_classes(scores, top_n=8, threshold_std=0.0)  # threshold = mean
    assert accepted == [1, 3, 4, 5, 6]  # 5 candidates, all above the mean
    accepted, _ = select_classes(scores, top_n=8, threshold_std=0.0, candidates=3)
    assert accepted == [1, 3, 4]
    accepted, _ = select_classes(scores, top_n=8, threshold_std=-100.0, candidates=8)
    assert accepted == [1, 3, 4, 5, 6, 7, 2]  # score order, background skipped
    # top_n larger than the number of classes uses them all (the original would crash)
    acc, thr = select_classes(torch.tensor([0.2, 0.4, 0.1]), top_n=10)
    assert thr == pytest.approx(np.mean([0.2, 0.4, 0.1]) + np.std([0.2, 0.4, 0.1], ddof=1), abs=1e-6)
    assert acc == [1]


def _argmax_reference(masks, shape, num_classes):
    """The original's composition: a (C, H, W) float64 array of mask(0/255) x score, argmax over classes."""
    pred = np.zeros((num_classes, *shape))
    for cls, score, mask in masks:
        pred[cls] = (mask.astype(np.uint8) * 255) * score
    return pred.argmax(0)


def test_overlaps_go_to_the_higher_score_and_uncovered_pixels_to_background():
    a = np.zeros((4, 6), bool)
    a[:, :4] = True
    b = np.zeros((4, 6), bool)
    b[:, 2:5] = True
    labels = composite_labels([(1, 0.2, a), (2, 0.3, b)], (4, 6))
    assert labels[0].tolist() == [1, 1, 2, 2, 2, 0]
    labels = composite_labels([(1, 0.4, a), (2, 0.3, b)], (4, 6))
    assert labels[0].tolist() == [1, 1, 1, 1, 2, 0]
    assert not composite_labels([], (4, 6)).any()  # nothing fires: all background


@pytest.mark.parametrize("seed", range(5))
def test_composition_equals_the_originals_argmax(seed):
    rng = np.random.default_rng(seed)
    masks = []
    for cls in rng.choice(np.arange(1, 12), size=5, replace=False):
        score = float(rng.choice([0.31, 0.31, 0.2, -0.05, 0.0, 0.44]))  # ties, negative and zero scores
        masks.append((int(cls), score, rng.random((9, 13)) > 0.5))
    np.testing.assert_array_equal(composite_labels(masks, (9, 13)), _argmax_reference(masks, (9, 13), 12))


def test_crf_image_is_rebuilt_by_truncation():
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, size=(3, 24, 24)).astype(np.float32) / 255
    x = (torch.from_numpy(source) - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    rebuilt = rebuild_uint8(x, MEAN, STD)
    assert rebuilt.dtype == np.uint8 and rebuilt.shape == (24, 24, 3)
    original = np.rint(source * 255).astype(np.int64).transpose(1, 2, 0)
    diff = rebuilt.astype(np.int64) - original
    assert set(np.unique(diff)) <= {-1, 0}  # never rounded up
    assert 0.01 < (diff == -1).mean() < 0.6  # some values land one level low, as in the original
    # exactly the original's float32 torch expression
    expected = ((x * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)) * 255).to(torch.uint8)
    np.testing.assert_array_equal(rebuilt, expected.permute(1, 2, 0).numpy())
    # every level of every channel, against the torch expression
    levels = torch.arange(256, dtype=torch.float32).div(255).view(1, 1, 256).expand(3, 4, 256)
    xl = (levels - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    torch_levels = ((xl * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)) * 255).to(torch.uint8)
    np.testing.assert_array_equal(rebuild_uint8(xl, MEAN, STD), torch_levels.permute(1, 2, 0).numpy())
    # truncation, not rounding: 12.99 -> 12
    almost_13 = ((torch.full((3, 1, 1), 12.99 / 255) - torch.tensor(MEAN).view(3, 1, 1))
                 / torch.tensor(STD).view(3, 1, 1))
    assert rebuild_uint8(almost_13, MEAN, STD).reshape(-1).tolist() == [12, 12, 12]


def test_minmax_and_constant_maps():
    np.testing.assert_allclose(minmax(np.array([[1.0, 3.0], [2.0, 5.0]])), [[0, 0.5], [0.25, 1]])
    assert minmax(np.full((3, 3), 0.7)) is None


def test_protocol_parameters_are_checked():
    p = make_params("simseg", top_n=30, threshold_std=1.5, crf_iterations=5.0)
    assert (p.top_n, p.threshold_std, p.crf_iterations, p.input_size) == (30, 1.5, 5, 288)
    assert isinstance(p.crf_iterations, int)
    with pytest.raises(ConfigError, match="unknown parameter.*top_k"):
        make_params("simseg", top_k=3)
    with pytest.raises(ConfigError, match="integer"):
        make_params("simseg", top_n=2.5)
    with pytest.raises(ConfigError, match="number"):
        make_params("dense", stride="fast")
    with pytest.raises(ConfigError, match="at least 1"):
        make_params("dense", stride=0)
    with pytest.raises(ConfigError, match="unknown protocol"):
        make_params("mmseg")
    assert make_params("dense", bg_threshold=None).bg_threshold is None


@pytest.mark.parametrize(("protocol", "name"), [("simseg", n) for n in ("input_size", "top_n", "candidates",
                                                                         "crf_iterations")]
                         + [("dense", n) for n in ("short_side", "crop_size", "stride", "batch_size")])
def test_protocol_minimums_at_their_boundary(protocol, name):
    assert getattr(make_params(protocol, **{name: 1}), name) == 1
    with pytest.raises(ConfigError, match=f"protocol parameter {name}: must be at least 1, got 0"):
        make_params(protocol, **{name: 0})


def test_dense_defaults_are_the_documented_ones():
    """The dense protocol's own settings (``--preset none``), as docs/protocol.md's table gives them."""
    from dataclasses import asdict

    assert asdict(make_params("dense")) == {"short_side": 448, "crop_size": 448, "stride": 224, "bg_threshold": None,
                                            "batch_size": 8, "long_side": 2048}


def test_protocol_ranges_at_their_boundaries():
    assert make_params("simseg", closing_kernel=0).closing_kernel == 0
    with pytest.raises(ConfigError, match="closing_kernel: must be >= 0, got -1"):
        make_params("simseg", closing_kernel=-1)
    for protocol, name in (("simseg", "no_crf_threshold"), ("dense", "bg_threshold")):
        for edge in (0.0, 1.0):
            assert getattr(make_params(protocol, **{name: edge}), name) == edge
        for outside in (-0.001, 1.001):
            with pytest.raises(ConfigError, match=f"{name}: must be in \\[0, 1\\]"):
                make_params(protocol, **{name: outside})


# ------------------------------------------------------------------ class embeddings and their cache
def test_class_embeddings_match_the_per_class_max_length_recipe(model, tmp_path):
    names = ["background", "cat", "dog"]
    templates = IMAGENET_TEMPLATES[:6]
    emb = class_embeddings(model, names, templates, cache_dir=tmp_path, batch_size=5)
    assert emb.shape == (3, 512) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    with torch.no_grad():  # the original: one class at a time, padded to 25, mean, divided by the norm
        rows = []
        for name in names:
            batch = model.tokenize([t.format(name) for t in templates], padding="max_length")
            e = model.encode_text(batch["input_ids"], batch["attention_mask"]).mean(dim=0)
            rows.append(e / e.norm())
    torch.testing.assert_close(emb, torch.stack(rows), atol=2e-5, rtol=0)


def test_class_embedding_progress_is_whole_lines_in_a_log_and_off_on_request(model, tmp_path, capsys):
    """Many prompts (5 classes x 4 templates in batches of 2: 10 batches) show a bar; redirected, it is whole lines
    (no carriage returns piling into one line); progress=False prints nothing at all."""
    names, templates = ["background", "cat", "dog", "car", "tree"], IMAGENET_TEMPLATES[:4]
    class_embeddings(model, names, templates, cache_dir=tmp_path, batch_size=2, use_cache=False)
    err = capsys.readouterr().err
    assert "encoding class prompts" in err and "\r" not in err and err.endswith("\n")
    class_embeddings(model, names, templates, cache_dir=tmp_path, batch_size=2, use_cache=False, progress=False)
    assert capsys.readouterr().err == ""


def test_class_embedding_cache_hit_key_and_corruption(model, tmp_path, monkeypatch):
    templates = IMAGENET_TEMPLATES[:3]
    first = class_embeddings(model, ["background", "cat"], templates, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1

    calls = []
    real = model.encode_text
    monkeypatch.setattr(model, "encode_text", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = class_embeddings(model, ["background", "cat"], templates, cache_dir=tmp_path)
    assert calls == [] and torch.equal(again, first)  # hit: no text encoding at all

    class_embeddings(model, ["background", "dog"], templates, cache_dir=tmp_path)
    class_embeddings(model, ["background", "cat"], IMAGENET_TEMPLATES[:4], cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 3  # other classes / templates: other keys
    assert calls  # and those were computed

    files[0].write_bytes(b"not a numpy file")
    calls.clear()
    healed = class_embeddings(model, ["background", "cat"], templates, cache_dir=tmp_path)
    assert calls and torch.allclose(healed, first)
    assert torch.equal(torch.from_numpy(np.load(files[0])), healed)  # rewritten
    assert not list(tmp_path.glob("*.tmp"))


def test_a_cache_file_with_damaged_rows_under_an_intact_header_is_recomputed(model, tmp_path):
    templates = ("a photo of a {}.",)
    first = class_embeddings(model, ["background", "cat"], templates, cache_dir=tmp_path, progress=False)
    (path,) = tmp_path.glob("*.npy")
    for damaged in (np.zeros_like(first.numpy()), 3 * first.numpy()):  # zeroed pages, or any other bytes
        np.save(path, damaged.astype(np.float32))
        again = class_embeddings(model, ["background", "cat"], templates, cache_dir=tmp_path, progress=False)
        torch.testing.assert_close(again, first, rtol=0, atol=1e-6)
        torch.testing.assert_close(torch.from_numpy(np.load(path)), first, rtol=0, atol=1e-6)  # rewritten


def test_cache_dir_defaults_to_simseg_cache(model, tmp_path, monkeypatch):
    monkeypatch.setenv("SIMSEG_CACHE", str(tmp_path))
    class_embeddings(model, ["background", "cat"], ("a photo of a {}.",))
    assert len(list((tmp_path / "text").glob("*.npy"))) == 1


# ------------------------------------------------------------------ the simseg protocol through the Segmenter
@pytest.fixture(scope="module")
def segmenter_nocrf(model, tmp_path_factory):
    return Segmenter(model, "cat,dog,sky,tree,road,car,bus,boat,bird,horse", crf=False, templates="single",
                     cache_dir=tmp_path_factory.mktemp("cache"))


def test_segmenter_setup_and_protocol_info(segmenter_nocrf, model):
    seg = segmenter_nocrf
    assert seg.class_names[:4] == ["background", "cat", "dog", "sky"] and len(seg.class_names) == 11
    assert model.image_size == 224 and seg.protocol.input_size == 288  # runs at 288 without changing the model
    info = seg.protocol_info()
    for key, value in {"name": "simseg", "input_size": 288, "top_n": 10, "threshold_std": 1.0, "candidates": 5,
                       "crf": False, "crf_iterations": 3, "crf_gauss_sxy": 3, "crf_gauss_compat": 3,
                       "crf_bilateral_sxy": 40, "crf_bilateral_srgb": 13, "crf_bilateral_compat": 10,
                       "closing_kernel": 7, "templates": "single"}.items():
        assert info[key] == value, key


def _region_tokens(emb: torch.Tensor, layout: np.ndarray) -> torch.Tensor:
    """Patch tokens: per grid cell, a unit vector orthogonal to all classes plus 4 x (or ``weight`` x) the embedding
    of each class in the cell (layout entries: tuples of class indices or of (class, weight) pairs)."""
    rng = torch.Generator().manual_seed(0)
    noise = torch.randn(emb.shape[1], generator=rng)
    noise = noise - (emb.T @ torch.linalg.lstsq(emb.T, noise).solution)  # orthogonal to every class
    rows = []
    for cell in layout.reshape(-1):
        t = noise / noise.norm()
        for c in cell:
            cls, weight = c if isinstance(c, tuple) else (c, 4.0)
            t = t + weight * emb[cls]
        rows.append(t)
    return torch.stack(rows)


def _with_orthonormal_classes(seg: Segmenter) -> Segmenter:
    """A copy whose class embeddings are orthonormal (a random tiny model's are nearly parallel)."""
    seg = copy.copy(seg)
    q, _ = torch.linalg.qr(torch.randn(512, len(seg.class_names), generator=torch.Generator().manual_seed(1)))
    seg.class_emb = q.T.contiguous()
    return seg


def test_postprocess_decisions_on_crafted_patch_tokens(segmenter_nocrf):
    seg = _with_orthonormal_classes(segmenter_nocrf)
    # 18 x 18 grid: cat on the left third, dog on the right third, both in the middle, nothing at the bottom
    layout = np.empty((18, 18), dtype=object)
    for i in range(18):
        for j in range(18):
            layout[i, j] = () if i >= 12 else (1,) if j < 6 else (2,) if j >= 12 else (1, 2)
    tokens = _region_tokens(seg.class_emb, layout)
    x = torch.zeros(1, 3, 288, 288)
    # background tops the scores and is skipped; cat and dog pass the threshold (0.3175); sky stops the walk
    others = [0.02] * 7
    scores = torch.tensor([0.50, 0.33, 0.35, *others])
    result = seg.postprocess(x, tokens, (18, 18), scores, size=(144, 90))
    assert isinstance(result, SegmentationResult)
    assert result.labels.shape == (90, 144) and result.labels.dtype == np.int32
    assert result.details["accepted"] == ["dog", "cat"]  # walk (score) order
    h, w = result.labels.shape
    top, bottom = result.labels[: h * 12 // 18 - 4], result.labels[h * 12 // 18 + 4:]
    assert (top[:, 4: w // 3 - 4] == 1).all()  # cat only
    assert (top[:, w * 2 // 3 + 4: -4] == 2).all()  # dog only
    assert (top[:, w // 3 + 4: w * 2 // 3 - 4] == 2).all()  # both: the higher score (dog) wins
    assert (bottom == 0).all()  # no class fires: background
    assert [name for name, _ in result.found] == ["dog", "cat"]
    np.testing.assert_allclose(result.scores, scores.numpy())

    flipped = seg.postprocess(x, tokens, (18, 18), torch.tensor([0.50, 0.36, 0.35, *others]), size=(144, 90))
    assert (flipped.labels[: h * 12 // 18 - 4, w // 3 + 4: w * 2 // 3 - 4] == 1).all()  # now cat wins the overlap

    nothing = seg.postprocess(x, tokens, (18, 18), torch.tensor([0.5, 0.2, 0.2, *others]), size=(144, 90))
    assert nothing.details["accepted"] == [] and not nothing.labels.any() and nothing.found == []


def test_postprocess_with_crf_uses_the_rebuilt_image(model, tmp_path):
    seg = _with_orthonormal_classes(Segmenter(model, "cat,dog", crf=True, templates="single",
                                              cache_dir=tmp_path))
    layout = np.empty((18, 18), dtype=object)
    for i in range(18):
        for j in range(18):
            layout[i, j] = (1,) if j < 8 else ((1, 0.75),) if j == 8 else ()
    tokens = _region_tokens(seg.class_emb, layout)
    # image: left 8 patch columns red, the rest blue; the 9th column (blue) is weakly cat (p = 0.6 after min-max):
    # the CRF pulls it out of the cat mask, the no-CRF threshold keeps it
    img = np.zeros((288, 288, 3), np.uint8)
    img[:, :128] = (220, 30, 30)
    img[:, 128:] = (20, 30, 220)
    x = seg.preprocess(Image.fromarray(img))
    calls = []

    def counting_crf(image, prob, **kw):
        from simseg.crf import dense_crf_binary

        calls.append(image.copy())
        return dense_crf_binary(image, prob, **kw)

    result = seg.postprocess(x, tokens, (18, 18), torch.tensor([0.1, 0.5, 0.0]), size=(288, 288),
                             crf_fn=counting_crf)
    assert len(calls) == 1  # one CRF call: cat; dog was not accepted
    np.testing.assert_array_equal(calls[0], rebuild_uint8(x[0], MEAN, STD))
    assert (result.labels[:, 4:124] == 1).all() and (result.labels[:, 132:] == 0).all()
    no_crf = copy.copy(seg)
    no_crf.crf = False
    plain = no_crf.postprocess(x, tokens, (18, 18), torch.tensor([0.1, 0.5, 0.0]), size=(288, 288))
    assert (plain.labels[:, 4:140] == 1).all() and (plain.labels[:, 148:] == 0).all()


def test_segmenter_on_a_real_image(segmenter_nocrf):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8))
    result = segmenter_nocrf(image)
    assert result.labels.shape == (37, 53)
    assert result.scores.shape == (11,)
    assert result.protocol["name"] == "simseg"


def test_segment_convenience_takes_paths_and_lists(model, tmp_path):
    from simseg.segment import segment

    path = tmp_path / "img.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(path)
    one = segment(model, path, "cat, dog", crf=False, templates="single", cache_dir=tmp_path)
    assert isinstance(one, SegmentationResult) and one.labels.shape == (20, 30)
    assert one.class_names == ["background", "cat", "dog"]
    many = segment(model, [path, Image.open(path)], ["cat"], crf=False, templates="single",
                          cache_dir=tmp_path)
    assert [r.labels.shape for r in many] == [(20, 30), (20, 30)]


@pytest.mark.parametrize("protocol", ["simseg", "dense"])
def test_a_pil_image_of_any_mode_segments_as_its_file_does(model, tmp_path, protocol):
    from simseg.images import load_image
    from simseg.segment import segment
    from simseg.visualize import overlay

    rng = np.random.default_rng(5)
    rgba = np.dstack([rng.integers(0, 256, (24, 40, 3)), rng.integers(0, 256, (24, 40))]).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rng.integers(0, 65536, (24, 40)).astype(np.uint16)).save(tmp_path / "grey16.png")
    params = {"crf": False} if protocol == "simseg" else {"short_side": 32, "crop_size": 32, "stride": 16}
    for name in ("rgba.png", "grey16.png"):
        opened = Image.open(tmp_path / name)
        assert opened.mode in ("RGBA", "I;16")
        from_file, from_pil = segment(model, [tmp_path / name, opened], "cat, dog", protocol=protocol,
                                      templates="single", cache_dir=tmp_path, **params)
        # Image.convert("RGB") would clip the 16-bit values to white and drop the alpha channel
        np.testing.assert_array_equal(from_pil.scores, from_file.scores)
        np.testing.assert_array_equal(from_pil.labels, from_file.labels)
        np.testing.assert_array_equal(np.asarray(overlay(opened, from_pil.labels, from_pil.class_names)),
                                      np.asarray(overlay(load_image(tmp_path / name), from_file.labels,
                                                         from_file.class_names)))


# ------------------------------------------------------------------ the dense protocol
def test_window_starts_cover_the_image():
    assert _window_starts(448, 448, 224) == [0]
    assert _window_starts(600, 448, 224) == [0, 152]
    assert _window_starts(1000, 448, 224) == [0, 224, 448, 552]


def test_dense_labels_equal_interpolate_then_argmax():
    logits = torch.randn(5, 7, 9)
    up = F.interpolate(logits[None], size=(20, 31), mode="bilinear", align_corners=False)[0]
    np.testing.assert_array_equal(_dense_labels(logits, 20, 31, None, max_elements=200), up.argmax(0))
    prob = up[1:].softmax(0)
    best, idx = prob.max(0)
    expected = torch.where(best < 0.4, 0, idx + 1)
    np.testing.assert_array_equal(_dense_labels(logits, 20, 31, 0.4, max_elements=200), expected)
    # ties (equal class maps, constant logits) go to the lowest class index, as argmax's
    tied = torch.cat([torch.zeros(2, 7, 9), torch.randint(-1, 1, (4, 7, 9)).float(), torch.zeros(1, 7, 9)])
    up = F.interpolate(tied[None], size=(20, 31), mode="bilinear", align_corners=False)[0]
    np.testing.assert_array_equal(_dense_labels(tied, 20, 31, None, max_elements=200), up.argmax(0))


def test_dense_protocol_on_a_non_square_image(model, tmp_path):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 70, 3), dtype=np.uint8))
    seg = Segmenter(model, ["cat", "dog"], protocol="dense", templates="single", cache_dir=tmp_path,
                    short_side=48, crop_size=32, stride=16)
    result = seg(image)
    assert result.labels.shape == (30, 70) and result.labels.dtype == np.int32
    assert result.details["windows"] == 12  # 48 x 112 after resizing: 2 rows x 6 columns of 32-pixel windows
    assert result.protocol["name"] == "dense" and result.protocol["crf"] is False
    assert model.image_size == 224  # the windows ran at 32 without changing the model
    assert set(np.unique(result.labels)) <= {0, 1, 2}
    everything = Segmenter(model, ["cat", "dog"], protocol="dense", templates="single", cache_dir=tmp_path,
                           short_side=32, crop_size=32, stride=16, bg_threshold=1.0)(image)
    assert not everything.labels.any()  # no probability reaches 1: all background
    small = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    assert seg(small).labels.shape == (10, 20)



def _mmseg_keep_ratio_size(width: int, height: int, long_side: int, short_side: int) -> tuple[int, int]:
    """MMSegmentation's ``Resize(scale=(long_side, short_side), keep_ratio=True)`` size, written out independently:
    the largest scale at which neither the long side exceeds ``long_side`` nor the short side ``short_side``."""
    scale = min(long_side / max(width, height), short_side / min(width, height))
    return int(width * scale + 0.5), int(height * scale + 0.5)


@pytest.mark.parametrize(("size", "windows"), [((600, 8), 4), ((8, 600), 4), ((70, 30), 3)])
def test_dense_protocol_bounds_the_long_side_as_mmsegmentation_does(model, tmp_path, size, windows):
    """A strip is resized so its long side is ``long_side`` (a handful of windows, not one per 32 pixels of a 2400-pixel
    side); an ordinary image keeps the short-side rule."""
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    seg = Segmenter(model, ["cat", "dog"], protocol="dense", templates="single", cache_dir=tmp_path,
                    short_side=32, long_side=128, crop_size=32, stride=32)
    result = seg(image)
    assert result.labels.shape == (size[1], size[0])
    w, h = _mmseg_keep_ratio_size(*size, long_side=128, short_side=32)
    expected = -(-max(w, 32) // 32) * -(-max(h, 32) // 32)  # windows of 32 at stride 32 over the padded image
    assert result.details["windows"] == expected == windows
    assert result.protocol["long_side"] == 128

# ------------------------------------------------------------------ the CLI


def test_class_embedding_cache_does_not_depend_on_the_image_size(tiny_model, tmp_path):
    import copy

    from simseg.embeddings import class_embeddings

    m = copy.deepcopy(tiny_model)
    names = ["background", "cat", "dog"]
    class_embeddings(m, names, templates=("a photo of a {}.",), cache_dir=tmp_path)
    m.set_image_size(96 if m.image_size != 96 else 64)  # the dense protocol rebuilds the ViT for its size
    class_embeddings(m, names, templates=("a photo of a {}.",), cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 1




# ------------------------------------------------------------------ synonyms: a class scores as the max over its names
def _unit_rows(n: int, dim: int = 512, seed: int = 3) -> torch.Tensor:
    e = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    return e / e.norm(dim=-1, keepdim=True)


def _explicit_class_max(values: torch.Tensor, class_of_name: list[int]) -> torch.Tensor:
    """(..., N names) -> (..., C classes), one class at a time: the maximum over the columns of its names."""
    cols = []
    for c in range(max(class_of_name) + 1):
        own = [i for i, k in enumerate(class_of_name) if k == c]
        cols.append(values[..., own].max(dim=-1).values)
    return torch.stack(cols, dim=-1)


def test_segmenter_synonyms_setup_and_checks(model, tmp_path):
    seg = Segmenter(model, ["cat", "dog"], synonyms=[["cat", "kitty"], ["dog"]], crf=False, templates="single",
                    cache_dir=tmp_path)
    assert seg.class_names == ["background", "cat", "dog"]
    assert seg.names == ["background", "cat", "kitty", "dog"] and seg.class_of_name == [0, 1, 1, 2]
    flat = class_embeddings(model, seg.names, ("a photo of a {}.",), cache_dir=tmp_path)
    assert torch.equal(seg.class_emb, flat)  # one embedding per name, from the same per-name cache
    # background given: the synonyms name it too; one name per class (a renaming) needs no reduction
    renamed = Segmenter(model, "background,cat", synonyms=[["sky", "wall"], ["feline"]], crf=False,
                        templates="single", cache_dir=tmp_path)
    assert renamed.names == ["sky", "wall", "feline"] and renamed.class_of_name == [0, 0, 1]
    single = Segmenter(model, "cat", synonyms=[["feline"]], crf=False, templates="single", cache_dir=tmp_path)
    assert single.names == ["background", "feline"] and single.class_of_name is None
    with pytest.raises(InputError, match="2 lists of names for 1 classes"):
        Segmenter(model, "cat", synonyms=[["cat"], ["dog"]], crf=False, templates="single", cache_dir=tmp_path)
    with pytest.raises(InputError, match="'cat' has an empty name"):
        Segmenter(model, "cat", synonyms=[["cat", ""]], crf=False, templates="single", cache_dir=tmp_path)


def test_dense_labels_with_synonyms_equal_an_explicit_max():
    class_of_name = [0, 1, 1, 2, 3, 3, 3]
    logits = torch.randn(7, 6, 8, generator=torch.Generator().manual_seed(0)) * 3
    up = F.interpolate(logits[None], size=(17, 23), mode="bilinear", align_corners=False)[0]
    per_pixel = up.permute(1, 2, 0)  # (H, W, names)
    expected = _explicit_class_max(per_pixel, class_of_name).argmax(dim=-1)
    got = _dense_labels(logits, 17, 23, None, max_elements=300, class_of_name=class_of_name)
    np.testing.assert_array_equal(got, expected)
    # with a background threshold: softmax over the foreground names, a class's probability is its best name's
    prob = up[1:].softmax(dim=0).permute(1, 2, 0)
    best, idx = _explicit_class_max(prob, [k - 1 for k in class_of_name[1:]]).max(dim=-1)
    expected = torch.where(best < 0.45, 0, idx + 1)
    assert 0 < (expected == 0).sum() < expected.numel()  # the threshold decides some pixels, not all
    np.testing.assert_array_equal(_dense_labels(logits, 17, 23, 0.45, max_elements=300,
                                                class_of_name=class_of_name), expected)


@pytest.mark.parametrize("bg_threshold", [None, 0.3])
def test_dense_protocol_synonyms_through_the_segmenter(model, tmp_path, bg_threshold):
    kw = dict(protocol="dense", templates="single", cache_dir=tmp_path, short_side=48, crop_size=32, stride=16,
              bg_threshold=bg_threshold)
    syn = Segmenter(model, ["cat", "dog"], synonyms=[["cat", "kitty", "tabby"], ["dog"]], **kw)
    flat = Segmenter(model, syn.names, **kw)  # the same names as classes of their own
    emb = _unit_rows(len(syn.names))  # distinct directions: a random tiny model's embeddings are nearly parallel
    syn.class_emb, flat.class_emb = emb, emb.clone()
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    per_name, per_class = flat(image), syn(image)
    assert len(np.unique(per_name.labels)) > 2  # several names win pixels: the mapping below is tested
    # the class of each pixel is the class of its most probable name ...
    np.testing.assert_array_equal(per_class.labels, np.asarray(syn.class_of_name)[per_name.labels])
    # ... and the image-level score of a class is the best of its names' scores
    expected = _explicit_class_max(torch.from_numpy(per_name.scores), syn.class_of_name).numpy()
    np.testing.assert_allclose(per_class.scores, expected, rtol=0, atol=1e-6)
    assert per_class.class_names == ["background", "cat", "dog"] and per_class.scores.shape == (3,)


def test_simseg_protocol_synonyms_scores_and_patch_maps(model, tmp_path):
    from simseg.crf import closing

    syn = Segmenter(model, "cat,dog,sky", synonyms=[["cat", "kitty"], ["dog"], ["sky", "clouds"]], crf=False,
                    templates="single", cache_dir=tmp_path, threshold_std=0.0)
    flat = Segmenter(model, syn.names, crf=False, templates="single", cache_dir=tmp_path)
    # image-level scores from the real model: each class's is its best name's
    x = syn.preprocess(Image.fromarray(np.random.default_rng(3).integers(0, 256, (50, 60, 3), dtype=np.uint8)))
    _, _, class_scores = syn.forward(x)
    _, _, name_scores = flat.forward(x)
    torch.testing.assert_close(class_scores, _explicit_class_max(name_scores, syn.class_of_name), rtol=0, atol=0)

    # per-patch maps on crafted tokens: "kitty" (name 2) on the left, "dog" (name 3) on the right
    emb = _unit_rows(len(syn.names))
    syn.class_emb = emb
    layout = np.empty((18, 18), dtype=object)
    for i in range(18):
        for j in range(18):
            layout[i, j] = () if i >= 12 else (2,) if j < 6 else (3,) if j >= 12 else (2, 3)
    tokens = _region_tokens(emb, layout)
    scores = torch.tensor([0.05, 0.5, 0.45, 0.0])  # threshold = their mean: cat and dog pass
    result = syn.postprocess(torch.zeros(1, 3, 288, 288), tokens, (18, 18), scores, size=(144, 90))
    # the reference: explicit per-class maxima of the patch cosines, then the protocol's own steps
    sims = _explicit_class_max(F.normalize(tokens, dim=-1) @ emb.T, syn.class_of_name)  # (patches, classes)
    accepted, _ = select_classes(scores, top_n=10, threshold_std=0.0)
    masks = []
    for c in accepted:
        prob = minmax(sims[:, c].reshape(18, 18).numpy())
        prob = np.repeat(np.repeat(prob, 16, axis=0), 16, axis=1)
        masks.append((c, float(scores[c]), closing(prob > 0.5, 7)))
    expected = cv2.resize(composite_labels(masks, (288, 288)), (144, 90), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(result.labels, expected)
    assert result.details["accepted"] == ["cat", "dog"]
    assert (result.labels[:40, 8:40] == 1).all()  # the left region is cat through its synonym "kitty"


@pytest.mark.parametrize("batch_size", [1, 5, 11, 12])  # 12 windows: one short of a batch, exactly one
def test_dense_protocol_equals_a_direct_sliding_window_computation(model, tmp_path, batch_size):
    from torchvision.transforms import functional as TF

    seg = Segmenter(model, ["cat", "dog", "sky"], protocol="dense", templates="single", cache_dir=tmp_path,
                    short_side=40, crop_size=32, stride=16, batch_size=batch_size)
    seg.class_emb = _unit_rows(4, seed=5)
    image = Image.fromarray(np.random.default_rng(4).integers(0, 256, (30, 75, 3), dtype=np.uint8))
    got = seg(image).labels
    # the protocol written out directly: every window, its upsampled cosines summed, averaged, one upsampling
    x = TF.normalize(TF.to_tensor(TF.resize(image, 40)), MEAN, STD)
    _, h, w = x.shape
    acc, hits = torch.zeros(4, h, w), torch.zeros(1, h, w)
    with torch.inference_mode():
        for y in sorted({min(i * 16, h - 32) for i in range((h - 32 + 15) // 16 + 1)}):
            for xx in sorted({min(i * 16, w - 32) for i in range((w - 32 + 15) // 16 + 1)}):
                tokens, (gh, gw) = model.encode_image_tokens(x[None, :, y:y + 32, xx:xx + 32])
                sim = (F.normalize(tokens[0], dim=-1) @ seg.class_emb.T).T.contiguous().reshape(1, 4, gh, gw)
                acc[:, y:y + 32, xx:xx + 32] += F.interpolate(sim, size=(32, 32), mode="bilinear")[0]
                hits[:, y:y + 32, xx:xx + 32] += 1
        logits = acc / hits / model.temperature()
        full = F.interpolate(logits[None], size=(30, 75), mode="bilinear", align_corners=False)[0]
    expected = full.argmax(dim=0).numpy()
    np.testing.assert_array_equal(got, expected)
    assert len(np.unique(expected)) > 1


# ------------------------------------------------------------------ the paper's rules at their boundaries, and written out
def test_default_rule_accepts_a_score_exactly_at_the_threshold():
    """The paper's defaults (top 10, mean + 1.0 x unbiased std, 5 candidates) on scores whose threshold is exact in
    binary: the top ten are 13/32, 9/32, 7/32, 6/32, 5/32, 4/32, 3/32, 3/32, 0, 0 (mean 5/32, std 4/32), so the
    threshold is 9/32 exactly, and the class scoring 9/32 is kept: the walk stops only BELOW the threshold."""
    scores = torch.tensor([13, 0, 7, -16, 9, 6, -8, 5, 4, 3, -24, 3, 0, -32, -4], dtype=torch.float32) / 32
    top = np.sort(scores.numpy().astype(np.float64))[::-1][:10]
    assert top.mean() + 1.0 * top.std(ddof=1) == 9 / 32  # the independent computation: exact
    accepted, threshold = select_classes(scores)
    assert threshold == 9 / 32
    assert accepted == [4]  # background (13/32) skipped, 9/32 kept (equal), 7/32 below: the walk stops
    assert select_classes(scores, background=None)[0] == [0, 4]
    # the threshold is over the top 10 only: the 5 lowest scores (-1/8 .. -1) would lower the mean and widen the std
    assert select_classes(scores, top_n=15)[1] != threshold and select_classes(scores, top_n=11)[1] != threshold


def test_walk_covers_exactly_five_candidates_background_included():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, -2.0], dtype=torch.float32)
    # threshold = the mean of all eight (0.275): seven classes are above it, but only the top 5 (background among them) walk
    assert select_classes(scores, top_n=8, threshold_std=0.0)[0] == [1, 2, 3, 4]
    assert select_classes(scores, top_n=8, threshold_std=0.0, background=None)[0] == [0, 1, 2, 3, 4]
    assert select_classes(scores, top_n=8, threshold_std=0.0, candidates=6)[0] == [1, 2, 3, 4, 5]


def _bump_tokens(num_classes: int, centres: dict[int, tuple[float, float]], grid: int = 18) -> torch.Tensor:
    """(grid * grid, 512) patch tokens whose dimension c is a smooth bump around ``centres[c]`` (in patches), plus
    noise in the dimensions no class uses. With one-hot class embeddings a patch's cosine to class c is then its
    normalised dimension c: exact, whatever the matrix product's blocking."""
    g = torch.Generator().manual_seed(11)
    yy, xx = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                            indexing="ij")
    tokens = torch.zeros(grid * grid, 512)
    tokens[:, num_classes:] = 0.3 * torch.randn(grid * grid, 512 - num_classes, generator=g)
    for c, (cy, cx) in centres.items():
        tokens[:, c] = (3.0 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0 ** 2))).reshape(-1)
    return tokens


def _discs_image(centres: dict[int, tuple[float, float]], size: int = 288) -> Image.Image:
    """Grey noise with one coloured disc per class, a little off its bump: the CRF has edges to snap to."""
    rng = np.random.default_rng(12)
    img = rng.normal(110, 20, (size, size, 3))
    yy, xx = np.mgrid[:size, :size]
    for i, (c, (cy, cx)) in enumerate(sorted(centres.items())):
        colour = np.array([(60 * i + 200) % 256, (110 * i + 40) % 256, (170 * i + 90) % 256], np.float64)
        inside = (yy - 16 * cy - 10) ** 2 + (xx - 16 * cx + 6) ** 2 < (16 * 3.2) ** 2
        img[inside] = colour + rng.normal(0, 10, (int(inside.sum()), 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _paper_reference(tokens, class_emb, scores, x, size, top_n, crf):
    """The paper's steps 3-6 written out with literal numbers (top ``top_n``, mean + 1.0 x unbiased std, top 5, skip
    background, nearest x16, min-max, the dense CRF with 3/3, 40/13/10 and 3 iterations, one 7 x 7 dilation then one
    erosion, argmax of the score-weighted masks, nearest resize). Returns (labels, accepted, threshold)."""
    from tests.test_crf import _direct_crf

    s = scores.numpy().astype(np.float64)
    top = np.sort(s)[::-1][:top_n]
    threshold = top.mean() + 1.0 * top.std(ddof=1)
    assert np.abs(s - threshold).min() > 1e-4  # no float32 rounding question in this fixture
    accepted = []
    for c in np.argsort(-s, kind="stable")[:5]:
        if c == 0:
            continue
        if s[c] < threshold:
            break
        accepted.append(int(c))
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    image = ((x[0] * std + mean) * 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    sims = (F.normalize(tokens, dim=-1) @ class_emb.T).numpy()
    weighted = np.zeros((len(s), 288, 288))
    kernel = np.ones((7, 7), np.uint8)
    for c in accepted:
        m = sims[:, c].reshape(18, 18).repeat(16, axis=0).repeat(16, axis=1)
        p = (m - m.min()) / (m.max() - m.min())
        mask = _direct_crf(image, p)[0] if crf else (p > 0.5)
        mask = cv2.erode(cv2.dilate(mask.astype(np.uint8) * 255, kernel), kernel) > 0
        weighted[c] = mask * s[c]
    labels = weighted.argmax(axis=0).astype(np.uint8)
    return cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST), accepted, threshold


@pytest.mark.parametrize(("num_classes", "params", "crf"), [(14, {}, True), (14, {}, False),
                                                            (35, {"top_n": 30}, True)])
def test_simseg_postprocess_equals_the_papers_steps_written_out(model, num_classes, params, crf):
    """Everything after the forward, compared label for label with the paper's description computed here: the
    threshold over the top 10 (or 30, PASCAL Context's), the 5-candidate walk, the maps, the CRF, the closing, the
    composition and the resize."""
    from simseg.segment import make_protocol

    centres = {1: (4.0, 4.0), 2: (4.5, 12.0), 3: (12.0, 5.0), 4: (12.5, 12.5), 5: (8.0, 8.5), 6: (2.0, 15.0)}
    tokens = _bump_tokens(num_classes, centres)
    class_emb = torch.eye(num_classes, 512)
    high = {0: 0.35, 3: 0.33, 1: 0.32, 5: 0.31, 2: 0.30, 4: 0.29, 6: 0.28}  # background on top: skipped
    it = iter(np.linspace(0.02, -0.4, num_classes - len(high)))
    scores = torch.tensor([high[c] if c in high else float(next(it)) for c in range(num_classes)],
                          dtype=torch.float32)
    if num_classes == 14:  # ten scores set the threshold: only four are well above the rest (background, 3, 1, 5)
        scores[[2, 4, 6]] = torch.tensor([0.05, 0.04, 0.03])
    protocol = make_protocol("simseg", crf=crf, **params)
    x = protocol.preprocess(_discs_image(centres))
    names = ["background"] + [f"class{c}" for c in range(1, num_classes)]
    result = protocol.postprocess(model, class_emb, names, x, tokens, (18, 18), scores, size=(200, 150))
    top_n = params.get("top_n", 10)
    expected, accepted, threshold = _paper_reference(tokens, class_emb, scores, x, (200, 150), top_n, crf)
    assert result.details["accepted"] == [names[c] for c in accepted]
    assert result.details["threshold"] == pytest.approx(threshold, abs=1e-6)
    np.testing.assert_array_equal(result.labels, expected)
    # the fixture decides something: several classes segmented, each winning pixels
    assert accepted == ([3, 1, 5] if num_classes == 14 else [3, 1, 5, 2])
    assert set(np.unique(expected)) == {0, *accepted}


def test_simseg_forward_is_a_square_288_input_and_top5_pooled_cosines(model):
    """Step 1 and 3 of the paper: Resize((288, 288)) (PIL bilinear), ToTensor, Normalize with ImageNet's numbers, an
    18 x 18 grid; image-level scores = cosine of the top-5 LoDA-pooled image embedding with each class embedding."""
    from torchvision import transforms as T

    from simseg.segment import make_protocol

    protocol = make_protocol("simseg", crf=False)
    image = Image.fromarray(np.random.default_rng(5).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    x = protocol.preprocess(image)
    reference = T.Compose([T.Resize((288, 288)), T.ToTensor(),
                           T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])(image)
    assert x.shape == (1, 3, 288, 288) and torch.equal(x[0], reference)
    class_emb = _unit_rows(6, seed=9)
    tokens, grid, scores = protocol.forward(model, class_emb, x)
    assert grid == (18, 18) and tokens.shape[0] == 324
    with torch.no_grad():
        patches, _ = model.encode_image_tokens(x)
    pooled = patches[0].sort(dim=0, descending=True).values[:5].mean(dim=0)
    pooled = pooled / (pooled.pow(2).sum().sqrt() + 1e-8)
    torch.testing.assert_close(scores, class_emb @ pooled, rtol=0, atol=1e-6)
    torch.testing.assert_close(tokens, patches[0], rtol=0, atol=0)


def test_without_crf_a_pixel_at_exactly_one_half_is_background(model):
    """The "without CRF" variant decides each pixel by the argmax of [1 - p, p], whose tie (p = 0.5 exactly) goes to
    the first label, background: here the left patches score -1, the middle 0 and the right +1 for the class, so
    after min-max the middle is exactly 0.5 and stays background."""
    from simseg.segment import make_protocol

    class_emb = torch.eye(3, 512)
    tokens = torch.zeros(18, 18, 512)
    tokens[:, :6, 1] = -1.0
    tokens[:, 6:12, 10] = 1.0  # orthogonal to every class: cosine 0
    tokens[:, 12:, 1] = 1.0
    protocol = make_protocol("simseg", crf=False)
    result = protocol.postprocess(model, class_emb, ["background", "cat", "dog"], torch.zeros(1, 3, 288, 288),
                                  tokens.reshape(324, 512), (18, 18), torch.tensor([0.1, 0.5, 0.0]), size=(288, 288))
    assert result.details["accepted"] == ["cat"]
    assert (result.labels[:, 200:] == 1).all()
    assert not result.labels[:, :188].any()  # -1 (p = 0) and 0 (p = 0.5 exactly): background

# ------------------------------------------------------------------ the pipelined path (segment_many)
def _photo_like(seed: int, size: tuple[int, int]) -> Image.Image:
    """Smooth colour fields with flat shapes: images on which the CRF has edges to follow."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = cv2.resize(rng.integers(0, 256, (4, 5, 3)).astype(np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(3):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.circle(img, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(10, 60)), color, -1)
    return Image.fromarray(img)


def _random_class_segmenter(model, tmp_path, crf: bool = True) -> Segmenter:
    """21 classes with random unit embeddings, so that the walk accepts a few classes per image, as a trained
    model's scores do (a random tiny model's own class embeddings are nearly parallel)."""
    from simseg.classnames import benchmark_classes

    seg = Segmenter(model, benchmark_classes("pascal_voc"), crf=crf, templates="single", cache_dir=tmp_path)
    emb = torch.randn(len(seg.class_names), seg.class_emb.shape[1], generator=torch.Generator().manual_seed(5))
    seg.class_emb = emb / emb.norm(dim=-1, keepdim=True)
    return seg


def test_segment_many_with_crf_workers_gives_the_serial_labels(model, tmp_path):
    seg = _random_class_segmenter(model, tmp_path)
    images = [_photo_like(i, size) for i, size in enumerate([(160, 120), (96, 128), (200, 150), (64, 64)] * 3)]
    serial = [seg(im) for im in images]
    # the comparison means something: the CRF ran on several classes of several images, and changed their maps
    crf_calls = sum(sum(1 for name in r.details["accepted"] if r.scores[r.class_names.index(name)] > 0)
                    for r in serial)
    assert crf_calls >= 10 and sum(len(r.found) > 1 for r in serial) >= 2
    no_crf = copy.copy(seg)
    no_crf.crf = False
    assert sum(not np.array_equal(no_crf(im).labels, r.labels) for im, r in zip(images, serial)) >= 6
    from simseg.crf import CRFPool

    def check(piped):
        assert len(piped) == len(images)
        for a, b in zip(serial, piped):
            np.testing.assert_array_equal(a.labels, b.labels)
            assert a.details == b.details and a.found == b.found
            np.testing.assert_array_equal(a.scores, b.scores)

    for crf_workers, lanes in ((2, 1), (1, 3)):
        check(list(seg.segment_many(iter(images), crf_workers=crf_workers, lanes=lanes)))
    with CRFPool(2) as pool:  # a pool of the caller's, shared by two runs
        pool.start().wait_ready()
        for lanes in (1, 2):
            check(list(seg.segment_many(images, lanes=lanes, crf_pool=pool)))


def test_segment_many_without_workers_and_its_errors(model, tmp_path):
    seg = _random_class_segmenter(model, tmp_path, crf=False)
    images = [_photo_like(i, (80, 60)) for i in range(4)]
    serial = [seg(im).labels for im in images]
    assert all(np.array_equal(a, b.labels) for a, b in zip(serial, seg.segment_many(images, lanes=2)))

    class Unreadable:  # an image whose conversion fails the way a truncated file does
        size = (10, 10)
        mode = "CMYK"

        def convert(self, mode):
            raise InputError("broken.jpg: truncated image")

    # an error raised by the segmentation, and one handed in by the caller (a file it could not read)
    mixed = [images[0], Unreadable(), images[1], InputError("missing.png: file not found"), images[2]]
    for lanes in (1, 2):
        out = list(seg.segment_many(mixed, lanes=lanes, return_exceptions=True))
        assert isinstance(out[1], InputError) and "broken.jpg" in str(out[1])
        assert isinstance(out[3], InputError) and "missing.png" in str(out[3])
        for i, j in ((0, 0), (2, 1), (4, 2)):
            np.testing.assert_array_equal(out[i].labels, serial[j])
        with pytest.raises(InputError, match="broken.jpg"):
            list(seg.segment_many(mixed, lanes=lanes))


def test_a_model_in_training_mode_segments_and_encodes_classes_as_in_eval_mode_and_keeps_its_mode(model, tmp_path):
    from simseg.model import set_dropout

    names, templates = ["background", "cat", "dog"], ("a photo of a {}.", "the toy {}.")
    reference = class_embeddings(model, names, templates, use_cache=False, progress=False)
    image = _photo_like(3, (96, 80))
    expected = Segmenter(model, names, protocol="dense", templates=templates, cache_dir=tmp_path / "eval",
                         progress=False)(image)
    training = copy.deepcopy(model)
    set_dropout(training, 0.3)
    training.train()
    training.image_encoder.eval()  # a caller's own mix of modes is kept as it is
    modes = [m.training for m in training.modules()]
    cached = class_embeddings(training, names, templates, cache_dir=tmp_path, progress=False)
    assert [m.training for m in training.modules()] == modes
    # no dropout: the cache file, which an eval-mode model reads later, holds the model's embeddings
    torch.testing.assert_close(cached, reference, rtol=0, atol=1e-6)
    seg = Segmenter(training, names, protocol="dense", templates=templates, cache_dir=tmp_path, progress=False)
    results = [seg(image)]
    training.image_encoder.train()  # modes changed after construction (a training loop between evaluations)
    results += [seg(image), seg(image)]
    training.eval()
    results += [seg(image)]
    for got in results:
        np.testing.assert_allclose(got.scores, expected.scores, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(got.labels, expected.labels)
    np.testing.assert_array_equal(results[1].scores, results[2].scores)
    assert not any(m.training for m in training.modules())


def test_a_class_list_assigned_after_construction_gets_its_own_embeddings(model, tmp_path):
    kw = dict(protocol="dense", templates="single", cache_dir=tmp_path, progress=False)
    seg = Segmenter(model, "cat,dog,grass", **kw)
    image = _photo_like(4, (64, 48))
    seg.class_names = ["horse", "sky"]  # as the constructor takes it: background prepended
    fresh = Segmenter(model, ["horse", "sky"], **kw)
    assert seg.class_names == fresh.class_names == ["background", "horse", "sky"]
    torch.testing.assert_close(seg.class_emb, fresh.class_emb, rtol=0, atol=0)
    got, want = seg(image), fresh(image)
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_array_equal(got.scores, want.scores)
    assert got.found == want.found and got.class_names == want.class_names
    seg.class_names.append("tree")  # a copy: the segmenter's list is not changed behind its embeddings
    assert seg.class_names == ["background", "horse", "sky"]
    with pytest.raises(InputError, match="duplicate"):
        seg.class_names = "cat,cat"
    assert seg.class_names == ["background", "horse", "sky"] and seg.class_emb.shape[0] == 3


def test_a_model_assigned_after_construction_gets_its_own_class_embeddings(model, vocab_dir, tmp_path):
    import simseg

    torch.manual_seed(1)
    other = simseg.load_model("tiny", tokenizer=vocab_dir)  # other random weights
    kw = dict(protocol="dense", templates="single", cache_dir=tmp_path, progress=False)
    seg = Segmenter(model, "cat,dog,grass", synonyms=[["cat", "kitten"], ["dog"], ["grass", "lawn"]], **kw)
    seg.model = other
    fresh = Segmenter(other, "cat,dog,grass", synonyms=[["cat", "kitten"], ["dog"], ["grass", "lawn"]], **kw)
    assert seg.model is other and seg.names == fresh.names and seg.class_of_name == fresh.class_of_name
    torch.testing.assert_close(seg.class_emb, fresh.class_emb, rtol=0, atol=0)
    image = _photo_like(5, (64, 48))
    got, want = seg(image), fresh(image)
    np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(got.labels, want.labels)
