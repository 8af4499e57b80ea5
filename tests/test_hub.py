"""``hf-hub:`` names from a local Hugging Face cache laid out as huggingface_hub lays it out (offline), and model
cards."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from simseg.errors import CheckpointError, InputError

huggingface_hub = pytest.importorskip("huggingface_hub", reason="the Hub tests need huggingface_hub")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _etag(path: Path, data: bytes) -> str:
    """The blob name huggingface_hub gives a file: the sha256 for LFS files (weights, graphs), else the git blob
    sha1."""
    if path.suffix in (".safetensors", ".onnx"):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def make_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str = COMMIT, refs: tuple[str, ...] = ("main",)):
    """Lay ``folder`` out in ``cache`` as ``snapshot_download`` leaves a downloaded repository: blobs named by
    etag, a snapshot of relative symlinks, refs naming the commit; checked with huggingface_hub's own readers."""
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache
    from huggingface_hub.file_download import repo_folder_name

    storage = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        data = path.read_bytes()
        blob = storage / "blobs" / _etag(path, data)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        rel = path.relative_to(folder)
        link = storage / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    for ref in refs:
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)
    first = files[0].relative_to(folder).as_posix()
    assert try_to_load_from_cache(repo_id, first, cache_dir=cache) == str(storage / "snapshots" / commit / first)
    repos = {r.repo_id: r for r in scan_cache_dir(cache).repos}
    assert {f.file_name for rev in repos[repo_id].revisions for f in rev.files} == {p.name for p in files}
    return storage


@pytest.fixture()
def offline_cache(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 and HF_HOME / HF_HUB_CACHE in tmp_path (huggingface_hub read its constants at import, so
    they are set there too)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _outputs(model):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 64, 64, generator=gen)
    batch = model.tokenize(["a photo of a cat.", "a dog"], padding="longest")
    with torch.no_grad():
        return model.encode_image(x), model.encode_text(**batch), model.encode_image_tokens(x)[0]


def test_load_model_from_the_offline_cache(tiny_model, tmp_path, offline_cache):
    import simseg
    from simseg.checkpoint import checkpoint_fingerprint, file_sha256

    folder = tiny_model.save_pretrained(tmp_path / "pushed", repo_id="someone/tiny-simseg")
    make_hub_cache(offline_cache, "someone/tiny-simseg", folder)
    for name in ("hf-hub:someone/tiny-simseg", "hf-hub:someone/tiny-simseg@main",
                 f"hf-hub:someone/tiny-simseg@{COMMIT}"):
        model = simseg.load_model(name)
        assert model.weights_hash == tiny_model.weights_hash and not model.training
        for a, b in zip(_outputs(model), _outputs(tiny_model)):
            assert torch.equal(a, b)
    fp = checkpoint_fingerprint("hf-hub:someone/tiny-simseg")
    assert fp["sha256"] == file_sha256(folder / "model.safetensors")
    assert fp["hub"] == {"repo_id": "someone/tiny-simseg", "commit": COMMIT}
    sized = simseg.load_model("hf-hub:someone/tiny-simseg", image_size=64)
    assert sized.image_size == 64


def test_hub_names_that_fail_say_why_in_one_line(tiny_model, tmp_path, offline_cache):
    import simseg

    folder = tiny_model.save_pretrained(tmp_path / "m")
    make_hub_cache(offline_cache, "someone/tiny-simseg", folder)
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    make_hub_cache(offline_cache, "someone/a-bert", tmp_path / "bert")
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "config.yaml").write_bytes((folder / "config.yaml").read_bytes())
    make_hub_cache(offline_cache, "someone/no-weights", tmp_path / "partial")
    cases = {
        "hf-hub:someone/not-here": (InputError, "not in the local Hugging Face cache and HF_HUB_OFFLINE is set"),
        "hf-hub:someone/tiny-simseg@v2": (InputError, "not in the local Hugging Face cache"),
        "hf-hub:someone/a-bert": (CheckpointError, "has no simseg config.yaml: not a simseg model"),
        "hf-hub:someone/no-weights": (CheckpointError, "no model.safetensors in the local Hugging Face cache and "
                                                       "HF_HUB_OFFLINE is set"),
        "hf-hub:not a name": (InputError, "not a Hugging Face Hub name"),
        "hf-hub:someone/tiny-simseg@": (InputError, "not a Hugging Face Hub name"),
    }
    for name, (error, words) in cases.items():
        with pytest.raises(error, match=words) as info:
            simseg.load_model(name)
        assert str(info.value).startswith(name) and "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="no ONNX export") as info:
        simseg.load_model("hf-hub:someone/tiny-simseg", backend="onnx")
    assert str(info.value).endswith("make one with: simseg export hf-hub:someone/tiny-simseg OUT_DIR --format onnx, "
                                    "then use OUT_DIR")  # not an OUT_DIR named after the Hub name


