"""Checkpoints: simseg's own format, the original SimSeg ``.pth`` release, and ``load_model``.

Own format: a folder with ``model.safetensors`` (weights), ``config.yaml`` (the model config and metadata, including
the weights' sha256) and ``tokenizer/vocab.txt``. Every file is written to a temporary name and renamed into place.
A checkpoint meant to be evaluated otherwise than with the paper's defaults (e.g. the demo model, built for 64-pixel
scenes) records how in ``meta.evaluation`` (:func:`evaluation_defaults`); released checkpoints record nothing.

Original format: a ``torch.save``d dict whose ``state_dict`` holds ``image_encoder.model.model.<timm
key>``, ``text_encoder.model.model.<BertModel key>``, ``{image,text}_projection.linear.weight`` and
``loss.temperature``, possibly under a ``module.`` prefix. The import maps every key explicitly, checks every shape and
fails listing whatever is missing, unexpected or mis-shaped (the original's ``strict=False`` hid such mistakes).
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from simseg.errors import CheckpointError, InputError
from simseg.files import atomic_write_bytes
from simseg.model import SimSegModel, build_model
from simseg.tokenizer import Tokenizer, load_tokenizer

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.yaml"
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 1

_ORIG_IMAGE = "image_encoder.model.model."
_ORIG_TEXT = "text_encoder.model.model."
#: Original key -> our key for everything that is not a tower weight.
_ORIG_EXTRA = {
    "image_projection.linear.weight": "image_projection.weight",
    "text_projection.linear.weight": "text_projection.weight",
    "loss.temperature": "temperature_param",
}
#: Original keys that carry no weight in current libraries (transformers 5 no longer stores position_ids).
_ORIG_DROPPED = {_ORIG_TEXT + "embeddings.position_ids"}


# ------------------------------------------------------------------------------------------------ small utilities
def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def checkpoint_fingerprint(path_or_preset: str | os.PathLike) -> dict[str, Any]:
    """``{"path", "sha256"}`` identifying a checkpoint for reports (sha256 of the weights file; None for presets)."""
    p = Path(path_or_preset)
    if p.is_dir() and (p / WEIGHTS_NAME).is_file():
        return {"path": str(p), "sha256": file_sha256(p / WEIGHTS_NAME)}
    if p.is_file():
        return {"path": str(p), "sha256": file_sha256(p)}
    return {"path": str(path_or_preset), "sha256": None, "note": "preset: randomly initialised weights"}


# ------------------------------------------------------------------------------------------------ own format
def save_model(model: SimSegModel, out_dir: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write ``model`` in simseg's format into ``out_dir`` (weights, config with hash, tokenizer).

    Args:
        model: the model to write.
        out_dir: the checkpoint folder (created if needed).
        meta: free-form metadata stored in ``config.yaml``; its ``evaluation`` entry, if any, must be valid
            evaluation defaults (see :func:`check_evaluation_defaults`).
    """
    from omegaconf import OmegaConf
    from safetensors.torch import save

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


# ------------------------------------------------------------------------------------------------ evaluation defaults
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

    from simseg.errors import ConfigError
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


def evaluation_defaults(path_or_preset: str | os.PathLike) -> dict[str, Any]:
    """How a checkpoint records it is meant to be evaluated (``meta.evaluation`` of its ``config.yaml``).

    Empty for checkpoints that record nothing, original ``.pth`` files and presets: the paper's defaults apply.

    Raises:
        CheckpointError: unreadable config, or recorded defaults that are not valid.
    """
    p = Path(path_or_preset)
    if not (p.is_dir() and (p / CONFIG_NAME).is_file()):
        return {}
    doc = _read_own_config(p)
    meta = doc.get("meta") or {}
    evaluation = meta.get("evaluation") if isinstance(meta, dict) else None
    if evaluation is None:
        return {}
    return check_evaluation_defaults(evaluation, f"{p / CONFIG_NAME}: meta.evaluation")


def record_evaluation_defaults(checkpoint_dir: str | os.PathLike, evaluation: dict[str, Any]) -> Path:
    """Store ``evaluation`` as the evaluation defaults of an existing checkpoint folder (``config.yaml`` rewritten
    atomically; the weights and their recorded hash are untouched).

    Raises:
        CheckpointError: not a simseg checkpoint folder, or invalid defaults.
    """
    from omegaconf import OmegaConf

    directory = Path(checkpoint_dir)
    doc = _read_own_config(directory)
    meta = dict(doc.get("meta") or {})
    meta["evaluation"] = check_evaluation_defaults(evaluation, "evaluation defaults")
    doc["meta"] = meta
    atomic_write_bytes(directory / CONFIG_NAME, OmegaConf.to_yaml(OmegaConf.create(doc)).encode("utf-8"))
    return directory / CONFIG_NAME


