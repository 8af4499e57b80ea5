"""Class-name lists: the benchmarks' label lists, the 80 ImageNet prompt templates, user class lists.

The benchmark lists are package data (``label_category/*.txt``, one name per line, background first), copied
verbatim from the original SimSeg label files. User class lists follow the project's background convention: a
list that starts with ``background`` keeps it as index 0; any other list gets ``background`` prepended, so the
user's classes are 1..N and label maps always store the same indices as a benchmark's ground truth.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

from simseg.errors import ConfigError, InputError

BACKGROUND = "background"

#: Benchmarks whose class list is stored in ``label_category/<name>.txt`` (background at index 0).
_LIST_FILES = ("pascal_voc", "pascal_context", "coco_object")

#: Background-free variants: the stored list of the base benchmark without its background entry.
_NO_BACKGROUND_VARIANTS = {"pascal_voc20": "pascal_voc", "pascal_context59": "pascal_context"}

#: The 80 prompt templates of OpenAI's CLIP ImageNet notebook (Prompt_Engineering_for_ImageNet.ipynb), in order.
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

#: A single prompt for quick use (``--templates single``).
SINGLE_TEMPLATE: tuple[str, ...] = ("a photo of a {}.",)

#: Prompt template sets by name (``--templates``); ``imagenet`` is the paper's.
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {"imagenet": IMAGENET_TEMPLATES, "single": SINGLE_TEMPLATE}


def resolve_templates(templates: str | Sequence[str] | None) -> tuple[str, ...]:
    """Templates by set name (``imagenet``, ``single``) or as given; each must contain ``{}`` once.

    Raises:
        ConfigError: unknown set name, empty list, or a template without exactly one ``{}``.
    """
    if templates is None:
        return IMAGENET_TEMPLATES
    if isinstance(templates, str):
        if templates in TEMPLATE_SETS:
            return TEMPLATE_SETS[templates]
        templates = [templates]
    out = tuple(str(t) for t in templates)
    if not out:
        raise ConfigError("templates: empty list")
    for t in out:
        if t.count("{}") != 1:
            raise ConfigError(f"templates: {t!r} must contain exactly one '{{}}' where the class name goes")
    return out


def templates_name(templates: Sequence[str]) -> str:
    """The set name of ``templates`` (``imagenet``, ``single``), or ``custom(N)``."""
    for name, value in TEMPLATE_SETS.items():
        if tuple(templates) == value:
            return name
    return f"custom({len(templates)})"


#: Every name :func:`benchmark_classes` accepts.
BENCHMARK_NAMES: tuple[str, ...] = _LIST_FILES + tuple(_NO_BACKGROUND_VARIANTS)


@lru_cache(maxsize=None)
def _read_packaged_list(name: str) -> tuple[str, ...]:
    # Cached as an immutable tuple: the package data never changes while the process runs.
    text = resources.files("simseg").joinpath("label_category", f"{name}.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def benchmark_classes(name: str) -> list[str]:
    """Class names of a benchmark, in label-index order.

    Args:
        name: ``pascal_voc`` (21), ``pascal_context`` (60), ``coco_object`` (81), or the background-free variants
            ``pascal_voc20`` / ``pascal_context59``.

    Returns:
        A new list; index ``i`` names ground-truth label ``i``.

    Raises:
        InputError: unknown benchmark name.
    """
    if name in _NO_BACKGROUND_VARIANTS:
        return list(_read_packaged_list(_NO_BACKGROUND_VARIANTS[name])[1:])
    if name in _LIST_FILES:
        return list(_read_packaged_list(name))
    raise InputError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARK_NAMES)}")


def parse_class_list(classes: str | list[str] | tuple[str, ...]) -> list[str]:
    """Turn a user's class list into label-index order following the background convention.

    Args:
        classes: a comma-separated string (``"cat, dog, grass"``) or a sequence of names.

    Returns:
        The names with ``background`` at index 0: kept there when the user put it first, prepended otherwise.

    Raises:
        InputError: the list is empty, has an empty name, a duplicate (case-insensitive), or ``background``
            anywhere other than first.
    """
    if isinstance(classes, str):
        names = classes.split(",")
    else:
        names = list(classes)
    names = [str(n).strip() for n in names]
    if not names or names == [""]:
        raise InputError("class list: empty; give at least one class name (e.g. --classes 'cat,dog')")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not name:
            raise InputError(f"class list: empty class name at position {i + 1} in {', '.join(names)!r}")
        key = name.lower()
        if key == BACKGROUND and i != 0:
            raise InputError(f"class list: {name!r} must be the first entry (position 1), found at position {i + 1}")
        if key in seen:
            raise InputError(f"class list: duplicate class name {name!r} (positions {seen[key] + 1} and {i + 1})")
        seen[key] = i
    if names[0].lower() == BACKGROUND:
        return [BACKGROUND] + names[1:]
    return [BACKGROUND] + names


def read_class_file(path: str | os.PathLike) -> list[str]:
    """Read class names from a text file (one per line, or comma-separated) and apply :func:`parse_class_list`.

    Blank lines are ignored, so a trailing newline is fine.

    Raises:
        InputError: the file is missing, unreadable, empty, or its list is invalid (the message names the file).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: class file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: cannot read class file ({e})") from None
    entries = [part.strip() for line in text.splitlines() for part in line.split(",")]
    entries = [e for e in entries if e]
    if not entries:
        raise InputError(f"{p}: class file is empty")
    try:
        return parse_class_list(entries)
    except InputError as e:
        raise InputError(f"{p}: {e}") from None
