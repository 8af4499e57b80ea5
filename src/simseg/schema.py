"""The schema of a training config: every key, its type, its allowed values; checked whenever a config is loaded.

A config (a packaged preset, a YAML file, ``key=value`` overrides, or the ``model`` section of a checkpoint's own
``config.yaml``) is validated against the dataclasses below before anything uses it, so a wrong value fails at once,
in one line that names the key, the value and what is allowed::

    train.lr: -0.001 is not allowed (must be > 0)
    model.pooling: 'max' is not allowed (one of: loda, avg, cls)
    data.image_size: 200 is not a multiple of the patch size 16 (model.vision)

Each field's ``metadata`` holds its rule: ``gt`` / ``ge`` / ``le`` bounds, ``choices``, ``items`` (the rule of each
list item), ``length`` (a list's length). Mappings passed on to a library (``model.vision.kwargs``,
``model.text.config``) are free-form; evaluation sections are checked for their known keys.
"""

from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Optional, Union

from simseg.errors import ConfigError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
POOLINGS = ("loda", "avg", "cls")
TRAIN_POOLINGS = ("masked", "vanilla")
SCHEDULES = ("cosine", "constant")
SOURCE_TYPES = ("csv", "tsv", "parquet", "webdataset")


def _rule(**rule: Any) -> Any:
    return field(default=MISSING, metadata=rule)


def _optional(default: Any = None, **rule: Any) -> Any:
    return field(default=default, metadata=rule)


@dataclass(kw_only=True)
class VisionSchema:
    name: str = _rule()
    pretrained: bool = _optional(False)
    img_size: int = _optional(224, ge=1)
    kwargs: dict = _optional(None, freeform=True)


@dataclass(kw_only=True)
class TextSchema:
    name: str = _rule()
    pretrained: bool = _optional(False)
    config: dict = _optional(None, freeform=True)


@dataclass(kw_only=True)
class ModelSchema:
    vision: VisionSchema = _rule()
    text: TextSchema = _rule()
    tokenizer: Optional[str] = _optional(None)
    max_length: int = _optional(25, ge=2)
    embed_dim: int = _optional(512, ge=1)
    pooling: str = _optional("loda", choices=POOLINGS)
    image_topk: int = _optional(5, ge=1)
    text_topk: int = _optional(1, ge=1)
    temperature_init: float = _optional(0.02, gt=0)
    temperature_min: float = _optional(0.001, gt=0)
    temperature_max: float = _optional(0.5, gt=0)
    init: Optional[str] = _optional(None)
    train_pooling: str = _optional("masked", choices=TRAIN_POOLINGS)
    dropout: Optional[float] = _optional(None, ge=0, le=1)


@dataclass(kw_only=True)
class SourceSchema:
    type: str = _rule(choices=SOURCE_TYPES)
    weight: Optional[float] = _optional(None, gt=0)
    num_samples: Optional[int] = _optional(None, ge=1)
    allow_missing_shards: bool = _optional(False)
    # the value types of the per-type keys, where a source has them (paths, urls and sep: simseg.data)
    path: str = _optional(None)
    image_root: Optional[str] = _optional(None)
    image_column: str = _optional(None)
    caption_column: str = _optional(None)
    cache_row_groups: int = _optional(None, ge=1)
    shuffle_buffer: int = _optional(None, ge=0)
    resampled: bool = _optional(False)
    seed: int = _optional(None)


#: Sections whose other keys are checked elsewhere: a source's keys differ per type (simseg.data.source_from_spec).
OPEN_SCHEMAS = (SourceSchema,)


@dataclass(kw_only=True)
class DataSchema:
    train: list = _optional(None, items=SourceSchema)
    image_size: int = _optional(224, ge=1)
    crop_scale: list = _optional(None, items=float, length=2, ge=0, le=1)
    autoaugment: bool = _optional(True)
    caption_augment_prob: float = _optional(0.0, ge=0, le=1)
    num_workers: int = _optional(0, ge=0)
    augment: bool = _optional(True)
    shuffle: bool = _optional(True)


