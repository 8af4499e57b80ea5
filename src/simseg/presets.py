"""Named presets of the ``dense`` protocol per benchmark, as the training-free open-vocabulary papers evaluate.

SCLIP, NACLIP and ProxyCLIP evaluate the eight benchmarks with MMSegmentation configs that differ per
benchmark: the image is resized so its short side is some length (MMSegmentation's ``Resize(scale=(2048, S),
keep_ratio=True)``, which for every image of these benchmarks means short side ``S``), then read by sliding square
windows. A preset fixes those numbers for each benchmark so a SimSeg model can be compared on the same footing;
the paper's own ``simseg`` protocol stays the default, and every number states the protocol and preset that made it.

A preset entry is a plain dict of :class:`simseg.protocols.DenseParams` names:

- ``short_side``: the ``S`` of the benchmark's config;
- ``crop_size``, ``stride``: the sliding window (``slide_crop``, ``slide_stride`` of the segmentor);
- ``bg_threshold``: benchmarks with a background class (VOC21, Context60, COCO-Object) assign background where
  the best class probability is below the config's ``prob_thd``; the background-free ones (VOC20, Context59,
  COCO-Stuff, Cityscapes, ADE20K) have ``0.0``: no pixel is ever background, every pixel takes a class, as in
  those papers.

``batch_size`` (windows per forward pass) changes memory, not numbers, so presets leave it to the user.

Not carried over, because the dense protocol has no such parameter: the configs' ``logit_scale`` (40 by default;
SCLIP uses 65 on VOC21 and 50 on Context60 / COCO-Object), where the dense protocol uses the model's own learned
temperature; SCLIP's ``area_thd`` on VOC21; optional PAMR refinement; and the family's background rule, which lets
the background names take part in the softmax before thresholding, where ``DenseParams.bg_threshold`` thresholds
the softmax over the foreground classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from simseg.errors import ConfigError

PresetParams = Mapping[str, "int | float | None"]


def _frozen(table: dict[str, dict[str, int | float | None]]) -> Mapping[str, PresetParams]:
    return MappingProxyType({name: MappingProxyType(dict(params)) for name, params in table.items()})


# SCLIP (configs/cfg_*.py and clip_segmentor.py defaults slide_crop=224, slide_stride=112); NACLIP's configs use
# the same short sides, windows and prob_thd=0.1 on the three benchmarks with background.
_SCLIP = _frozen({
    "pascal_voc": {"short_side": 336, "crop_size": 224, "stride": 112, "bg_threshold": 0.1},
    "pascal_context": {"short_side": 336, "crop_size": 224, "stride": 112, "bg_threshold": 0.1},
    "coco_object": {"short_side": 336, "crop_size": 224, "stride": 112, "bg_threshold": 0.1},
    "pascal_voc20": {"short_side": 336, "crop_size": 224, "stride": 112, "bg_threshold": 0.0},
    "pascal_context59": {"short_side": 336, "crop_size": 224, "stride": 112, "bg_threshold": 0.0},
    "coco_stuff": {"short_side": 448, "crop_size": 224, "stride": 112, "bg_threshold": 0.0},
    "cityscapes": {"short_side": 560, "crop_size": 224, "stride": 112, "bg_threshold": 0.0},
    "ade20k": {"short_side": 336, "crop_size": 224, "stride": 112, "bg_threshold": 0.0},
})

# ProxyCLIP (configs/cfg_*.py and proxyclip_segmentor.py defaults slide_crop=336, slide_stride=112; Cityscapes
# overrides the window to 224 / 112). Its prob_thd values are its own (0.2 / 0.15 / 0.25; the configs note 0.1 /
# 0.05 / 0.1 for plain CLIP). VOC20 and Context59 have no config of their own in its repository; they take
# VOC21's and Context60's settings without the background threshold.
_PROXYCLIP = _frozen({
    "pascal_voc": {"short_side": 336, "crop_size": 336, "stride": 112, "bg_threshold": 0.2},
    "pascal_context": {"short_side": 336, "crop_size": 336, "stride": 112, "bg_threshold": 0.15},
    "coco_object": {"short_side": 336, "crop_size": 336, "stride": 112, "bg_threshold": 0.25},
    "pascal_voc20": {"short_side": 336, "crop_size": 336, "stride": 112, "bg_threshold": 0.0},
    "pascal_context59": {"short_side": 336, "crop_size": 336, "stride": 112, "bg_threshold": 0.0},
    "coco_stuff": {"short_side": 336, "crop_size": 336, "stride": 112, "bg_threshold": 0.0},
    "cityscapes": {"short_side": 448, "crop_size": 224, "stride": 112, "bg_threshold": 0.0},
    "ade20k": {"short_side": 448, "crop_size": 336, "stride": 112, "bg_threshold": 0.0},
})

#: Preset name -> benchmark name -> dense-protocol parameters (read-only).
DENSE_PRESETS: Mapping[str, Mapping[str, PresetParams]] = MappingProxyType({"sclip": _SCLIP, "proxyclip": _PROXYCLIP})

#: Preset name -> where its numbers come from (for reports).
PRESET_SOURCES: Mapping[str, str] = MappingProxyType({
    "sclip": "SCLIP and NACLIP evaluation configs (224 x 224 windows, stride 112)",
    "proxyclip": "ProxyCLIP evaluation configs (336 x 336 windows, stride 112; Cityscapes 224 / 112)",
})

#: The preset used when a dense evaluation names none.
DEFAULT_DENSE_PRESET = "sclip"


def dense_preset(preset: str, benchmark: str) -> dict[str, int | float | None]:
    """The dense-protocol parameters of a named preset for one benchmark.

    Args:
        preset: a key of :data:`DENSE_PRESETS` (``"sclip"`` or ``"proxyclip"``).
        benchmark: a key of :data:`simseg.segdata.BENCHMARKS`.

    Returns:
        A new plain dict of :class:`simseg.protocols.DenseParams` names (``short_side``, ``crop_size``, ``stride``,
        ``bg_threshold``); user overrides are merged over it.

    Raises:
        ConfigError: unknown preset or benchmark (the message names the choices).
    """
    if preset not in DENSE_PRESETS:
        raise ConfigError(f"unknown dense preset {preset!r}: choose one of {', '.join(DENSE_PRESETS)}")
    table = DENSE_PRESETS[preset]
    if benchmark not in table:
        raise ConfigError(f"dense preset {preset!r} has no entry for {benchmark!r}; known: {', '.join(table)}")
    return dict(table[benchmark])
