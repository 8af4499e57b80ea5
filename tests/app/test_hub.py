"""``simseg push-to-hub`` (with the Hub client replaced: the real upload is made only by users) and ``hf-hub:``
names on the command line, offline from a local cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from simseg.app.cli import main
from tests.test_hub import make_hub_cache, offline_cache  # noqa: F401

huggingface_hub = pytest.importorskip("huggingface_hub", reason="the Hub tests need huggingface_hub")


class FakeHub:
    """Records what ``HfApi`` was asked to do, and what the folder it was given held at that moment."""

    def __init__(self):
        self.calls = []

    def install(self, monkeypatch):
        fake = self

        def create_repo(api, repo_id, **kwargs):
            fake.calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(api, *, repo_id, folder_path, **kwargs):
            revision = kwargs.get("revision")
            if revision not in (None, "main") and ("create_branch", repo_id, revision) not in \
                    [(c[0], c[1], c[2].get("branch")) for c in fake.calls]:  # as the Hub answers: no such branch
                import httpx
                from huggingface_hub.errors import RevisionNotFoundError

                raise RevisionNotFoundError(f"Invalid rev id: {revision}", response=httpx.Response(
                    404, request=httpx.Request("POST", f"https://hub.invalid/api/models/{repo_id}/commit/{revision}")))
            files = {}
            for root, _, names in os.walk(folder_path):
                for name in names:
                    path = os.path.join(root, name)
                    files[os.path.relpath(path, folder_path).replace(os.sep, "/")] = open(path, "rb").read()
            fake.calls.append(("upload_folder", repo_id, {**kwargs, "files": files}))
            return type("CommitInfo", (), {"commit_url": f"hub/{repo_id}/commit/1"})()

        def create_branch(api, repo_id, *, branch, exist_ok=False, **kwargs):
            fake.calls.append(("create_branch", repo_id, {"branch": branch, "exist_ok": exist_ok, **kwargs}))

        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
        monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", create_branch)
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
        return self


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    return FakeHub().install(monkeypatch)


def _training_checkpoint(tiny_model, tmp_path):
    """A run folder as ``simseg train`` leaves it: config.yaml, checkpoint/ with optimizer state beside it."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {pooling: loda}\ndata: {image_size: 224}\ntrain: {steps: 7}\n")
    ck = tiny_model.save_pretrained(run / "checkpoint", meta={"step": 7})
    (ck / "train_state.pt").write_bytes(b"optimizer state")
    (ck / "state.json").write_text(json.dumps({"step": 7, "world_size": 1, "extra": {"data": [3]}}))  # its counters
    (ck / ".model.safetensors.123.tmp").write_bytes(b"partial")
    return ck


def test_push_to_hub_uploads_the_model_folder_with_a_card(tiny_model, tmp_path, hub, capsys):
    ck = _training_checkpoint(tiny_model, tmp_path)
    before = {p.name: p.read_bytes() for p in ck.iterdir() if p.is_file()}
    report = tmp_path / "metrics.json"
    report.write_text(json.dumps({"dataset": "pascal_voc", "mIoU": 1.5, "aAcc": 2.0, "protocol": {"name": "dense"}}))
    rc = main(["push-to-hub", str(ck), "someone/tiny-simseg", "--private", "--metrics", str(report),
               "--message", "first", "--license", "apache-2.0"])
    out = capsys.readouterr().out
    assert rc == 0 and "hub/someone/tiny-simseg/commit/1" in out
    (create, repo, create_kwargs), (upload, repo2, upload_kwargs) = hub.calls
    assert (create, repo, create_kwargs) == ("create_repo", "someone/tiny-simseg", {"private": True, "exist_ok": True})
    assert upload == "upload_folder" and repo2 == "someone/tiny-simseg" and upload_kwargs["commit_message"] == "first"
    files = upload_kwargs["files"]
    assert sorted(files) == ["README.md", "config.yaml", "metrics/pascal_voc.json", "model.safetensors",
                             "tokenizer/vocab.txt"]  # no optimizer or training state, no temporary file
    assert files["model.safetensors"] == before["model.safetensors"]
    card = files["README.md"].decode()
    assert "license: apache-2.0" in card and 'simseg.load_model("hf-hub:someone/tiny-simseg")' in card
    assert "steps: 7" in card and "| `metrics/pascal_voc.json` | pascal_voc | dense |" in card
    assert {p.name: p.read_bytes() for p in ck.iterdir() if p.is_file()} == before  # the user's folder unchanged


