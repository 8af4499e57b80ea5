"""Zero-shot semantic segmentation: the two protocols, one image in, one label map out (``simseg segment``).

Protocol ``simseg`` (default) is the paper's, step for step:

1. ``Resize((288, 288))`` on the PIL image (bilinear), ``ToTensor``, ``Normalize``, float32.
2. Class embeddings (:mod:`simseg.embeddings`): every class in every prompt template, masked LoDA, mean over
   templates, divided by its norm.
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

Synonyms: a class may have several names (``Segmenter(..., synonyms=...)``). Every name gets its own embedding and
each class scores as the maximum over its names, as the training-free open-vocabulary family reads its name files:
the image-level scores and the ``simseg`` protocol's per-patch similarities are the maximum of the names' cosines;
the ``dense`` protocol keeps one logit map per name and gives a pixel the class of its most probable name (a class's
probability is its best name's, the softmax running over names).

Each protocol is one small object (:class:`SimSegProtocol`, :class:`DenseProtocol`) that takes the model and the
class embeddings as arguments; :class:`Segmenter` pairs one with a class list's embeddings. Nothing here changes the
model: it runs at any input size that is a multiple of its patch size (the position embedding is resampled per call),
so one model can serve segmenters of different sizes, a training run's evaluation, or concurrent requests.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from simseg.classnames import flatten_synonyms, max_over_synonyms, parse_class_list, resolve_templates, templates_name
from simseg.embeddings import class_embeddings
from simseg.errors import ConfigError, InputError, SimSegError
from simseg.images import to_rgb
from simseg.model import eval_view
from simseg.packed import packed_view
from simseg.protocols import DEFAULT_PROTOCOL, DenseParams, SimSegParams, make_params
from simseg.transforms import IMAGENET_MEAN, IMAGENET_STD, resize_normalize, short_side_size

#: A CRF function: (uint8 image (H, W, 3), probability (H, W), params=CRFParams) -> bool mask.
CRFFunction = Callable[..., np.ndarray]

#: The class index of each name, when classes have several names (None: one name per class, in class order).
ClassOfName = Sequence[int] | None


def per_class(values: torch.Tensor, class_of_name: ClassOfName, dim: int = -1) -> torch.Tensor:
    """Per-name values reduced to per-class ones (the maximum over each class's names); unchanged without synonyms."""
    return values if class_of_name is None else max_over_synonyms(values, class_of_name, dim=dim)


# ----------------------------------------------------------------------------------------------- simseg decisions
def select_classes(
    scores: torch.Tensor,
    top_n: int = 10,
    threshold_std: float = 1.0,
    candidates: int = 5,
    background: int | None = 0,
) -> tuple[list[int], float]:
    """The classes the ``simseg`` protocol segments, from the image-level scores.

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
    """The uint8 RGB image the CRF sees, rebuilt from the normalised tensor, as the original does.

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
    class_of_name: ClassOfName = None,
    crf_pool: Any = None,
) -> list[tuple[int, float, Any]]:
    """Binary masks at input resolution of the accepted classes (up to the final resize).

    Args:
        patch_tokens: (N, D) projected patch tokens of one image (not normalised).
        grid: (gh, gw) patch grid, gh * gw == N.
        patch_size: pixels per patch side (the nearest upsampling factor).
        class_emb: (C, D) class embeddings, or (N, D) name embeddings with ``class_of_name``.
        accepted: class indices to segment (from :func:`select_classes`).
        scores: (C,) image-level scores.
        crf_image: (gh * patch, gw * patch, 3) uint8 image for the CRF (:func:`rebuild_uint8`); unused without CRF.
        params: protocol parameters.
        crf: refine with the dense CRF; False thresholds the min-max map at ``params.no_crf_threshold``.
        crf_fn: the CRF function (default :func:`simseg.crf.dense_crf_binary`); the benchmark passes a timed one.
        class_of_name: the class of each row of ``class_emb`` when classes have several names: a patch's
            similarity to a class is then the maximum over its names.
        crf_pool: a :class:`simseg.crf.CRFPool`: the CRF calls (with the upsampling and the closing,
            :func:`simseg.crf.refine_patch_map`) are submitted to its workers, all of them before any is waited for.

    Returns:
        (class, score, bool mask) per accepted class whose score is positive (others cannot win a pixel); with
        ``crf_pool`` (and the CRF on), a future of the mask in place of the mask.
    """
    from simseg.crf import closing

    gh, gw = grid
    out: list[tuple[int, float, np.ndarray]] = []
    live = [c for c in accepted if float(scores[c]) > 0]
    if not live:
        return out
    tokens = F.normalize(patch_tokens.float(), dim=-1)
    if class_of_name is None:
        sims = tokens @ class_emb[live].float().T
    else:
        sims = per_class(tokens @ class_emb.float().T, class_of_name)[:, live]
    maps = sims.T.reshape(len(live), gh, gw).cpu().numpy()
    if crf and crf_fn is None:
        from simseg.crf import dense_crf_binary as crf_fn
    for cls, cmap in zip(live, maps):
        prob = minmax(cmap)
        if prob is None:
            continue
        if crf and crf_pool is not None:
            out.append((cls, float(scores[cls]), crf_pool.submit(crf_image, prob, patch_size, params.crf(),
                                                                 params.closing_kernel)))
            continue
        # nearest x patch_size is pure repetition; done after min-max, which it does not change
        prob = np.repeat(np.repeat(prob, patch_size, axis=0), patch_size, axis=1)
        if crf:
            mask = crf_fn(crf_image, prob, params=params.crf())
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


