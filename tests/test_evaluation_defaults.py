"""Evaluation defaults a checkpoint records (``meta.evaluation``): written, read back, validated; none for the
released checkpoints."""

from __future__ import annotations

import pytest
import torch

from simseg.checkpoint import evaluation_defaults, record_evaluation_defaults, save_model
from simseg.errors import CheckpointError

DEMO_LIKE = {"input_size": 64, "protocol": "dense",
             "protocols": {"simseg": {"input_size": 64},
                           "dense": {"short_side": 64, "crop_size": 64, "stride": 64, "bg_threshold": 0.99}},
             "retrieval": {"resize_size": 64, "crop_size": 64}, "classes": "red, green"}


def test_saved_with_the_model_and_read_back(tmp_path, tiny_model):
    ckpt = save_model(tiny_model, tmp_path / "ck", meta={"evaluation": DEMO_LIKE, "step": 3})
    assert evaluation_defaults(ckpt) == DEMO_LIKE
    plain = save_model(tiny_model, tmp_path / "plain", meta={"step": 3})
    assert evaluation_defaults(plain) == {}


def test_recorded_into_an_existing_checkpoint_without_touching_the_weights(tmp_path, tiny_model):
    import simseg

    ckpt = save_model(tiny_model, tmp_path / "ck", meta={"step": 7})
    weights = (ckpt / "model.safetensors").read_bytes()
    record_evaluation_defaults(ckpt, DEMO_LIKE)
    assert (ckpt / "model.safetensors").read_bytes() == weights
    assert evaluation_defaults(ckpt) == DEMO_LIKE
    assert simseg.load_model(ckpt).weights_hash == tiny_model.weights_hash  # the recorded hash still matches
    from omegaconf import OmegaConf

    assert OmegaConf.load(ckpt / "config.yaml").meta.step == 7  # the rest of the metadata is kept


def test_released_checkpoints_and_presets_record_nothing(tmp_path, tiny_model):
    from tests.test_checkpoint import _to_original_layout

    torch.save(_to_original_layout(tiny_model), tmp_path / "simseg.vit-s.pth")
    assert evaluation_defaults(tmp_path / "simseg.vit-s.pth") == {}
    assert evaluation_defaults("simseg-vit-s16") == {}
    assert evaluation_defaults(tmp_path / "not-there") == {}


@pytest.mark.parametrize(("evaluation", "message"), [
    ({"protocol": "magic"}, "meta.evaluation.protocol: 'magic' is not one of simseg, dense"),
    ({"protocols": {"dense": {"crop": 64}}}, "meta.evaluation.protocols.dense: unknown parameter(s) crop"),
    ({"protocols": {"simseg": {"input_size": "big"}}}, "input_size: expected a number"),
    ({"retrieval": {"crop_size": 0}}, "meta.evaluation.retrieval.crop_size: expected a positive integer"),
    ({"colour": "red"}, "unknown key(s) colour"),
    ("dense", "expected a mapping"),
])
def test_invalid_recorded_defaults_are_one_line_errors_naming_the_key(tmp_path, tiny_model, evaluation, message):
    with pytest.raises(CheckpointError) as info:
        save_model(tiny_model, tmp_path / "ck", meta={"evaluation": evaluation})
    assert message in str(info.value) and "\n" not in str(info.value)
    # a hand-edited config.yaml is caught when read, naming the file
    ckpt = save_model(tiny_model, tmp_path / "ok")
    text = (ckpt / "config.yaml").read_text()
    (ckpt / "config.yaml").write_text(text.replace("meta: {}", "meta:\n  evaluation:\n    protocol: magic"))
    with pytest.raises(CheckpointError, match=r"config.yaml: meta.evaluation.protocol"):
        evaluation_defaults(ckpt)