def test_push_to_hub_takes_the_onnx_export_and_keeps_a_written_card(onnx_checkpoint, tmp_path, hub):
    import shutil

    ck = shutil.copytree(onnx_checkpoint, tmp_path / "ck")
    (ck / "README.md").write_text("# a card written by hand\n")
    assert main(["push-to-hub", str(ck), "someone/tiny-onnx", "--revision", "v1"]) == 0
    (_, _, create_kwargs), (_, _, branch_kwargs), (_, _, upload_kwargs) = hub.calls
    assert create_kwargs["private"] is False and upload_kwargs["revision"] == "v1"
    assert branch_kwargs == {"branch": "v1", "exist_ok": True}  # a new branch is made, an existing one kept
    files = upload_kwargs["files"]
    assert files["README.md"] == b"# a card written by hand\n"
    assert {"onnx/simseg_onnx.json", "onnx/text.onnx", "onnx/image_288.onnx", "onnx/tokenizer/vocab.txt"} <= set(files)


def test_push_to_a_branch_names_the_branch_in_the_card_and_the_load_line(tiny_model, tmp_path, hub, capsys):
    ck = tiny_model.save_pretrained(tmp_path / "ck")
    assert main(["push-to-hub", str(ck), "someone/tiny-simseg", "--revision", "dev"]) == 0
    out = capsys.readouterr().out
    assert 'simseg.load_model("hf-hub:someone/tiny-simseg@dev")' in out
    assert "--checkpoint hf-hub:someone/tiny-simseg@dev" in out
    card = hub.calls[-1][2]["files"]["README.md"].decode()
    assert 'simseg.load_model("hf-hub:someone/tiny-simseg@dev")' in card
    assert "--checkpoint hf-hub:someone/tiny-simseg@dev " in card
    assert main(["push-to-hub", str(ck), "someone/tiny-simseg"]) == 0  # main: the plain name
    assert 'load_model("hf-hub:someone/tiny-simseg")' in hub.calls[-1][2]["files"]["README.md"].decode()


