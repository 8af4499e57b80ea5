"""``simseg prepare``."""

from simseg.app.cli import main
from tests.test_prepare import _coco_tree, _context_json  # noqa: F401


def test_prepare_cli(tmp_path, capsys):
    root, expected = _coco_tree(tmp_path)
    assert main(["prepare", "coco-object", str(root), "--nproc", "1"]) == 0
    assert "val2017: 1" in capsys.readouterr().out
    path, _ = _context_json(tmp_path)
    assert main(["prepare", "pascal-context", str(tmp_path / "VOCdevkit"), str(path)]) == 0
    assert main(["prepare", "pascal-context", str(tmp_path / "VOCdevkit"), str(tmp_path / "nope.json")]) == 2
    assert "nope.json" in capsys.readouterr().err

