"""Zero-shot semantic segmentation: class embeddings and the two protocols (``simseg segment``).

Protocol ``simseg`` (default) is the paper's, step for step (method.md §3 and §7):

1. ``Resize((288, 288))`` on the PIL image (bilinear), ``ToTensor``, ``Normalize``, float32.
2. Class embeddings: every class in every prompt template, masked LoDA, mean over templates, divided by its norm.
3. Image-level scores: cosine(LoDA-pooled image embedding, class embedding). Threshold = mean + 1.0 x (unbiased) std
   of the top N scores (N = 30 for PASCAL Context, 10 otherwise).
4. Walk the top 5 classes in score order; skip background (index 0); stop at the first score below the threshold.
5. Per accepted class: (normalised patch tokens) . class embedding -> nearest x16 -> min-max -> 2-label dense CRF on
   the uint8 image rebuilt from the normalised tensor by truncation -> 7 x 7 closing -> nearest resize to H x W ->
   times the class score.
6. Labels = argmax over the score-weighted masks; 0 (background) where no accepted class fires.

The implementation makes the same decisions on the same numbers as that description, without its costs: the maps of
the accepted classes only, min-max on the 18 x 18 map (nearest upsampling repeats values, so min and max are the
same), masks composited at 288 x 288 in uint8 and one nearest resize of the label map (the same pixel gather as
resizing each mask), and no CRF call for a class whose score cannot win any pixel (score <= 0 loses to background's
0 in the original's argmax). ``benchmarks/bench_segment.py`` checks it against a line-by-line reference.

Protocol ``dense`` is the common open-vocabulary protocol: short side resized to 448, sliding 448 x 448 windows with
stride 224, per-pixel softmax over (patch . class) / temperature, logits bilinearly upsampled to the image size;
background where the best foreground probability is below ``bg_threshold``, or, with no threshold, through the
``background`` class competing like any other.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from simseg.classnames import IMAGENET_TEMPLATES, parse_class_list, read_class_file
from simseg.errors import ConfigError, InputError, SimSegError

#: A single prompt for quick use (``--templates single``).
SINGLE_TEMPLATE: tuple[str, ...] = ("a photo of a {}.",)

#: Names accepted by ``--templates``.
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {"imagenet": IMAGENET_TEMPLATES, "single": SINGLE_TEMPLATE}

#: Bump when the cache file layout or the embedding recipe changes, so old files are never read.
_CACHE_FORMAT = 1

#: A CRF function: (uint8 image (H, W, 3), probability (H, W), **crf parameters) -> bool mask.
CRFFunction = Callable[..., np.ndarray]


# ----------------------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class SimSegParams:
    """Parameters of the ``simseg`` protocol; the defaults are the paper's (method.md §3).

    Attributes:
        input_size: side of the square network input (the ViT is set to it).
        top_n: how many of the highest image-level scores set the threshold (the paper: 30 for PASCAL Context,
            10 otherwise).
        threshold_std: threshold = mean + threshold_std x std of the top ``top_n`` scores.
        candidates: how many of the highest-scoring classes are walked.
        crf_iterations: mean-field iterations of the dense CRF.
        crf_gauss_sxy: CRF Gaussian kernel spatial std.
        crf_gauss_compat: CRF Gaussian kernel weight.
        crf_bilateral_sxy: CRF bilateral kernel spatial std.
        crf_bilateral_srgb: CRF bilateral kernel colour std.
        crf_bilateral_compat: CRF bilateral kernel weight.
        closing_kernel: side of the square closing element (0 or 1: no closing).
        no_crf_threshold: with the CRF off, a pixel is foreground where the min-max map exceeds this.
    """

    input_size: int = 288
    top_n: int = 10
    threshold_std: float = 1.0
    candidates: int = 5
    crf_iterations: int = 3
    crf_gauss_sxy: float = 3
    crf_gauss_compat: float = 3
    crf_bilateral_sxy: float = 40
    crf_bilateral_srgb: float = 13
    crf_bilateral_compat: float = 10
    closing_kernel: int = 7
    no_crf_threshold: float = 0.5

    def __post_init__(self) -> None:
        for name in ("input_size", "top_n", "candidates", "crf_iterations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"protocol parameter {name}: must be at least 1, got {getattr(self, name)}")
        if self.closing_kernel < 0:
            raise ConfigError(f"protocol parameter closing_kernel: must be >= 0, got {self.closing_kernel}")
        if not 0.0 <= self.no_crf_threshold <= 1.0:
            raise ConfigError(f"protocol parameter no_crf_threshold: must be in [0, 1], got {self.no_crf_threshold}")

    def crf_kwargs(self) -> dict[str, float]:
        """The keyword arguments of :func:`simseg.crf.dense_crf_binary`."""
        return {
            "iterations": self.crf_iterations,
            "gauss_sxy": self.crf_gauss_sxy,
            "gauss_compat": self.crf_gauss_compat,
            "bilateral_sxy": self.crf_bilateral_sxy,
            "bilateral_srgb": self.crf_bilateral_srgb,
            "bilateral_compat": self.crf_bilateral_compat,
        }


@dataclass(frozen=True)
class DenseParams:
    """Parameters of the ``dense`` protocol.

    Attributes:
        short_side: the image's short side is resized to this before windowing.
        crop_size: side of the square sliding window (the ViT is set to it).
        stride: step between windows.
        bg_threshold: background where the best foreground class's probability is below this (the softmax then runs
            over the foreground classes only); None lets the ``background`` class compete in the softmax.
        batch_size: windows per forward pass.
    """

    short_side: int = 448
    crop_size: int = 448
    stride: int = 224
    bg_threshold: float | None = None
    batch_size: int = 8

    def __post_init__(self) -> None:
        for name in ("short_side", "crop_size", "stride", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"protocol parameter {name}: must be at least 1, got {getattr(self, name)}")
        if self.bg_threshold is not None and not 0.0 <= self.bg_threshold <= 1.0:
            raise ConfigError(f"protocol parameter bg_threshold: must be in [0, 1] or None, got {self.bg_threshold}")


PROTOCOLS: dict[str, type] = {"simseg": SimSegParams, "dense": DenseParams}


def make_params(protocol: str, **params: Any) -> SimSegParams | DenseParams:
    """Build a protocol's parameters, checking names and types (values from ``--set`` arrive as YAML scalars).

    Raises:
        ConfigError: unknown protocol, unknown parameter, or a value of the wrong type or range.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    cls = PROTOCOLS[protocol]
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} for protocol {protocol}; "
                          f"known: {', '.join(known)}")
    values: dict[str, Any] = {}
    for name, value in params.items():
        default = known[name].default
        if value is None and default is None:
            values[name] = None
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"protocol parameter {name}: expected a number, got {value!r}")
        elif isinstance(default, int) and known[name].type in ("int", int):
            if float(value) != int(value):
                raise ConfigError(f"protocol parameter {name}: expected an integer, got {value!r}")
            values[name] = int(value)
        else:
            values[name] = float(value)
    return cls(**values)


