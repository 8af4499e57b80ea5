"""Training/evaluation transforms and caption augmentation (the paper's recipe)."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision import transforms as T

from simseg.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CaptionAugmenter,
    augment_caption,
    eval_transform,
    resize_normalize,
    short_side_size,
    train_transform,
)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]"]


class FakeTokenizer:
    """The four members augment_caption relies on: whitespace 'word pieces', a small vocabulary."""

    mask_token = "[MASK]"

    def __init__(self) -> None:
        self.vocab = SPECIALS + [f"v{i}" for i in range(200)]

    def wordpieces(self, text: str) -> list[str]:
        return text.split()

    def join_wordpieces(self, pieces: list[str]) -> str:
        return " ".join(pieces).replace(" ##", "")


def _image(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_train_transform_shape_and_seeded_randomness():
    tf = train_transform(size=32)
    img = _image()
    torch.manual_seed(0)
    a = tf(img)
    torch.manual_seed(0)
    b = tf(img)
    torch.manual_seed(1)
    c = tf(img)
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)  # all randomness comes from torch's generator (the loader seeds it per sample)
    assert not torch.equal(a, c)


def test_train_transform_switches():
    names = [type(t).__name__ for t in train_transform(autoaugment=False).transforms]
    assert names == ["RandomResizedCrop", "ToTensor", "Normalize"]
    steps = train_transform().transforms
    assert [type(t).__name__ for t in steps] == ["RandomResizedCrop", "AutoAugment", "ToTensor", "Normalize"]
    assert steps[0].size == (224, 224) and steps[0].scale == (0.6, 1.0)
    assert steps[1].policy == T.AutoAugmentPolicy.IMAGENET
    assert list(steps[1].fill) == [128, 128, 128]


def test_autoaugment_fills_with_the_originals_grey():
    """On a uniform (128, 128, 128) image the grey fill is invisible: every op of the policy keeps the image uniform.
    torchvision's default black fill shows up in the corners of rotated, sheared or translated images."""
    ours = train_transform(size=32, scale=(1.0, 1.0)).transforms[1]
    black = T.AutoAugment(T.AutoAugmentPolicy.IMAGENET)
    grey = Image.new("RGB", (32, 32), (128, 128, 128))
    black_marks = 0
    for seed in range(60):
        torch.manual_seed(seed)
        out = np.asarray(ours(grey))
        assert (out == out[0, 0]).all(), seed  # uniform: no black (or any other) fill anywhere
        torch.manual_seed(seed)
        black_marks += int((np.asarray(black(grey)) == 0).all(axis=-1).any())
    assert black_marks > 0  # the same draws with a black fill do paint black pixels


def test_normalisation_uses_imagenet_constants():
    colour = tuple(round(m * 255) for m in IMAGENET_MEAN)
    img = Image.new("RGB", (40, 30), colour)
    out = eval_transform(16)(img)
    assert out.abs().max() < 0.5 / 255 / min(IMAGENET_STD)


def test_eval_transform_modes():
    img = _image(64, 40)
    square = eval_transform(32, mode="square")(img)
    assert square.shape == (3, 32, 32)
    # "square" ignores the aspect ratio, exactly as torchvision Resize((s, s)) (the segmentation protocol).
    expected = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(T.ToTensor()(T.Resize((32, 32))(img)))
    assert torch.equal(square, expected)
    # "center_crop": the original's retrieval transform squashes the image to (36, 36) before the crop ...
    crop = eval_transform(32, mode="center_crop", resize=36)(img)
    expected = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(T.ToTensor()(T.CenterCrop(32)(T.Resize((36, 36))(img))))
    assert torch.equal(crop, expected)
    # ... and the short-side variant keeps the aspect ratio
    short = eval_transform(32, mode="center_crop", resize=36, resize_mode="short")(img)
    expected = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(T.ToTensor()(T.CenterCrop(32)(T.Resize(36)(img))))
    assert torch.equal(short, expected) and not torch.equal(short, crop)
    with pytest.raises(ValueError, match="resize_mode"):
        eval_transform(32, mode="center_crop", resize_mode="long")
    with pytest.raises(ValueError, match="mode"):
        eval_transform(32, mode="letterbox")