# ----------------------------------------------------------------------------------------------- protocols
def _image_embedding(model: Any, tokens: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The pooled, L2-normalised image embedding from the projected patch tokens (a second forward for ``cls``)."""
    from simseg.loda import l2_normalize, pool_tokens

    pooling = getattr(model, "pooling", "loda")
    if pooling == "cls":  # needs the [CLS] token, which encode_image_tokens drops (the cls pooling is an ablation)
        return model.encode_image(x)
    return l2_normalize(pool_tokens(tokens, pooling, getattr(model, "image_topk", 5)))


class SimSegProtocol:
    """The paper's protocol with fixed parameters; call it with a model, class embeddings and an image.

    Args:
        params: the protocol's parameters (the paper's by default).
        crf: refine with the dense CRF. ``False`` is the paper's "without CRF" variant, read here as the CRF replaced
            by its own unary decision: foreground where the min-max map is above ``params.no_crf_threshold`` (0.5,
            the argmax of ``[1 - p, p]``); the closing and everything else stay.
        mean, std: the normalisation of the model's input.

    Raises:
        ConfigError: CRF asked without pydensecrf2.
    """

    name = "simseg"

    def __init__(self, params: SimSegParams = SimSegParams(), crf: bool = True,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        if crf:
            from simseg.crf import require_densecrf

            require_densecrf()
        self.params = params
        self.crf = bool(crf)
        self.mean, self.std = tuple(mean), tuple(std)

    @property
    def input_size(self) -> int:
        return self.params.input_size

    def with_crf(self, crf: bool) -> "SimSegProtocol":
        """The same protocol with the CRF on or off (a new object)."""
        return SimSegProtocol(self.params, crf, self.mean, self.std)

    def info(self) -> dict[str, Any]:
        """The protocol's name, every parameter value and whether the CRF runs."""
        return {"name": self.name, **asdict(self.params), "crf": self.crf}

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """``Resize((S, S))`` (PIL bilinear), ``ToTensor``, ``Normalize``: a (1, 3, S, S) float32 batch (CPU)."""
        size = self.params.input_size
        return resize_normalize(to_rgb(image), (size, size), self.mean, self.std).unsqueeze(0)

    @torch.inference_mode()
    def forward(self, model: Any, class_emb: torch.Tensor, x: torch.Tensor,
                class_of_name: ClassOfName = None) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor]:
        """Model forward of a (1, 3, S, S) batch: patch tokens (N, D), grid (gh, gw), image-level scores (C,).

        With ``class_of_name``, ``class_emb`` holds one row per name and a class's score is its best name's.
        """
        x = x.to(model.device)
        tokens, grid = model.encode_image_tokens(x)
        pooled = _image_embedding(model, tokens, x)
        # the original's elementwise product and sum (not a matmul), for the same float rounding of the scores
        scores = (pooled[0].unsqueeze(0) * class_emb).sum(dim=1)
        return tokens[0], grid, per_class(scores, class_of_name)

    def postprocess(self, model: Any, class_emb: torch.Tensor, class_names: Sequence[str], x: torch.Tensor,
                    tokens: torch.Tensor, grid: tuple[int, int], scores: torch.Tensor, size: tuple[int, int],
                    crf_fn: CRFFunction | None = None, class_of_name: ClassOfName = None,
                    crf_pool: Any = None) -> "SegmentationResult":
        """Everything after the forward: class selection, maps, CRF, closing, compositing, resize to ``size`` (W, H).

        ``scores`` are per class; ``class_emb`` and ``class_of_name`` as in :meth:`forward`; ``crf_pool`` runs the
        CRF calls of the image in parallel in its workers (the same labels).
        """
        return self.start_postprocess(model, class_emb, class_names, x, tokens, grid, scores, size, crf_fn=crf_fn,
                                      class_of_name=class_of_name, crf_pool=crf_pool)()

    @torch.inference_mode()
    def start_postprocess(self, model: Any, class_emb: torch.Tensor, class_names: Sequence[str], x: torch.Tensor,
                          tokens: torch.Tensor, grid: tuple[int, int], scores: torch.Tensor, size: tuple[int, int],
                          crf_fn: CRFFunction | None = None, class_of_name: ClassOfName = None,
                          crf_pool: Any = None) -> Callable[[], "SegmentationResult"]:
        """:meth:`postprocess` in two halves: this call selects the classes, computes their maps and submits their
        CRF calls to ``crf_pool`` (or runs them, without a pool); the function it returns waits for the masks and
        composes the result. Between the two, the caller may run the next image's forward."""
        p = self.params
        accepted, threshold = select_classes(scores, p.top_n, p.threshold_std, p.candidates, background=0)
        crf_image = rebuild_uint8(x[0], self.mean, self.std) if self.crf and accepted else None
        masks = simseg_masks(tokens, grid, model.patch_size, class_emb, accepted, scores, crf_image, p,
                             crf=self.crf, crf_fn=crf_fn, class_of_name=class_of_name, crf_pool=crf_pool)
        side = (grid[0] * model.patch_size, grid[1] * model.patch_size)
        score_arr = scores.detach().float().cpu().numpy()
        details = {"threshold": threshold, "accepted": [class_names[c] for c in accepted]}

        def finish() -> SegmentationResult:
            done = [(c, s, m.result() if isinstance(m, Future) else m) for c, s, m in masks]
            labels = composite_labels(done, side, label_dtype(len(class_names)))
            width, height = size
            labels = resize_labels(labels, height, width).astype(np.int32)
            return SegmentationResult(
                labels=labels,
                class_names=list(class_names),
                scores=score_arr,
                found=_found(labels, class_names, score_arr),
                protocol=self.info(),
                details=details,
            )

        return finish

    def start(self, model: Any, class_emb: torch.Tensor, class_names: Sequence[str], image: Image.Image,
              class_of_name: ClassOfName = None, crf_pool: Any = None) -> Callable[[], "SegmentationResult"]:
        """Preprocess, forward and :meth:`start_postprocess` of one image; the returned function completes it."""
        x = self.preprocess(image)
        tokens, grid, scores = self.forward(model, class_emb, x, class_of_name)
        return self.start_postprocess(model, class_emb, class_names, x, tokens, grid, scores, image.size,
                                      class_of_name=class_of_name, crf_pool=crf_pool)

    def __call__(self, model: Any, class_emb: torch.Tensor, class_names: Sequence[str],
                 image: Image.Image, class_of_name: ClassOfName = None) -> "SegmentationResult":
        """Segment one RGB PIL image; the label map has the image's size."""
        return self.start(model, class_emb, class_names, image, class_of_name)()


