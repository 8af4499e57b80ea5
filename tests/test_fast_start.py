"""The start-up paths of ``simseg segment`` when the class embeddings are cached: a model loaded for images only
(``load_model(..., text=False)``) and the traced image tower of :mod:`simseg.traced`. Each must find the embeddings
the whole model cached and give the same labels."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from simseg.checkpoint import load_model, save_model
from simseg.errors import ConfigError, TextTowerAbsentError
from simseg.segment import Segmenter


@pytest.fixture()
def checkpoint(tiny_model, tmp_path):
    return save_model(tiny_model, tmp_path / "ck")


def _images(n: int = 3):
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8).repeat(16, 0).repeat(16, 1))
            for _ in range(n)]


def test_image_only_model_matches_the_whole_one(checkpoint):
    whole, images_only = load_model(checkpoint), load_model(checkpoint, text=False)
    assert whole.has_text_tower and not images_only.has_text_tower
    assert images_only.text_weights_hash == whole.text_weights_hash  # finds what the whole model cached
    x = torch.randn(2, 3, whole.image_size, whole.image_size)
    with torch.inference_mode():
        torch.testing.assert_close(images_only.encode_image(x), whole.encode_image(x), rtol=0, atol=0)
    tokens = whole.tokenize(["a red circle"])
    with pytest.raises(TextTowerAbsentError, match="without its text tower"):
        images_only.encode_text(tokens["input_ids"], tokens["attention_mask"])
    with pytest.raises(ConfigError, match="without its text tower"):
        save_model(images_only, checkpoint.parent / "copy")
    assert not (checkpoint.parent / "copy").exists()


def test_cached_embeddings_give_the_same_labels(checkpoint, tmp_path):
    classes = ["background", "cat", "dog", "grass"]
    kw = dict(templates="single", cache_dir=tmp_path / "cache", progress=False, threshold_std=-10)
    with pytest.raises(TextTowerAbsentError):  # nothing cached yet: the text tower is needed
        Segmenter(load_model(checkpoint, text=False), classes, **kw)
    whole = Segmenter(load_model(checkpoint), classes, **kw)
    fast = Segmenter(load_model(checkpoint, text=False), classes, **kw)
    torch.testing.assert_close(fast.class_emb, whole.class_emb, rtol=0, atol=1e-6)
    for image in _images():
        a, b = whole(image), fast(image)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.scores, b.scores)


@pytest.mark.slow
def test_segment_command_starts_without_the_text_tower_once_cached(checkpoint, tmp_path):
    image = tmp_path / "photo.png"
    _images(1)[0].save(image)
    outs = []
    for run in ("cold", "warm"):
        out = tmp_path / run
        script = ("import sys; from simseg.app.cli import main; rc = main(sys.argv[1:]); "
                  "print('TEXT_TOWER_IMPORTED', 'transformers' in sys.modules); "
                  "print('TIMM_IMPORTED', 'timm' in sys.modules); sys.exit(rc)")
        done = subprocess.run([sys.executable, "-c", script, "segment", str(image), "--classes", "cat,dog",
                               "--checkpoint", str(checkpoint), "--templates", "single", "--cache-dir",
                               str(tmp_path / "cache"), "--out", str(out), "--no-progress"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        outs.append((out, done.stdout))
    (cold, cold_log), (warm, warm_log) = outs
    assert "TEXT_TOWER_IMPORTED True" in cold_log and "TEXT_TOWER_IMPORTED False" in warm_log
    # the cold run left the traced image tower: the warm one needs neither timm nor torchvision
    assert "TIMM_IMPORTED True" in cold_log and "TIMM_IMPORTED False" in warm_log
    assert len(list((tmp_path / "cache" / "image-towers").glob("*.pt"))) == 1
    np.testing.assert_array_equal(np.asarray(Image.open(cold / "photo_labels.png")),
                                  np.asarray(Image.open(warm / "photo_labels.png")))
    cold_report, warm_report = (json.loads((o / "segment.json").read_text()) for o in (cold, warm))
    assert cold_report["images"] == warm_report["images"] and cold_report["checkpoint"] == warm_report["checkpoint"]


def test_a_warning_of_the_first_attempt_is_given_once(checkpoint, tmp_path, capsys):
    from simseg.app.cli import main

    image = tmp_path / "photo.png"
    _images(1)[0].save(image)
    for run in ("cold", "warm"):  # cold: the image-only attempt falls back to the whole model
        rc = main(["segment", str(image), "--classes", "cat,жук", "--checkpoint", str(checkpoint), "--templates",
                   "single", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / run), "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 0 and err.count("does not know") == 1, (run, err)


def test_an_image_only_model_without_a_text_hash_matches_no_cache(tiny_model, tmp_path):
    from simseg.model import build_model

    # built by hand (not loaded), it has no hash of text weights: it must not share one placeholder cache key
    model = build_model(tiny_model.config, tiny_model.tokenizer, empty=True, text_hidden_size=32)
    with pytest.raises(TextTowerAbsentError, match="hash of its text weights"):
        model.text_weights_hash


# ------------------------------------------------------------------------------------------- the traced tower
def _traced(checkpoint, tmp_path, size=64):
    from simseg.traced import load_traced_model, save_traced_tower

    model = load_model(checkpoint)
    save_traced_tower(model, checkpoint, size, tmp_path / "cache")
    return model, load_traced_model(checkpoint, size, tmp_path / "cache")


def test_the_traced_tower_gives_the_eager_models_values(checkpoint, tmp_path):
    model, traced = _traced(checkpoint, tmp_path)
    assert traced is not None and traced.text_weights_hash == model.text_weights_hash
    assert traced.weights_file_sha256 == model.weights_file_sha256
    assert (traced.patch_size, traced.mean, traced.std, traced.embed_dim) == \
        (model.patch_size, tuple(model.mean), tuple(model.std), model.embed_dim)
    torch.testing.assert_close(traced.temperature(), model.temperature().detach(), rtol=0, atol=0)
    for seed in range(3):
        x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
        with torch.inference_mode():
            (want, grid), (got, got_grid) = model.encode_image_tokens(x), traced.encode_image_tokens(x)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
            torch.testing.assert_close(traced.encode_image(x), model.encode_image(x), rtol=0, atol=1e-6)
        assert got_grid == grid
    with pytest.raises(ValueError, match="traced image tower takes"):
        traced.encode_image_tokens(torch.zeros(2, 3, 64, 64))
    with pytest.raises(TextTowerAbsentError):
        traced.tokenize(["a cat"])


def test_traced_and_eager_segmenters_give_the_same_labels(checkpoint, tmp_path):
    classes = ["background", "cat", "dog", "grass"]
    kw = dict(templates="single", cache_dir=tmp_path / "cache", progress=False, threshold_std=-10, input_size=64)
    model, traced = _traced(checkpoint, tmp_path)
    whole = Segmenter(model, classes, **kw)
    fast = Segmenter(traced, classes, **kw)
    torch.testing.assert_close(fast.class_emb, whole.class_emb, rtol=0, atol=0)
    images = _images(4)
    for a, b in zip([whole(i) for i in images], fast.segment_many(images, lanes=2)):
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.scores, b.scores)


def test_a_trace_is_used_only_for_the_same_files(checkpoint, tmp_path):
    import os

    from simseg.traced import load_traced_model, trace_paths

    _traced(checkpoint, tmp_path)
    cache = tmp_path / "cache"
    assert load_traced_model(checkpoint, 64, cache) is not None
    assert load_traced_model(checkpoint, 96, cache) is None  # no trace at that size
    program, meta = trace_paths(checkpoint, 64, cache)
    weights = checkpoint / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # rewritten (or touched): traced again
    assert load_traced_model(checkpoint, 64, cache) is None
    _traced(checkpoint, tmp_path)
    data = bytearray(program.read_bytes())
    data[len(data) // 2] ^= 0xFF  # an altered program is never run
    program.write_bytes(bytes(data))
    assert load_traced_model(checkpoint, 64, cache) is None
    _traced(checkpoint, tmp_path)
    doc = json.loads(meta.read_text())
    del doc["patch_size"]  # a hand-edited record
    meta.write_text(json.dumps(doc))
    assert load_traced_model(checkpoint, 64, cache) is None
    meta.write_text("{not json")
    assert load_traced_model(checkpoint, 64, cache) is None


def test_an_unwritable_trace_cache_costs_only_the_quick_start(checkpoint, tmp_path, capsys):
    from simseg.app.cli import main

    image = tmp_path / "photo.png"
    _images(1)[0].save(image)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "image-towers").write_text("a file where the folder would go")
    rc = main(["segment", str(image), "--classes", "cat,dog", "--checkpoint", str(checkpoint), "--templates",
               "single", "--cache-dir", str(cache), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0 and "traced image tower" in err and "could not be written" in err
    assert (tmp_path / "out" / "photo_labels.png").is_file()


def test_new_class_names_keep_a_valid_trace(checkpoint, tmp_path):
    """Class names not cached yet need the whole model; the trace it would write again is already there."""
    from simseg.app.cli import main

    image = tmp_path / "photo.png"
    _images(1)[0].save(image)
    common = ["--checkpoint", str(checkpoint), "--templates", "single", "--cache-dir", str(tmp_path / "cache"),
              "--no-progress"]
    assert main(["segment", str(image), "--classes", "cat,dog", "--out", str(tmp_path / "a"), *common]) == 0
    (program,) = (tmp_path / "cache" / "image-towers").glob("*.pt")
    before = program.stat().st_mtime_ns
    assert main(["segment", str(image), "--classes", "grass,sky", "--out", str(tmp_path / "b"), *common]) == 0
    assert program.stat().st_mtime_ns == before and len(list(program.parent.glob("*.pt"))) == 1
