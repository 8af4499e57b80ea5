import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import simseg
from simseg.config import load_config
from simseg.errors import ConfigError, InputError
from simseg.loda import loda_pool
from simseg.tokenizer import Tokenizer, load_tokenizer, train_wordpiece_vocab


def test_api_shapes_and_normalisation(tiny_model):
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        emb = tiny_model.encode_image(x)
        tokens, grid = tiny_model.encode_image_tokens(x)
        batch = tiny_model.tokenize(["a photo of a cat.", "dog"])
        txt = tiny_model.encode_text(batch["input_ids"], batch["attention_mask"])
    assert emb.shape == (2, 512) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert tokens.shape == (2, 196, 512) and grid == (14, 14)
    assert batch["input_ids"].shape == (2, 25)
    assert txt.shape == (2, 512) and torch.allclose(txt.norm(dim=-1), torch.ones(2), atol=1e-5)
    # the pooled image embedding is LoDA (k=5) over the projected patch tokens
    assert torch.allclose(emb, torch.nn.functional.normalize(loda_pool(tokens, 5), dim=-1), atol=1e-5)
    assert not tiny_model.training


def test_longest_padding_gives_the_same_text_features(tiny_model):
    texts = ["a photo of a cat.", "a bad photo of the dog on the grass."]
    with torch.no_grad():
        a = tiny_model.encode_text(**tiny_model.tokenize(texts, padding="max_length"))
        b = tiny_model.encode_text(**tiny_model.tokenize(texts, padding="longest"))
    assert torch.allclose(a, b, atol=1e-5)


def test_temperature_clamped(tiny_model):
    assert tiny_model.temperature().item() == pytest.approx(0.02)
    with torch.no_grad():
        tiny_model.temperature_param.fill_(5.0)
        assert tiny_model.temperature().item() == pytest.approx(0.5)
        tiny_model.temperature_param.fill_(0.02)


@pytest.mark.parametrize("pooling", ["avg", "cls"])
def test_other_poolings(vocab_dir, pooling):
    m = simseg.load_model("tiny", tokenizer=vocab_dir)
    m.pooling = pooling
    with torch.no_grad():
        e = m.encode_image(torch.randn(1, 3, 224, 224))
        t = m.encode_text(**m.tokenize(["a cat"]))
    assert e.shape == t.shape == (1, 512)


def test_tokenizer_reads_vocab_and_truncates(vocab_dir, tmp_path):
    tok = load_tokenizer(vocab_dir)
    ids = tok(["word " * 60], max_length=25)["input_ids"][0]
    assert ids.shape == (25,) and ids[0] == tok.cls_id and ids[-1] == tok.sep_id
    pieces = tok.wordpieces("a photo of a cat.")
    assert tok.join_wordpieces(pieces) == "a photo of a cat ."
    with pytest.raises(InputError, match="vocab.txt"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(InputError, match="special tokens"):
        Tokenizer(tmp_path / "vocab.txt")


def test_an_empty_batch_tokenizes_to_zero_rows_with_either_padding(vocab_dir):
    tok = load_tokenizer(vocab_dir)
    for padding, width in (("max_length", 25), ("longest", 0)):
        batch = tok([], max_length=25, padding=padding)
        assert batch["input_ids"].shape == batch["attention_mask"].shape == (0, width)


def test_real_bert_vocab_ids(tmp_path):
    # the released tokenizer: "a photo of a dog." -> 101, 1037, 6302, 1997, 1037, 3899, 1012, 102 with bert-base-uncased.
    # Build a vocab file with those words at those ids (the real file is not downloadable here).
    vocab = [f"[unused{i}]" for i in range(7000)]
    for tok, i in {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, "a": 1037, "photo": 6302,
                   "of": 1997, "dog": 3899, ".": 1012}.items():
        vocab[i] = tok
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    ids = load_tokenizer(tmp_path)(["A photo of a dog."], padding="longest")["input_ids"][0].tolist()
    assert ids == [101, 1037, 6302, 1997, 1037, 3899, 1012, 102]


def test_config_overrides_are_strict():
    cfg = load_config("tiny", ["train.lr=0.5", "model.pooling=cls"])
    assert cfg.train.lr == 0.5 and cfg.model.pooling == "cls"
    with pytest.raises(ConfigError, match="train.lrr"):
        load_config("tiny", ["train.lrr=1"])
    with pytest.raises(ConfigError):
        load_config("tiny", ["novalue"])
    with pytest.raises(ConfigError, match="neither a preset"):
        load_config("nonexistent-preset")


def test_experiment_yaml_extends_a_preset(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("base: tiny\ntrain:\n  lr: 0.25\n")
    assert load_config(p).train.lr == 0.25
    p.write_text("base: tiny\ntrain:\n  nope: 1\n")
    with pytest.raises(ConfigError):
        load_config(p)


def test_vocab_training(tmp_path):
    d = train_wordpiece_vocab(["a red circle", "a blue star"] * 5, tmp_path / "v", vocab_size=100)
    tok = load_tokenizer(d)
    assert tok.wordpieces("red star") == ["red", "star"]


def test_native_size_forward_is_timms_own(tiny_model):
    images = torch.randn(2, 3, tiny_model.image_size, tiny_model.image_size)
    with torch.no_grad():
        tokens, _ = tiny_model.encode_image_tokens(images)
        reference = tiny_model.image_encoder.forward_features(images)[:, 1:]
    assert torch.equal(tokens, tiny_model.image_projection(reference))


@pytest.mark.parametrize("size", [32, 64, 96])
def test_other_sizes_equal_a_model_rebuilt_at_that_size_and_change_nothing(tiny_model, size):
    import copy

    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    native = tiny_model.image_size
    rebuilt = copy.deepcopy(tiny_model)
    rebuilt.set_image_size(size)
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        tokens, grid = tiny_model.encode_image_tokens(images)
        expected, expected_grid = rebuilt.encode_image_tokens(images)
        pooled, expected_pooled = tiny_model.encode_image(images), rebuilt.encode_image(images)
    assert grid == expected_grid == (size // tiny_model.patch_size,) * 2
    assert torch.equal(tokens, expected) and torch.equal(pooled, expected_pooled)
    assert tiny_model.image_size == native
    after = tiny_model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_non_square_input_and_bad_size(tiny_model):
    p = tiny_model.patch_size
    with torch.no_grad():
        tokens, grid = tiny_model.encode_image_tokens(torch.randn(1, 3, 3 * p, 5 * p))
    assert grid == (3, 5) and tokens.shape[1] == 15
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tiny_model.encode_image(torch.randn(1, 3, 3 * p + 1, 5 * p))


def test_state_sha256_is_the_sha256_of_names_and_bytes_in_name_order():
    import hashlib

    import numpy as np

    from simseg.model import state_sha256

    state = {"b.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3).t(),  # not contiguous
             "a.bias": torch.tensor([1.5, -2.0]), "c.flag": torch.tensor([True, False])}
    h = hashlib.sha256()
    for name in ("a.bias", "b.weight", "c.flag"):
        h.update(name.encode())
        h.update(np.ascontiguousarray(state[name].numpy()).tobytes())
    assert state_sha256(state) == h.hexdigest()
    assert state_sha256(state, prefixes=("a.",)) == hashlib.sha256(b"a.bias" + state["a.bias"].numpy().tobytes()
                                                                   ).hexdigest()


# ------------------------------------------------------------------ packed text (class embeddings without padding)
@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 25), min_size=1, max_size=60), row_length=st.integers(25, 80))
def test_pack_rows_places_every_sequence_once_inside_a_row(lengths, row_length):
    from simseg.model import pack_rows

    rows, offsets, width = pack_rows(lengths, row_length)
    slots: dict[int, set[int]] = {}
    for n, r, o in zip(lengths, rows, offsets):
        taken = set(range(o, o + n))
        assert o + n <= width <= row_length and not taken & slots.get(r, set())
        slots.setdefault(r, set()).update(taken)
    assert sum(len(s) for s in slots.values()) == sum(lengths) and sorted(slots) == list(range(len(slots)))