def test_push_to_hub_refuses_an_onnx_export_of_other_weights(onnx_checkpoint, tiny_model, tmp_path, hub, capsys):
    import shutil

    from simseg.model import build_model

    retrained = build_model(tiny_model.config, tiny_model.tokenizer, pretrained=False).eval()
    ck = retrained.save_pretrained(tmp_path / "ck")  # new weights saved over a folder whose onnx/ is the old model's
    shutil.copytree(onnx_checkpoint / "onnx", ck / "onnx")
    assert main(["push-to-hub", str(ck), "someone/x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{ck}/onnx: exported from another model" in err[0]
    assert not [c for c in hub.calls if c[0] == "upload_folder"]


def test_push_to_hub_converts_an_original_checkpoint(tmp_path, hub, vocab_dir):
    from tests.test_checkpoint import _small_cfg, _to_original_layout
    from simseg.model import build_model
    from simseg.tokenizer import load_tokenizer

    torch.manual_seed(2)
    model = build_model(_small_cfg(), load_tokenizer(vocab_dir)).eval()
    src = tmp_path / "simseg.vit-x.pth"
    torch.save(_to_original_layout(model), src)
    from simseg.checkpoint import file_sha256

    report = tmp_path / "metrics.json"  # eval-seg run on the .pth itself: its stamp is the .pth's sha256
    report.write_text(json.dumps({"dataset": "pascal_voc", "mIoU": 1.5, "protocol": {"name": "dense"},
                                  "checkpoint": {"path": str(src), "sha256": file_sha256(src)}}))
    assert main(["push-to-hub", str(src), "someone/converted", "--tokenizer", str(vocab_dir),
                 "--metrics", str(report)]) == 0
    files = hub.calls[-1][2]["files"]
    assert {"model.safetensors", "config.yaml", "tokenizer/vocab.txt", "README.md"} <= set(files)
    assert b"converted_from: simseg.vit-x.pth" in files["config.yaml"]
    row = [line for line in files["README.md"].decode().splitlines() if "metrics/pascal_voc.json" in line]
    assert row and row[0].endswith("| yes (the file they were converted from) |")


def test_push_to_hub_without_network_token_or_a_model_is_one_line(tiny_model, tmp_path, hub, monkeypatch, capsys):
    from huggingface_hub import constants

    ck = tiny_model.save_pretrained(tmp_path / "ck")
    run = _training_checkpoint(tiny_model, tmp_path).parent
    bad_report = tmp_path / "r.json"
    bad_report.write_text("{}")
    cases = [
        (["push-to-hub", str(ck), "no-slash"], "not a Hub repository id"),
        (["push-to-hub", "tiny", "someone/x"], "preset has random weights"),
        (["push-to-hub", str(tmp_path / "missing"), "someone/x"], "not found"),
        (["push-to-hub", str(tmp_path), "someone/x"], "not a simseg checkpoint folder"),
        (["push-to-hub", str(run), "someone/x"], f"{run / 'config.yaml'}: not a simseg checkpoint config (a training "
                                                  f"run's folder: its model is {run / 'checkpoint'})"),
        (["push-to-hub", str(ck), "someone/x", "--metrics", str(bad_report)], "not an evaluation report"),
        (["push-to-hub", str(ck), "someone/x", "--license", "My License"], "license"),
    ]
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0] and "Traceback" not in err[0], (argv, err)
    monkeypatch.delenv("HF_TOKEN")
    assert main(["push-to-hub", str(ck), "someone/x"]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["push-to-hub", str(ck), "someone/x"]) == 2
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def refused(api, *a, **k):
        import httpx

        raise huggingface_hub.errors.HfHubHTTPError("403 Forbidden", response=httpx.Response(
            403, request=httpx.Request("POST", "https://hub.invalid/api/repos/create")))

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", refused)
    assert main(["push-to-hub", str(ck), "someone/x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused the upload (HTTP 403" in err[0]
    assert not [c for c in hub.calls if c[0] == "upload_folder"]


def test_segment_and_info_take_hub_names_offline(tiny_model, tmp_path, offline_cache, capsys):  # noqa: F811
    import numpy as np
    from PIL import Image

    folder = tiny_model.save_pretrained(tmp_path / "m", repo_id="someone/tiny-simseg")
    make_hub_cache(offline_cache, "someone/tiny-simseg", folder)
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "a.png"), "--classes", "cat,dog",
                 "--checkpoint", "hf-hub:someone/tiny-simseg", "--no-crf", "--templates", "single", "--cache-dir", str(tmp_path / "c"), "--out", str(out)]) == 0
    report = json.loads((out / "segment.json").read_text())
    assert report["checkpoint"]["path"] == "hf-hub:someone/tiny-simseg"
    assert report["checkpoint"]["hub"]["repo_id"] == "someone/tiny-simseg" and len(report["checkpoint"]["sha256"]) == 64
    capsys.readouterr()
    assert main(["info", "hf-hub:someone/missing"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hf-hub:someone/missing: not in the local Hugging Face cache" in err[0]

    # a fresh process that reads HF_HUB_OFFLINE and HF_HUB_CACHE from its environment, as a user's shell sets them
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(offline_cache), "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-m", "simseg", "info", "hf-hub:someone/tiny-simseg"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "checkpoint: hf-hub:someone/tiny-simseg" in done.stdout and "embed_dim: 512" in done.stdout


def test_a_hub_model_s_recorded_evaluation_defaults_are_used(tiny_model, tmp_path, offline_cache, capsys):  # noqa: F811
    from tests.app.test_recorded_defaults import RECORDED, _segment

    folder = tiny_model.save_pretrained(tmp_path / "m", meta={"evaluation": RECORDED})
    make_hub_cache(offline_cache, "someone/recorded", folder)
    assert main(["info", "hf-hub:someone/recorded"]) == 0
    out = capsys.readouterr().out
    assert "evaluation defaults (used by segment" in out and "crop_size: 32" in out
    (tmp_path / "images").mkdir()
    report = _segment(tmp_path / "images", "hf-hub:someone/recorded")
    assert report["protocol"]["name"] == "dense" and report["protocol"]["crop_size"] == 32
    assert "using the evaluation defaults recorded in hf-hub:someone/recorded" in capsys.readouterr().out
