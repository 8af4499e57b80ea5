"""Shared fixtures: a WordPiece vocabulary trained here and a tiny random model. Nothing is downloaded."""

from __future__ import annotations

import pytest
import torch

CORPUS = [
    "a photo of a cat.", "a photo of a dog on the grass.", "a red circle next to a blue star.",
    "there is a green square and a yellow triangle.", "a bad photo of the {}.", "a cropped photo of a {}.",
    "a person riding a horse", "a car and a bus on the road", "a bird on a tree near the water",
    "background aeroplane bicycle bird boat bottle bus car cat chair cow table dog horse motorbike person plant sheep "
    "sofa train monitor grass sky purple orange cyan magenta white black", "an origami {}.", "the toy {}.",
]


@pytest.fixture(scope="session")
def vocab_dir(tmp_path_factory):
    from simseg.tokenizer import train_wordpiece_vocab

    texts = list(CORPUS)
    try:
        from simseg.classnames import IMAGENET_TEMPLATES

        texts += list(IMAGENET_TEMPLATES)
    except ImportError:
        pass
    return train_wordpiece_vocab(texts * 3, tmp_path_factory.mktemp("vocab"), vocab_size=400)


@pytest.fixture(scope="session")
def tiny_model(vocab_dir):
    import simseg

    torch.manual_seed(0)
    return simseg.load_model("tiny", tokenizer=vocab_dir)


@pytest.fixture(scope="session")
def onnx_checkpoint(tiny_model, tmp_path_factory):
    """A checkpoint folder of the tiny model with its ONNX export (image graphs at 288 and 64) in ``onnx/``, made by
    ``simseg export``. Skipped without the ONNX packages."""
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name, reason=f"the ONNX tests need {name} (pip install 'simseg[onnx]')")
    from simseg.app.cli import main
    from simseg.checkpoint import save_model

    ck = save_model(tiny_model, tmp_path_factory.mktemp("onnx") / "ck")
    assert main(["export", str(ck), str(ck / "onnx"), "--image-size", "288", "--image-size", "64"]) == 0
    return ck
