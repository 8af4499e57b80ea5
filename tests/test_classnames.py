"""Benchmark class lists, synonym files, prompt templates and the background convention of user class lists."""

import pytest
import torch

from simseg.classnames import (
    BENCHMARK_NAMES,
    IMAGENET_TEMPLATES,
    benchmark_classes,
    flatten_synonyms,
    max_over_synonyms,
    parse_class_list,
    read_class_file,
    read_synonym_file,
)
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
    with pytest.raises(InputError, match="ade847.*cityscapes"):
        benchmark_classes("ade847")


def test_imagenet_templates():
    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    assert IMAGENET_TEMPLATES[0] == "a bad photo of a {}."
    assert IMAGENET_TEMPLATES[-1] == "a tattoo of the {}."
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)
    assert "a photo of a {}." in IMAGENET_TEMPLATES


#: The 80 prompt templates of OpenAI's CLIP ImageNet notebook, in its order: the list the paper's class embeddings use.
OPENAI_IMAGENET_TEMPLATES = [
    'a bad photo of a {}.', 'a photo of many {}.', 'a sculpture of a {}.', 'a photo of the hard to see {}.',
    'a low resolution photo of the {}.', 'a rendering of a {}.', 'graffiti of a {}.', 'a bad photo of the {}.',
    'a cropped photo of the {}.', 'a tattoo of a {}.', 'the embroidered {}.', 'a photo of a hard to see {}.',
    'a bright photo of a {}.', 'a photo of a clean {}.', 'a photo of a dirty {}.', 'a dark photo of the {}.',
    'a drawing of a {}.', 'a photo of my {}.', 'the plastic {}.', 'a photo of the cool {}.',
    'a close-up photo of a {}.', 'a black and white photo of the {}.', 'a painting of the {}.', 'a painting of a {}.',
    'a pixelated photo of the {}.', 'a sculpture of the {}.', 'a bright photo of the {}.', 'a cropped photo of a {}.',
    'a plastic {}.', 'a photo of the dirty {}.', 'a jpeg corrupted photo of a {}.', 'a blurry photo of the {}.',
    'a photo of the {}.', 'a good photo of the {}.', 'a rendering of the {}.', 'a {} in a video game.',
    'a photo of one {}.', 'a doodle of a {}.', 'a close-up photo of the {}.', 'a photo of a {}.',
    'the origami {}.', 'the {} in a video game.', 'a sketch of a {}.', 'a doodle of the {}.',
    'a origami {}.', 'a low resolution photo of a {}.', 'the toy {}.', 'a rendition of the {}.',
    'a photo of the clean {}.', 'a photo of a large {}.', 'a rendition of a {}.', 'a photo of a nice {}.',
    'a photo of a weird {}.', 'a blurry photo of a {}.', 'a cartoon {}.', 'art of a {}.',
    'a sketch of the {}.', 'a embroidered {}.', 'a pixelated photo of a {}.', 'itap of the {}.',
    'a jpeg corrupted photo of the {}.', 'a good photo of a {}.', 'a plushie {}.', 'a photo of the nice {}.',
    'a photo of the small {}.', 'a photo of the weird {}.', 'the cartoon {}.', 'art of the {}.',
    'a drawing of the {}.', 'a photo of the large {}.', 'a black and white photo of a {}.', 'the plushie {}.',
    'a dark photo of a {}.', 'itap of a {}.', 'graffiti of the {}.', 'a toy {}.',
    'itap of my {}.', 'a photo of a cool {}.', 'a photo of a small {}.', 'a tattoo of the {}.',
]


def test_imagenet_templates_are_openais_80_in_order():
    from simseg.classnames import resolve_templates, templates_name

    assert len(OPENAI_IMAGENET_TEMPLATES) == 80
    assert IMAGENET_TEMPLATES == tuple(OPENAI_IMAGENET_TEMPLATES)
    assert resolve_templates(None) == tuple(OPENAI_IMAGENET_TEMPLATES)  # the default everywhere
    assert resolve_templates("imagenet") == tuple(OPENAI_IMAGENET_TEMPLATES)
    assert templates_name(OPENAI_IMAGENET_TEMPLATES) == "imagenet"


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


# ---------------------------------------------------------------------------------------------------------------
# The training-free family's benchmarks and synonym files


def test_new_benchmark_lists_are_mmsegmentations():
    assert {"coco_stuff", "cityscapes", "ade20k"} <= set(BENCHMARK_NAMES)
    stuff = benchmark_classes("coco_stuff")
    assert len(stuff) == 171 and len(set(stuff)) == 171
    assert stuff[:80] == benchmark_classes("coco_object")[1:]  # the 80 things, in COCO id order
    assert stuff[80:84] == ["banner", "blanket", "branch", "bridge"] and stuff[84] == "building-other"
    assert stuff[145] == "sky-other"  # stuffthingmap value 156 (COCO id 157)
    assert stuff[-1] == "wood"
    ade = benchmark_classes("ade20k")
    assert len(ade) == 150 and len(set(ade)) == 150
    assert ade[:4] == ["wall", "building", "sky", "floor"] and ade[7] == "bed"  # MMSegmentation's "bed " stripped
    assert ade[44] == "chest of drawers" and ade[136] == "traffic light" and ade[-1] == "flag"
    city = benchmark_classes("cityscapes")
    assert city == ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                    "bicycle"]
    for names in (stuff, ade, city):
        assert "background" not in names and all(n == n.strip() and n for n in names)
        # the background convention gives them an implicit background at 0
        assert parse_class_list(names) == ["background"] + names