class DenseProtocol:
    """The sliding-window per-pixel protocol with fixed parameters; call it with a model, class embeddings and an
    image.

    Args:
        params: the protocol's parameters.
        mean, std: the normalisation of the model's input.
    """

    name = "dense"
    crf = False

    def __init__(self, params: DenseParams = DenseParams(), mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD):
        self.params = params
        self.mean, self.std = tuple(mean), tuple(std)

    @property
    def input_size(self) -> int:
        return self.params.crop_size

    def with_crf(self, crf: bool) -> "DenseProtocol":
        """The dense protocol has no CRF: the same protocol."""
        return self

    def start(self, model: Any, class_emb: torch.Tensor, class_names: Sequence[str], image: Image.Image,
              class_of_name: ClassOfName = None, crf_pool: Any = None) -> Callable[[], "SegmentationResult"]:
        """The whole of :meth:`__call__` (there is no CRF to wait for); the returned function gives the result."""
        result = self(model, class_emb, class_names, image, class_of_name)
        return lambda: result

    def info(self) -> dict[str, Any]:
        """The protocol's name, every parameter value, and how background is decided."""
        return {"name": self.name, **asdict(self.params), "crf": False,
                "background": "threshold" if self.params.bg_threshold is not None else "class"}

    @torch.inference_mode()
    def __call__(self, model: Any, class_emb: torch.Tensor, class_names: Sequence[str],
                 image: Image.Image, class_of_name: ClassOfName = None) -> "SegmentationResult":
        """Segment one RGB PIL image; the label map has the image's size.

        With ``class_of_name``, ``class_emb`` holds one row per name: the logit maps are per name until the
        per-pixel decision (see :func:`_dense_labels`), the image-level scores take each class's best name.
        """
        p = self.params
        width, height = image.size
        if max(width, height) * p.short_side > p.long_side * min(width, height):
            # the long side binds (MMSegmentation's keep_ratio rule): a strip never becomes millions of windows
            scale = p.long_side / max(width, height)
            size = (max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5)))
        else:
            size = short_side_size(width, height, p.short_side)  # short side, PIL bilinear
        x = resize_normalize(to_rgb(image), size, self.mean, self.std)
        _, h, w = x.shape
        crop, stride = p.crop_size, p.stride
        # pad to at least one window; padded pixels are cut off below
        ph, pw = max(h, crop), max(w, crop)
        if (ph, pw) != (h, w):
            x = F.pad(x, (0, pw - w, 0, ph - h))
        ys = _window_starts(ph, crop, stride)
        xs = _window_starts(pw, crop, stride)
        boxes = [(y, xx) for y in ys for xx in xs]
        emb = class_emb.float()
        num_classes = emb.shape[0]
        device = model.device
        logits = torch.zeros((num_classes, ph, pw), dtype=torch.float32, device=device)
        count = torch.zeros((1, ph, pw), dtype=torch.float32, device=device)
        all_tokens, window_pooled = [], []
        pooling = getattr(model, "pooling", "loda")
        for start in range(0, len(boxes), p.batch_size):
            chunk = boxes[start:start + p.batch_size]
            batch = torch.stack([x[:, y:y + crop, xx:xx + crop] for y, xx in chunk]).to(device)
            tokens, (gh, gw) = model.encode_image_tokens(batch)
            if pooling == "cls":  # needs [CLS]: a second forward (the cls pooling is an ablation, not the method)
                window_pooled.append(model.encode_image(batch))
            else:
                all_tokens.append(tokens.reshape(-1, tokens.shape[-1]))
            sim = F.normalize(tokens.float(), dim=-1) @ emb.T  # (B, N, C) cosine
            # contiguous (C, h, w) maps, as a segmentation head gives them: the transposed view would be channels-last,
            # whose bilinear upsampling runs a slower kernel and copies its output back (about 20x the time on a CPU)
            sim = sim.transpose(1, 2).contiguous().reshape(len(chunk), num_classes, gh, gw)
            for (y, xx), s in zip(chunk, sim):
                # one window at a time: a (batch, C, crop, crop) upsampled block would grow with batch x classes
                up = F.interpolate(s.unsqueeze(0), size=(crop, crop), mode="bilinear", align_corners=False)[0]
                logits[:, y:y + crop, xx:xx + crop] += up
                count[:, y:y + crop, xx:xx + crop] += 1
        # in place: the (C, H', W') map is the largest array of the protocol, and copies of it would triple it
        logits = logits.div_(count)[:, :h, :w].div_(model.temperature().float())
        pooled = _pool_windows(model, all_tokens, window_pooled)
        scores = per_class((pooled[0].unsqueeze(0) * emb).sum(dim=1), class_of_name).cpu().numpy()
        labels = _dense_labels(logits, height, width, p.bg_threshold, class_of_name=class_of_name)
        labels = labels.cpu().numpy().astype(np.int32)
        return SegmentationResult(
            labels=labels,
            class_names=list(class_names),
            scores=scores,
            found=_found(labels, class_names, scores),
            protocol=self.info(),
            details={"windows": len(boxes), "resized": [w, h]},
        )


