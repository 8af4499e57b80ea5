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
import re
from pathlib import Path
from typing import Any

import torch

# the folder format lives below the model (so SimSegModel.save_pretrained can write it); re-exported here
from simseg.checkpoint_format import (CONFIG_NAME, FORMAT_VERSION, TOKENIZER_DIR, WEIGHTS_NAME,  # noqa: F401
                                      check_evaluation_defaults, save_model)
from simseg.errors import CheckpointError, ConfigError, InputError, describe_yaml_error, one_line
from simseg.files import atomic_write_bytes
from simseg.model import SimSegModel, build_model, meta_tensors, state_sha256
from simseg.schema import validate_model_config
from simseg.tokenizer import Tokenizer, load_tokenizer

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


def checkpoint_fingerprint(path_or_preset: str | os.PathLike, backend: str = "torch",
                           weights_sha256: str | None = None) -> dict[str, Any]:
    """``{"path", "sha256"}`` identifying a checkpoint for reports (sha256 of the weights file; None for presets).

    ``weights_sha256``: the sha256 of a simseg folder's weights file when the caller has just verified it (a model's
    ``weights_file_sha256`` from :func:`load_model`), which saves reading the file again.

    An ``hf-hub:`` name is looked up in the local Hugging Face cache (where loading it put it) and also records the
    repository and commit. With ``backend="onnx"`` the ONNX export is identified (the sha256 of its manifest, which
    records the sha256 of every graph) together with the weights it was exported from.
    """
    from simseg.hub import is_hub_name, resolve

    name = str(path_or_preset)
    if backend == "onnx":
        from simseg.export import MANIFEST_NAME, find_onnx_folder, read_manifest

        if is_hub_name(name):
            from simseg.hub import ONNX_FILES

            folder = find_onnx_folder(resolve(name, ONNX_FILES, required=(), local_only=True), label=name)
        else:
            folder = find_onnx_folder(Path(path_or_preset))
        manifest = read_manifest(folder)
        source = manifest.get("source") or {}
        return {"path": name, "sha256": file_sha256(folder / MANIFEST_NAME), "format": "onnx",
                "source_weights_sha256": (source.get("checkpoint") or {}).get("sha256"),
                "source_state_sha256": source.get("weights_sha256"),
                **(_hub_stamp(folder) if is_hub_name(name) else {})}
    if is_hub_name(name):
        folder = resolve(name, local_only=True)
        return {"path": name, "sha256": file_sha256(folder / WEIGHTS_NAME), **_hub_stamp(folder)}
    p = Path(path_or_preset)
    if p.is_dir() and (p / WEIGHTS_NAME).is_file():
        return {"path": str(p), "sha256": weights_sha256 or file_sha256(p / WEIGHTS_NAME)}
    if p.is_file():
        return {"path": str(p), "sha256": file_sha256(p)}
    return {"path": str(path_or_preset), "sha256": None, "note": "preset: randomly initialised weights"}


def _hub_stamp(folder: Path) -> dict[str, Any]:
    """``{"hub": {"repo_id", "commit"}}`` for a folder in (or a subfolder of) a Hugging Face cache snapshot."""
    from simseg.hub import snapshot_info

    info = snapshot_info(folder) or snapshot_info(folder.parent)
    return {"hub": info} if info else {}