def test_repository_ids_are_checked_by_the_hub_s_rule(offline_cache):
    from huggingface_hub.utils import validate_repo_id

    from simseg.hub import check_repo_id, parse_hub_name, resolve

    names = ["someone/model", "someone/model-", "someone/model.", "someone/-model", "someone/a--b", "someone/a..b",
             "someone/model.git", "someone/" + "x" * 96, "someone/" + "x" * 97, "some_one/model_", "some one/model",
             "a/b/c", "Org-1/Model.2_x"]
    for name in names:
        try:
            validate_repo_id(name)
            valid = True
        except ValueError:
            valid = False
        if valid:
            assert check_repo_id(name) == name and parse_hub_name(f"hf-hub:{name}@v1") == (name, "v1")
        else:
            with pytest.raises(InputError, match="not a Hub repository id"):
                check_repo_id(name)
            with pytest.raises(InputError, match="not a Hugging Face Hub name"):  # not "not in the local cache"
                resolve(f"hf-hub:{name}")


def test_onnx_export_from_the_hub(onnx_checkpoint, offline_cache):
    import simseg

    make_hub_cache(offline_cache, "someone/tiny-onnx", onnx_checkpoint)
    model = simseg.load_model("hf-hub:someone/tiny-onnx", backend="onnx")
    assert model.image_sizes == [64, 288] and model.tokenizer is not None
    assert "hf-hub:someone/tiny-onnx" in model.label


def _report(path: Path, **fields):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fields))
    return path


def test_model_card_content(tiny_model, tmp_path):
    from simseg.checkpoint import file_sha256
    from simseg.hub import CARD_MARKER, find_training_config, model_card
    from simseg.model import parameter_counts

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {pooling: loda}\ndata: {image_size: 224}\n"
                                     "train: {steps: 100, lr: 0.001}\n")
    ck = tiny_model.save_pretrained(run / "checkpoint", meta={"step": 100})
    sha = file_sha256(ck / "model.safetensors")
    voc = _report(tmp_path / "eval" / "metrics.json", dataset="pascal_voc", mIoU=12.345, aAcc=50.0, num_evaluated=9,
                  num_images=9, protocol={"name": "simseg", "input_size": 288, "crf": True},
                  checkpoint={"path": str(ck), "sha256": sha})
    f30k = _report(tmp_path / "ret" / "metrics.json", dataset="f30k", RSUM=300.04, **{"I2T_R@1": 40.0, "T2I_R@1": 30.0},
                   checkpoint={"path": "other", "sha256": "0" * 64})
    training = find_training_config(ck)
    assert training["train"]["steps"] == 100
    folder = tiny_model.save_pretrained(tmp_path / "card", repo_id="someone/tiny-simseg", license="apache-2.0",
                                        meta={"step": 100}, metrics=[voc, f30k], training_config=training)
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\nlibrary_name: simseg\n") and CARD_MARKER in card
    counts = parameter_counts(tiny_model)
    assert f"| parameters | {counts['total']:,} (image {counts['image_encoder']:,}" in card
    assert "timm `vit_small_patch16_224` (embed_dim 64, depth 2" in card and "512 dimensions, LoDA" in card
    assert f"`{sha}`" in card  # the weights' sha256, the same bytes as the first save
    usage = card[card.index("```python\n") + 10:].split("```")[0].strip().splitlines()
    assert usage == ["import simseg, simseg.segment", 'model = simseg.load_model("hf-hub:someone/tiny-simseg")',
                     'result = simseg.segment.segment(model, "street.jpg", "car, person, tree")  # .labels: 0 = '
                     "background"]
    assert "--checkpoint hf-hub:someone/tiny-simseg" in card
    assert "step: 100" in card and "lr: 0.001" in card and "image_size: 224" in card
    assert "| `metrics/pascal_voc.json` | pascal_voc | simseg (input 288, CRF on) | mIoU 12.3, aAcc 50.0 (9 of 9 " \
           "images) | yes |" in card
    assert "| `metrics/f30k.json` | f30k | n/a | I2T R@1 40.0, T2I R@1 30.0, RSUM 300.0 | no (another checkpoint) |" \
           in card
    assert sorted(p.name for p in (folder / "metrics").iterdir()) == ["f30k.json", "pascal_voc.json"]
    bare = model_card(tiny_model.save_pretrained(tmp_path / "bare"))
    assert "license: mit" in bare and "No evaluation report" in bare and "No training record" in bare
    assert f'simseg.load_model("{tmp_path / "bare"}")' in bare


def test_cards_a_person_wrote_are_kept_and_bad_inputs_fail(tiny_model, tmp_path):
    from simseg.hub import write_model_card

    folder = tiny_model.save_pretrained(tmp_path / "m")
    (folder / "README.md").write_text("# my own card\n")
    tiny_model.save_pretrained(folder)
    assert (folder / "README.md").read_text() == "# my own card\n"
    write_model_card(folder, overwrite=True)
    assert "## How to use" in (folder / "README.md").read_text()
    (tmp_path / "notes.json").write_text('{"loss": 1}')
    for bad, words in ((tmp_path / "missing.json", "not found"), (tmp_path / "notes.json", "not an evaluation report")):
        with pytest.raises(InputError, match=words):
            tiny_model.save_pretrained(tmp_path / "x", metrics=[bad])
    assert not (tmp_path / "x" / "model.safetensors").exists()  # checked before the weights were written
    for kwargs, words in (({"license": "MIT License"}, "license"), ({"repo_id": "no-slash"}, "repository id")):
        with pytest.raises(InputError, match=words):
            tiny_model.save_pretrained(tmp_path / "y", **kwargs)
        assert not (tmp_path / "y").exists()
