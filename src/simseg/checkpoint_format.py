"""simseg's own checkpoint folder: its file names and its writer.

A folder holds ``model.safetensors`` (weights), ``config.yaml`` (the model config and metadata, including the
weights' sha256) and ``tokenizer/vocab.txt``. Every file is written to a temporary name and renamed into place.

The writer needs nothing from :mod:`simseg.model` (it reads ``state_dict``, ``tokenizer`` and ``config`` of the
model it is given), so it sits below the model: :meth:`simseg.model.SimSegModel.save_pretrained` uses it, and
:mod:`simseg.checkpoint`, which builds models, re-exports it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from simseg.errors import CheckpointError, ConfigError
from simseg.files import atomic_write_bytes

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.yaml"
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 1


def save_model(model: Any, out_dir: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write ``model`` in simseg's format into ``out_dir`` (weights, config with hash, tokenizer).

    Args:
        model: the model to write.
        out_dir: the checkpoint folder (created if needed).
        meta: free-form metadata stored in ``config.yaml``; its ``evaluation`` entry, if any, must be valid
            evaluation defaults (see :func:`check_evaluation_defaults`).
    """
    from omegaconf import OmegaConf
    from safetensors.torch import save

    if not getattr(model, "has_text_tower", True):
        raise ConfigError(f"{out_dir}: this model was loaded without its text tower (text=False); saving it would "
                          "lose the text weights: load it whole to save it")
    meta = dict(meta or {})
    if meta.get("evaluation") is not None:
        meta["evaluation"] = check_evaluation_defaults(meta["evaluation"], "meta.evaluation")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = save(tensors)
    atomic_write_bytes(out / WEIGHTS_NAME, blob)
    if model.tokenizer is not None:
        model.tokenizer.save(out / TOKENIZER_DIR)
    doc = {
        "format": "simseg",
        "format_version": FORMAT_VERSION,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "model": model.config,
        "meta": meta,
    }
    atomic_write_bytes(out / CONFIG_NAME, OmegaConf.to_yaml(OmegaConf.create(doc)).encode("utf-8"))
    return out


#: What ``meta.evaluation`` may hold.
EVALUATION_KEYS = ("input_size", "protocol", "protocols", "retrieval", "classes")


def check_evaluation_defaults(evaluation: Any, label: str) -> dict[str, Any]:
    """Validated evaluation defaults, as plain types.

    The layout (every key optional)::

        input_size: 64                 # the side the model is built for (informative)
        protocol: dense                # the segmentation protocol to use by default
        protocols:                     # per protocol, parameters (SimSegParams / DenseParams fields)
          simseg: {input_size: 64}
          dense: {short_side: 64, crop_size: 64, stride: 64, bg_threshold: 0.99}
        retrieval: {resize_size: 64, crop_size: 64}   # RetrievalParams fields
        classes: "red, green, blue"    # class names a page starts with

    Raises:
        CheckpointError: an unknown key, protocol or parameter, or a value of the wrong type (the message names
            ``label`` and the key).
    """
    from dataclasses import fields

    from simseg.protocols import PROTOCOLS, RetrievalParams, make_params

    if not isinstance(evaluation, dict):
        raise CheckpointError(f"{label}: expected a mapping, got {type(evaluation).__name__}")
    unknown = sorted(set(evaluation) - set(EVALUATION_KEYS))
    if unknown:
        raise CheckpointError(f"{label}: unknown key(s) {', '.join(map(str, unknown))} (known: "
                              f"{', '.join(EVALUATION_KEYS)})")
    out: dict[str, Any] = {}
    if "input_size" in evaluation:
        size = evaluation["input_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise CheckpointError(f"{label}.input_size: expected a positive integer, got {size!r}")
        out["input_size"] = size
    if "protocol" in evaluation:
        if evaluation["protocol"] not in PROTOCOLS:
            raise CheckpointError(f"{label}.protocol: {evaluation['protocol']!r} is not one of {', '.join(PROTOCOLS)}")
        out["protocol"] = str(evaluation["protocol"])
    if "protocols" in evaluation:
        protocols = evaluation["protocols"]
        if not isinstance(protocols, dict):
            raise CheckpointError(f"{label}.protocols: expected a mapping of protocol name to parameters")
        out["protocols"] = {}
        for name, params in protocols.items():
            if name not in PROTOCOLS:
                raise CheckpointError(f"{label}.protocols: {name!r} is not one of {', '.join(PROTOCOLS)}")
            if not isinstance(params, dict):
                raise CheckpointError(f"{label}.protocols.{name}: expected a mapping of parameters")
            try:
                make_params(name, **params)
            except ConfigError as e:
                raise CheckpointError(f"{label}.protocols.{name}: {e}") from None
            out["protocols"][str(name)] = dict(params)
    if "retrieval" in evaluation:
        retrieval = evaluation["retrieval"]
        known = [f.name for f in fields(RetrievalParams)]
        if not isinstance(retrieval, dict) or set(retrieval) - set(known):
            raise CheckpointError(f"{label}.retrieval: expected a mapping with {' and/or '.join(known)}")
        for key, value in retrieval.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CheckpointError(f"{label}.retrieval.{key}: expected a positive integer, got {value!r}")
        out["retrieval"] = dict(retrieval)
    if "classes" in evaluation:
        if not isinstance(evaluation["classes"], str) or not evaluation["classes"].strip():
            raise CheckpointError(f"{label}.classes: expected comma-separated class names")
        out["classes"] = evaluation["classes"]
    return out
