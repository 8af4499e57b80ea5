"""Tokenizers: the shipped BERT vocabulary (no network), Hugging Face names offline, caption files."""

from __future__ import annotations

import hashlib
import time

import pytest
import torch

from simseg.errors import InputError
from simseg.tokenizer import SHIPPED_SHA256, load_tokenizer, read_captions, shipped_vocab

#: "a photo of a dog." with BERT-base-uncased's vocabulary: [CLS] a photo of a dog . [SEP]
DOG_IDS = [101, 1037, 6302, 1997, 1037, 3899, 1012, 102]


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """An empty Hugging Face cache, offline mode, and any hub call an error: what a fresh offline machine has."""
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError(f"the Hugging Face hub was called: {args} {kwargs}")

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)


def test_the_shipped_vocabulary_is_bert_base_uncased_byte_for_byte():
    path = shipped_vocab("bert-base-uncased")
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SHIPPED_SHA256[path.name]
    assert data.count(b"\n") == 30522
    assert (path.parent / "NOTICE").is_file() and (path.parent / "LICENSE-Apache-2.0.txt").is_file()


def test_bert_base_uncased_loads_with_no_network_and_no_cache(no_hub):
    for name in ("bert-base-uncased", "google-bert/bert-base-uncased"):
        tok = load_tokenizer(name)
        assert tok.vocab_size == 30522
        assert tok("a photo of a dog.", padding="longest")["input_ids"][0].tolist() == DOG_IDS


def test_an_original_checkpoint_loads_offline_without_a_tokenizer_argument(tmp_path, no_hub):
    import simseg
    from simseg.config import load_preset, to_dict
    from simseg.model import build_model
    from tests.test_checkpoint import _to_original_layout

    cfg = to_dict(load_preset("tiny").model)  # width 64: head counts of 1 are what the importer infers
    cfg["vision"]["kwargs"] = {"embed_dim": 64, "depth": 1, "num_heads": 1, "mlp_ratio": 2.0}
    cfg["text"]["config"] = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 1,
                             "intermediate_size": 128, "max_position_embeddings": 64, "vocab_size": 30522}
    torch.manual_seed(0)
    model = build_model(cfg, None, pretrained=False)
    path = tmp_path / "simseg.vit-tiny.pth"
    torch.save(_to_original_layout(model), path)
    loaded = simseg.load_model(path)
    assert loaded.tokenizer is not None and loaded.tokenizer.vocab_size == 30522
    batch = loaded.tokenize(["a photo of a dog."], padding="longest")
    assert batch["input_ids"][0].tolist() == DOG_IDS
    assert loaded.encode_text(batch["input_ids"], batch["attention_mask"]).shape == (1, 512)


def test_paper_presets_have_their_tokenizer_offline(no_hub):
    import simseg

    model = simseg.load_model("tiny")  # the tiny preset names bert-base-uncased too
    assert model.tokenizer.vocab_size == 30522


def test_an_unknown_hub_name_without_network_fails_in_one_line_quickly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://simseg-test.invalid")  # a name that never resolves
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    start = time.monotonic()
    with pytest.raises(InputError) as info:
        load_tokenizer("someone/some-bert")
    assert time.monotonic() - start < 5  # no retry loop
    message = str(info.value)
    assert "\n" not in message and "someone/some-bert" in message and "cannot be reached" in message
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InputError, match="offline"):
        load_tokenizer("someone/some-bert")


def test_captions_from_text_and_csv_files_with_bom_and_crlf(tmp_path):
    txt = tmp_path / "captions.txt"
    txt.write_bytes("\ufeffa red circle\r\n\r\n  a blue star \r\n".encode("utf-8"))
    assert read_captions(txt) == ["a red circle", "a blue star"]
    csv = tmp_path / "train_anno.csv"
    csv.write_bytes('\ufeffimage,caption\r\n1.jpg,"a dog, running"\r\n2.jpg,a cat\r\n3.jpg,\r\n'.encode("utf-8"))
    assert read_captions(csv) == ["a dog, running", "a cat"]
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("url\ttext\nx\ta bird\n", encoding="utf-8")
    assert read_captions(tsv, column="text") == ["a bird"]
    with pytest.raises(InputError, match="no 'caption' column.*'url', 'text'"):
        read_captions(tsv)
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"ok\ncaf\xe9\n")
    with pytest.raises(InputError, match="line 2: not UTF-8"):
        read_captions(latin)
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(InputError, match="no captions"):
        read_captions(tmp_path / "empty.txt")
    with pytest.raises(InputError, match="file not found"):
        read_captions(tmp_path / "missing.txt")


def test_a_trained_vocabulary_is_the_same_in_every_process(tmp_path):
    """The same captions give the same vocab.txt in two separate processes (a hash-ordered trainer would not), with
    every character as a start and a continuation, then whole words by frequency, capped at vocab_size."""
    import subprocess
    import sys

    from simseg.tokenizer import load_tokenizer

    code = ("import sys; from simseg.tokenizer import train_wordpiece_vocab as t; "
            "t(['A red circle next to a blue star.', 'a red square on grey stone'] * 3, sys.argv[1], 45)")
    for name in ("one", "two"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], check=True)
    first = (tmp_path / "one" / "vocab.txt").read_text()
    assert first == (tmp_path / "two" / "vocab.txt").read_text()
    tokens = first.split("\n")[:-1]
    chars = sorted(set("aredcirclenexttoabluestarsquareongreystone.") - {" "})
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert tokens[5:5 + 2 * len(chars)] == chars + [f"##{c}" for c in chars]
    # 'a' is already a character; then by frequency (red: 6), ties alphabetically, as many as 45 leaves room for
    assert len(chars) == 18 and tokens[5 + 2 * len(chars):] == ["red", "blue", "circle", "grey"]
    tok = load_tokenizer(tmp_path / "one")
    assert tok.wordpieces("a red circle on grey stones") == ["a", "red", "circle", "o", "##n", "grey", "s", "##t",
                                                             "##o", "##n", "##e", "##s"]