def _read_own_config(directory: Path) -> dict:
    from omegaconf import OmegaConf

    cfg_path = directory / CONFIG_NAME
    if not cfg_path.is_file():
        raise CheckpointError(f"{directory}: not a simseg checkpoint folder (no {CONFIG_NAME})")
    try:
        doc = OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=True)
    except Exception as e:
        raise CheckpointError(f"{cfg_path}: unreadable config ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict) or doc.get("format") != "simseg" or "model" not in doc:
        raise CheckpointError(f"{cfg_path}: not a simseg checkpoint config")
    return doc


def _load_own(directory: Path, tokenizer: Tokenizer | None) -> SimSegModel:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    doc = _read_own_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{directory}: missing {WEIGHTS_NAME}")
    if tokenizer is None and (directory / TOKENIZER_DIR / "vocab.txt").is_file():
        tokenizer = load_tokenizer(directory / TOKENIZER_DIR)
    recorded = doc.get("weights_sha256")
    if recorded and file_sha256(weights) != recorded:
        raise CheckpointError(f"{weights}: does not match the sha256 recorded in {CONFIG_NAME} (a partial or mixed save)")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: corrupt or truncated weights ({e})") from None
    model = build_model(doc["model"], tokenizer, pretrained=False)
    _load_checked(model, state, str(weights))
    return model


def _load_checked(model: SimSegModel, state: dict[str, torch.Tensor], label: str) -> None:
    """``load_state_dict`` that reports every missing, unexpected and mis-shaped key in one error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or wrong:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                parts.append(f"{title}: {shown}")
        raise CheckpointError(f"{label}: checkpoint does not match the model ({'; '.join(parts)})")
    model.load_state_dict(state, strict=True)


# ------------------------------------------------------------------------------------------------ original format
def read_torch_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` with only ``TorchVersion`` allow-listed, and readable errors."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder but not a simseg checkpoint (no {CONFIG_NAME})")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes)")
    from torch.torch_version import TorchVersion

    try:
        with torch.serialization.safe_globals([TorchVersion]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "GLOBAL" in str(e):
            raise CheckpointError(
                f"{path}: refused: the pickle needs arbitrary code to load (only plain tensors are accepted; "
                f"{msg[:160]})"
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({msg[:160]})") from None
    except Exception as e:  # RuntimeError, EOFError, BadZipFile, KeyError from the legacy unpickler, ...
        first = str(e).splitlines()[0][:160] if str(e) else ""
        raise CheckpointError(f"{path}: not a checkpoint, or truncated/corrupt ({type(e).__name__}: {first})") from None


def is_original_state_dict(state: dict) -> bool:
    """True for the original release's key layout (after any ``module.`` prefix was stripped)."""
    return any(k.startswith(_ORIG_IMAGE) for k in state)


def _strip_module(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def infer_original_config(state: dict[str, torch.Tensor]) -> dict:
    """The model config of an original checkpoint, read from its tensor shapes.

    Head counts are not visible in shapes: width // 64 is used (ViT-S 6, ViT-B 12, BERT-base 12), as for every
    standard ViT and BERT.
    """
    try:
        pos = state[_ORIG_IMAGE + "pos_embed"]
        proj = state[_ORIG_IMAGE + "patch_embed.proj.weight"]
        fc1 = state[_ORIG_IMAGE + "blocks.0.mlp.fc1.weight"]
        words = state[_ORIG_TEXT + "embeddings.word_embeddings.weight"]
        positions = state[_ORIG_TEXT + "embeddings.position_embeddings.weight"]
        types = state[_ORIG_TEXT + "embeddings.token_type_embeddings.weight"]
        inter = state[_ORIG_TEXT + "encoder.layer.0.intermediate.dense.weight"]
        img_proj = state["image_projection.linear.weight"]
    except KeyError as e:
        raise CheckpointError(f"original checkpoint lacks the key {e.args[0]!r}") from None
    width, patch = int(proj.shape[0]), int(proj.shape[-1])
    depth = 1 + max(int(k[len(_ORIG_IMAGE) + 7:].split(".")[0]) for k in state if k.startswith(_ORIG_IMAGE + "blocks."))
    layers = 1 + max(int(k[len(_ORIG_TEXT) + 14:].split(".")[0]) for k in state
                     if k.startswith(_ORIG_TEXT + "encoder.layer."))
    grid = int(round((pos.shape[1] - 1) ** 0.5))
    hidden = int(words.shape[1])
    names = {384: "vit_small_patch16_224", 768: "vit_base_patch16_224"}
    name = names.get(width, "vit_base_patch16_224")
    kwargs = {} if width in names and patch == 16 and depth == 12 and fc1.shape[0] == 4 * width else {
        "embed_dim": width, "depth": depth, "num_heads": max(1, width // 64), "patch_size": patch,
        "mlp_ratio": fc1.shape[0] / width}
    return {
        "vision": {"name": name, "pretrained": False, "img_size": grid * patch, "kwargs": kwargs},
        "text": {"name": "bert-base-uncased", "pretrained": False, "config": {
            "vocab_size": int(words.shape[0]), "hidden_size": hidden, "num_hidden_layers": layers,
            "num_attention_heads": max(1, hidden // 64), "intermediate_size": int(inter.shape[0]),
            "max_position_embeddings": int(positions.shape[0]), "type_vocab_size": int(types.shape[0])}},
        "tokenizer": "bert-base-uncased",
        "max_length": 25,
        "embed_dim": int(img_proj.shape[0]),
        "pooling": "loda",
        "image_topk": 5,
        "text_topk": 1,
        "temperature_init": 0.02,
        "temperature_min": 0.001,
        "temperature_max": 0.5,
    }


def map_original_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Original key -> simseg key, for every key. Returns the mapped dict and the keys that map to nothing."""
    mapped, unknown = {}, []
    for key, value in state.items():
        if key in _ORIG_DROPPED:
            continue
        if key.startswith(_ORIG_IMAGE):
            mapped["image_encoder." + key[len(_ORIG_IMAGE):]] = value
        elif key.startswith(_ORIG_TEXT):
            mapped["text_encoder." + key[len(_ORIG_TEXT):]] = value
        elif key in _ORIG_EXTRA:
            mapped[_ORIG_EXTRA[key]] = value.reshape(()) if key == "loss.temperature" else value
        else:
            unknown.append(key)
    return mapped, unknown


def import_original(
    path: str | os.PathLike, tokenizer: Tokenizer | None = None, model_config: dict | None = None
) -> SimSegModel:
    """Build a model from an original SimSeg ``.pth`` (``simseg.vit-s.pth`` / ``simseg.vit-b.pth``).

    The model is built at the checkpoint's training resolution (224); use ``model.set_image_size`` (or
    ``load_model(..., image_size=288)``) for the evaluation resolution.
    """
    obj = read_torch_checkpoint(path)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: no state_dict of tensors in this file")
    state = _strip_module(state)
    if not is_original_state_dict(state):
        raise CheckpointError(
            f"{path}: not a SimSeg checkpoint (no '{_ORIG_IMAGE}*' keys; first keys: {', '.join(list(state)[:3])})"
        )
    cfg = model_config or infer_original_config(state)
    mapped, unknown = map_original_keys(state)
    if unknown:
        raise CheckpointError(f"{path}: unexpected keys in the original checkpoint: {', '.join(sorted(unknown)[:8])}")
    model = build_model(cfg, tokenizer, pretrained=False)
    _load_checked(model, mapped, str(path))
    return model


# ------------------------------------------------------------------------------------------------ load_model
def load_model(
    path_or_preset: str | os.PathLike,
    tokenizer: str | os.PathLike | Tokenizer | None = None,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
) -> SimSegModel:
    """A model in eval mode from a simseg checkpoint folder, an original ``.pth``, or a preset name.

    Args:
        path_or_preset: a folder written by :func:`save_model` (or a training checkpoint folder), an original SimSeg
            ``.pth`` file, or a preset name ("tiny", "simseg-vit-s16", "simseg-vit-b16": randomly initialised).
        tokenizer: a folder with ``vocab.txt``, a Hugging Face name (``bert-base-uncased`` ships with simseg;
            others are downloaded if needed), or a Tokenizer. Default: the checkpoint's own tokenizer folder; for an
            original ``.pth``, bert-base-uncased (the release's, shipped: no network); for a preset, its
            ``model.tokenizer``.
        device: where to put the model.
        image_size: rebuild the ViT for this input size (position embedding resized bicubically); None keeps the
            checkpoint's size.
    """
    from simseg.config import load_preset, preset_names, to_dict

    tok = load_tokenizer(tokenizer) if tokenizer is not None else None
    p = Path(path_or_preset)
    if str(path_or_preset) in preset_names() and not p.exists():
        cfg = to_dict(load_preset(str(path_or_preset)).model)
        if tok is None and cfg.get("tokenizer"):
            try:
                tok = load_tokenizer(cfg["tokenizer"])
            except InputError:
                tok = None  # image-only use still works; text calls say that a tokenizer is needed
        model = build_model(cfg, tok, pretrained=False)
    elif p.is_dir():
        model = _load_own(p, tok)
    elif p.is_file():
        model = import_original(p, tok)
        if tok is None:  # the release's tokenizer, shipped with simseg; never a download
            model.tokenizer = default_tokenizer()
    else:
        raise InputError(f"{path_or_preset}: checkpoint not found (and not a preset: {', '.join(preset_names())})")
    if image_size is not None:
        model.set_image_size(int(image_size))
    return model.to(device).eval()


def default_tokenizer() -> Tokenizer | None:
    """The released checkpoints' tokenizer: bert-base-uncased's vocabulary as shipped with simseg (or, should the
    package data be missing, from the local Hugging Face cache); None when neither has it. Never a download."""
    try:
        return load_tokenizer("bert-base-uncased", local_only=True)
    except InputError:
        return None