def test_augment_caption_proportions():
    tok = FakeTokenizer()
    n = 20000
    words = [f"w{i}" for i in range(n)]  # none of them is in the vocabulary, so every edit is visible
    out = augment_caption(" ".join(words), tok, random.Random(0), prob=0.2).split()
    kept = sum(1 for t in out if t.startswith("w"))
    masked = out.count("[MASK]")
    replaced = sum(1 for t in out if t.startswith("v"))
    dropped = n - len(out)
    # Expected shares 0.8 / 0.1 / 0.02 / 0.08; tolerances are ~5 binomial standard deviations.
    assert abs(kept / n - 0.8) < 0.015
    assert abs(masked / n - 0.1) < 0.011
    assert abs(replaced / n - 0.02) < 0.005
    assert abs(dropped / n - 0.08) < 0.01
    assert kept + masked + replaced == len(out)  # random replacements are never special tokens
    present = set(out)
    assert [t for t in out if t.startswith("w")] == [w for w in words if w in present]  # order kept


def test_augment_caption_deterministic_and_edge_cases():
    tok = FakeTokenizer()
    text = "a photo of a small dog on the grass"
    a = augment_caption(text, tok, random.Random(5), prob=0.5)
    assert a == augment_caption(text, tok, random.Random(5), prob=0.5)
    assert augment_caption(text, tok, random.Random(5), prob=0.0) == text
    # A one-piece caption whose piece is dropped keeps the original caption rather than becoming empty.
    results = {augment_caption("dog", tok, random.Random(s), prob=1.0) for s in range(50)}
    assert "dog" in results and "" not in results
    assert results <= {"dog", "[MASK]"} | set(tok.vocab[len(SPECIALS):])


def test_orphaned_continuation_pieces_are_dropped():
    class Pieces(FakeTokenizer):
        def wordpieces(self, text: str) -> list[str]:
            return ["dog", "##gy", "##s", "run"]

    tok = Pieces()
    outs = {augment_caption("doggys run", tok, random.Random(s), prob=0.5) for s in range(300)}
    assert "doggys run" in outs and "[MASK] run" in outs  # "##gy ##s" after a mask are dropped with it
    assert "dogs run" in outs  # a middle piece dropped: the next one still joins its word
    assert not any("##" in o for o in outs)


def test_caption_augmenter_is_picklable():
    aug = pickle.loads(pickle.dumps(CaptionAugmenter(FakeTokenizer(), prob=0.3)))
    text = "one two three four five six"
    assert aug(text, random.Random(1)) == augment_caption(text, FakeTokenizer(), random.Random(1), 0.3)


def test_augmented_caption_retokenises_with_the_real_tokenizer(vocab_dir):
    from simseg.tokenizer import load_tokenizer

    tok = load_tokenizer(vocab_dir)
    text = "a photo of a dog on the grass."
    outs = [augment_caption(text, tok, random.Random(s), prob=0.5) for s in range(20)]
    assert any("[MASK]" in o for o in outs)
    for out in outs:
        ids = tok([out], padding="longest")["input_ids"][0].tolist()
        # [MASK] comes back as the mask id (not split into "[", "mask", "]"), and no other special appears inside.
        assert ids.count(tok.mask_id) == out.count("[MASK]")
        assert tok.unk_id not in ids and tok.pad_id not in ids and tok.cls_id not in ids[1:]


@settings(max_examples=40, deadline=None)
@given(width=st.integers(1, 90), height=st.integers(1, 90), out_h=st.integers(1, 70), out_w=st.integers(1, 70),
       side=st.integers(1, 70), seed=st.integers(0, 2**31 - 1))
def test_resize_normalize_equals_torchvisions_pipeline(width, height, out_h, out_w, side, seed):
    """The segmentation protocols' preprocessing without torchvision gives torchvision's values exactly."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    mean, std = (0.3, 0.5, 0.7), (0.2, 0.25, 0.3)
    square = T.Compose([T.Resize((out_h, out_w)), T.ToTensor(), T.Normalize(mean, std)])(image)
    assert torch.equal(resize_normalize(image, (out_h, out_w), mean, std), square)
    short = T.Compose([T.Resize(side), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(image)
    size = short_side_size(width, height, side)
    assert short.shape[1:] == size
    assert torch.equal(resize_normalize(image, size), short)


def test_resize_normalize_refuses_a_non_rgb_image():
    with pytest.raises(ValueError, match="RGB"):
        resize_normalize(Image.new("L", (8, 8)), (4, 4))