def _pool_windows(model: Any, tokens: list[torch.Tensor], window_pooled: list[torch.Tensor]) -> torch.Tensor:
    """The image embedding of the dense protocol: the model's pooling over the patch tokens of all windows (with
    ``cls`` pooling, the mean of the windows' embeddings), L2-normalised."""
    from simseg.loda import l2_normalize, pool_tokens

    if window_pooled:
        return l2_normalize(torch.cat(window_pooled).mean(dim=0, keepdim=True))
    all_tokens = torch.cat(tokens).unsqueeze(0)
    return l2_normalize(pool_tokens(all_tokens, model.pooling, getattr(model, "image_topk", 5)))


def _window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Window offsets covering ``length`` (MMSegmentation's slide rule: the last window is flush with the end)."""
    n = max(length - crop + stride - 1, 0) // stride + 1
    return sorted({min(i * stride, length - crop) for i in range(n)})


def _dense_labels(logits: torch.Tensor, height: int, width: int, bg_threshold: float | None,
                  max_elements: int = 1 << 22, class_of_name: ClassOfName = None) -> torch.Tensor:
    """Labels from (C, h, w) logits: bilinear upsampling to (height, width) and softmax, in row strips.

    Strips keep memory bounded for any image size: a (C, H, W) float map of a large photo would not fit, and a strip
    of ``max_elements`` values (16 MB in float32) costs a few times that in temporaries. Each strip
    samples the logits with ``grid_sample`` at exactly the coordinates ``F.interpolate(bilinear,
    align_corners=False)`` uses.

    With ``class_of_name`` the logits are per name (N, h, w) and a pixel takes the class of its most probable name:
    the softmax runs over the names (the foreground ones under ``bg_threshold``, background being every name of
    class 0), and a class's probability is the maximum over its names.
    """
    num_classes, h, w = logits.shape
    src = logits.unsqueeze(0)
    cls = None if class_of_name is None else torch.as_tensor(class_of_name, dtype=torch.int64, device=logits.device)
    fg_cls = None if cls is None else cls[cls != 0]
    xs = (torch.arange(width, dtype=torch.float32, device=logits.device) + 0.5) / width * 2 - 1
    rows = max(1, max_elements // max(1, num_classes * width))
    out = torch.empty((height, width), dtype=torch.int64, device=logits.device)
    for y0 in range(0, height, rows):
        y1 = min(height, y0 + rows)
        ys = (torch.arange(y0, y1, dtype=torch.float32, device=logits.device) + 0.5) / height * 2 - 1
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1).unsqueeze(0)
        strip = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        if bg_threshold is None:
            idx = strip.max(dim=0).indices  # argmax's labels (first maximum; tested), a few times faster over dim 0
            out[y0:y1] = idx if cls is None else cls[idx]
        else:
            prob = (strip[1:] if cls is None else strip[cls != 0]).softmax(dim=0)
            best, idx = prob.max(dim=0)
            label = idx + 1 if fg_cls is None else fg_cls[idx]
            out[y0:y1] = torch.where(best < bg_threshold, torch.zeros_like(idx), label)
    return out


def make_protocol(name: str = DEFAULT_PROTOCOL, crf: bool = True, mean: Sequence[float] = IMAGENET_MEAN,
                  std: Sequence[float] = IMAGENET_STD, **params: Any) -> SimSegProtocol | DenseProtocol:
    """A protocol object by name with checked parameters (``crf`` applies to ``simseg`` only).

    Raises:
        ConfigError: unknown protocol or parameter, a bad value, or the CRF asked without pydensecrf2.
    """
    p = make_params(name, **params)
    if isinstance(p, SimSegParams):
        return SimSegProtocol(p, crf=crf, mean=mean, std=std)
    return DenseProtocol(p, mean=mean, std=std)


# ----------------------------------------------------------------------------------------------- segmenter
class Segmenter:
    """Segment images with a fixed class list; the class embeddings are computed (or read from cache) once.

    The model is only read: a segmenter never changes it, so several segmenters (of different protocols or input
    sizes) and a training loop may share one model.

    Args:
        model: a loaded :class:`simseg.model.SimSegModel`; modules in training mode (when it is handed over or
            later) are run as in eval mode (no dropout) and keep their mode.
        class_names: class list, a comma string or a sequence; ``background`` is index 0 (prepended when missing).
        protocol: ``"simseg"`` (the paper's) or ``"dense"``.
        crf: ``simseg`` protocol only: refine with the dense CRF (see :class:`SimSegProtocol`).
        templates: prompt templates, a set name (``"imagenet"``, ``"single"``) or None for the 80 ImageNet ones.
        cache_dir: class-embedding cache folder (default :func:`simseg.embeddings.default_cache_dir`).
        synonyms: optional names per class, one list for each entry of ``class_names`` as given (a class then
            scores as the maximum over its names, which replace its own name in the prompts); when ``background``
            is prepended, its one name is ``background``.
        progress: a progress bar while the class embeddings are encoded (none when they are cached).
        **params: protocol parameters (:class:`~simseg.protocols.SimSegParams` or
            :class:`~simseg.protocols.DenseParams` fields).

    Attributes:
        class_names: the classes, in label-index order (``background`` first); assigning a new class list encodes
            its embeddings.
        names: the names that are encoded (the class names, or the synonyms flattened in class order).
        class_of_name: the class index of each name; None when every class has one name.
        class_emb: one unit-norm embedding per entry of :attr:`names` (so per class without synonyms).

    Raises:
        ConfigError: unknown protocol or parameter, CRF asked without pydensecrf2, input size not a multiple of the
            patch size.
        InputError: invalid class list, or synonyms that do not match it.
    """

    def __init__(
        self,
        model: Any,
        class_names: str | Sequence[str],
        protocol: str = DEFAULT_PROTOCOL,
        crf: bool = True,
        templates: str | Sequence[str] | None = None,
        cache_dir: str | os.PathLike | None = None,
        synonyms: Sequence[Sequence[str]] | None = None,
        progress: bool = True,
        **params: Any,
    ):
        self.model = model
        parsed, names, class_of_name = _parse_classes(class_names, synonyms)
        self.protocol = make_protocol(protocol, crf=crf, mean=model.mean, std=model.std, **params)
        _check_patch_size(self.protocol, model)
        self.templates = resolve_templates(templates)
        self._cache_dir, self._progress = cache_dir, progress
        self._set_classes(parsed, names, class_of_name)

    def _set_classes(self, class_names: list[str], names: list[str], class_of_name: list[int] | None) -> None:
        emb = class_embeddings(self.model, names, self.templates, cache_dir=self._cache_dir, progress=self._progress)
        self._class_names, self.names, self.class_of_name, self.class_emb = class_names, names, class_of_name, emb

    @property
    def class_names(self) -> list[str]:
        """The classes, in label-index order (``background`` first); a copy. Setting a class list (a comma string
        or a sequence, as the constructor takes it) encodes its embeddings; each class then has its one name."""
        return list(self._class_names)

    @class_names.setter
    def class_names(self, class_names: str | Sequence[str]) -> None:
        self._set_classes(*_parse_classes(class_names, None))

    @property
    def model(self) -> Any:
        """The model (only read). Its forwards run on :func:`simseg.packed.packed_view` of it: the same parameters,
        the image tower's linear layers on packed weights, bit-identical outputs; in eval mode
        (:func:`simseg.model.eval_view`) whatever the model's own mode at the call. Assigning another model encodes
        the class embeddings with it (read from the cache when its text weights have them)."""
        return self._model

    @model.setter
    def model(self, model: Any) -> None:
        if hasattr(self, "protocol"):  # after construction (the constructor checks once it has made the protocol)
            _check_patch_size(self.protocol, model)
        self._model = model
        self._view = (None, model)  # (the modules' training flags it was made for, the model the forwards run on)
        if hasattr(self, "_class_names"):  # after construction: the embeddings are the text tower's
            self._set_classes(self._class_names, self.names, self.class_of_name)

    @property
    def _forward_model(self) -> Any:
        """The model the forwards run on: :func:`simseg.packed.packed_view` of :func:`simseg.model.eval_view` of the
        model, made again when the model's modes changed since (a training loop switching it between calls)."""
        modes = tuple(m.training for m in self._model.modules()) if isinstance(self._model, torch.nn.Module) else ()
        made_for, view = self._view
        if made_for != modes:
            view = packed_view(eval_view(self._model))
            self._view = (modes, view)
        return view

    @property
    def params(self) -> SimSegParams | DenseParams:
        """The protocol's parameters."""
        return self.protocol.params

    @property
    def crf(self) -> bool:
        """Whether the dense CRF runs (``simseg`` protocol only)."""
        return self.protocol.crf

    @crf.setter
    def crf(self, value: bool) -> None:
        self.protocol = self.protocol.with_crf(bool(value))  # a new protocol object: a shared one is never changed

    def protocol_info(self) -> dict:
        """The protocol's name, every parameter value, whether the CRF ran, and the prompt templates used."""
        return {**self.protocol.info(), "templates": templates_name(self.templates),
                "num_templates": len(self.templates)}

    # ------------------------------------------------------------------ the simseg protocol in two timed halves
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """``simseg`` protocol: the (1, 3, S, S) network input of an image."""
        return self.protocol.preprocess(image)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor]:
        """``simseg`` protocol: patch tokens (N, D), grid (gh, gw) and image-level scores (C,) of a batch of one."""
        return self.protocol.forward(self._forward_model, self.class_emb, x, self.class_of_name)

    def postprocess(self, x: torch.Tensor, tokens: torch.Tensor, grid: tuple[int, int], scores: torch.Tensor,
                    size: tuple[int, int], crf_fn: CRFFunction | None = None) -> SegmentationResult:
        """``simseg`` protocol: everything after the forward, to a label map of ``size`` (W, H)."""
        return self.protocol.postprocess(self._forward_model, self.class_emb, self.class_names, x, tokens, grid,
                                         scores, size, crf_fn=crf_fn, class_of_name=self.class_of_name)

    def __call__(self, image: Image.Image) -> SegmentationResult:
        """Segment one PIL image; the label map has the image's size. A mode other than RGB is converted as
        :func:`simseg.images.load_image` converts a file (16-bit grey scaled, transparency on white)."""
        return self.protocol(self._forward_model, self.class_emb, self.class_names, image, self.class_of_name)

    def segment_many(self, images: Iterable[Image.Image | SimSegError], crf_workers: int = 0, lanes: int = 1,
                     return_exceptions: bool = False,
                     crf_pool: Any = None) -> Iterator[SegmentationResult | SimSegError]:
        """Segment images in their order, overlapping the work of consecutive images: the same labels as calling
        the segmenter on each image (every image is computed alone, with the same operations).

        Args:
            images: RGB PIL images; any iterable, read one at a time as the pipeline needs them (a generator that
                loads files keeps only the images in flight in memory). An item that is a
                :class:`~simseg.errors.SimSegError` (a file that could not be read) passes through in its place.
            crf_workers: run the dense-CRF calls in that many worker processes (:class:`simseg.crf.CRFPool`): the
                calls of one image in parallel, and the next image's forward while they run. 0: in this process.
            lanes: images whose preprocessing, forward and post-processing run concurrently, in threads of this
                process (torch's kernels release the interpreter). On a CPU, use ``lanes`` = cores with
                ``torch.set_num_threads(1)``: each lane then keeps one core busy, and lanes and CRF workers together
                fill every core (several multi-threaded lanes would make their thread teams compete).
            return_exceptions: a :class:`~simseg.errors.SimSegError` raised for one image is yielded in its place
                instead of ending the iteration.
            crf_pool: a running :class:`simseg.crf.CRFPool` to use instead of starting ``crf_workers`` new ones
                (several calls, e.g. one per benchmark, then share its workers; the caller closes it).

        Yields:
            One :class:`SegmentationResult` per image, in order (or the image's error, see ``return_exceptions``).
        """
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        lanes = max(1, int(lanes))
        pool = crf_pool if self.crf else None
        own_pool = pool is None and crf_workers > 0 and self.crf
        if own_pool:
            from simseg.crf import CRFPool

            pool = CRFPool(int(crf_workers)).start()
        threads = ThreadPoolExecutor(lanes, thread_name_prefix="simseg-lane") if lanes > 1 else None
        ahead = lanes if threads is not None else (1 if pool is not None else 0)  # images started beyond the oldest
        pending: deque = deque()

        def start(image: Image.Image) -> Callable[[], SegmentationResult]:
            return self.protocol.start(self._forward_model, self.class_emb, self.class_names, image, self.class_of_name,
                                       crf_pool=pool)

        def started(image: Image.Image | SimSegError) -> Any:
            if isinstance(image, SimSegError):
                return image
            if threads is not None:
                return threads.submit(start, image)
            try:
                return start(image)
            except SimSegError as e:  # raised (or yielded) in the image's turn, after the images before it
                return e

        def finish(item: Any) -> SegmentationResult | SimSegError:
            try:
                done = item.result() if isinstance(item, Future) else item
                if isinstance(done, BaseException):
                    raise done
                return done()
            except SimSegError as e:
                if return_exceptions:
                    return e
                raise

        try:
            for image in images:
                pending.append(started(image))
                while len(pending) > ahead:
                    yield finish(pending.popleft())
            while pending:
                yield finish(pending.popleft())
        finally:
            if threads is not None:
                threads.shutdown(wait=True, cancel_futures=True)
            if own_pool:
                pool.close()