# ------------------------------------------------------------------------------------------------ own format
# ------------------------------------------------------------------------------------------------ evaluation defaults
def evaluation_defaults(path_or_preset: str | os.PathLike) -> dict[str, Any]:
    """How a checkpoint records it is meant to be evaluated (``meta.evaluation`` of its ``config.yaml``).

    Empty for checkpoints that record nothing, original ``.pth`` files and presets: the paper's defaults apply. An
    ``hf-hub:`` name is read from its ``config.yaml`` (fetched alone, or read from the cache when offline).

    Raises:
        CheckpointError: unreadable config, or recorded defaults that are not valid.
        InputError: an ``hf-hub:`` name that cannot be resolved.
    """
    from simseg.hub import is_hub_name, resolve

    label = None
    if is_hub_name(path_or_preset):
        p, label = resolve(str(path_or_preset), allow_patterns=(CONFIG_NAME,), required=()), str(path_or_preset)
    else:
        p = Path(path_or_preset)
    if not (p.is_dir() and (p / CONFIG_NAME).is_file()):
        return {}
    doc = _read_own_config(p)
    meta = doc.get("meta") or {}
    evaluation = meta.get("evaluation") if isinstance(meta, dict) else None
    if evaluation is None:
        return {}
    return check_evaluation_defaults(evaluation, f"{label or p / CONFIG_NAME}: meta.evaluation")


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
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{cfg_path}: unreadable config (not UTF-8 text: byte {e.start})") from None
    except Exception as e:
        raise CheckpointError(f"{cfg_path}: unreadable config ({type(e).__name__}: {describe_yaml_error(e)})") from None
    if not isinstance(doc, dict) or doc.get("format") != "simseg" or "model" not in doc:
        final = directory / "checkpoint"
        periodic = sorted(p for p in directory.glob("checkpoints/step-*") if (p / CONFIG_NAME).is_file())
        if (final / CONFIG_NAME).is_file():
            hint = f" (a training run's folder: its model is {final})"
        elif periodic:  # a run still training (or stopped before its end): no final model yet
            hint = f" (a training run's folder: its newest checkpoint is {periodic[-1]})"
        else:
            hint = ""
        raise CheckpointError(f"{cfg_path}: not a simseg checkpoint config{hint}")
    try:
        validate_model_config(doc["model"], where=str(cfg_path))
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    return doc


def _load_own(directory: Path, tokenizer: Tokenizer | None, text: bool = True) -> SimSegModel:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    doc = _read_own_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{directory}: missing {WEIGHTS_NAME}")
    if tokenizer is None and (directory / TOKENIZER_DIR / "vocab.txt").is_file():
        tokenizer = load_tokenizer(directory / TOKENIZER_DIR)
    recorded = doc.get("weights_sha256")
    digest = file_sha256(weights) if recorded else None
    if recorded and digest != recorded:
        raise CheckpointError(
            f"{weights}: does not match the sha256 recorded in {CONFIG_NAME} (a partial or mixed save)")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: corrupt or truncated weights ({one_line(e)})") from None
    hidden, text_hash = None, None
    if not text and "text_projection.weight" in state:  # images only: BERT is neither imported nor built
        own_dtype = torch.get_default_dtype()  # what the whole model's built towers hold, as _load_checked converts
        text_hash = state_sha256({k: v if v.dtype == own_dtype or not v.is_floating_point() else v.to(own_dtype)
                                  for k, v in state.items() if k.startswith(("text_encoder.", "text_projection."))})
        hidden = int(state["text_projection.weight"].shape[1])
        state = {k: v for k, v in state.items() if not k.startswith("text_encoder.")}
    try:
        model = build_model(doc["model"], tokenizer, pretrained=False, empty=True, text_hidden_size=hidden)
    except ConfigError as e:  # a model section the libraries refuse: the file is named
        raise CheckpointError(f"{directory / CONFIG_NAME}: {e}") from None
    model.absent_text_hash = text_hash
    _load_checked(model, state, str(weights), assign=True)
    # the weights file's sha256 as just verified, so that a report naming this checkpoint need not read it again
    model.weights_file_sha256 = digest
    return model


