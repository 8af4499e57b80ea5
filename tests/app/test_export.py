"""``simseg export`` and ``simseg segment --backend onnx``: the tiny model exported, checked, and segmenting with the
same labels as torch; one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from simseg.app.cli import main


def _images(tmp_path):
    rng = np.random.default_rng(7)
    paths = []
    for i, (h, w) in enumerate(((40, 56), (64, 48))):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_segment_with_the_onnx_backend_gives_the_torch_labels(onnx_checkpoint, tmp_path, capsys):
    images = _images(tmp_path)
    common = ["--classes", "cat,dog,grass", "--templates", "single", "--set", "threshold_std=-10"]
    runs = (("torch", onnx_checkpoint), ("onnx", onnx_checkpoint), ("onnx", onnx_checkpoint / "onnx"))
    for backend, checkpoint in runs:
        out = tmp_path / f"{backend}-{checkpoint.name}"
        rc = main(["segment", *images, "--checkpoint", str(checkpoint), "--backend", backend, "--out", str(out),
                   "--cache-dir", str(tmp_path / f"cache-{backend}"), *common])
        assert rc == 0, capsys.readouterr().err
    reference = tmp_path / "torch-ck"
    for onnx_out in (tmp_path / "onnx-ck", tmp_path / "onnx-onnx"):
        for i in range(2):
            a = np.asarray(Image.open(reference / f"img{i}_labels.png"))
            b = np.asarray(Image.open(onnx_out / f"img{i}_labels.png"))
            assert np.array_equal(a, b) and a.max() > 0
        report = json.loads((onnx_out / "segment.json").read_text())
        ref = json.loads((reference / "segment.json").read_text())
        assert report["backend"] == "onnx" and report["checkpoint"]["format"] == "onnx"
        assert report["checkpoint"]["source_weights_sha256"] == ref["checkpoint"]["sha256"]
        assert report["versions"]["onnxruntime"]
        for got, want in zip(report["images"], ref["images"]):
            assert max(abs(got["scores"][k] - want["scores"][k]) for k in want["scores"]) <= 1e-4
    assert "backend" not in json.loads((reference / "segment.json").read_text())


def test_onnx_backend_errors_are_one_line(onnx_checkpoint, tiny_model, tmp_path, capsys):
    from simseg.checkpoint import save_model

    images = _images(tmp_path)[:1]
    plain = save_model(tiny_model, tmp_path / "plain")
    cases = [
        (["--checkpoint", str(onnx_checkpoint), "--protocol", "dense"], "exported for input 64, 288, the protocol asks "
                                                                        "for 448 (export again with --image-size 448"),
        (["--checkpoint", str(plain)], "no ONNX export"),
        (["--checkpoint", "tiny"], "not found"),
    ]
    for extra, words in cases:
        rc = main(["segment", *images, "--classes", "cat", "--backend", "onnx", "--no-crf", "--out",
                   str(tmp_path / "o"), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and words in err[0] and "Traceback" not in err[0], err


def test_export_arguments(onnx_checkpoint, tmp_path, capsys):
    out = onnx_checkpoint / "onnx"
    cases = [
        ([str(onnx_checkpoint), str(out)], "not empty (use --force"),
        ([str(onnx_checkpoint), str(tmp_path / "x"), "--image-size", "100"], "multiple of the patch size 16"),
        ([str(onnx_checkpoint), str(tmp_path / "x"), "--opset", "7"], "--opset 7"),
        ([str(tmp_path / "missing"), str(tmp_path / "x")], "not found"),
    ]
    for argv, words in cases:
        assert main(["export", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "--image-size" in capsys.readouterr().out


def test_info_describes_an_onnx_export_folder(onnx_checkpoint, tmp_path, capsys):
    import shutil

    from simseg.checkpoint import file_sha256

    assert main(["info", str(onnx_checkpoint / "onnx")]) == 0
    out = capsys.readouterr().out
    assert "format: ONNX export" in out
    assert f"exported from weights sha256: {file_sha256(onnx_checkpoint / 'model.safetensors')}" in out
    assert "image sizes: 64, 288 (patch 16)" in out and "text.onnx" in out and "embed_dim: 512" in out
    broken = shutil.copytree(onnx_checkpoint / "onnx", tmp_path / "broken")
    (broken / "image_64.onnx").unlink()
    assert main(["info", str(broken)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "image_64.onnx: missing" in err[0]


def test_export_defaults_to_the_size_the_checkpoint_is_segmented_at(onnx_checkpoint, tiny_model, tmp_path, capsys):
    from simseg.checkpoint import save_model
    from tests.app.test_recorded_defaults import RECORDED

    ck = save_model(tiny_model, tmp_path / "ck", meta={"evaluation": RECORDED})  # segmented with dense at 32
    assert main(["export", str(ck), str(ck / "onnx"), "--no-verify"]) == 0
    assert "image size 32: the dense protocol's, recorded in" in capsys.readouterr().out
    assert (ck / "onnx" / "image_32.onnx").is_file()
    out = tmp_path / "out"
    assert main(["segment", *_images(tmp_path), "--classes", "cat,dog", "--checkpoint", str(ck), "--backend", "onnx",
                 "--templates", "single", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    assert json.loads((out / "segment.json").read_text())["protocol"]["crop_size"] == 32
