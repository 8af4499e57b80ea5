"""Image transforms and caption augmentation (the paper's training recipe and evaluation protocols).

Training images: ``RandomResizedCrop(224, scale=(0.6, 1.0))`` -> ``AutoAugment`` (ImageNet policy, geometric ops
filling with grey (128, 128, 128) as the original's own ImageNetPolicy) -> ``ToTensor`` -> ``Normalize`` (ImageNet mean
/ std). Evaluation images: a square resize to 288 for segmentation; a square resize to 324 then a centre crop of 288
for retrieval (the original's ``resize`` is ``Resize((size, size))``: the image is squashed), a short-side resize
being the option. Captions: each word piece is masked, replaced or dropped with probability 0.2.

The torchvision transforms draw their randomness from torch's global generator; :mod:`simseg.data` seeds that
generator per sample (inside ``torch.random.fork_rng``) so that a resumed run sees the same crops as an uninterrupted
one. Caption augmentation takes an explicit ``random.Random`` for the same reason.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Literal

#: ImageNet normalisation constants, also used by the released checkpoints.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Fill colour of AutoAugment's geometric ops (rotate, shear, translate): the original's ImageNetPolicy fills with grey;
#: torchvision's AutoAugment fills with black unless told.
AUTOAUGMENT_FILL: tuple[int, int, int] = (128, 128, 128)

#: Resize modes of the centre-crop evaluation transform: ``square`` = ``Resize((s, s))`` (aspect ratio not kept, the
#: original's retrieval transform), ``short`` = ``Resize(s)`` on the short side (aspect ratio kept).
RESIZE_MODES = ("square", "short")

#: Probability split of an augmented word piece: [MASK] half of the time, a random token a tenth, dropped otherwise.
MASK_SHARE = 0.5
RANDOM_SHARE = 0.1


def train_transform(
    size: int = 224,
    scale: tuple[float, float] = (0.6, 1.0),
    autoaugment: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable[[Any], Any]:
    """The training transform of the paper: random resized crop, AutoAugment, tensor, normalisation.

    Args:
        size: output side in pixels (square crop).
        scale: range of the crop's area relative to the image, as torchvision's ``RandomResizedCrop``.
        autoaugment: apply ``AutoAugment`` with the ImageNet policy after the crop (switch off for ablations); its
            geometric ops fill the uncovered area with :data:`AUTOAUGMENT_FILL` (grey), as the original.
        mean: per-channel normalisation mean.
        std: per-channel normalisation standard deviation.

    Returns:
        A callable mapping an RGB PIL image to a float tensor (3, size, size).
    """
    from torchvision import transforms as T

    steps: list[Callable[[Any], Any]] = [T.RandomResizedCrop(size, scale=tuple(scale))]
    if autoaugment:
        steps.append(T.AutoAugment(T.AutoAugmentPolicy.IMAGENET, fill=list(AUTOAUGMENT_FILL)))
    steps += [T.ToTensor(), T.Normalize(tuple(mean), tuple(std))]
    return T.Compose(steps)


def eval_transform(
    size: int = 288,
    mode: Literal["square", "center_crop"] = "square",
    resize: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    resize_mode: Literal["square", "short"] = "square",
) -> Callable[[Any], Any]:
    """A deterministic evaluation transform.

    Args:
        size: output side in pixels.
        mode: ``"square"``: ``Resize((size, size))``, the segmentation protocol (aspect ratio not kept);
            ``"center_crop"``: a resize to ``resize`` (see ``resize_mode``) then ``CenterCrop(size)``, the retrieval
            protocol (resize=324, size=288).
        resize: side before the centre crop (``"center_crop"`` only); defaults to ``size``.
        mean: per-channel normalisation mean.
        std: per-channel normalisation standard deviation.
        resize_mode: ``"center_crop"`` only: ``"square"`` resizes to ``(resize, resize)`` (the original's retrieval
            transform: the image is squashed), ``"short"`` resizes the short side to ``resize``, keeping the aspect
            ratio.

    Returns:
        A callable mapping an RGB PIL image to a float tensor (3, size, size).

    Raises:
        ValueError: ``mode`` or ``resize_mode`` is not one of those above.
    """
    from torchvision import transforms as T

    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"eval_transform: resize_mode must be one of {', '.join(RESIZE_MODES)}, got {resize_mode!r}")
    if mode == "square":
        geometry: list[Callable[[Any], Any]] = [T.Resize((size, size))]
    elif mode == "center_crop":
        side = resize or size
        geometry = [T.Resize((side, side) if resize_mode == "square" else side), T.CenterCrop(size)]
    else:
        raise ValueError(f"eval_transform: mode must be 'square' or 'center_crop', got {mode!r}")
    return T.Compose([*geometry, T.ToTensor(), T.Normalize(tuple(mean), tuple(std))])


def short_side_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(height, width) of torchvision's ``Resize(side)`` of a ``width`` x ``height`` image: the short side becomes
    ``side``, the long side ``int(side * long / short)`` (truncated, as torchvision)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(side * long / short)
    return (new_long, side) if width <= height else (side, new_long)


def resize_normalize(image: Any, size: tuple[int, int], mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD) -> Any:
    """torchvision's ``Resize(size)`` (PIL bilinear) -> ``ToTensor`` -> ``Normalize`` of an RGB PIL image, with PIL
    and torch alone: the same float32 values (tested against torchvision), without importing torchvision, whose
    import costs about a second at the start of ``simseg segment``.

    Args:
        image: an RGB PIL image.
        size: the output (height, width).

    Returns:
        A float tensor (3, height, width) in the default dtype.
    """
    import numpy as np
    import torch
    from PIL import Image

    height, width = int(size[0]), int(size[1])
    if image.mode != "RGB":
        raise ValueError(f"resize_normalize: an RGB image is needed, got mode {image.mode!r}")
    resized = image.resize((width, height), Image.BILINEAR)
    x = torch.from_numpy(np.array(resized, np.uint8, copy=True)).view(height, width, 3).permute(2, 0, 1).contiguous()
    x = x.to(dtype=torch.get_default_dtype()).div(255)
    m = torch.as_tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return x.sub_(m).div_(s)


def _is_special(token: str) -> bool:
    # BERT's specials ([PAD], [CLS], [SEP], [MASK], [UNK]) and its [unusedN] placeholders are all bracketed;
    # none of them is a word a caption could contain.
    return token.startswith("[") and token.endswith("]")


def _random_token(vocab: Sequence[str], rng: random.Random) -> str | None:
    """A uniformly random non-special vocabulary entry (rejection sampling: specials are a tiny share)."""
    for _ in range(100):
        token = vocab[rng.randrange(len(vocab))]
        if not _is_special(token):
            return token
    return None  # a vocabulary of (almost) only specials: the caller drops the piece instead


def augment_caption(text: str, tokenizer: Any, rng: random.Random, prob: float = 0.2) -> str:
    """Mask, replace or drop word pieces of a caption, as the paper's training recipe.

    Each word piece independently, with probability ``prob``: becomes the tokenizer's mask token (half of those
    cases), becomes a random non-special vocabulary token (a tenth), or is dropped (the remaining 0.4). The pieces are
    joined back into a string, which the model re-tokenises. As in the original (``process_caption`` of SimSeg's
    ``datasets/clip/utils.py``), a continuation piece (``##...``) left with no word before it, at the start or right
    after a mask, is dropped rather than glued to the mask; other continuation pieces join the word before them.
    Two deliberate differences: random replacements never draw special tokens (the original could insert ``[PAD]``
    or ``[CLS]``), and a word is never cut after its third piece (the original glues at most two continuations).

    Args:
        text: the caption.
        tokenizer: an object with ``wordpieces(text) -> list[str]``, ``join_wordpieces(pieces) -> str``, ``vocab``
            (list of tokens, index = id) and ``mask_token`` (see :mod:`simseg.tokenizer`).
        rng: the random generator (seeded per sample by the data loader, so resumed runs repeat the same edits).
        prob: probability that a piece is altered; 0 returns the caption unchanged.

    Returns:
        The augmented caption, or the original one when every piece was dropped.
    """
    if prob <= 0:
        return text
    mask = tokenizer.mask_token
    edited: list[str] = []
    for piece in tokenizer.wordpieces(text):
        if rng.random() >= prob:
            edited.append(piece)
            continue
        action = rng.random()
        if action < MASK_SHARE:
            edited.append(mask)
        elif action < MASK_SHARE + RANDOM_SHARE:
            token = _random_token(tokenizer.vocab, rng)
            if token is not None:
                edited.append(token)
        # else: dropped
    out: list[str] = []
    for piece in edited:
        if piece.startswith("##") and (not out or out[-1] == mask):
            continue  # an orphaned continuation would re-tokenise as "#", "#", ... or glue onto [MASK]
        out.append(piece)
    if not out:
        return text
    return tokenizer.join_wordpieces(out)


class CaptionAugmenter:
    """``augment_caption`` bound to a tokenizer and a probability, as a picklable ``caption_fn(text, rng)``.

    A lambda would do in one process, but data-loader workers started with ``spawn`` need to pickle it.
    """

    def __init__(self, tokenizer: Any, prob: float = 0.2) -> None:
        self.tokenizer = tokenizer
        self.prob = prob

    def __call__(self, text: str, rng: random.Random) -> str:
        return augment_caption(text, self.tokenizer, rng, self.prob)
