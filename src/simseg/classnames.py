"""Class-name lists: the benchmarks' label lists, synonym files, the 80 ImageNet prompt templates, user class lists.

The benchmark lists are package data (``label_category/*.txt``, one name per line, in label-index order). PASCAL VOC,
PASCAL Context and COCO-Object are copied verbatim from the original SimSeg label files and start with
``background``; COCO-Stuff (171), ADE20K (150) and Cityscapes (19) are MMSegmentation's class names (the lists the
training-free open-vocabulary family evaluates with) and have no background entry. User class lists follow the
project's background convention: a list that starts with ``background`` keeps it as index 0; any other list gets
``background`` prepended, so the user's classes are 1..N and label maps always store the same indices as a
benchmark's ground truth.

Synonym files give a class several names (one line per class, names separated by commas, as the ``cls_*.txt`` files
of SCLIP / NACLIP, or by semicolons, as ProxyCLIP's); a class then scores as the maximum over its names
(:func:`max_over_synonyms`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from simseg.errors import ConfigError, InputError

if TYPE_CHECKING:
    import torch

BACKGROUND = "background"

#: Benchmarks whose class list is stored in ``label_category/<name>.txt``. The first three start with background.
_LIST_FILES = ("pascal_voc", "pascal_context", "coco_object", "coco_stuff", "cityscapes", "ade20k")

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
        name: ``pascal_voc`` (21), ``pascal_context`` (60), ``coco_object`` (81), the background-free variants
            ``pascal_voc20`` / ``pascal_context59``, or the background-free ``coco_stuff`` (171), ``cityscapes`` (19)
            and ``ade20k`` (150).

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
        InputError: the list is empty, has an empty name, a duplicate (case-insensitive), ``background``
            anywhere other than first, or nothing but ``background``.
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
            # the position and count, not the list itself: a long list would not fit one line
            raise InputError(f"class list: empty class name at position {i + 1} of {len(names)} (two commas in a "
                             "row, or one at an end?)")
        key = name.lower()
        if key == BACKGROUND and i != 0:
            raise InputError(f"class list: {name!r} must be the first entry (position 1), found at position {i + 1}")
        if key in seen:
            raise InputError(f"class list: duplicate class name {name!r} (positions {seen[key] + 1} and {i + 1})")
        seen[key] = i
    if names[0].lower() == BACKGROUND:
        if len(names) == 1:  # every pixel would be background: nothing to look for
            raise InputError(f"class list: only {names[0]!r}; give at least one class to find besides background")
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
        text = p.read_text(encoding="utf-8-sig")  # utf-8-sig drops a byte-order mark; splitlines takes CRLF
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: class file is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise InputError(f"{p}: cannot read class file ({e.strerror or e})") from None
    entries = [part.strip() for line in text.splitlines() for part in line.split(",")]
    entries = [e for e in entries if e]
    if not entries:
        raise InputError(f"{p}: class file is empty")
    try:
        return parse_class_list(entries)
    except InputError as e:
        raise InputError(f"{p}: {e}") from None


#: What separates the names of one class on a line of a synonym file: commas (SCLIP / NACLIP) or semicolons
#: (ProxyCLIP).
_SYNONYM_SEPARATOR = re.compile(r"[,;]")


def read_synonym_file(path: str | os.PathLike, num_classes: int | None = None) -> list[list[str]]:
    """Read a synonym file: line ``i`` holds the names of class ``i``, separated by commas (or semicolons).

    The lines follow the class list the file is used with, in label-index order (for PASCAL VOC the first line
    names background, for VOC20 there is no background line). A UTF-8 byte-order mark, Windows line ends, spaces
    around names and blank lines at the end of the file are tolerated.

    Args:
        path: the text file.
        num_classes: the number of classes the file must name (checked when given).

    Returns:
        One list of names per class, in file order; each list has at least one name.

    Raises:
        InputError: the file is missing or unreadable, a line has no name or an empty name (``a,,b``), a name is
            repeated (case-insensitive, on one line or two), or the number of lines is not ``num_classes``; the
            message names the file and the line.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: synonym file not found")
    try:
        text = p.read_text(encoding="utf-8-sig")  # utf-8-sig drops a byte-order mark
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: cannot read synonym file ({e})") from None
    lines = text.splitlines()  # \n, \r\n and \r
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise InputError(f"{p}: synonym file is empty")
    groups: list[list[str]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise InputError(f"{p}: line {number} is blank; every class needs at least one name")
        names = [part.strip() for part in _SYNONYM_SEPARATOR.split(line)]
        if any(not n for n in names):
            raise InputError(f"{p}: line {number} has an empty name in {line.strip()!r}")
        for name in names:
            key = name.lower()
            if key in seen:
                raise InputError(f"{p}: name {name!r} appears on line {seen[key]} and line {number}")
            seen[key] = number
        groups.append(names)
    if num_classes is not None and len(groups) != num_classes:
        raise InputError(
            f"{p}: {len(groups)} lines of names for {num_classes} classes (one line per class, in label order)"
        )
    return groups


def flatten_synonyms(groups: Sequence[Sequence[str]]) -> tuple[list[str], list[int]]:
    """Flatten per-class name lists into the names to encode and, for each name, the index of its class.

    Example: ``[["sky", "clouds"], ["car"]] -> (["sky", "clouds", "car"], [0, 0, 1])``.

    Raises:
        InputError: a class has no name.
    """
    names: list[str] = []
    class_of_name: list[int] = []
    for index, group in enumerate(groups):
        if not group:
            raise InputError(f"class {index} has no name")
        names.extend(group)
        class_of_name.extend([index] * len(group))
    return names, class_of_name


def max_over_synonyms(
    values: torch.Tensor, class_of_name: Sequence[int] | torch.Tensor, dim: int = -1
) -> torch.Tensor:
    """Per-class values from per-name values: each class takes the maximum over its names.

    This is the training-free family's rule for synonym files (a class's probability or similarity is the best of
    its names'). Works on any tensor whose ``dim`` axis runs over names, e.g. (N,) image-level scores, (P, N) patch
    similarities or (N, H, W) probability maps.

    Args:
        values: per-name values; ``values.shape[dim] == len(class_of_name)``.
        class_of_name: the class index of each name (as :func:`flatten_synonyms` returns); every class from 0 to
            the largest index must have at least one name.
        dim: the name axis.

    Returns:
        A new tensor, the name axis replaced by a class axis of ``max(class_of_name) + 1`` entries; same dtype and
        device as ``values``.

    Raises:
        ValueError: the name axis and ``class_of_name`` differ in length, an index is negative, or a class has no
            name.
    """
    import torch

    index = torch.as_tensor(class_of_name, dtype=torch.int64, device=values.device)
    if index.ndim != 1 or index.numel() != values.shape[dim]:
        raise ValueError(f"class_of_name has {index.numel()} entries for {values.shape[dim]} names on axis {dim}")
    if index.numel() == 0:
        raise ValueError("no names")
    if int(index.min()) < 0:
        raise ValueError("class indices must be non-negative")
    num_classes = int(index.max()) + 1
    counts = torch.bincount(index, minlength=num_classes)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"classes without a name: {missing}")
    moved = values.movedim(dim, -1)
    if num_classes == index.numel() and bool((index == torch.arange(num_classes, device=index.device)).all()):
        return moved.clone().movedim(-1, dim)  # one name per class, in order: nothing to reduce
    out = moved.new_zeros((*moved.shape[:-1], num_classes))
    out.scatter_reduce_(-1, index.expand(moved.shape), moved, reduce="amax", include_self=False)
    return out.movedim(-1, dim)