@dataclass(kw_only=True)
class TrainSchema:
    output_dir: str = _rule()
    seed: int = _optional(0, ge=0, le=2**32 - 1)
    steps: int = _rule(ge=1)
    batch_size: int = _rule(ge=1)
    chunk_size: int = _optional(0, ge=0)
    lr: float = _rule(gt=0)
    weight_decay: float = _optional(0.0, ge=0)
    betas: list = _optional(None, items=float, length=2, ge=0, lt=1)
    eps: float = _optional(1e-6, gt=0)
    warmup: float = _optional(0.0, ge=0, le=1)
    lr_floor: float = _optional(0.0, ge=0, le=1)
    grad_clip: float = _optional(0.0, ge=0)
    precision: str = _optional("auto", choices=PRECISIONS)
    log_every: int = _optional(10, ge=1)
    checkpoint_every: int = _optional(0, ge=0)
    keep_checkpoints: int = _optional(3, ge=0)
    eval_every: int = _optional(0, ge=0)
    device: str = _optional("auto", pattern=r"auto|cpu|cuda(:\d+)?", allowed="auto, cpu, cuda or cuda:N")
    wandb: bool = _optional(False)
    schedule: str = _optional("cosine", choices=SCHEDULES)
    decay_exclude_1d: bool = _optional(False)
    compile: bool = _optional(False)
    adamw: str = _optional("fused", choices=("fused", "foreach", "loop"))
    pad_captions: str = _optional("auto", choices=("auto", "max_length", "packed"))


@dataclass(kw_only=True)
class RetrievalEvalSchema:
    path: str = _rule()
    batch_size: int = _optional(64, ge=1)
    resize_size: Optional[int] = _optional(None, ge=1)
    crop_size: Optional[int] = _optional(None, ge=1)
    resize_mode: Optional[str] = _optional(None, choices=("square", "short"))


@dataclass(kw_only=True)
class SegmentationEvalSchema:
    dataset: str = _rule()
    data_root: str = _rule()
    classes: Optional[list] = _optional(None, items=str)
    limit: Optional[int] = _optional(None, ge=1)
    protocol: str = _optional("simseg", choices=("simseg", "dense"))
    crf: bool = _optional(True)
    params: dict = _optional(None, freeform=True)
    templates: Optional[str] = _optional(None)
    cache_dir: Optional[str] = _optional(None)


@dataclass(kw_only=True)
class EvalSchema:
    retrieval: Optional[RetrievalEvalSchema] = _optional(None)
    segmentation: Optional[SegmentationEvalSchema] = _optional(None)


@dataclass(kw_only=True)
class ConfigSchema:
    model: ModelSchema = _rule()
    data: DataSchema = _rule()
    train: TrainSchema = _rule()
    eval: Optional[EvalSchema] = _optional(None)


# ------------------------------------------------------------------------------------------------ the validator
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """(the type inside Optional[...], whether None is allowed)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), True
    return tp, False


def _check_scalar(key: str, value: Any, tp: Any, rule: dict) -> None:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: {_show(value)} is not allowed (must be true or false)")
        return
    if tp is int:
        if not (isinstance(value, int) and not isinstance(value, bool)):
            raise ConfigError(f"{key}: {_show(value)} is not allowed (must be an integer)")
    elif tp is float:
        if not _is_number(value):
            raise ConfigError(f"{key}: {_show(value)} is not allowed (must be a number)")
        if not math.isfinite(value):  # YAML's .nan and .inf pass every bound test or none
            raise ConfigError(f"{key}: {_show(value)} is not allowed (must be a finite number)")
    elif tp is str:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{key}: {_show(value)} is not allowed (must be a non-empty string)")
    for name, op, text in (("gt", float.__gt__, "> {}"), ("ge", float.__ge__, ">= {}"), ("lt", float.__lt__, "< {}"),
                           ("le", float.__le__, "<= {}")):
        if name in rule and not op(float(value), float(rule[name])):
            raise ConfigError(f"{key}: {_show(value)} is not allowed (must be {text.format(rule[name])})")
    if "choices" in rule and value not in rule["choices"]:
        raise ConfigError(f"{key}: {_show(value)} is not allowed (one of: {', '.join(rule['choices'])})")
    if "pattern" in rule and not re.fullmatch(rule["pattern"], str(value)):
        raise ConfigError(f"{key}: {_show(value)} is not allowed (one of: {rule['allowed']})")


def _check(key: str, value: Any, tp: Any, rule: dict) -> None:
    tp, nullable = _strip_optional(tp)
    if value is None:
        if nullable or rule.get("freeform") or "items" in rule:
            return
        raise ConfigError(f"{key}: a value is required (got null)")
    if rule.get("freeform"):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: {_show(value)} is not allowed (must be a mapping)")
        return
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: {_show(value)} is not allowed (must be a mapping of {tp.__name__[:-6].lower()} "
                              "settings)")
        _check_section(key, value, tp)
        return
    if "items" in rule:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: {_show(value)} is not allowed (must be a list)")
        if "length" in rule and len(value) != rule["length"]:
            raise ConfigError(f"{key}: {_show(value)} is not allowed (must be a list of {rule['length']} values)")
        item = rule["items"]
        item_rule = {k: v for k, v in rule.items() if k not in ("items", "length")}
        for i, v in enumerate(value):
            _check(f"{key}[{i}]", v, item, item_rule if not is_dataclass(item) else {})
        return
    _check_scalar(key, value, tp, rule)


def _check_section(prefix: str, section: dict, schema: type) -> None:
    hints = typing.get_type_hints(schema)
    known = {f.name: f for f in fields(schema)}
    if schema not in OPEN_SCHEMAS:
        unknown = sorted(set(section) - set(known))
        if unknown:
            raise ConfigError(f"{prefix}.{unknown[0]}: unknown config key (known: {', '.join(known)})")
    for name, f in known.items():
        key = f"{prefix}.{name}"
        if name not in section:
            if f.default is MISSING:
                raise ConfigError(f"{key}: missing (required)")
            continue
        _check(key, section[name], hints[name], dict(f.metadata))


def patch_size(vision: dict) -> int | None:
    """The ViT's patch size from ``model.vision`` (``kwargs.patch_size``, else the ``patchN`` of the timm name)."""
    kwargs = vision.get("kwargs") or {}
    if _is_number(kwargs.get("patch_size")):
        return int(kwargs["patch_size"])
    match = re.search(r"patch(\d+)", str(vision.get("name", "")))
    return int(match.group(1)) if match else None


