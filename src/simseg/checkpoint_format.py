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

from simseg.files import atomic_write_bytes

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.yaml"
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 1


def save_model(model: Any, out_dir: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write ``model`` in simseg's format into ``out_dir`` (weights, config with hash, tokenizer)."""
    from omegaconf import OmegaConf
    from safetensors.torch import save

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
        "meta": dict(meta or {}),
    }
    atomic_write_bytes(out / CONFIG_NAME, OmegaConf.to_yaml(OmegaConf.create(doc)).encode("utf-8"))
    return out