def test_read_synonym_file(tmp_path):
    f = tmp_path / "cls_voc.txt"
    # a BOM, CRLF line ends, SCLIP's ", " and ProxyCLIP's "; " separators, stray spaces, trailing blank lines
    f.write_bytes("\ufeffsky, wall,tree\r\naeroplane\r\nperson;  person in shirt ; rider\r\n\r\n".encode("utf-8"))
    groups = read_synonym_file(f, num_classes=3)
    assert groups == [["sky", "wall", "tree"], ["aeroplane"], ["person", "person in shirt", "rider"]]
    assert read_synonym_file(f) == groups
    assert flatten_synonyms(groups) == (["sky", "wall", "tree", "aeroplane", "person", "person in shirt", "rider"],
                                        [0, 0, 0, 1, 2, 2, 2])


@pytest.mark.parametrize(
    "text, num_classes, match",
    [
        ("a\nb\n", 3, r"2 lines of names for 3 classes"),
        ("a\n\nb\n", None, r"line 2 is blank"),
        ("a, ,b\n", None, r"line 1 has an empty name"),
        ("a,b,\n", None, r"line 1 has an empty name"),
        ("sky, wall\ncar, Sky\n", None, r"'Sky' appears on line 1 and line 2"),
        ("\n \n", None, r"empty"),
    ],
)
def test_read_synonym_file_errors(tmp_path, text, num_classes, match):
    f = tmp_path / "names.txt"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=rf"names\.txt: .*{match}"):
        read_synonym_file(f, num_classes=num_classes)


def test_read_synonym_file_missing_or_unreadable(tmp_path):
    with pytest.raises(InputError, match="missing.txt: synonym file not found"):
        read_synonym_file(tmp_path / "missing.txt")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="latin.txt: cannot read"):
        read_synonym_file(latin)
    with pytest.raises(InputError, match="class 1 has no name"):
        flatten_synonyms([["a"], []])


def test_max_over_synonyms_takes_each_class_best_name():
    # names: sky, wall | aeroplane | person, rider
    class_of_name = [0, 0, 1, 2, 2]
    scores = torch.tensor([0.1, 0.7, 0.3, 0.2, 0.9])
    assert max_over_synonyms(scores, class_of_name).tolist() == pytest.approx([0.7, 0.3, 0.9])
    # per-pixel maps with the name axis first, and patches x names with it last
    maps = torch.rand(5, 3, 4)
    out = max_over_synonyms(maps, class_of_name, dim=0)
    assert out.shape == (3, 3, 4)
    assert torch.equal(out[0], torch.maximum(maps[0], maps[1])) and torch.equal(out[1], maps[2])
    assert torch.equal(out[2], torch.maximum(maps[3], maps[4]))
    patches = torch.randn(7, 5)
    assert torch.equal(max_over_synonyms(patches, torch.tensor(class_of_name)), out_last(patches, class_of_name))
    # names need not be grouped: class 0's names may be anywhere
    assert max_over_synonyms(torch.tensor([1.0, 5.0, 2.0]), [0, 1, 0]).tolist() == [2.0, 5.0]
    # negative values are kept (a max, not a max with 0)
    assert max_over_synonyms(torch.tensor([-3.0, -1.0]), [0, 0]).tolist() == [-1.0]


def out_last(values, class_of_name):
    """An independent reference: a Python loop over classes."""
    cols = []
    for k in range(max(class_of_name) + 1):
        cols.append(values[:, [i for i, c in enumerate(class_of_name) if c == k]].amax(dim=1))
    return torch.stack(cols, dim=1)


def test_max_over_synonyms_one_name_per_class_is_a_copy():
    values = torch.rand(2, 3)
    out = max_over_synonyms(values, [0, 1, 2])
    assert torch.equal(out, values) and out.data_ptr() != values.data_ptr()


def test_max_over_synonyms_errors():
    with pytest.raises(ValueError, match="3 entries for 2 names"):
        max_over_synonyms(torch.zeros(2), [0, 1, 1])
    with pytest.raises(ValueError, match=r"classes without a name: \[1\]"):
        max_over_synonyms(torch.zeros(2), [0, 2])
    with pytest.raises(ValueError, match="non-negative"):
        max_over_synonyms(torch.zeros(2), [0, -1])


def test_class_file_with_bom_crlf_and_blank_lines(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_bytes(b"\xef\xbb\xbfcat\r\ndog\r\n\r\n  \r\nzebra\r\n")
    assert read_class_file(path) == ["background", "cat", "dog", "zebra"]
    path.write_bytes(b"cat\n\xff\xfedog\n")
    with pytest.raises(InputError, match="classes.txt: class file is not UTF-8"):
        read_class_file(path)


def test_unknown_words_are_warned_about_by_class(tmp_path):
    from simseg.embeddings import warn_unknown_words
    from simseg.tokenizer import load_tokenizer, train_wordpiece_vocab

    tok = load_tokenizer(train_wordpiece_vocab(["a photo of a cat", "the dog"], tmp_path, vocab_size=60))
    assert tok.unknown_words("cat zebra") == ["zebra"]
    with pytest.warns(UserWarning, match="class 'zebra crossing': the tokenizer does not know 'zebra'") as record:
        assert warn_unknown_words(tok, ["cat", "zebra crossing", "dog"]) == ["zebra crossing"]
    assert len(record) == 1
