"""``simseg prepare``: every sub-command end to end, and the COCO-Object guard for 171-class label files."""

import numpy as np
from PIL import Image

from simseg.app.cli import main
from tests.test_prepare import (  # noqa: F401
    CITYSCAPES_EXPECTED,
    COCO_STUFF_EXPECTED,
    _cityscapes_tree,
    _coco_tree,
    _context_json,
    _stuffthing_tree,
)


def test_prepare_cli(tmp_path, capsys):
    root, expected = _coco_tree(tmp_path)
    assert main(["prepare", "coco-object", str(root), "--nproc", "1"]) == 0
    assert "val2017: 1" in capsys.readouterr().out
    path, _ = _context_json(tmp_path)
    assert main(["prepare", "pascal-context", str(tmp_path / "VOCdevkit"), str(path)]) == 0
    assert main(["prepare", "pascal-context", str(tmp_path / "VOCdevkit"), str(tmp_path / "nope.json")]) == 2
    assert "nope.json" in capsys.readouterr().err


def test_prepare_coco_stuff_cli(tmp_path, capsys):
    valid = np.array(sorted(COCO_STUFF_EXPECTED), dtype=np.uint8).reshape(4, 43)  # all 171 values and 255
    root = _stuffthing_tree(tmp_path, valid)
    assert main(["prepare", "coco-stuff", str(root), "--nproc", "1"]) == 0
    assert "wrote coco-stuff labels" in capsys.readouterr().out
    got = np.asarray(Image.open(root / "annotations" / "val2017" / "000000000139_labelTrainIds171.png"))
    assert got.tolist() == [[COCO_STUFF_EXPECTED[int(v)] for v in row] for row in valid]
    assert main(["prepare", "coco-stuff", str(tmp_path / "missing")]) == 2
    assert "missing: COCO-Stuff folder not found" in capsys.readouterr().err
    assert main(["prepare", "coco-stuff", str(root), "--nproc", "0"]) == 2


def test_prepare_cityscapes_cli_says_which_table(tmp_path, capsys):
    ids = np.arange(34, dtype=np.uint8).reshape(2, 17)
    base = _cityscapes_tree(tmp_path, {"val/ulm/ulm_000000_000019": ids})
    assert main(["prepare", "cityscapes", str(base), "--nproc", "1"]) == 0
    out = capsys.readouterr().out
    assert "val: 1" in out and "label id -> train id table" in out
    assert ("cityscapesscripts (installed)" in out) or ("built-in copy" in out)
    got = np.asarray(Image.open(base / "gtFine" / "val" / "ulm" / "ulm_000000_000019_gtFine_labelTrainIds.png"))
    assert got.tolist() == [[CITYSCAPES_EXPECTED.get(int(v), 255) for v in row] for row in ids]
    assert main(["prepare", "cityscapes", str(tmp_path / "nowhere")]) == 2
    assert "gtFine" in capsys.readouterr().err


def test_prepare_coco_object_refuses_to_overwrite_171_class_labels(tmp_path, capsys):
    root, expected = _coco_tree(tmp_path)
    # MMSegmentation's COCO-Stuff conversion, under the name COCO-Object labels have: values up to 170 and 255
    theirs = root / "annotations" / "val2017" / "000000000139_labelTrainIds.png"
    stuff = np.array([[0, 150, 170, 255], [3, 80, 91, 12], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=np.uint8)
    Image.fromarray(stuff, mode="L").save(theirs)
    before = theirs.read_bytes()
    assert main(["prepare", "coco-object", str(root), "--nproc", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "000000000139_labelTrainIds.png" in err and "--force" in err
    assert theirs.read_bytes() == before  # untouched
    assert not (root / "annotations" / "train2017" / "000000000009_labelTrainIds.png").exists()  # nothing written
    assert main(["prepare", "coco-object", str(root), "--nproc", "1", "--force"]) == 0
    assert (np.asarray(Image.open(theirs)) == expected).all()
    # our own earlier COCO-Object labels (0..80) are simply rewritten
    assert main(["prepare", "coco-object", str(root), "--nproc", "1"]) == 0
