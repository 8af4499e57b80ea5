"""What the applications print and write speaks of the project only, and progress output reads well in a log."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simseg.app.cli import main

#: Words that point outside the product: the project's tracker and its internal documents.
INTERNAL = re.compile(r"\bissues?\b|method\.md|conventions\.md|style\.md|briefs?/", re.IGNORECASE)


def _nulls(obj, path=""):
    """Paths of the null values in a JSON document."""
    if obj is None:
        return [path]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _nulls(v, f"{path}.{k}" if path else k)]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in _nulls(v, f"{path}[{i}]")]
    return []


def _written_text(folder):
    """Every text file a command wrote under ``folder``: (name, text)."""
    return [(str(p), p.read_text(encoding="utf-8")) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix in (".json", ".md", ".txt", ".csv", ".yaml")]


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory):
    from simseg.checkpoint import save_model

    return save_model(tiny_model, tmp_path_factory.mktemp("reports") / "ckpt")


def test_reports_and_printed_lines_make_no_internal_references_and_no_empty_fields(tmp_path, checkpoint, capsys):
    from tests.app.test_eval_seg import _three_image_voc
    from tests.test_retrieval import toy_rows, write_parquet

    images = []
    for i in range(2):
        images.append(tmp_path / f"photo{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(images[-1])
    _three_image_voc(tmp_path / "voc")
    write_parquet(tmp_path / "ret" / "toy" / "valid.parquet", toy_rows(4, 1))
    cache = ["--cache-dir", str(tmp_path / "cache")]
    runs = [
        ["segment", *map(str, images), "--classes", "cat, dog", "--checkpoint", str(checkpoint), "--out",
         str(tmp_path / "seg"), "--templates", "single", *cache],
        ["eval-seg", "--dataset", "pascal_voc", "--data-root", str(tmp_path / "voc"), "--checkpoint", str(checkpoint),
         "--out", str(tmp_path / "evalseg"), "--templates", "single", "--limit", "3", *cache],
        ["eval-retrieval", "--dataset", "toy", "--data-root", str(tmp_path / "ret"), "--checkpoint", str(checkpoint),
         "--out", str(tmp_path / "evalret"), "--batch-size", "4", "--workers", "1"],
    ]
    for argv in runs:
        assert main(argv) == 0, argv
        printed = capsys.readouterr()
        for stream, text in (("stdout", printed.out), ("stderr", printed.err)):
            assert not INTERNAL.findall(text), (argv[0], stream, INTERNAL.findall(text))
    written = [item for name in ("seg", "evalseg", "evalret") for item in _written_text(tmp_path / name)]
    assert len(written) >= 3
    for name, text in written:
        assert not INTERNAL.findall(text), (name, INTERNAL.findall(text))
        if name.endswith(".json"):
            # a value that exists is written; nulls only stand for what does not exist: an IoU / accuracy undefined
            # for a class absent from both ground truth and prediction, an optional package not installed, no preset,
            # no synonym names file
            allowed = ("versions.", "per_class_IoU.", "per_class_Acc.", "preset", "names", "names_file")
            assert [p for p in _nulls(json.loads(text)) if not p.startswith(allowed)] == [], name


def test_the_protocol_description_reports_point_to_is_in_the_repository():
    from pathlib import Path

    from simseg.protocols import CRFParams, DenseParams, RetrievalParams, SimSegParams

    doc = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
    text = doc.read_text(encoding="utf-8")
    assert not INTERNAL.findall(text)
    sections = {SimSegParams: "## `simseg`", DenseParams: "## `dense`", RetrievalParams: "## Image-text retrieval"}
    for cls, title in sections.items():
        section = text[text.index(title):].split("\n## ")[0]
        for name in cls.__dataclass_fields__:  # every parameter is described, with its default
            row = next((line for line in section.splitlines() if line.startswith(f"| `{name}`")), None)
            assert row is not None, name
            default = getattr(cls, name)
            assert (str(default) if default is not None else "null") in row or name == "top_n", (name, row)
    assert f"| `crf_iterations` | {CRFParams.iterations} |" in text


# ------------------------------------------------------------------------------------------------ progress
class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_redraws_on_a_terminal_and_writes_whole_lines_in_a_log():
    from simseg.progress import progress_bar

    tty = _Terminal()
    for _ in progress_bar(range(50), desc="work", file=tty, mininterval=0):
        pass
    assert "\r" in tty.getvalue()  # redrawn in place
    log = io.StringIO()
    for _ in progress_bar(range(50), desc="work", file=log):
        pass
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and 2 <= len(lines) <= 3  # start, (maybe one at 30 s), end
    assert lines[-1].startswith("work: 100%") and "50/50" in lines[-1] and len(max(lines, key=len)) <= 100


def test_nested_progress_bars_in_a_log_write_no_cursor_movements():
    # eval-seg's bar over benchmarks holds one over images, which reports a bad sample between its lines
    from simseg.progress import progress_bar

    log = io.StringIO()
    for _ in progress_bar(range(2), desc="benchmarks", file=log):
        bar = progress_bar(range(3), desc="images", file=log)
        for i in bar:
            if i == 1:
                bar.write("bad sample 1: corrupt", file=log)
        bar.close()
    text = log.getvalue()
    assert "\x1b" not in text and "bad sample 1: corrupt\n" in text
    assert all(line.strip() for line in text.splitlines())


def test_every_progress_bar_goes_through_progress_bar():
    # demo, train, prepare and eval-retrieval drew plain tqdm bars: one giant line of redraws in a log file
    import ast

    import simseg

    package = Path(simseg.__file__).parent
    plain = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "tqdm" for n in names) and path.name != "progress.py":
                plain.append(f"{path.relative_to(package)}:{node.lineno}")
    assert plain == []


def test_demo_scenes_and_a_conversion_write_whole_lines_in_a_log(tmp_path, capsys):
    from simseg.app.demo import _generate
    from simseg.prepare import convert_pascal_context
    from tests.test_prepare import _context_json

    _generate(3, 0, "training scenes", progress=True)
    convert_pascal_context(tmp_path / "VOCdevkit", _context_json(tmp_path)[0])
    err = capsys.readouterr().err
    assert "\r" not in err and "training scenes: 100%" in err and "pascal-context: 100%" in err


def _many_images(tmp_path, n):
    paths = []
    for i in range(n):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(np.full((24, 32, 3), 40 * i, dtype=np.uint8)).save(paths[-1])
    return [str(p) for p in paths]


def test_segment_shows_a_progress_bar_over_many_images_and_no_progress_hides_it(tmp_path, checkpoint, capsys):
    images = _many_images(tmp_path, 5)
    common = ["segment", *images, "--classes", "cat, dog", "--checkpoint", str(checkpoint), "--templates", "single",
              "--cache-dir", str(tmp_path / "cache"), "--protocol", "dense", "--set", "short_side=32",
              "--set", "crop_size=32", "--set", "stride=32"]
    assert main(common + ["--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr()
    bar_lines = [line for line in printed.err.splitlines() if line.startswith("segment:")]
    assert bar_lines and "5/5" in bar_lines[-1] and "img" in bar_lines[-1]
    assert "\r" not in printed.err  # stderr is not a terminal here: whole lines, no redraws
    assert sum(line.endswith(("nothing (all background)",)) or ": " in line for line in printed.out.splitlines()) >= 5
    assert main(common + ["--out", str(tmp_path / "b"), "--no-progress"]) == 0
    assert "segment:" not in capsys.readouterr().err
