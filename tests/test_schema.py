"""The config schema: every preset is valid; each kind of bad value is one line naming the key, the value and what
is allowed, whether it comes from an override, a YAML file or a checkpoint's own config."""

import pytest
import yaml

from simseg.config import load_config, preset_names, to_dict
from simseg.errors import CheckpointError, ConfigError
from simseg.schema import patch_size, validate_config


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_is_valid(name):
    validate_config(to_dict(load_config(name)))


BAD = [
    ("train.lr=-1", "train.lr: -1 is not allowed (must be > 0)"),
    ("train.lr=0", "train.lr: 0 is not allowed (must be > 0)"),
    ("train.steps=0", "train.steps: 0 is not allowed (must be >= 1)"),
    ("train.steps=2.5", "train.steps: 2.5 is not allowed (must be an integer)"),
    ("train.batch_size=0", "train.batch_size: 0 is not allowed (must be >= 1)"),
    ("train.batch_size=abc", "train.batch_size: 'abc' is not allowed (must be an integer)"),
    ("train.chunk_size=-1", "train.chunk_size: -1 is not allowed (must be >= 0)"),
    ("train.betas=[0.9]", "train.betas: [0.9] is not allowed (must be a list of 2 values)"),
    ("train.betas=[0.9,1.0]", "train.betas[1]: 1.0 is not allowed (must be < 1)"),
    ("train.warmup=1.5", "train.warmup: 1.5 is not allowed (must be <= 1)"),
    ("train.precision=fp8", "train.precision: 'fp8' is not allowed (one of: auto, fp32, fp16, bf16)"),
    ("train.device=gpu", "train.device: 'gpu' is not allowed (one of: auto, cpu, cuda or cuda:N)"),
    ("train.schedule=linear", "train.schedule: 'linear' is not allowed (one of: cosine, constant)"),
    ("model.train_pooling=mean", "model.train_pooling: 'mean' is not allowed (one of: masked, vanilla)"),
    ("model.dropout=1.5", "model.dropout: 1.5 is not allowed (must be <= 1)"),
    ("train.decay_exclude_1d=2", "train.decay_exclude_1d: 2 is not allowed (must be true or false)"),
    ("data.shuffle=sometimes", "data.shuffle: 'sometimes' is not allowed (must be true or false)"),
    ("train.wandb=maybe", "train.wandb: 'maybe' is not allowed (must be true or false)"),
    ("train.seed=null", "train.seed: a value is required (got null)"),
    ("train.seed=18446744073709551616", "train.seed: 18446744073709551616 is not allowed (must be <= 4294967295)"),
    ("model.pooling=max", "model.pooling: 'max' is not allowed (one of: loda, avg, cls)"),
    ("model.embed_dim=0", "model.embed_dim: 0 is not allowed (must be >= 1)"),
    ("model.image_topk=0", "model.image_topk: 0 is not allowed (must be >= 1)"),
    ("model.temperature_init=0.9", "model.temperature_init: 0.9 is not allowed (must lie in"),
    ("model.vision.img_size=200", "model.vision.img_size: 200 is not allowed (must be a multiple of the patch size 16"),
    ("data.image_size=8", "data.image_size: 8 is not allowed (must be a multiple of the patch size 16"),
    ("data.caption_augment_prob=2", "data.caption_augment_prob: 2 is not allowed (must be <= 1)"),
    ("data.crop_scale=[0.6]", "data.crop_scale: [0.6] is not allowed (must be a list of 2 values)"),
    ("data.num_workers=-2", "data.num_workers: -2 is not allowed (must be >= 0)"),
    ("data.train=[{type: foo}]", "data.train[0].type: 'foo' is not allowed (one of: csv, tsv, parquet, webdataset)"),
    ("data.train=[{type: csv, path: a.csv, weight: 0}]", "data.train[0].weight: 0 is not allowed (must be > 0)"),
    ("data.train=[{path: a.csv}]", "data.train[0].type: missing (required)"),
    ("data.train=5", "data.train: 5 is not allowed (must be a list)"),
    ("train.lr=.inf", "train.lr: inf is not allowed (must be a finite number)"),
    ("train.weight_decay=.nan", "train.weight_decay: nan is not allowed (must be a finite number)"),
    ("data.crop_scale=[0.9,0.5]", "data.crop_scale: [0.9, 0.5] is not allowed (must be [min, max] with min <= max)"),
    ("train.lr=${nope}", "cannot resolve the config: train.lr: Interpolation key 'nope' not found"),
]


@pytest.mark.parametrize("override,message", BAD)
def test_bad_values_name_key_value_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError) as info:
        load_config("tiny", [override])
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text


def test_yaml_files_are_checked_as_overrides_are(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("base: tiny\ntrain:\n  lr: -0.5\n")
    with pytest.raises(ConfigError, match=r"train.lr: -0.5 is not allowed \(must be > 0\)"):
        load_config(path)
    full = to_dict(load_config("tiny"))
    full["train"]["surprise"] = 1
    path.write_text(yaml.safe_dump(full))
    with pytest.raises(ConfigError, match=r"train.surprise: unknown config key"):
        load_config(path)


def test_a_checkpoints_own_config_is_checked(tmp_path, tiny_model):
    import simseg
    from simseg.checkpoint import save_model

    ck = save_model(tiny_model, tmp_path / "ck")
    doc = yaml.safe_load((ck / "config.yaml").read_text())
    doc["model"]["pooling"] = "median"
    (ck / "config.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(CheckpointError) as info:
        simseg.load_model(ck)
    assert "config.yaml: model.pooling: 'median' is not allowed (one of: loda, avg, cls)" in str(info.value)


def test_patch_size_from_kwargs_or_name():
    assert patch_size({"name": "vit_small_patch16_224"}) == 16
    assert patch_size({"name": "vit_small_patch16_224", "kwargs": {"patch_size": 8}}) == 8
    assert patch_size({"name": "some_vit"}) is None


def test_an_override_may_interpolate_the_whole_config(monkeypatch):
    monkeypatch.setenv("SIMSEG_TEST_ROOT", "/data/runs")
    cfg = to_dict(load_config("tiny", ["train.output_dir=${oc.env:SIMSEG_TEST_ROOT}/tiny",
                                       "train.eps=${train.lr}"]))
    assert cfg["train"]["output_dir"] == "/data/runs/tiny" and cfg["train"]["eps"] == cfg["train"]["lr"]
