"""``segment``, ``eval-seg`` and ``eval-retrieval`` use a checkpoint's recorded evaluation defaults, say so, and let
the user override them; checkpoints without them get the paper's defaults."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from simseg.app.cli import main

RECORDED = {"input_size": 32, "protocol": "dense",
            "protocols": {"simseg": {"input_size": 32},
                          "dense": {"short_side": 32, "crop_size": 32, "stride": 32, "bg_threshold": 0.5}},
            "retrieval": {"resize_size": 36, "crop_size": 32}}


@pytest.fixture(scope="module")
def checkpoints(tiny_model, tmp_path_factory):
    from simseg.checkpoint import save_model

    root = tmp_path_factory.mktemp("recorded")
    return (save_model(tiny_model, root / "with-defaults", meta={"evaluation": RECORDED}),
            save_model(tiny_model, root / "plain"))


def _image(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def _segment(tmp_path, checkpoint, *extra):
    out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
    rc = main(["segment", str(_image(tmp_path)), "--classes", "red, green", "--checkpoint", str(checkpoint),
               "--out", str(out), "--templates", "single", "--cache-dir", str(tmp_path / "cache"), *extra])
    assert rc == 0
    return json.loads((out / "segment.json").read_text())


def test_segment_uses_the_recorded_protocol_and_says_so(tmp_path, checkpoints, capsys):
    report = _segment(tmp_path, checkpoints[0])
    printed = capsys.readouterr().out
    assert report["protocol"]["name"] == "dense"
    assert (report["protocol"]["crop_size"], report["protocol"]["bg_threshold"]) == (32, 0.5)
    assert report["recorded_defaults_used"]["protocol"] == "dense"
    assert ("using the evaluation defaults recorded in" in printed and "protocol dense" in printed
            and "crop_size=32" in printed)
    assert "protocol dense (short_side=32, crop_size=32, stride=32, bg_threshold=0.5" in printed


def test_segment_overrides_win_over_the_recorded_defaults(tmp_path, checkpoints, capsys):
    report = _segment(tmp_path, checkpoints[0], "--set", "crop_size=64", "--set", "stride=32")
    assert (report["protocol"]["crop_size"], report["protocol"]["stride"], report["protocol"]["short_side"]) == \
        (64, 32, 32)
    assert report["recorded_defaults_used"]["params"] == {"short_side": 32, "bg_threshold": 0.5}
    report = _segment(tmp_path, checkpoints[0], "--protocol", "simseg", "--no-crf")
    assert report["protocol"]["name"] == "simseg" and report["protocol"]["input_size"] == 32  # its recorded size
    assert "protocol" not in report["recorded_defaults_used"]
    capsys.readouterr()


def test_a_checkpoint_without_recorded_defaults_gets_the_paper_s_silently(tmp_path, checkpoints, capsys):
    report = _segment(tmp_path, checkpoints[1], "--no-crf")
    assert report["protocol"]["name"] == "simseg" and report["protocol"]["input_size"] == 288
    assert "evaluation defaults recorded" not in capsys.readouterr().out


def test_eval_seg_uses_the_recorded_defaults(tmp_path, checkpoints, capsys):
    from tests.app.test_eval_seg import _three_image_voc

    _three_image_voc(tmp_path)
    common = ["eval-seg", "--dataset", "pascal_voc", "--data-root", str(tmp_path), "--templates", "single",
              "--cache-dir", str(tmp_path / "cache"), "--num-overlays", "0", "--no-progress"]
    assert main(common + ["--checkpoint", str(checkpoints[0]), "--out", str(tmp_path / "a")]) == 0
    report = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert report["protocol"]["name"] == "dense" and report["protocol"]["crop_size"] == 32
    assert "evaluation defaults recorded in" in capsys.readouterr().out
    assert main(common + ["--checkpoint", str(checkpoints[0]), "--out", str(tmp_path / "b"), "--protocol", "simseg",
                          "--no-crf", "--set", "input_size=64"]) == 0
    report = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert report["protocol"]["name"] == "simseg" and report["protocol"]["input_size"] == 64


def test_eval_retrieval_uses_the_recorded_sizes_unless_given(tmp_path, checkpoints, capsys):
    from tests.test_retrieval import toy_rows, write_parquet

    write_parquet(tmp_path / "data" / "toy" / "valid.parquet", toy_rows(4, 1))
    common = ["eval-retrieval", "--dataset", "toy", "--data-root", str(tmp_path / "data"), "--batch-size", "4",
              "--workers", "1", "--no-progress"]
    assert main(common + ["--checkpoint", str(checkpoints[0]), "--out", str(tmp_path / "a")]) == 0
    protocol = json.loads((tmp_path / "a" / "metrics.json").read_text())["protocol"]
    assert [t.get("size") for t in protocol["transforms"][:2]] == [[36, 36], 32] and protocol["input_size"] == 32  # square resize
    assert "resize_size=36, crop_size=32" in capsys.readouterr().out
    assert main(common + ["--checkpoint", str(checkpoints[0]), "--out", str(tmp_path / "b"), "--crop-size", "48",
                          "--resize-size", "48"]) == 0
    protocol = json.loads((tmp_path / "b" / "metrics.json").read_text())["protocol"]
    assert [t.get("size") for t in protocol["transforms"][:2]] == [[48, 48], 48]
    assert main(common + ["--checkpoint", str(checkpoints[1]), "--out", str(tmp_path / "c")]) == 0
    protocol = json.loads((tmp_path / "c" / "metrics.json").read_text())["protocol"]
    assert [t.get("size") for t in protocol["transforms"][:2]] == [[324, 324], 288]  # the paper's square resize


def test_info_shows_the_recorded_defaults(checkpoints, capsys):
    assert main(["info", str(checkpoints[0])]) == 0
    out = capsys.readouterr().out
    assert "evaluation defaults (used by segment" in out and "protocol: dense" in out and "crop_size: 32" in out
    assert main(["info", str(checkpoints[1])]) == 0
    assert "evaluation defaults: the paper's (none recorded)" in capsys.readouterr().out
