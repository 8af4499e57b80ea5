"""Class embeddings for zero-shot segmentation, and their disk cache.

A class embedding is the mean over prompt templates ("a photo of a {}.", ...) of the L2-normalised, masked-LoDA
pooled text embeddings of the prompts, divided by its norm (no epsilon, as the original). Encoding 21 classes in
80 templates with BERT-base takes tens of seconds on a CPU, so results are cached on disk under a key that covers
everything they depend on: a cached file can only be found by the exact inputs that produced it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simseg.classnames import IMAGENET_TEMPLATES, resolve_templates
from simseg.errors import InputError
from simseg.files import atomic_write_bytes

#: Bump when the cache file layout or the embedding recipe changes, so old files are never read.
CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$SIMSEG_CACHE/text``, or ``~/.cache/simseg/text`` when the variable is unset."""
    root = os.environ.get("SIMSEG_CACHE") or os.path.join("~", ".cache", "simseg")
    return Path(root).expanduser() / "text"


def cache_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder in use: ``cache_dir`` (``~`` expanded), or :func:`default_cache_dir` when it is None."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def cache_key(model: Any, class_names: Sequence[str], templates: Sequence[str]) -> str:
    """sha256 over what determines the embeddings: text weights, vocabulary, pooling setup, classes, templates.

    The image tower (and its input size) does not enter: class embeddings do not depend on it.
    """
    tokenizer = getattr(model, "tokenizer", None)
    vocab = getattr(tokenizer, "vocab", None)
    payload = {
        "format": CACHE_FORMAT,
        "weights": model.text_weights_hash,
        "vocab": hashlib.sha256("\n".join(vocab).encode()).hexdigest() if vocab is not None else None,
        "pooling": getattr(model, "pooling", None),
        "text_topk": getattr(model, "text_topk", None),
        "max_length": getattr(model, "max_length", None),
        "classes": list(class_names),
        "templates": list(templates),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _read_cache(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The cached array, or None when the file is missing, unreadable, or not what it should be (shape, dtype, finite
    rows of unit norm)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if arr.shape != shape or arr.dtype != np.float32 or not np.isfinite(arr).all():
        return None
    if not np.allclose(np.linalg.norm(arr, axis=1), 1.0, rtol=0, atol=1e-4):  # damaged data under an intact header
        return None
    return arr


def _write_cache(path: Path, arr: np.ndarray) -> None:
    """Write atomically; a read-only or full cache folder costs time, not correctness (a warning)."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        warnings.warn(f"class-embedding cache not written to {path.parent} ({e})", stacklevel=3)


def warn_unknown_words(tokenizer: Any, class_names: Sequence[str]) -> list[str]:
    """Warn, naming the class, when a class name holds words the vocabulary cannot spell: they become ``[UNK]`` and
    the class embedding then barely depends on them. Returns the class names warned about."""
    if tokenizer is None or not hasattr(tokenizer, "unknown_words"):
        return []
    warned = []
    for name in class_names:
        if hasattr(tokenizer, "wordpieces") and not tokenizer.wordpieces(name):
            # zero-width or control characters only: the prompts would not name the class at all
            warned.append(name)
            warnings.warn(f"class {name!r}: the tokenizer keeps nothing of it (only characters it drops); its prompts "
                          "do not name it, so it cannot be told from the template alone", stacklevel=3)
            continue
        unknown = tokenizer.unknown_words(name)
        if unknown:
            warned.append(name)
            warnings.warn(f"class {name!r}: the tokenizer does not know {', '.join(map(repr, unknown))} (encoded as "
                          "[UNK]); its embedding will hardly depend on that word", stacklevel=3)
    return warned


@torch.no_grad()
def encode_class_names(
    model: Any, class_names: Sequence[str], templates: Sequence[str], batch_size: int = 256, progress: bool = True
) -> torch.Tensor:
    """Encode every class in every template (masked LoDA) and average per class.

    The prompts are encoded in order of their token length, in batches of ``batch_size``, then put back in place.
    A model that can (:meth:`simseg.model.SimSegModel.text_tokens_packed`) packs each batch's prompts into rows
    without padding, so BERT computes real tokens only; any other (the ONNX one) gets each batch padded to its own
    longest prompt (sorted, a batch holds prompts of nearly one length). BERT attends only to real tokens, so the
    features are those of any padding, to float rounding.

    ``progress``: a bar over the batches when there are at least four (a terminal redraws it, a log gets lines).

    A model in training mode is run as in eval mode (:func:`simseg.model.eval_view`: no dropout, its mode unchanged),
    so the embeddings, and the cache files written from them, are those of the model's weights alone.

    Returns:
        (C, D) float32 on the model's device: the template mean of the L2-normalised prompt embeddings, divided by
        its norm (no epsilon, as the original).
    """
    from simseg.model import eval_view
    from simseg.progress import progress_bar

    model = eval_view(model)
    prompts = [t.format(name) for name in class_names for t in templates]
    tokens = model.tokenize(prompts, padding="longest")
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    lengths = mask.sum(dim=1)
    order = torch.sort(lengths, stable=True).indices  # stable: equal lengths keep the prompts' order
    starts = range(0, len(prompts), batch_size)
    per_prompt: torch.Tensor | None = None
    bar = progress_bar(starts, desc="encoding class prompts", unit="batch", leave=False,
                       disable=not progress or len(starts) < 4)
    packing = {"packed": True} if hasattr(model, "text_tokens_packed") else {}
    for start in bar:
        rows = order[start:start + batch_size]
        width = int(lengths[rows].max())
        out = model.encode_text(ids[rows, :width], mask[rows, :width], **packing).float()
        if per_prompt is None:
            per_prompt = torch.empty((len(prompts), out.shape[1]), dtype=torch.float32, device=out.device)
        per_prompt[rows.to(out.device)] = out
    mean = per_prompt.reshape(len(class_names), len(templates), -1).mean(dim=1)
    return mean / mean.norm(dim=-1, keepdim=True)


def class_embeddings(
    model: Any,
    class_names: Sequence[str],
    templates: str | Sequence[str] = IMAGENET_TEMPLATES,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
    use_cache: bool = True,
    progress: bool = True,
) -> torch.Tensor:
    """Class embeddings for zero-shot segmentation, cached on disk.

    The cache file name is :func:`cache_key` of the inputs, so a cached file is never stale, and deleting it only
    costs a recomputation. A corrupt or mismatching file is ignored and rewritten.

    Args:
        model: a :class:`simseg.model.SimSegModel` (or anything with ``tokenize``, ``encode_text``,
            ``text_weights_hash``).
        class_names: names in label-index order (background included if it should get an embedding).
        templates: prompt templates with one ``{}`` each, or a template set name.
        cache_dir: cache folder; default :func:`default_cache_dir`.
        batch_size: prompts per text-encoder batch.
        use_cache: False neither reads nor writes the cache.
        progress: a progress bar while encoding (nothing is shown for a cached or short list).

    Returns:
        (C, D) float32 tensor on the model's device, rows of unit norm.
    """
    names = list(class_names)
    temps = resolve_templates(templates)
    if not names:
        raise InputError("class list: empty")
    warn_unknown_words(getattr(model, "tokenizer", None), names)
    path = None
    if use_cache:
        path = cache_folder(cache_dir) / f"{cache_key(model, names, temps)}.npy"
        embed_dim = getattr(model, "embed_dim", None)  # any model with the interface (the ONNX one has no layers)
        if embed_dim is None and hasattr(model, "text_projection"):
            embed_dim = int(model.text_projection.weight.shape[0])
        if embed_dim is not None:
            cached = _read_cache(path, (len(names), embed_dim))
            if cached is not None:
                return torch.from_numpy(cached).to(model.device)
    emb = encode_class_names(model, names, temps, batch_size=batch_size, progress=progress)
    if path is not None:
        _write_cache(path, emb.detach().cpu().numpy().astype(np.float32))
    return emb
