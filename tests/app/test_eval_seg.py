"""``simseg eval-seg``: end to end, under torchrun-style sharding, and with bad arguments."""

import json

import numpy as np
from PIL import Image

from simseg.app.eval_seg import format_table
from tests.test_evaluate import OracleSegmenter, voc_root, write_voc  # noqa: F401


def test_eval_seg_cli_end_to_end(tmp_path, tiny_model, capsys):
    from simseg.app.cli import main
    from simseg.checkpoint import checkpoint_fingerprint, save_model

    ckpt = save_model(tiny_model, tmp_path / "ckpt")  # a real checkpoint folder (weights + tokenizer)
    _three_image_voc(tmp_path / "data")
    out = tmp_path / "report"
    common = ["eval-seg", "--dataset", "pascal_voc", "--data-root", str(tmp_path / "data"), "--checkpoint", str(ckpt),
              "--cache-dir", str(tmp_path / "cache"), "--num-overlays", "2", "--device", "cpu",
              "--set", "input_size=64", "--templates", "single"]  # small input, one prompt: fast, same pipeline
    assert main(common + ["--no-crf", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "aeroplane" in printed and "sha256" in printed
    report = json.loads((out / "metrics.json").read_text())
    assert report["dataset"] == "pascal_voc" and report["num_images"] == 3 and report["num_evaluated"] == 3
    assert report["num_bad"] == 0 and report["bad_samples"] == []
    assert 0.0 <= report["mIoU"] <= 100.0 and 0.0 <= report["aAcc"] <= 100.0
    assert len(report["per_class_IoU"]) == 21
    assert isinstance(report["protocol"], dict) and report["protocol"]
    assert report["checkpoint"] == checkpoint_fingerprint(ckpt) and len(report["checkpoint"]["sha256"]) == 64
    assert report["protocol"]["name"] == "simseg" and report["protocol"]["crf"] is False
    assert report["protocol"]["input_size"] == 64 and report["protocol"]["top_n"] == 10
    assert report["protocol"]["num_templates"] == 1
    assert report["versions"]["torch"] and report["versions"]["timm"] and report["versions"]["transformers"]
    assert (out / "per_class_iou.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert overlays == ["2008_000000_gt.png", "2008_000000_pred.png", "2008_000001_gt.png", "2008_000001_pred.png"]
    width, height = Image.open(out / "overlays" / "2008_000000_gt.png").size
    assert width > 48 and height >= 40  # the image, plus a legend strip naming "car"

    # With CRF, and a corrupt image: reported, counted, listed; exit 1 unless --skip-bad.
    (tmp_path / "data" / "VOCdevkit" / "VOC2012" / "JPEGImages" / "2008_000001.jpg").write_bytes(b"\xff\xd8\xff junk")
    out_crf = tmp_path / "report_crf"
    assert main(common + ["--out", str(out_crf), "--skip-bad"]) == 0
    report = json.loads((out_crf / "metrics.json").read_text())
    assert report["num_bad"] == 1 and report["num_evaluated"] == 2
    assert report["bad_samples"][0]["sample_id"] == "2008_000001"
    assert "2008_000001.jpg" in report["bad_samples"][0]["error"]
    assert report["protocol"]["crf"] is True
    capsys.readouterr()
    assert main(common + ["--no-crf", "--out", str(out_crf), "--limit", "2"]) == 1
    err = capsys.readouterr().err
    assert "2008_000001.jpg" in err and "--skip-bad" in err


def test_eval_seg_cli_bad_arguments(tmp_path, vocab_dir, capsys, monkeypatch):
    from simseg.app.cli import main

    monkeypatch.delenv("SIMSEG_DATA", raising=False)
    assert main(["eval-seg", "--dataset", "pascal_voc", "--checkpoint", "tiny"]) == 2
    assert "SIMSEG_DATA" in capsys.readouterr().err
    assert main(["eval-seg", "--dataset", "pascal_voc", "--data-root", str(tmp_path), "--checkpoint", "tiny"]) == 2
    assert "VOCdevkit" in capsys.readouterr().err
    _three_image_voc(tmp_path)
    args = ["eval-seg", "--dataset", "pascal_voc", "--data-root", str(tmp_path), "--checkpoint", "tiny",
            "--tokenizer", str(vocab_dir), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "o")]
    assert main(args + ["--set", "no_such_parameter=3"]) == 2
    assert "no_such_parameter" in capsys.readouterr().err
    assert main(args + ["--set", "oops"]) == 2


def _three_image_voc(root) -> None:
    labels = {}
    for i, (h, w) in enumerate([(40, 48), (36, 36), (48, 40)]):
        lab = np.zeros((h, w), np.uint8)
        lab[8:24, 10:30] = (7, 12, 15)[i]  # car, dog, person
        lab[8:24, 9] = 255  # an object border, ignored
        labels[f"2008_00000{i}"] = lab
    write_voc(root, labels)


def test_format_table():
    table = format_table({"mIoU": 50.0, "aAcc": 90.0, "mAcc": None,
                          "per_class": {"background": {"IoU": 100.0, "Acc": 100.0}, "cat": {"IoU": 0.0, "Acc": None}}},
                         "title")
    assert "cat" in table and "50.00" in table and "n/a" in table