def _parse_classes(class_names: str | Sequence[str], synonyms: Sequence[Sequence[str]] | None,
                   ) -> tuple[list[str], list[str], list[int] | None]:
    """A class list as :class:`Segmenter` takes it (a comma string or a sequence): the parsed classes, the names to
    encode and the class of each name (see :func:`_query_names`)."""
    given = class_names.split(",") if isinstance(class_names, str) else list(class_names)
    parsed = parse_class_list(given)
    return (parsed, *_query_names(parsed, len(given), synonyms))


def _check_patch_size(protocol: Any, model: Any) -> None:
    """The protocol's network input must be a whole number of the model's patches."""
    if protocol.input_size % model.patch_size:
        name = "input_size" if protocol.name == "simseg" else "crop_size"
        raise ConfigError(f"protocol parameter {name}: {protocol.input_size} is not a multiple of the model's patch "
                          f"size {model.patch_size}")


def _query_names(class_names: list[str], num_given: int,
                 synonyms: Sequence[Sequence[str]] | None) -> tuple[list[str], list[int] | None]:
    """The names to encode for ``class_names`` and the class of each (None when each class keeps one name)."""
    if synonyms is None:
        return list(class_names), None
    groups = [[str(n).strip() for n in group] for group in synonyms]
    if len(groups) != num_given:
        raise InputError(f"synonyms: {len(groups)} lists of names for {num_given} classes (one list per class)")
    if len(class_names) == num_given + 1:  # background was prepended to the classes: it keeps its own name
        groups = [[class_names[0]]] + groups
    for index, group in enumerate(groups):
        if not group or not all(group):
            raise InputError(f"synonyms: class {class_names[index]!r} has an empty name list or an empty name")
    names, class_of_name = flatten_synonyms(groups)
    return names, (None if len(names) == len(class_names) else class_of_name)


def segment(
    model: Any,
    image: Image.Image | str | os.PathLike | Sequence[Image.Image | str | os.PathLike],
    classes: str | Sequence[str],
    protocol: str = DEFAULT_PROTOCOL,
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