def test_packed_text_tokens_equal_the_padded_ones(tiny_model):
    texts = ["a photo of a cat.", "dog", "a bad photo of the dining table on the grass, far away.", "red", "a b c"]
    batch = tiny_model.tokenize(texts, padding="longest")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.inference_mode():
        padded = tiny_model.text_tokens(ids, mask)
        for row_length in (25, 40, 200):  # several sequences per row, or all in one
            packed = tiny_model.text_tokens_packed(ids, mask, row_length=row_length)
            real = mask.bool()
            torch.testing.assert_close(packed[real], padded[real], rtol=0, atol=1e-5)
            assert not packed[~real].any()  # padding: zeros
        torch.testing.assert_close(tiny_model.encode_text(ids, mask, packed=True), tiny_model.encode_text(ids, mask),
                                   rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="masked"):
        tiny_model.encode_text(ids, mask, masked=False, packed=True)


def test_max_length_beyond_the_text_towers_positions_is_one_config_error(vocab_dir):
    from simseg.config import to_dict
    from simseg.model import build_model

    cfg = to_dict(load_config("tiny", ["model.max_length=65"]).model)  # the tiny text tower has 64 positions
    with pytest.raises(ConfigError, match=r"^model\.max_length: 65 is not allowed \(must be at most the text "
                                          r"tower's max_position_embeddings, 64\)$"):
        build_model(cfg, load_tokenizer(vocab_dir))
    assert build_model({**cfg, "max_length": 64}, load_tokenizer(vocab_dir)).max_length == 64


def test_an_image_size_off_the_patch_grid_is_one_config_error_and_changes_nothing(tiny_model):
    import copy

    from simseg.errors import ConfigError

    model = copy.deepcopy(tiny_model)
    for size in (30, 0, -16, 2.5):
        with pytest.raises(ConfigError, match=rf"image_size: {size!r} is not a positive multiple of the model's patch"):
            model.set_image_size(size)
    assert model.image_size == tiny_model.image_size
    assert torch.equal(model.image_encoder.pos_embed, tiny_model.image_encoder.pos_embed)


def test_load_model_checks_the_device_before_loading(vocab_dir):
    import simseg

    with pytest.raises(InputError, match="^device bogus: not a device name"):
        simseg.load_model("tiny", tokenizer=vocab_dir, device="bogus")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="^device cuda: no CUDA device is available on this machine"):
            simseg.load_model("tiny", tokenizer=vocab_dir, device="cuda")
    assert simseg.load_model("tiny", tokenizer=vocab_dir, device=torch.device("cpu")).device == torch.device("cpu")