def _check_sizes(cfg: dict) -> None:
    vision = cfg["model"]["vision"]
    patch = patch_size(vision)
    if patch is None:
        return
    sizes = [("model.vision.img_size", vision.get("img_size"))]
    if isinstance(cfg.get("data"), dict):
        sizes.append(("data.image_size", cfg["data"].get("image_size")))
    for key, size in sizes:
        if size is not None and (size < patch or size % patch):
            raise ConfigError(f"{key}: {size} is not allowed (must be a multiple of the patch size {patch} of "
                              f"model.vision, at least {patch})")
    crop_scale = cfg["data"].get("crop_scale") if isinstance(cfg.get("data"), dict) else None
    if crop_scale is not None and crop_scale[0] > crop_scale[1]:
        raise ConfigError(f"data.crop_scale: {_show(list(crop_scale))} is not allowed (must be [min, max] with "
                          "min <= max)")
    m = cfg["model"]
    if m.get("temperature_min") is not None and m.get("temperature_max") is not None and \
            not m["temperature_min"] <= m.get("temperature_init", m["temperature_min"]) <= m["temperature_max"]:
        raise ConfigError(f"model.temperature_init: {m['temperature_init']} is not allowed (must lie in "
                          f"[temperature_min, temperature_max] = [{m['temperature_min']}, {m['temperature_max']}])")


def validate_config(cfg: dict) -> None:
    """Check a whole training config (plain containers) against :class:`ConfigSchema`.

    Raises:
        ConfigError: the first key whose value is missing, of the wrong type, out of range or not a known choice,
            named with its value and what is allowed.
    """
    if not isinstance(cfg, dict):
        raise ConfigError("a config must be a mapping with the sections model, data, train (and eval)")
    missing = [k for k in ("model", "data", "train") if k not in cfg]
    if missing:
        raise ConfigError(f"config lacks the section(s) {', '.join(missing)}: start from a preset, e.g. a YAML file "
                          "beginning with 'base: tiny' (or simseg-vit-s16), and override what differs")
    hints = typing.get_type_hints(ConfigSchema)
    unknown = sorted(set(cfg) - {f.name for f in fields(ConfigSchema)})
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown config section (known: model, data, train, eval)")
    for f in fields(ConfigSchema):
        if f.name in cfg:
            _check(f.name, cfg[f.name], hints[f.name], dict(f.metadata))
    _check_sizes(cfg)


def validate_model_config(model: dict, where: str = "model") -> None:
    """Check a ``model`` section alone (a checkpoint's ``config.yaml``): the message is prefixed with ``where``."""
    try:
        if not isinstance(model, dict):
            raise ConfigError(f"model: {_show(model)} is not allowed (must be a mapping)")
        _check_section("model", model, ModelSchema)
        _check_sizes({"model": model})
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
