"""``simseg segment``: outputs, report, exit status and one-line errors."""

from __future__ import annotations

import json
import sys

import numpy as np
from PIL import Image

from simseg.app.cli import main


def _write_images(tmp_path):
    good = tmp_path / "street.jpg"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(good)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(good.read_bytes()[:100])
    return good, bad



def test_cli_segment_end_to_end(vocab_dir, tmp_path, capsys):
    good, bad = _write_images(tmp_path)
    out = tmp_path / "out"
    rc = main(["segment", str(good), str(bad), "--classes", "cat,dog", "--checkpoint", "tiny",
               "--tokenizer", str(vocab_dir), "--out", str(out), "--templates", "single",
               "--cache-dir", str(tmp_path / "cache"), "--set", "threshold_std=-10"])
    captured = capsys.readouterr()
    assert rc == 1  # one image failed
    assert "broken.jpg" in captured.err and "street.jpg" not in captured.err
    line, = [row for row in captured.err.splitlines() if "broken.jpg" in row]
    assert line.startswith(f"error: {bad}: corrupt or truncated image") and line.count("broken.jpg") == 1
    labels = Image.open(out / "street_labels.png")
    assert labels.mode == "P" and labels.size == (56, 40)
    assert set(np.unique(np.asarray(labels))) <= {0, 1, 2}
    overlay = Image.open(out / "street_overlay.png")
    assert overlay.height == 40 and overlay.width >= 56
    assert not (out / "broken_labels.png").exists()
    assert "protocol simseg" in captured.out and "street.jpg:" in captured.out
    report = json.loads((out / "segment.json").read_text())
    assert report["protocol"]["name"] == "simseg" and report["protocol"]["threshold_std"] == -10
    assert report["checkpoint"]["path"] == "tiny" and report["num_failed"] == 1
    good_rec, bad_rec = report["images"]
    assert good_rec["labels"] == "street_labels.png" and set(good_rec["scores"]) == {"background", "cat", "dog"}
    assert "broken.jpg" in bad_rec["image"] and bad_rec["error"]



def test_cli_parallel_path_writes_what_the_serial_path_writes(tiny_model, tmp_path, capsys):
    from simseg.checkpoint import save_model

    ck = save_model(tiny_model, tmp_path / "ck")
    rng = np.random.default_rng(4)
    paths = []
    for i in range(5):
        path = tmp_path / f"img{i}.png"
        pixels = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8).repeat(12 + 4 * i, 0).repeat(16, 1)
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    (tmp_path / "img2.png").write_bytes(b"not an image")  # a failure in the middle keeps its place
    runs = {}
    for mode in (["--serial"], ["--workers", "2"]):
        out = tmp_path / mode[0].strip("-")
        # threshold_std=-10 accepts the top classes of every image: several CRF calls per image
        rc = main(["segment", *paths, "--classes", "cat,dog,sky,grass,car", "--checkpoint", str(ck), "--out",
                   str(out), "--templates", "single", "--cache-dir", str(tmp_path / "cache"), "--set",
                   "threshold_std=-10", "--no-progress", *mode])
        captured = capsys.readouterr()
        assert rc == 1 and "img2.png" in captured.err
        runs[mode[0]] = (out, captured.out, json.loads((out / "segment.json").read_text()))
    (serial, serial_out, serial_report), (piped, piped_out, piped_report) = runs.values()
    assert piped_out == serial_out  # the same lines in the same order
    assert piped_report["images"] == serial_report["images"]
    assert sum(len(rec.get("found", [])) > 1 for rec in serial_report["images"]) >= 2
    for i in (0, 1, 3, 4):
        np.testing.assert_array_equal(np.asarray(Image.open(piped / f"img{i}_labels.png")),
                                      np.asarray(Image.open(serial / f"img{i}_labels.png")))


def test_cli_all_good_exits_zero_and_dense_works(vocab_dir, tmp_path, capsys):
    good, _ = _write_images(tmp_path)
    classes = tmp_path / "classes.txt"
    classes.write_text("background\ncat\ndog\n")
    rc = main(["segment", str(good), "--classes-file", str(classes), "--checkpoint", "tiny",
               "--tokenizer", str(vocab_dir), "--out", str(tmp_path / "o"), "--templates", "single",
               "--cache-dir", str(tmp_path / "cache"), "--protocol", "dense", "--set", "crop_size=32",
               "--set", "short_side=32", "--set", "stride=16"])
    assert rc == 0, capsys.readouterr().err
    assert Image.open(tmp_path / "o" / "street_labels.png").size == (56, 40)



def test_cli_crf_without_pydensecrf_is_a_clear_error(vocab_dir, tmp_path, capsys, monkeypatch):
    good, _ = _write_images(tmp_path)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    rc = main(["segment", str(good), "--classes", "cat", "--checkpoint", "tiny", "--tokenizer", str(vocab_dir),
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "simseg[crf]" in err and "--no-crf" in err



def test_cli_needs_exactly_one_class_source(vocab_dir, tmp_path, capsys):
    good, _ = _write_images(tmp_path)
    rc = main(["segment", str(good), "--checkpoint", "tiny", "--out", str(tmp_path / "o")])
    assert rc == 2 and "--classes" in capsys.readouterr().err



def test_output_folder_that_is_a_file_is_a_one_line_error(tiny_model, vocab_dir, tmp_path, capsys):
    from PIL import Image

    from simseg.app.cli import main
    from simseg.checkpoint import save_model

    ck = save_model(tiny_model, tmp_path / "ck")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.png")
    (tmp_path / "file").write_text("x")
    code = main(["segment", str(tmp_path / "a.png"), "--classes", "cat", "--checkpoint", str(ck), "--no-crf",
                 "--out", str(tmp_path / "file")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--out" in err[0] and "Traceback" not in err[0]



def test_an_output_that_cannot_be_written_fails_that_image_in_one_line(tiny_model, tmp_path, capsys):
    from simseg.checkpoint import save_model

    ck = save_model(tiny_model, tmp_path / "ck")
    for name in ("a", "b"):
        Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / f"{name}.png")
    out = tmp_path / "out"
    (out / "a_labels.png").mkdir(parents=True)  # an earlier mistake left a folder where a's labels go
    code = main(["segment", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--classes", "cat", "--checkpoint",
                 str(ck), "--no-crf", "--templates", "single", "--cache-dir", str(tmp_path / "cache"),
                 "--no-progress", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err
    line, = [row for row in captured.err.splitlines() if "a_labels.png" in row]
    assert "a.png" in line and "cannot write" in line
    report = json.loads((out / "segment.json").read_text())  # the report and the other image are still written
    assert report["num_failed"] == 1 and "a_labels.png" in report["images"][0]["error"]
    assert (out / "b_labels.png").is_file() and (out / "b_overlay.png").is_file()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
