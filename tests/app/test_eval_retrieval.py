"""``simseg eval-retrieval``: end to end, bad images, CSV sources, input errors."""

from __future__ import annotations

import json

import pytest

from simseg.app.eval_retrieval import format_retrieval_table
from tests.test_retrieval import toy_rows, write_parquet  # noqa: F401


def _cli(args: list[str]) -> int:
    from simseg.app.cli import main

    return main(["eval-retrieval", *args])



@pytest.fixture
def toy_root(tmp_path):
    write_parquet(tmp_path / "data" / "toy" / "valid.parquet", toy_rows(6, 2))
    return tmp_path / "data"



def test_cli_end_to_end(toy_root, vocab_dir, tmp_path, capsys):
    out = tmp_path / "report"
    code = _cli(["--dataset", "toy", "--data-root", str(toy_root), "--checkpoint", "tiny", "--tokenizer",
                 str(vocab_dir), "--out", str(out), "--crop-size", "32", "--resize-size", "36", "--batch-size", "4"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| Method" in printed and "I2T R@1" in printed and "| SimSeg" in printed and "toy" in printed
    report = json.loads((out / "metrics.json").read_text())
    for key in ("I2T_R@1", "I2T_R@5", "I2T_R@10", "T2I_R@1", "T2I_R@5", "T2I_R@10", "RSUM"):
        assert isinstance(report[key], float) and 0.0 <= report[key] <= 600.0
    assert report["T2I_R@10"] == 100.0  # only 6 images: every caption finds its image in the top 10
    assert (report["num_images"], report["num_captions"], report["num_bad_images"]) == (6, 12, 0)
    protocol = report["protocol"]
    # with no option, the paper's square resize (the image squashed), then the centre crop
    assert protocol["resize_mode"] == "square"
    assert protocol["transforms"][0] == {"name": "resize", "size": [36, 36], "mode": "square",
                                         "interpolation": "bilinear"}
    assert protocol["transforms"][1] == {"name": "center_crop", "size": 32}
    assert protocol["pooling"]["method"] == "loda" and protocol["pooling"]["image_topk"] == 5
    assert report["checkpoint"]["path"] == "tiny" and report["checkpoint"]["sha256"] is None
    assert report["versions"]["torch"] and report["versions"]["python"]


def test_cli_short_side_option_is_recorded(toy_root, vocab_dir, tmp_path):
    common = ["--dataset", "toy", "--data-root", str(toy_root), "--checkpoint", "tiny", "--tokenizer",
              str(vocab_dir), "--crop-size", "32", "--resize-size", "36"]
    assert _cli([*common, "--out", str(tmp_path / "short"), "--resize-mode", "short"]) == 0
    protocol = json.loads((tmp_path / "short" / "metrics.json").read_text())["protocol"]
    assert protocol["resize_mode"] == "short"
    assert protocol["transforms"][0] == {"name": "resize", "size": 36, "mode": "short", "interpolation": "bilinear"}
    assert _cli([*common, "--out", str(tmp_path / "x"), "--crop-size", "30", "--resize-size", "36"]) == 2



def test_cli_bad_image_fails_unless_skip_bad(tmp_path, vocab_dir, capsys):
    rows = toy_rows(6, 2)
    rows[4] = {**rows[4], "imbytes": rows[4]["imbytes"][:30]}  # img2: truncated PNG in both of its rows
    rows[5] = {**rows[5], "imbytes": rows[4]["imbytes"]}
    write_parquet(tmp_path / "data" / "toy" / "valid.parquet", rows)
    common = ["--dataset", "toy", "--data-root", str(tmp_path / "data"), "--checkpoint", "tiny", "--tokenizer",
              str(vocab_dir), "--crop-size", "32", "--resize-size", "36"]
    assert _cli([*common, "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "img2" in err and "--skip-bad" in err
    report = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert report["num_bad_images"] == 1 and report["bad_images"][0]["image_id"] == "img2"
    assert _cli([*common, "--out", str(tmp_path / "b"), "--skip-bad"]) == 0
    report = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert (report["num_images"], report["num_captions"], report["num_captions_dropped"]) == (5, 10, 2)



def test_cli_counts_every_bad_image_and_every_caption_it_drops(tmp_path, vocab_dir, capsys):
    """Two unreadable images, one with 2 captions and one with 1 (11 rows): exactly 2 bad images and 3 captions
    dropped, in the report, in the one-line message and in what is evaluated."""
    rows = toy_rows(6, 2)
    for r in rows:
        if r["image_id"] in ("img1", "img4"):
            r["imbytes"] = b"not an image"
    rows = [r for r in rows if r["id"] != 41]  # img4 keeps one caption
    write_parquet(tmp_path / "data" / "toy" / "valid.parquet", rows)
    common = ["--dataset", "toy", "--data-root", str(tmp_path / "data"), "--checkpoint", "tiny", "--tokenizer",
              str(vocab_dir), "--crop-size", "32", "--resize-size", "36"]
    assert _cli([*common, "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "error: 2 unreadable image(s) (image_id 'img1', 'img4'; 3 captions left out)" in err
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["num_bad_images"] == 2
    assert _cli([*common, "--out", str(tmp_path / "b"), "--skip-bad"]) == 0
    err = capsys.readouterr().err
    assert "warning: 2 unreadable image(s) (image_id 'img1', 'img4'; 3 captions left out)" in err
    report = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert (report["num_rows"], report["num_images"], report["num_captions"]) == (11, 4, 8)
    assert (report["num_bad_images"], report["num_captions_dropped"]) == (2, 3)
    assert [b["image_id"] for b in report["bad_images"]] == ["img1", "img4"]


def test_cli_csv_source(tmp_path, vocab_dir):
    lines = ["image,caption,image_id"]
    for r in toy_rows(3, 2):
        (tmp_path / f"{r['image_id']}.png").write_bytes(r["imbytes"])
        lines.append(f"{r['image_id']}.png,{r['caption']},{r['image_id']}")
    (tmp_path / "mine.csv").write_text("\n".join(lines) + "\n")
    code = _cli(["--csv", str(tmp_path / "mine.csv"), "--checkpoint", "tiny", "--tokenizer", str(vocab_dir),
                 "--out", str(tmp_path / "r"), "--crop-size", "32", "--resize-size", "36"])
    assert code == 0
    report = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert report["dataset"] == "mine" and report["num_images"] == 3 and report["num_captions"] == 6



def test_cli_input_errors(tmp_path, vocab_dir, capsys):
    write_parquet(tmp_path / "data" / "toy" / "valid.parquet", toy_rows(2, 1), columns=("imbytes", "caption", "id"))
    common = ["--checkpoint", "tiny", "--tokenizer", str(vocab_dir), "--crop-size", "32", "--resize-size", "36",
              "--out", str(tmp_path / "r")]
    assert _cli(["--dataset", "toy", "--data-root", str(tmp_path / "data"), *common]) == 2
    assert "missing column(s) image_id" in capsys.readouterr().err
    assert _cli(["--dataset", "f30k", "--data-root", str(tmp_path / "data"), *common]) == 2
    assert "f30k/valid.parquet: not found" in capsys.readouterr().err
    assert _cli(["--dataset", "toy", "--data-root", str(tmp_path / "data"), *common[:-2], "--crop-size", "64"]) == 2
    assert "--crop-size 64 is larger than --resize-size 36" in capsys.readouterr().err



def test_table_layout():
    row = {"method": "SimSeg", "backbone": "ViT-B", "dataset": "Flickr30K", "I2T_R@1": 78.64, "I2T_R@5": 93.8,
           "I2T_R@10": 96.9, "T2I_R@1": 61.6, "T2I_R@5": 85.2, "T2I_R@10": 91.2, "RSUM": 507.34}
    lines = format_retrieval_table([row]).splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "Method", "Backbone", "Dataset", "I2T R@1", "I2T R@5", "I2T R@10", "T2I R@1", "T2I R@5", "T2I R@10", "RSUM"]
    assert [c.strip() for c in lines[2].strip("|").split("|")] == [
        "SimSeg", "ViT-B", "Flickr30K", "78.6", "93.8", "96.9", "61.6", "85.2", "91.2", "507.3"]
