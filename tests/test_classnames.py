"""Benchmark class lists, prompt templates and the background convention of user class lists."""

import pytest

from simseg.classnames import IMAGENET_TEMPLATES, benchmark_classes, parse_class_list, read_class_file
from simseg.errors import InputError


def test_benchmark_lists_match_method_md():
    voc = benchmark_classes("pascal_voc")
    assert len(voc) == 21 and voc[0] == "background" and voc[11] == "table" and voc[-1] == "monitor"
    ctx = benchmark_classes("pascal_context")
    assert len(ctx) == 60 and ctx[0] == "background" and ctx[40] == "pottedplant" and ctx[-1] == "wood"
    coco = benchmark_classes("coco_object")
    assert len(coco) == 81 and coco[:3] == ["background", "person", "bicycle"]
    assert coco[10] == "traffic light" and coco[13] == "parking meter" and coco[-1] == "toothbrush"
    for names in (voc, ctx, coco):
        assert len(set(names)) == len(names)


def test_background_free_variants_drop_only_background():
    assert benchmark_classes("pascal_voc20") == benchmark_classes("pascal_voc")[1:]
    assert len(benchmark_classes("pascal_context59")) == 59
    # callers get their own copy
    benchmark_classes("pascal_voc").append("x")
    assert len(benchmark_classes("pascal_voc")) == 21
    with pytest.raises(InputError, match="cityscapes"):
        benchmark_classes("cityscapes")


def test_imagenet_templates():
    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    assert IMAGENET_TEMPLATES[0] == "a bad photo of a {}."
    assert IMAGENET_TEMPLATES[-1] == "a tattoo of the {}."
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)
    assert "a photo of a {}." in IMAGENET_TEMPLATES


@pytest.mark.parametrize(
    "given, expected",
    [
        ("cat, dog ,grass", ["background", "cat", "dog", "grass"]),
        (["cat"], ["background", "cat"]),
        ("background,cat,dog", ["background", "cat", "dog"]),
        ([" Background ", "sky"], ["background", "sky"]),
        ("grass", ["background", "grass"]),
    ],
)
def test_parse_class_list_background_convention(given, expected):
    assert parse_class_list(given) == expected


@pytest.mark.parametrize(
    "given, match",
    [
        ("", "empty"),
        ([], "empty"),
        ("cat,,dog", "empty class name"),
        ("cat, dog, Cat", "duplicate.*Cat"),
        ("cat,background", "background.*first"),
    ],
)
def test_parse_class_list_errors(given, match):
    with pytest.raises(InputError, match=match):
        parse_class_list(given)


def test_read_class_file(tmp_path):
    one_per_line = tmp_path / "a.txt"
    one_per_line.write_text("cat\ndog\n\ntraffic light\n")
    assert read_class_file(one_per_line) == ["background", "cat", "dog", "traffic light"]
    commas = tmp_path / "b.txt"
    commas.write_text("background, cat, dog\n")
    assert read_class_file(commas) == ["background", "cat", "dog"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(InputError, match="empty.txt"):
        read_class_file(empty)
    with pytest.raises(InputError, match="missing.txt"):
        read_class_file(tmp_path / "missing.txt")
    dup = tmp_path / "dup.txt"
    dup.write_text("cat\ncat\n")
    with pytest.raises(InputError, match="dup.txt.*duplicate"):
        read_class_file(dup)
