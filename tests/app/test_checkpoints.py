"""``simseg info`` and ``simseg convert-checkpoint``."""

import pickle

import pytest
import torch

from simseg.app.cli import main
from simseg.checkpoint import load_model
from simseg.errors import CheckpointError, InputError
from tests.test_checkpoint import Evil, _outputs, _to_original_layout, small_model  # noqa: F401


def test_bad_files_give_one_line_errors(tmp_path, small_model, vocab_dir, capsys):  # noqa: F811
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "x": Evil()}, evil)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    good = tmp_path / "good.pth"
    torch.save(_to_original_layout(small_model), good)
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    other = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(3)}}, other)
    no_projection = tmp_path / "no-projection.pth"
    original = _to_original_layout(small_model)
    del original["state_dict"]["image_projection.linear.weight"]
    torch.save(original, no_projection)
    two_temperatures = tmp_path / "two-temperatures.pth"
    original = _to_original_layout(small_model)
    original["state_dict"]["loss.temperature"] = torch.tensor([0.02, 0.03])
    torch.save(original, two_temperatures)
    cases = {evil: "arbitrary code", text: "not", trunc: "truncated", other: "not a SimSeg checkpoint",
             tmp_path / "missing.pth": "not found", no_projection: "lacks the key 'image_projection.linear.weight'",
             two_temperatures: r"wrong shape: temperature_param: checkpoint \(2,\)"}
    for path, words in cases.items():
        with pytest.raises((CheckpointError, InputError), match=words):
            load_model(path, tokenizer=vocab_dir)
        assert main(["info", str(path), "--tokenizer", str(vocab_dir)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(path) in err[0] and "Traceback" not in err[0]
    out = pickle.dumps(1)  # keep pickle imported for clarity of the evil case
    assert out



def test_cli_convert_and_info(tmp_path, small_model, vocab_dir, capsys):  # noqa: F811
    src = tmp_path / "simseg.vit-x.pth"
    torch.save(_to_original_layout(small_model), src)
    out = tmp_path / "converted"
    assert main(["convert-checkpoint", str(src), str(out), "--tokenizer", str(vocab_dir)]) == 0
    assert main(["convert-checkpoint", str(src), str(out), "--tokenizer", str(vocab_dir)]) == 2  # exists
    converted = load_model(out)
    for a, b in zip(_outputs(small_model), _outputs(converted)):
        assert torch.allclose(a, b, atol=1e-6)
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "parameters" in text and "sha256" in text and "embed_dim: 128" in text



def test_convert_given_a_simseg_folder_says_it_needs_no_conversion(tmp_path, tiny_model, capsys):
    from simseg.checkpoint import save_model

    ck = save_model(tiny_model, tmp_path / "ck")
    assert main(["convert-checkpoint", str(ck), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(ck) in err[0] and "needs no conversion" in err[0] and "no config.yaml" not in err[0]
    assert not (tmp_path / "out").exists()


def test_a_file_of_a_checkpoint_folder_or_onnx_export_names_the_folder(onnx_checkpoint, capsys):
    ck, export = onnx_checkpoint, onnx_checkpoint / "onnx"
    cases = ((ck / "model.safetensors", f"a file of the simseg checkpoint folder {ck}: give the folder"),
             (ck / "tokenizer" / "vocab.txt", f"a file of the simseg checkpoint folder {ck}: give the folder"),
             (export / "text.onnx", f"a file of the ONNX export {export}: give the folder"))
    for path, words in cases:
        assert main(["info", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{path}: not a PyTorch checkpoint" in err[0] and words in err[0]
