"""``simseg vocab`` (a vocabulary of your own captions) and training with no tokenizer given (the shipped one)."""

from __future__ import annotations

from simseg.app.cli import main


def test_vocab_from_a_csv_with_bom_and_crlf_then_usable_as_a_tokenizer(tmp_path, capsys):
    from simseg.tokenizer import load_tokenizer

    csv = tmp_path / "train_anno.csv"
    rows = ["image,caption"] + [f"{i}.jpg,a {c} circle next to a {d} star" for i, (c, d) in
                                enumerate([("red", "blue"), ("green", "yellow"), ("purple", "cyan")] * 4)]
    csv.write_bytes(("\ufeff" + "\r\n".join(rows) + "\r\n").encode("utf-8"))
    assert main(["vocab", str(csv), str(tmp_path / "vocab"), "--vocab-size", "120"]) == 0
    out = capsys.readouterr().out
    assert "tokens from 12 captions" in out and "model.tokenizer=" in out
    tok = load_tokenizer(tmp_path / "vocab")
    assert 5 < tok.vocab_size <= 120
    assert tok.wordpieces("a purple circle next to a cyan star") == ["a", "purple", "circle", "next", "to", "a",
                                                                     "cyan", "star"]


def test_vocab_bad_input_is_one_line(tmp_path, capsys):
    (tmp_path / "pairs.csv").write_text("image,text\n1.jpg,a dog\n")
    assert main(["vocab", str(tmp_path / "pairs.csv"), str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no 'caption' column" in err and "pairs.csv" in err
    assert main(["vocab", str(tmp_path / "nothing.txt"), str(tmp_path / "v")]) == 2
    assert "nothing.txt: file not found" in capsys.readouterr().err
    (tmp_path / "c.txt").write_text("a dog\n")
    assert main(["vocab", str(tmp_path / "c.txt"), str(tmp_path / "v"), "--vocab-size", "3"]) == 2
    assert "--vocab-size: must be at least 6" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["vocab", str(tmp_path / "c.txt"), str(tmp_path / "file" / "sub")]) == 2
    assert "OUT_DIR" in capsys.readouterr().err
    (tmp_path / "pairs.jsonl").write_text('{"image": "1.jpg", "caption": "a dog"}\n')
    assert main(["vocab", str(tmp_path / "pairs.jsonl"), str(tmp_path / "j")]) == 2  # not a vocabulary of its syntax
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pairs.jsonl: a JSON file" in err and not (tmp_path / "j").exists()


def test_train_tiny_on_user_data_needs_no_tokenizer_and_no_network(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    from tests.app.test_train import _write_csv_data

    def refuse(*args, **kwargs):
        raise AssertionError("the Hugging Face hub was called")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    csv = _write_csv_data(tmp_path / "data", n=8)
    out = tmp_path / "run"
    assert main(["train", "tiny", f"train.output_dir={out}", "train.steps=2", "train.batch_size=4",
                 "train.checkpoint_every=0", "model.vision.img_size=32", "model.vision.kwargs.patch_size=8",
                 "data.image_size=32", f"data.train=[{{type: csv, path: {csv}}}]", "train.device=cpu",
                 "--no-progress"]) == 0
    assert '"final_loss"' in capsys.readouterr().out
    assert (out / "checkpoint" / "tokenizer" / "vocab.txt").read_text().count("\n") == 30522