def _load_checked(model: SimSegModel, state: dict[str, torch.Tensor], label: str, assign: bool = False) -> None:
    """``load_state_dict`` that reports every missing, unexpected and mis-shaped key in one error.

    ``assign=True`` makes the checkpoint's tensors the model's (no copy): for a model built with ``empty=True``,
    whose every weight must come from ``state``; each tensor keeps the model's dtype.
    """
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
    if not assign:
        model.load_state_dict(state, strict=True)
        return
    state = {k: v if v.dtype == own[k].dtype else v.to(own[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    left = meta_tensors(model)
    if left:  # a tensor that no state dict holds and no builder made: a bug, never a silent uninitialised weight
        raise CheckpointError(f"{label}: no value for {', '.join(left[:8])}")


# ------------------------------------------------------------------------------------------------ original format
def _file_kind(path: Path) -> str | None:
    """What a file that is not a checkpoint looks like (an image format, text), for the error message."""
    try:
        from PIL import Image

        with Image.open(path) as img:
            return f"a {img.format} image"
    except Exception:
        pass
    head = path.read_bytes()[:512]
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "a text file"
    return None


def read_torch_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` with only ``TorchVersion`` allow-listed, and readable errors."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        if (path / CONFIG_NAME).is_file():
            raise CheckpointError(f"{path}: a simseg checkpoint folder, not an original .pth file (it needs no "
                                  "conversion)")
        raise CheckpointError(f"{path}: is a folder but not a simseg checkpoint (no {CONFIG_NAME})")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes)")
    with open(path, "rb") as f:
        magic = f.read(4)
    # torch.save writes a zip archive (PK..) or, in the legacy format, a pickle (protocol byte 0x80)
    if not magic.startswith((b"PK\x03\x04", b"\x80")):
        kind = _file_kind(path)
        if (path.parent / CONFIG_NAME).is_file() or (path.parent.name == TOKENIZER_DIR
                                                     and (path.parent.parent / CONFIG_NAME).is_file()):
            folder = path.parent if (path.parent / CONFIG_NAME).is_file() else path.parent.parent
            kind = f"a file of the simseg checkpoint folder {folder}: give the folder"
        elif (path.parent / "simseg_onnx.json").is_file():
            kind = f"a file of the ONNX export {path.parent}: give the folder (with --backend onnx to run it)"
        raise CheckpointError(f"{path}: not a PyTorch checkpoint" + (f" (it is {kind})" if kind else ""))
    from torch.torch_version import TorchVersion

    try:
        with torch.serialization.safe_globals([TorchVersion]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(f"{path}: refused: the pickle needs arbitrary code to load{what}; only plain "
                                  "tensors are accepted") from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({one_line(text)})") from None
    except Exception as e:  # RuntimeError, EOFError, BadZipFile, KeyError from the legacy unpickler, ...
        raise CheckpointError(f"{path}: not a checkpoint, or truncated/corrupt ({type(e).__name__}: "
                              f"{one_line(e)})") from None


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
            scalar = key == "loss.temperature" and value.numel() == 1  # else the shape check names it
            mapped[_ORIG_EXTRA[key]] = value.reshape(()) if scalar else value
        else:
            unknown.append(key)
    return mapped, unknown


def read_original_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The tensors of an original SimSeg ``.pth``: (the raw state, ``module.`` stripped; the same mapped to simseg's
    keys). Every key must map: an unknown one is an error naming it.

    Raises:
        CheckpointError: not a checkpoint, no state dict of tensors, not SimSeg's key layout, or unexpected keys.
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
    mapped, unknown = map_original_keys(state)
    if unknown:
        raise CheckpointError(f"{path}: unexpected keys in the original checkpoint: {', '.join(sorted(unknown)[:8])}")
    return state, mapped


def import_original(
    path: str | os.PathLike, tokenizer: Tokenizer | None = None, model_config: dict | None = None
) -> SimSegModel:
    """Build a model from an original SimSeg ``.pth`` (``simseg.vit-s.pth`` / ``simseg.vit-b.pth``).

    The model is built at the checkpoint's training resolution (224); use ``model.set_image_size`` (or
    ``load_model(..., image_size=288)``) for the evaluation resolution.
    """
    state, mapped = read_original_state(path)
    try:
        config = model_config or infer_original_config(state)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    embeddings = state.get(_ORIG_TEXT + "embeddings.word_embeddings.weight")  # absent: named by the key check
    words = int(embeddings.shape[0]) if embeddings is not None else None
    if tokenizer is not None and words is not None and tokenizer.vocab_size > words:
        raise CheckpointError(f"{path}: its text tower has {words} word embeddings, fewer than the tokenizer's "
                              f"{tokenizer.vocab_size} tokens (give the tokenizer it was trained with: --tokenizer)")
    model = build_model(config, tokenizer, pretrained=False, empty=True)
    _load_checked(model, mapped, str(path), assign=True)
    return model


# ------------------------------------------------------------------------------------------------ load_model
def load_model(
    path_or_preset: str | os.PathLike,
    tokenizer: str | os.PathLike | Tokenizer | None = None,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
    backend: str = "torch",
    text: bool = True,
) -> SimSegModel:
    """A model in eval mode from a simseg checkpoint folder, an original ``.pth``, a preset name, or the Hub.

    Args:
        path_or_preset: a folder written by :func:`save_model` (or a training checkpoint folder), an original SimSeg
            ``.pth`` file, a preset name ("tiny", "simseg-vit-s16", "simseg-vit-b16": randomly initialised), or
            ``hf-hub:ORG/NAME[@revision]``: a simseg folder on the Hugging Face Hub, fetched into its standard cache
            (only the cache is read when ``HF_HUB_OFFLINE=1``).
        tokenizer: a folder with ``vocab.txt``, a Hugging Face name (``bert-base-uncased`` ships with simseg;
            others are downloaded if needed), or a Tokenizer. Default: the checkpoint's own tokenizer folder; for an
            original ``.pth``, bert-base-uncased (the release's, shipped: no network); for a preset, its
            ``model.tokenizer``.
        device: where to put the model.
        image_size: rebuild the ViT for this input size (position embedding resized bicubically); None keeps the
            checkpoint's size.
        backend: ``"torch"``, or ``"onnx"``: the towers of an ONNX export (``simseg export``) run by ONNX Runtime,
            behind the same interface (:class:`simseg.export.OnnxModel`). The path is then an export folder, or a
            checkpoint folder (or Hub name) with the export in its ``onnx/`` subfolder, which must have been made
            from that folder's weights.
        text: False loads a simseg folder (local or from the Hub) for images only: the text tower is neither
            imported nor built (a faster start), ``text_weights_hash`` still finds the class embeddings the whole
            model cached, and encoding text raises :class:`~simseg.errors.TextTowerAbsentError`. Other sources
            always load whole.
    """
    from simseg.config import load_preset, preset_names, to_dict
    from simseg.hub import is_hub_name, resolve

    if backend not in ("torch", "onnx"):
        raise InputError(f"backend {backend!r}: choose torch or onnx")
    if not str(path_or_preset).strip():  # Path("") is ".", which would name the working folder instead
        raise InputError("checkpoint: empty name (give a checkpoint folder, a .pth file, a preset or hf-hub:ORG/NAME)")
    if backend == "onnx":
        from simseg.export import load_onnx_model

        if image_size is not None:
            raise InputError("image_size: an ONNX export runs at the sizes it was exported at (simseg export "
                             "--image-size); it cannot be changed when loading")
        if is_hub_name(path_or_preset):
            from simseg.hub import ONNX_FILES

            return load_onnx_model(resolve(str(path_or_preset), ONNX_FILES, required=()), tokenizer=tokenizer,
                                   device=device, label=str(path_or_preset))
        return load_onnx_model(path_or_preset, tokenizer=tokenizer, device=device)
    tok = load_tokenizer(tokenizer) if tokenizer is not None else None
    p = Path(path_or_preset)
    if is_hub_name(path_or_preset):
        model = _load_own(resolve(str(path_or_preset)), tok, text=text)
    elif str(path_or_preset) in preset_names() and not p.exists():
        cfg = to_dict(load_preset(str(path_or_preset)).model)
        if tok is None and cfg.get("tokenizer"):
            try:
                tok = load_tokenizer(cfg["tokenizer"])
            except InputError:
                tok = None  # image-only use still works; text calls say that a tokenizer is needed
        model = build_model(cfg, tok, pretrained=False)
    elif p.is_dir():
        model = _load_own(p, tok, text=text)
    elif p.is_file():
        model = import_original(p, tok if tok is not None else default_tokenizer())  # the release's, shipped
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
