"""``simseg eval-seg``: end to end, under torchrun-style sharding, and with bad arguments."""

import json

import numpy as np
import pytest
from PIL import Image

from simseg.app.eval_seg import format_table
from tests.test_evaluate import OracleSegmenter, voc_root, write_voc  # noqa: F401
from tests.test_segdata import write_ade, write_cityscapes


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


# ------------------------------------------------------------------ several benchmarks: --dataset all, resuming
@pytest.fixture(scope="module")
def saved_checkpoint(tiny_model, tmp_path_factory):
    from simseg.checkpoint import save_model

    return save_model(tiny_model, tmp_path_factory.mktemp("ckpt") / "tiny-ckpt")


def _suite_root(root) -> None:
    """VOC (so VOC21 and VOC20) and ADE20K in their layouts; Context, COCO and Cityscapes absent."""
    _three_image_voc(root)
    ade = np.array([[0, 1, 1, 3], [2, 2, 150, 255], [5, 5, 0, 1]], dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    write_ade(root, {"ADE_val_00000001": ade, "ADE_val_00000002": ade[::-1].copy()})


def _suite_args(data, ckpt, cache, out, *extra):
    return ["eval-seg", "--dataset", "all", "--data-root", str(data), "--checkpoint", str(ckpt), "--cache-dir",
            str(cache), "--out", str(out), "--device", "cpu", "--no-crf", "--templates", "single",
            "--set", "input_size=64", "--num-overlays", "1", *extra]


def _count_evaluations(monkeypatch) -> list[str]:
    import simseg.evaluate

    seen: list[str] = []
    real = simseg.evaluate.evaluate_segmentation

    def counting(segmenter, dataset, **kw):
        seen.append(dataset.name)
        return real(segmenter, dataset, **kw)

    monkeypatch.setattr(simseg.evaluate, "evaluate_segmentation", counting)
    return seen


def test_eval_seg_all_lists_missing_benchmarks_and_resumes(tmp_path, saved_checkpoint, capsys, monkeypatch):
    from simseg.app.cli import main
    from simseg.checkpoint import checkpoint_fingerprint
    from simseg.segdata import TABLE_ORDER

    data, out, cache = tmp_path / "data", tmp_path / "all", tmp_path / "cache"
    _suite_root(data)
    seen = _count_evaluations(monkeypatch)
    assert main(_suite_args(data, saved_checkpoint, cache, out)) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert seen == ["pascal_voc", "pascal_voc20", "ade20k"]  # the present ones, in the papers' order
    assert "benchmarks: " in captured.err and "eval ade20k" in captured.err  # a bar over benchmarks, one over images
    summary = json.loads((out / "summary.json").read_text())
    assert summary["order"] == list(TABLE_ORDER)
    status = {row["name"]: row["status"] for row in summary["benchmarks"]}
    assert status == {"pascal_voc": "computed", "pascal_context": "missing", "coco_object": "missing",
                      "pascal_voc20": "computed", "pascal_context59": "missing", "coco_stuff": "missing",
                      "cityscapes": "missing", "ade20k": "computed"}
    missing = next(row for row in summary["benchmarks"] if row["name"] == "cityscapes")
    assert "cityscapes" in missing["reason"] and "mIoU" not in missing
    assert summary["checkpoint"] == checkpoint_fingerprint(saved_checkpoint) and summary["versions"]["torch"]
    assert summary["protocol"] == "simseg" and summary["preset"] is None and summary["average_over"] == 3
    assert summary["per_benchmark_parameters"] == ["top_n"]  # the paper's top 30 on Context, were it present
    md = (out / "summary.md").read_text()
    header = ("| checkpoint | VOC21 | Context60 | COCO-Object | VOC20 | Context59 | COCO-Stuff | Cityscapes | ADE20K "
              "| Avg |")
    assert header in md and "missing: " in md
    row = next(line for line in md.splitlines() if line.startswith(f"| {saved_checkpoint} ("))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == cells[3] == cells[5] == cells[6] == cells[7] == "missing"
    assert cells[9].endswith("(3 of 8)")  # the average says how many benchmarks it covers
    assert float(cells[1]) == pytest.approx(summary["benchmarks"][0]["mIoU"], abs=0.005)
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert header in printed and "summary.md" in printed
    for name in ("pascal_voc", "pascal_voc20", "ade20k"):
        report = json.loads((out / name / "metrics.json").read_text())
        assert report["dataset"] == name and report["checkpoint"]["sha256"] == summary["checkpoint"]["sha256"]
        assert (out / name / "per_class_iou.png").is_file() and len(list((out / name / "overlays").iterdir())) == 2
    ade = json.loads((out / "ade20k" / "metrics.json").read_text())
    assert ade["num_classes"] == 150 and ade["class_names"][0] == "background" and ade["background_prepended"]

    # a half-finished run: VOC20's report is gone; VOC21 and ADE20K are reused as they are
    kept = {name: (out / name / "metrics.json").read_bytes() for name in ("pascal_voc", "ade20k")}
    (out / "pascal_voc20" / "metrics.json").unlink()
    seen.clear()
    assert main(_suite_args(data, saved_checkpoint, cache, out)) == 0
    printed = capsys.readouterr().out
    assert seen == ["pascal_voc20"]
    assert {name: (out / name / "metrics.json").read_bytes() for name in kept} == kept
    status = {row["name"]: row["status"] for row in json.loads((out / "summary.json").read_text())["benchmarks"]}
    assert (status["pascal_voc"], status["pascal_voc20"], status["ade20k"]) == ("reused", "computed", "reused")
    assert "VOC21 (pascal_voc): mIoU" in printed and "reused" in printed

    # everything finished: nothing is evaluated and the model is not even loaded
    import simseg

    monkeypatch.setattr(simseg, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    seen.clear()
    assert main(_suite_args(data, saved_checkpoint, cache, out)) == 0
    assert seen == [] and "| reused |" in (out / "summary.md").read_text()
    monkeypatch.undo()
    seen = _count_evaluations(monkeypatch)

    # the data changed: ADE20K has one more image now, and only it is evaluated again
    ade = np.zeros((24, 32), np.uint8)
    ade[4:12, 4:20] = 7
    write_ade(data, {"ADE_val_00000003": ade})
    assert main(_suite_args(data, saved_checkpoint, cache, out)) == 0
    assert seen == ["ade20k"] and "not reused: another num images" in capsys.readouterr().out
    seen.clear()

    # another protocol parameter: every benchmark is evaluated again, and the log says why
    assert main(_suite_args(data, saved_checkpoint, cache, out, "--set", "threshold_std=1.5")) == 0
    assert seen == ["pascal_voc", "pascal_voc20", "ade20k"]
    assert "not reused: another protocol (threshold_std)" in capsys.readouterr().out
    assert json.loads((out / "pascal_voc" / "metrics.json").read_text())["protocol"]["threshold_std"] == 1.5
    seen.clear()
    assert main(_suite_args(data, saved_checkpoint, cache, out, "--set", "threshold_std=1.5", "--limit", "1")) == 0
    assert seen == ["pascal_voc", "pascal_voc20", "ade20k"]  # a limited run is another run
    seen.clear()
    assert main(_suite_args(data, saved_checkpoint, cache, out, "--set", "threshold_std=1.5", "--limit", "1",
                            "--recompute")) == 0
    assert seen == ["pascal_voc", "pascal_voc20", "ade20k"]


def test_eval_seg_all_counts_bad_samples_per_benchmark_and_in_all(tmp_path, saved_checkpoint, capsys):
    """One corrupt VOC image is one bad sample in VOC21 and one in VOC20 (the same images), none in ADE20K: each
    report, the summary and the exit status count exactly those."""
    from simseg.app.cli import main

    data, out = tmp_path / "data", tmp_path / "all"
    _suite_root(data)
    (data / "VOCdevkit" / "VOC2012" / "JPEGImages" / "2008_000001.jpg").write_bytes(b"\xff\xd8\xff junk")
    assert main(_suite_args(data, saved_checkpoint, tmp_path / "cache", out, "--num-overlays", "0")) == 1
    err = capsys.readouterr().err
    assert "2 bad sample(s), listed in the report(s)" in err and "--skip-bad" in err
    rows = {row["name"]: row for row in json.loads((out / "summary.json").read_text())["benchmarks"]}
    assert {name: rows[name]["num_bad"] for name in ("pascal_voc", "pascal_voc20", "ade20k")} == {
        "pascal_voc": 1, "pascal_voc20": 1, "ade20k": 0}
    assert {name: rows[name]["num_evaluated"] for name in ("pascal_voc", "pascal_voc20", "ade20k")} == {
        "pascal_voc": 2, "pascal_voc20": 2, "ade20k": 2}
    for name, bad in (("pascal_voc", 1), ("pascal_voc20", 1), ("ade20k", 0)):
        report = json.loads((out / name / "metrics.json").read_text())
        assert (report["num_bad"], len(report["bad_samples"])) == (bad, bad), name
    assert "computed (1 bad)" in (out / "summary.md").read_text()


def test_eval_seg_named_benchmarks(tmp_path, saved_checkpoint, capsys):
    from simseg.app.cli import main

    data = tmp_path / "data"
    _suite_root(data)
    args = _suite_args(data, saved_checkpoint, tmp_path / "cache", tmp_path / "two")
    args[2] = "ade20k,pascal_voc"
    assert main(args + ["--num-overlays", "0"]) == 0
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert not (tmp_path / "two" / "ade20k" / "overlays").exists()
    assert summary["order"] == ["pascal_voc", "ade20k"]  # the papers' order, whatever order they were named in
    capsys.readouterr()
    args[2] = "pascal_voc,cityscapes,coco_stuff"  # named explicitly: missing ones are an error, not a table entry
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cityscapes folder not found" in err and "coco_stuff folder not found" in err
    args[2] = "pascal_voc,nope"
    assert main(args) == 2
    assert "unknown dataset(s) 'nope'" in capsys.readouterr().err
    # nothing under the root: a wrong --data-root, one line, no model loaded and no report written
    (tmp_path / "empty").mkdir()
    args[2], args[4], args[10] = "all", str(tmp_path / "empty"), str(tmp_path / "none")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'empty'}: no benchmark found" in err
    assert not (tmp_path / "none").exists()


def test_eval_seg_dense_preset_is_merged_under_set(tmp_path, saved_checkpoint, capsys):
    from simseg.app.cli import main
    from simseg.presets import PRESET_SOURCES, dense_preset

    data = tmp_path / "data"
    write_cityscapes(data, {"frankfurt/frankfurt_000000_000294": np.array([[0, 1, 255], [18, 2, 2]] * 8,
                                                                          np.uint8).repeat(8, 1)})
    out = tmp_path / "city"
    base = ["eval-seg", "--dataset", "cityscapes", "--data-root", str(data), "--checkpoint", str(saved_checkpoint),
            "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--templates", "single", "--out", str(out),
            "--protocol", "dense", "--set", "short_side=48", "--set", "crop_size=32", "--set", "stride=16"]
    assert main(base + ["--preset", "proxyclip"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "metrics.json").read_text())
    assert report["preset"] == {"name": "proxyclip", "source": PRESET_SOURCES["proxyclip"],
                                "params": dense_preset("proxyclip", "cityscapes")}
    p = report["protocol"]
    assert (p["name"], p["short_side"], p["crop_size"], p["stride"]) == ("dense", 48, 32, 16)  # --set wins
    assert p["bg_threshold"] == 0.0  # from the preset: Cityscapes has no background class
    assert report["overrides"] == {"short_side": 48, "crop_size": 32, "stride": 16}
    assert "preset proxyclip" in printed and "short_side=48" in printed
    assert sorted(x.name for x in (out / "overlays").iterdir())[0] == "frankfurt_frankfurt_000000_000294_gt.png"
    assert main(base) == 0  # no preset named: the default one
    assert json.loads((out / "metrics.json").read_text())["preset"]["name"] == "sclip"
    assert main(base + ["--preset", "none"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["preset"] is None and report["protocol"]["bg_threshold"] is None  # DenseParams' own default
    capsys.readouterr()
    assert main(base[:-8] + ["--preset", "sclip"]) == 2  # a preset without the dense protocol
    assert "--protocol dense" in capsys.readouterr().err


def test_eval_seg_names_files_with_synonyms(tmp_path, saved_checkpoint, capsys):
    from simseg.app.cli import main
    from simseg.classnames import benchmark_classes

    data = tmp_path / "data"
    _suite_root(data)
    names = tmp_path / "names"
    names.mkdir()
    voc20 = benchmark_classes("pascal_voc20")
    lines = [f"{n}, {n} photo" if n in ("car", "dog") else n for n in voc20]
    (names / "pascal_voc20.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "syn"
    args = _suite_args(data, saved_checkpoint, tmp_path / "cache", out, "--names-dir", str(names))
    args[2] = "pascal_voc,pascal_voc20"
    assert main(args) == 0
    voc20_report = json.loads((out / "pascal_voc20" / "metrics.json").read_text())
    assert voc20_report["names_file"] == str(names / "pascal_voc20.txt")
    assert voc20_report["names"][6] == ["car", "car photo"] and len(voc20_report["names"]) == 20
    assert list(voc20_report["per_class_IoU"]) == voc20  # the classes keep their benchmark names
    assert json.loads((out / "pascal_voc" / "metrics.json").read_text())["names"] is None  # no file: standard
    assert "names" in (out / "summary.md").read_text() and "pascal_voc20.txt" in (out / "summary.md").read_text()
    # other names: evaluated again
    (names / "pascal_voc20.txt").write_text("\n".join(voc20) + "\n")
    assert main(args) == 0
    assert "pascal_voc20/metrics.json not reused: another names" in capsys.readouterr().out
    # one benchmark takes --names-file; a file with the wrong number of lines is one line naming it
    single = ["eval-seg", "--dataset", "pascal_voc20", *args[3:-2]]
    (names / "short.txt").write_text("aeroplane\nbicycle\n")
    assert main(single + ["--names-file", str(names / "short.txt")]) == 2
    err = capsys.readouterr().err
    assert "short.txt: 2 lines of names for 20 classes" in err and err.count("\n") == 1
    assert main(args[:-2] + ["--names-file", str(names / "short.txt")]) == 2  # several benchmarks: --names-dir
    assert "--names-dir" in capsys.readouterr().err
    assert main(args) == 2  # short.txt in the folder names no benchmark
    assert "short.txt name no benchmark" in capsys.readouterr().err


def test_eval_seg_label_values_out_of_range_stop_with_one_line(tmp_path, saved_checkpoint, capsys):
    from simseg.app.cli import main

    data = tmp_path / "data"
    lab = np.zeros((40, 48), np.uint8)
    lab[5:9, 5:9] = 40  # not a VOC class
    lab[0, :3] = 254
    write_voc(data, {"2008_000000": np.zeros((36, 36), np.uint8), "2008_000001": lab})
    args = _suite_args(data, saved_checkpoint, tmp_path / "cache", tmp_path / "o")
    args[2] = "pascal_voc"
    assert main(args + ["--skip-bad"]) == 2  # not a bad sample to skip: these labels are not VOC's
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # not the progress bar
    assert len(err) == 1 and "2008_000001.png: label values 40, 254 are not class indices of pascal_voc" in err[0]
    assert not (tmp_path / "o" / "metrics.json").exists()
    # nothing of the stopped run is left: one image at a time, the first image's overlays were (in overlays/)
    kept = tmp_path / "o" / "overlays" / "mine.txt"
    kept.parent.mkdir()
    kept.write_text("not the run's")
    assert main(args + ["--serial"]) == 2
    assert [p.name for p in (tmp_path / "o").rglob("*")] == ["overlays", "mine.txt"]
    kept.unlink()
    assert main(args + ["--serial"]) == 2
    assert list((tmp_path / "o").iterdir()) == []  # --out itself is made up front, to fail early where unwritable
    args[2] = "all"  # nor the benchmark's report folder
    assert main(args + ["--serial"]) == 2
    assert list((tmp_path / "o").iterdir()) == []