# ----------------------------------------------------------------------------------------------- class embeddings
def default_cache_dir() -> Path:
    """``$SIMSEG_CACHE/text``, or ``~/.cache/simseg/text`` when the variable is unset."""
    root = os.environ.get("SIMSEG_CACHE") or os.path.join("~", ".cache", "simseg")
    return Path(root).expanduser() / "text"


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


def _templates_name(templates: tuple[str, ...]) -> str:
    for name, value in TEMPLATE_SETS.items():
        if templates == value:
            return name
    return f"custom({len(templates)})"


def _embedding_cache_key(model: Any, class_names: Sequence[str], templates: Sequence[str]) -> str:
    """sha256 over everything that determines the embeddings: weights, vocabulary, pooling setup, classes, templates."""
    tokenizer = getattr(model, "tokenizer", None)
    vocab = getattr(tokenizer, "vocab", None)
    payload = {
        "format": _CACHE_FORMAT,
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
    """The cached array, or None when the file is missing, unreadable, or not what it should be."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if arr.shape != shape or arr.dtype != np.float32 or not np.isfinite(arr).all():
        return None
    return arr


def _write_cache(path: Path, arr: np.ndarray) -> None:
    """Write atomically (temp file + os.replace), so a crash never leaves a half-written cache file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.stem, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, arr, allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:  # a read-only or full cache folder costs time, not correctness
        warnings.warn(f"class-embedding cache not written to {path.parent} ({e})", stacklevel=3)


@torch.no_grad()
def encode_class_names(
    model: Any, class_names: Sequence[str], templates: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    """Encode every class in every template (masked LoDA, padded to the longest prompt) and average per class.

    Returns:
        (C, D) float32 on the model's device: the template mean of the L2-normalised prompt embeddings, divided by
        its norm (no epsilon, as the original: method.md §7).
    """
    from tqdm import tqdm

    prompts = [t.format(name) for name in class_names for t in templates]
    starts = range(0, len(prompts), batch_size)
    chunks = []
    for start in tqdm(starts, desc="encoding class prompts", unit="batch", leave=False, disable=len(starts) < 4):
        batch = model.tokenize(prompts[start:start + batch_size], padding="longest")
        chunks.append(model.encode_text(batch["input_ids"], batch["attention_mask"]).float())
    per_prompt = torch.cat(chunks).reshape(len(class_names), len(templates), -1)
    mean = per_prompt.mean(dim=1)
    return mean / mean.norm(dim=-1, keepdim=True)


def class_embeddings(
    model: Any,
    class_names: Sequence[str],
    templates: Sequence[str] = IMAGENET_TEMPLATES,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
    use_cache: bool = True,
) -> torch.Tensor:
    """Class embeddings for zero-shot segmentation, cached on disk.

    The cache file name is the sha256 of (weights hash, vocabulary, pooling setup, class names, templates), so a
    cached file can only be found by the exact inputs that produced it (never stale), and deleting it only costs a
    recomputation. A corrupt or mismatching file is ignored and rewritten.

    Args:
        model: a :class:`simseg.model.SimSegModel` (or anything with ``tokenize``, ``encode_text``, ``text_weights_hash``).
        class_names: names in label-index order (background included if it should get an embedding).
        templates: prompt templates with one ``{}`` each.
        cache_dir: cache folder; default :func:`default_cache_dir`.
        batch_size: prompts per text-encoder batch.
        use_cache: False neither reads nor writes the cache.

    Returns:
        (C, D) float32 tensor on the model's device, rows of unit norm.
    """
    names = list(class_names)
    temps = resolve_templates(templates)
    if not names:
        raise InputError("class list: empty")
    path = None
    if use_cache:
        folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        path = folder / f"{_embedding_cache_key(model, names, temps)}.npy"
        embed_dim = int(model.text_projection.weight.shape[0]) if hasattr(model, "text_projection") else None
        if embed_dim is not None:
            cached = _read_cache(path, (len(names), embed_dim))
            if cached is not None:
                return torch.from_numpy(cached).to(model.device)
    emb = encode_class_names(model, names, temps, batch_size=batch_size)
    if path is not None:
        _write_cache(path, emb.detach().cpu().numpy().astype(np.float32))
    return emb


# ----------------------------------------------------------------------------------------------- simseg decisions
def select_classes(
    scores: torch.Tensor,
    top_n: int = 10,
    threshold_std: float = 1.0,
    candidates: int = 5,
    background: int | None = 0,
) -> tuple[list[int], float]:
    """The classes the ``simseg`` protocol segments, from the image-level scores (method.md §3.3-4).

    threshold = mean + ``threshold_std`` x unbiased std of the ``min(top_n, C)`` highest scores (computed in the
    scores' float32, as ``torch.std``; a single score has std 0). The ``candidates`` highest classes are walked in
    score order: the background class is skipped (it does not end the walk), and the walk stops at the first class
    whose score is below the threshold.

    Args:
        scores: (C,) image-level scores.
        top_n: how many top scores set the threshold.
        threshold_std: multiplier of the std.
        candidates: how many top classes are walked.
        background: index of the background class, or None when there is none.

    Returns:
        The accepted class indices in walk order, and the threshold.
    """
    s = scores.detach().to("cpu", torch.float32).reshape(-1)
    n = min(top_n, s.numel())
    top_scores, top_index = s.topk(n)
    std = top_scores.std() if n > 1 else torch.zeros((), dtype=torch.float32)
    threshold = top_scores.mean() + threshold_std * std
    accepted: list[int] = []
    for idx in top_index[:candidates].tolist():
        if idx == background:
            continue
        if s[idx] < threshold:
            break
        accepted.append(idx)
    return accepted, float(threshold)


def rebuild_uint8(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The uint8 RGB image the CRF sees, rebuilt from the normalised tensor as the original does (method.md §7).

    ``((x * std + mean) * 255)`` in float32, cast to uint8 by truncation (not rounding): some channel values end
    one level below the source image, and the CRF output depends on it. The arithmetic is numpy float32, one
    correctly rounded operation at a time exactly as torch's float32 kernels do, so the bytes equal the original's
    torch expression (tested); numpy avoids torch's per-operation thread-pool overhead on this small array.

    Args:
        image: (3, H, W) normalised float32 tensor.
        mean: per-channel mean used for the normalisation.
        std: per-channel std used for the normalisation.

    Returns:
        (H, W, 3) uint8 array.
    """
    x = image.detach().to("cpu", torch.float32).numpy()
    m = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    return np.ascontiguousarray((((x * s) + m) * np.float32(255)).astype(np.uint8).transpose(1, 2, 0))


def minmax(values: np.ndarray) -> np.ndarray | None:
    """(v - min) / (max - min) in float32; None for a constant map (the original divides by zero there: NaN unaries
    whose CRF argmax is background everywhere, so the class adds no pixel)."""
    v = np.asarray(values, dtype=np.float32)
    lo, hi = v.min(), v.max()
    if not hi > lo:
        return None
    return (v - lo) / (hi - lo)


def composite_labels(masks: Sequence[tuple[int, float, np.ndarray]], shape: tuple[int, int],
                     dtype: Any = np.uint8) -> np.ndarray:
    """Label map equal to the argmax over classes of the score-weighted masks, with background 0 elsewhere.

    The original fills a (C, H, W) float64 array with ``mask * score`` (zeros for every other class, background
    included) and takes ``argmax(0)``: a pixel goes to the covering class of highest score, a tie to the lower index,
    and to background (index 0, value 0) when no covering class has a positive score. Painting the masks in
    increasing (score, -index) order gives the same labels in one uint8 map.

    Args:
        masks: (class index, score, (H, W) bool mask) for each accepted class.
        shape: (H, W).
        dtype: integer dtype of the result (wide enough for the class indices).

    Returns:
        (H, W) label map.
    """
    labels = np.zeros(shape, dtype=dtype)
    for cls, _score, mask in sorted((m for m in masks if m[1] > 0), key=lambda m: (m[1], -m[0])):
        labels[mask] = cls
    return labels


def label_dtype(num_classes: int) -> Any:
    """The narrowest dtype OpenCV resizes that holds ``num_classes`` indices (uint8 up to 256 classes)."""
    return np.uint8 if num_classes <= 256 else np.uint16


def resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a label map with OpenCV (``INTER_NEAREST``, as the original's mask resize)."""
    if labels.shape == (height, width):
        return labels
    return cv2.resize(labels, dsize=(width, height), interpolation=cv2.INTER_NEAREST)


def simseg_masks(
    patch_tokens: torch.Tensor,
    grid: tuple[int, int],
    patch_size: int,
    class_emb: torch.Tensor,
    accepted: Sequence[int],
    scores: torch.Tensor,
    crf_image: np.ndarray | None,
    params: SimSegParams,
    crf: bool = True,
    crf_fn: CRFFunction | None = None,
) -> list[tuple[int, float, np.ndarray]]:
    """Binary masks at input resolution of the accepted classes (method.md §3.5, up to the final resize).

    Args:
        patch_tokens: (N, D) projected patch tokens of one image (not normalised).
        grid: (gh, gw) patch grid, gh * gw == N.
        patch_size: pixels per patch side (the nearest upsampling factor).
        class_emb: (C, D) class embeddings.
        accepted: class indices to segment (from :func:`select_classes`).
        scores: (C,) image-level scores.
        crf_image: (gh * patch, gw * patch, 3) uint8 image for the CRF (:func:`rebuild_uint8`); unused without CRF.
        params: protocol parameters.
        crf: refine with the dense CRF; False thresholds the min-max map at ``params.no_crf_threshold``.
        crf_fn: the CRF function (default :func:`simseg.crf.dense_crf_binary`); the benchmark passes a timed one.

    Returns:
        (class, score, bool mask) per accepted class whose score is positive (others cannot win a pixel).
    """
    from simseg.crf import closing

    gh, gw = grid
    out: list[tuple[int, float, np.ndarray]] = []
    live = [c for c in accepted if float(scores[c]) > 0]
    if not live:
        return out
    tokens = F.normalize(patch_tokens.float(), dim=-1)
    maps = (tokens @ class_emb[live].float().T).T.reshape(len(live), gh, gw).cpu().numpy()
    if crf and crf_fn is None:
        from simseg.crf import dense_crf_binary as crf_fn
    for cls, cmap in zip(live, maps):
        prob = minmax(cmap)
        if prob is None:
            continue
        # nearest x patch_size is pure repetition; done after min-max, which it does not change
        prob = np.repeat(np.repeat(prob, patch_size, axis=0), patch_size, axis=1)
        if crf:
            mask = crf_fn(crf_image, prob, **params.crf_kwargs())
        else:
            mask = prob > params.no_crf_threshold
        out.append((cls, float(scores[cls]), closing(mask, params.closing_kernel)))
    return out


# ----------------------------------------------------------------------------------------------- results
@dataclass
class SegmentationResult:
    """One image's segmentation.

    Attributes:
        labels: (H, W) int32 class indices at the original image size (0 = background).
        class_names: names indexed by label.
        scores: (C,) image-level scores (cosine of pooled image and class embeddings).
        found: (name, score) of the non-background classes present in ``labels``, highest score first.
        protocol: the protocol's name and every parameter value.
        details: per-image decisions (``simseg``: ``threshold`` and ``accepted`` classes).
    """

    labels: np.ndarray
    class_names: list[str]
    scores: np.ndarray
    found: list[tuple[str, float]]
    protocol: dict
    details: dict = field(default_factory=dict)


def _found(labels: np.ndarray, class_names: Sequence[str], scores: np.ndarray) -> list[tuple[str, float]]:
    present = np.flatnonzero(np.bincount(labels.reshape(-1), minlength=len(class_names)))
    found = [(class_names[c], float(scores[c])) for c in present if c != 0]
    return sorted(found, key=lambda item: -item[1])


# ----------------------------------------------------------------------------------------------- segmenter
class Segmenter:
    """Segment images with a fixed class list; the class embeddings are computed (or read from cache) once.

    Args:
        model: a loaded :class:`simseg.model.SimSegModel` in eval mode.
        class_names: class list, a comma string or a sequence; ``background`` is index 0 (prepended when missing).
        protocol: ``"simseg"`` (the paper's) or ``"dense"``.
        crf: ``simseg`` protocol only: refine with the dense CRF. ``False`` is the paper's "without CRF" variant,
            read here as the CRF replaced by its own unary decision: foreground where the min-max map is above 0.5
            (the argmax of ``[1 - p, p]``); the closing and everything else stay.
        templates: prompt templates, a set name (``"imagenet"``, ``"single"``) or None for the 80 ImageNet ones.
        cache_dir: class-embedding cache folder (default :func:`default_cache_dir`).
        **params: protocol parameters (:class:`SimSegParams` or :class:`DenseParams` fields).

    Raises:
        ConfigError: unknown protocol or parameter, CRF asked without pydensecrf2, input size not a multiple of the
            patch size.
        InputError: invalid class list.
    """

    def __init__(
        self,
        model: Any,
        class_names: str | Sequence[str],
        protocol: str = "simseg",
        crf: bool = True,
        templates: str | Sequence[str] | None = None,
        cache_dir: str | os.PathLike | None = None,
        **params: Any,
    ):
        self.model = model
        self.class_names = parse_class_list(class_names if isinstance(class_names, str) else list(class_names))
        self.protocol = protocol
        self.params = make_params(protocol, **params)
        self.crf = bool(crf) and protocol == "simseg"
        if self.crf:
            from simseg.crf import require_densecrf

            require_densecrf()
        self.templates = resolve_templates(templates)
        self.input_size = self.params.input_size if protocol == "simseg" else self.params.crop_size
        if self.input_size % model.patch_size:
            name = "input_size" if protocol == "simseg" else "crop_size"
            raise ConfigError(f"protocol parameter {name}: {self.input_size} is not a multiple of the model's patch "
                              f"size {model.patch_size}")
        self._ensure_image_size()
        self.class_emb = class_embeddings(model, self.class_names, self.templates, cache_dir=cache_dir)
        self._dtype = label_dtype(len(self.class_names))
        self._transform: Callable[[Image.Image], torch.Tensor] | None = None

    def protocol_info(self) -> dict:
        """The protocol's name, every parameter value, whether the CRF ran, and the prompt templates used."""
        info: dict[str, Any] = {"name": self.protocol, **asdict(self.params), "crf": self.crf}
        if self.protocol == "dense":
            info["background"] = "threshold" if self.params.bg_threshold is not None else "class"
        info["templates"] = _templates_name(self.templates)
        info["num_templates"] = len(self.templates)
        return info

    def _ensure_image_size(self) -> None:
        # The model may be shared with a segmenter of another input size: check on every call, it is one comparison.
        if self.model.image_size != self.input_size:
            self.model.set_image_size(self.input_size)

    # ------------------------------------------------------------------ simseg protocol, in two timed halves
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """``Resize((S, S))`` (PIL bilinear), ``ToTensor``, ``Normalize``: a (1, 3, S, S) float32 batch (CPU)."""
        if self._transform is None:
            from simseg.transforms import eval_transform

            self._transform = eval_transform(self.params.input_size, mode="square", mean=self.model.mean,
                                             std=self.model.std)
        return self._transform(image.convert("RGB")).unsqueeze(0)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor]:
        """Model forward of a (1, 3, S, S) batch: patch tokens (N, D), grid (gh, gw), image-level scores (C,)."""
        self._ensure_image_size()
        x = x.to(self.model.device)
        tokens, grid = self.model.encode_image_tokens(x)
        pooled = self._pool(tokens, x)
        # the original's elementwise product and sum (not a matmul), for the same float rounding of the scores
        scores = (pooled[0].unsqueeze(0) * self.class_emb).sum(dim=1)
        return tokens[0], grid, scores

    def _pool(self, tokens: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        from simseg.loda import l2_normalize, pool_tokens

        pooling = getattr(self.model, "pooling", "loda")
        if pooling == "cls":  # needs the [CLS] token, which encode_image_tokens drops: a second forward
            return self.model.encode_image(x)
        return l2_normalize(pool_tokens(tokens, pooling, getattr(self.model, "image_topk", 5)))

    @torch.inference_mode()
    def postprocess(
        self,
        x: torch.Tensor,
        tokens: torch.Tensor,
        grid: tuple[int, int],
        scores: torch.Tensor,
        size: tuple[int, int],
        crf_fn: CRFFunction | None = None,
    ) -> SegmentationResult:
        """Everything after the forward: class selection, maps, CRF, closing, compositing, resize to ``size`` (W, H)."""
        p = self.params
        accepted, threshold = select_classes(scores, p.top_n, p.threshold_std, p.candidates, background=0)
        crf_image = rebuild_uint8(x[0], self.model.mean, self.model.std) if self.crf and accepted else None
        masks = simseg_masks(tokens, grid, self.model.patch_size, self.class_emb, accepted, scores, crf_image, p,
                             crf=self.crf, crf_fn=crf_fn)
        side = (grid[0] * self.model.patch_size, grid[1] * self.model.patch_size)
        labels = composite_labels(masks, side, self._dtype)
        width, height = size
        labels = resize_labels(labels, height, width).astype(np.int32)
        score_arr = scores.detach().float().cpu().numpy()
        return SegmentationResult(
            labels=labels,
            class_names=list(self.class_names),
            scores=score_arr,
            found=_found(labels, self.class_names, score_arr),
            protocol=self.protocol_info(),
            details={"threshold": threshold, "accepted": [self.class_names[c] for c in accepted]},
        )

    # ------------------------------------------------------------------ dense protocol
    @torch.inference_mode()
    def _dense(self, image: Image.Image) -> SegmentationResult:
        from torchvision.transforms import functional as TF

        p = self.params
        self._ensure_image_size()
        width, height = image.size
        resized = TF.resize(image.convert("RGB"), p.short_side)  # short side, PIL bilinear
        x = TF.normalize(TF.to_tensor(resized), self.model.mean, self.model.std)
        _, h, w = x.shape
        crop, stride = p.crop_size, p.stride
        # pad to at least one window (the ViT has a fixed input size); padded pixels are cut off below
        ph, pw = max(h, crop), max(w, crop)
        if (ph, pw) != (h, w):
            x = F.pad(x, (0, pw - w, 0, ph - h))
        ys = _window_starts(ph, crop, stride)
        xs = _window_starts(pw, crop, stride)
        boxes = [(y, xx) for y in ys for xx in xs]
        emb = self.class_emb.float()
        num_classes = emb.shape[0]
        device = self.model.device
        logits = torch.zeros((num_classes, ph, pw), dtype=torch.float32, device=device)
        count = torch.zeros((1, ph, pw), dtype=torch.float32, device=device)
        all_tokens, window_pooled = [], []
        pooling = getattr(self.model, "pooling", "loda")
        for start in range(0, len(boxes), p.batch_size):
            chunk = boxes[start:start + p.batch_size]
            batch = torch.stack([x[:, y:y + crop, xx:xx + crop] for y, xx in chunk]).to(device)
            tokens, (gh, gw) = self.model.encode_image_tokens(batch)
            if pooling == "cls":  # needs [CLS]: a second forward (the cls pooling is an ablation, not the method)
                window_pooled.append(self.model.encode_image(batch))
            else:
                all_tokens.append(tokens.reshape(-1, tokens.shape[-1]))
            sim = F.normalize(tokens.float(), dim=-1) @ emb.T  # (B, N, C) cosine
            sim = sim.transpose(1, 2).reshape(len(chunk), num_classes, gh, gw)
            sim = F.interpolate(sim, size=(crop, crop), mode="bilinear", align_corners=False)
            for (y, xx), s in zip(chunk, sim):
                logits[:, y:y + crop, xx:xx + crop] += s
                count[:, y:y + crop, xx:xx + crop] += 1
        logits = (logits / count)[:, :h, :w] / self.model.temperature().float()
        pooled = self._pool_windows(all_tokens, window_pooled)
        scores = (pooled[0].unsqueeze(0) * emb).sum(dim=1).cpu().numpy()
        labels = _dense_labels(logits, height, width, p.bg_threshold).cpu().numpy().astype(np.int32)
        return SegmentationResult(
            labels=labels,
            class_names=list(self.class_names),
            scores=scores,
            found=_found(labels, self.class_names, scores),
            protocol=self.protocol_info(),
            details={"windows": len(boxes), "resized": [w, h]},
        )

    def _pool_windows(self, tokens: list[torch.Tensor], window_pooled: list[torch.Tensor]) -> torch.Tensor:
        """The image embedding of the dense protocol: the model's pooling over the patch tokens of all windows
        (with ``cls`` pooling, the mean of the windows' embeddings), L2-normalised."""
        from simseg.loda import l2_normalize, pool_tokens

        if window_pooled:
            return l2_normalize(torch.cat(window_pooled).mean(dim=0, keepdim=True))
        all_tokens = torch.cat(tokens).unsqueeze(0)
        return l2_normalize(pool_tokens(all_tokens, self.model.pooling, getattr(self.model, "image_topk", 5)))

    # ------------------------------------------------------------------ entry point
    def __call__(self, image: Image.Image) -> SegmentationResult:
        """Segment one RGB PIL image; the label map has the image's size."""
        if self.protocol == "dense":
            return self._dense(image)
        x = self.preprocess(image)
        tokens, grid, scores = self.forward(x)
        return self.postprocess(x, tokens, grid, scores, image.size)


def _window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Window offsets covering ``length`` (MMSegmentation's slide rule: the last window is flush with the end)."""
    n = max(length - crop + stride - 1, 0) // stride + 1
    return sorted({min(i * stride, length - crop) for i in range(n)})


def _dense_labels(logits: torch.Tensor, height: int, width: int, bg_threshold: float | None,
                  max_elements: int = 1 << 24) -> torch.Tensor:
    """Labels from (C, h, w) logits: bilinear upsampling to (height, width) and softmax, in row strips.

    Strips keep memory bounded for any image size: a (C, H, W) float map of a large photo would not fit. Each strip
    samples the logits with ``grid_sample`` at exactly the coordinates ``F.interpolate(bilinear,
    align_corners=False)`` uses.
    """
    num_classes, h, w = logits.shape
    src = logits.unsqueeze(0)
    xs = (torch.arange(width, dtype=torch.float32, device=logits.device) + 0.5) / width * 2 - 1
    rows = max(1, max_elements // max(1, num_classes * width))
    out = torch.empty((height, width), dtype=torch.int64, device=logits.device)
    for y0 in range(0, height, rows):
        y1 = min(height, y0 + rows)
        ys = (torch.arange(y0, y1, dtype=torch.float32, device=logits.device) + 0.5) / height * 2 - 1
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1).unsqueeze(0)
        strip = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        if bg_threshold is None:
            out[y0:y1] = strip.argmax(dim=0)
        else:
            prob = strip[1:].softmax(dim=0)
            best, idx = prob.max(dim=0)
            out[y0:y1] = torch.where(best < bg_threshold, torch.zeros_like(idx), idx + 1)
    return out


def segment(
    model: Any,
    image: Image.Image | str | os.PathLike | Sequence[Image.Image | str | os.PathLike],
    classes: str | Sequence[str],
    protocol: str = "simseg",
    **kwargs: Any,
) -> SegmentationResult | list[SegmentationResult]:
    """Segment one image (or a list of images) with the given class names.

    Args:
        model: a loaded model.
        image: a PIL image or a path (read with :func:`simseg.images.load_image`), or a list of them.
        classes: class names, a list or a comma string (``background`` prepended when missing).
        protocol: ``"simseg"`` or ``"dense"``.
        **kwargs: :class:`Segmenter` options (``crf``, ``templates``, ``cache_dir``) and protocol parameters.

    Returns:
        A :class:`SegmentationResult`, or a list of them for a list of images.
    """
    from simseg.images import load_image

    segmenter = Segmenter(model, classes, protocol=protocol, **kwargs)
    many = isinstance(image, (list, tuple))
    images = list(image) if many else [image]
    results = [segmenter(im if isinstance(im, Image.Image) else load_image(im)) for im in images]
    return results if many else results[0]


# ----------------------------------------------------------------------------------------------- CLI
def add_segment_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``simseg segment``."""
    parser.add_argument("images", nargs="+", metavar="IMG", help="image files to segment")
    parser.add_argument("--classes", default=None, help='comma-separated class names, e.g. "cat,dog,grass"')
    parser.add_argument("--classes-file", default=None, help="text file with class names (one per line or commas)")
    parser.add_argument("--checkpoint", required=True, help="simseg checkpoint folder, original .pth, or preset")
    parser.add_argument("--tokenizer", default=None, help="folder with vocab.txt (default: the checkpoint's)")
    parser.add_argument("--protocol", default="simseg", choices=list(PROTOCOLS),
                        help="simseg: the paper's protocol (default); dense: sliding-window per-pixel protocol")
    parser.add_argument("--no-crf", action="store_true", help="skip the dense CRF (the paper's no-CRF variant)")
    parser.add_argument("--templates", default="imagenet", choices=list(TEMPLATE_SETS),
                        help="prompt templates: the 80 ImageNet ones (default) or a single 'a photo of a {}.'")
    parser.add_argument("--set", dest="params", action="append", default=[], metavar="KEY=VALUE",
                        help="protocol parameter, e.g. --set threshold_std=1.5 (repeatable)")
    parser.add_argument("--out", required=True, help="output folder for <stem>_labels.png and <stem>_overlay.png")
    parser.add_argument("--cache-dir", default=None, help="class-embedding cache folder (default: $SIMSEG_CACHE/text "
                                                          "or ~/.cache/simseg/text)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    import yaml

    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        try:
            params[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: cannot parse the value ({e})") from None
    return params


def _output_stems(paths: Sequence[str]) -> list[str]:
    """File stems for the outputs, made unique when two inputs share a name (``a/x.jpg``, ``b/x.png``)."""
    stems: list[str] = []
    used: set[str] = set()
    for p in paths:
        stem = Path(p).stem or "image"
        candidate, n = stem, 2
        while candidate in used:
            candidate, n = f"{stem}_{n}", n + 1
        used.add(candidate)
        stems.append(candidate)
    return stems


def run_segment(args: argparse.Namespace) -> int:
    """Run ``simseg segment``: write a label PNG and an overlay per image, print the classes found.

    Also writes ``segment.json`` in the output folder: per image the classes found with their scores and the
    image-level scores of every class, plus the protocol and its parameters, the checkpoint (path and sha256) and the
    software versions.

    Returns:
        0 when every image was segmented, 1 when any could not be read or segmented (each is reported by name).
    """
    import simseg
    from simseg.checkpoint import checkpoint_fingerprint
    from simseg.evaluate import software_versions
    from simseg.images import load_image
    from simseg.visualize import overlay, save_label_png

    if (args.classes is None) == (args.classes_file is None):
        raise InputError("give the class names with exactly one of --classes or --classes-file")
    classes = read_class_file(args.classes_file) if args.classes_file else parse_class_list(args.classes)
    if len(classes) > 256:
        raise InputError(f"--classes: {len(classes) - 1} classes; a palette label PNG holds at most 255 (plus "
                         "background)")
    if args.protocol == "simseg" and not args.no_crf:
        from simseg.crf import require_densecrf

        require_densecrf()  # before loading a model: fail fast
    params = parse_set(args.params)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = simseg.load_model(args.checkpoint, tokenizer=args.tokenizer, device=device)
    segmenter = Segmenter(model, classes, protocol=args.protocol, crf=not args.no_crf, templates=args.templates,
                          cache_dir=args.cache_dir, **params)
    info = segmenter.protocol_info()
    checkpoint = checkpoint_fingerprint(args.checkpoint)
    params_text = ", ".join(f"{k}={v}" for k, v in info.items() if k != "name")
    sha = checkpoint["sha256"][:12] if checkpoint.get("sha256") else "n/a (preset, random weights)"
    print(f"protocol {info['name']} ({params_text}); checkpoint {args.checkpoint} (sha256 {sha})")

    from simseg.config import make_output_dir

    out = make_output_dir(args.out)
    records: list[dict[str, Any]] = []
    failed = 0
    for path, stem in zip(args.images, _output_stems(args.images)):
        try:
            image = load_image(path)
            result = segmenter(image)
            save_label_png(result.labels, out / f"{stem}_labels.png")
            overlay(image, result.labels, result.class_names, scores=result.scores).save(out / f"{stem}_overlay.png")
        except SimSegError as e:
            failed += 1
            print(f"{path}: error: {e}", file=sys.stderr)
            records.append({"image": str(path), "error": str(e)})
            continue
        found = ", ".join(f"{name} {score:.3f}" for name, score in result.found) or "nothing (all background)"
        print(f"{path}: {found}")
        records.append({
            "image": str(path),
            "labels": f"{stem}_labels.png",
            "overlay": f"{stem}_overlay.png",
            "size": [image.width, image.height],
            "found": [{"class": name, "score": score} for name, score in result.found],
            "scores": {name: float(v) for name, v in zip(result.class_names, result.scores)},
            "details": result.details,
        })
    report = {
        "classes": segmenter.class_names,
        "protocol": info,
        "checkpoint": checkpoint,
        "device": device,
        "versions": software_versions(),
        "images": records,
        "num_failed": failed,
    }
    tmp = out / "segment.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / "segment.json")
    if failed:
        print(f"{failed} of {len(args.images)} image(s) failed", file=sys.stderr)
    return 1 if failed else 0
