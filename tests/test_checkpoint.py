
import pytest
import torch
import torch.nn.functional as F

import simseg
from simseg.checkpoint import import_original, infer_original_config, load_model, save_model
from simseg.config import load_preset, to_dict
from simseg.errors import CheckpointError
from simseg.model import build_model
from simseg.tokenizer import load_tokenizer


def _small_cfg():
    # head counts equal width // 64, as for every standard ViT / BERT, so the importer can infer the architecture
    cfg = to_dict(load_preset("tiny").model)
    cfg["vision"]["kwargs"] = {"embed_dim": 128, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}
    cfg["text"]["config"] = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                             "intermediate_size": 256, "max_position_embeddings": 64}
    return cfg


def _to_original_layout(model, ddp=False):
    sd = {}
    for k, v in model.state_dict().items():
        if k.startswith("image_encoder."):
            sd["image_encoder.model.model." + k[len("image_encoder."):]] = v.clone()
        elif k.startswith("text_encoder."):
            sd["text_encoder.model.model." + k[len("text_encoder."):]] = v.clone()
        elif k == "image_projection.weight":
            sd["image_projection.linear.weight"] = v.clone()
        elif k == "text_projection.weight":
            sd["text_projection.linear.weight"] = v.clone()
        elif k == "temperature_param":
            sd["loss.temperature"] = v.clone()
        else:
            raise AssertionError(k)
    sd["text_encoder.model.model.embeddings.position_ids"] = torch.arange(64).unsqueeze(0)
    if ddp:
        sd = {"module." + k: v for k, v in sd.items()}
    from torch.torch_version import TorchVersion

    return {"state_dict": sd, "meta": {"torch": TorchVersion("1.10.0")}}


@pytest.fixture(scope="module")
def small_model(vocab_dir):
    torch.manual_seed(1)
    tok = load_tokenizer(vocab_dir)
    return build_model(_small_cfg(), tok).eval()


def _outputs(model, size=224):
    torch.manual_seed(5)
    x = torch.randn(2, 3, size, size)
    batch = model.tokenize(["a photo of a cat.", "a red circle"], padding="longest")
    with torch.no_grad():
        return model.encode_image(x), model.encode_text(**batch), model.encode_image_tokens(x)[0]


def test_own_format_round_trip(tmp_path, tiny_model):
    out = save_model(tiny_model, tmp_path / "ck", meta={"note": "test"})
    assert (out / "model.safetensors").is_file() and (out / "tokenizer" / "vocab.txt").is_file()
    loaded = simseg.load_model(out)
    for a, b in zip(_outputs(tiny_model), _outputs(loaded)):
        assert torch.equal(a, b)
    assert loaded.weights_hash == tiny_model.weights_hash
    assert not list(out.glob(".*tmp*")), "temporary files left behind"


@pytest.mark.parametrize("ddp", [False, True])
def test_original_import_maps_every_key_and_matches_outputs(tmp_path, small_model, vocab_dir, ddp):
    path = tmp_path / "simseg.small.pth"
    torch.save(_to_original_layout(small_model, ddp=ddp), path)
    loaded = load_model(path, tokenizer=vocab_dir)
    for a, b in zip(_outputs(small_model), _outputs(loaded)):
        assert torch.allclose(a, b, atol=1e-6)
    assert loaded.temperature().item() == pytest.approx(small_model.temperature().item())


def test_inferred_config_reads_shapes(small_model):
    cfg = infer_original_config(_to_original_layout(small_model)["state_dict"])
    assert cfg["vision"]["img_size"] == 224
    assert cfg["vision"]["kwargs"]["embed_dim"] == 128 and cfg["vision"]["kwargs"]["depth"] == 2
    assert cfg["text"]["config"]["num_hidden_layers"] == 2 and cfg["text"]["config"]["hidden_size"] == 128


def test_position_embedding_resized_bicubic_without_antialias(tmp_path, small_model, vocab_dir):
    path = tmp_path / "s.pth"
    torch.save(_to_original_layout(small_model), path)
    m = load_model(path, tokenizer=vocab_dir, image_size=288)
    assert m.image_size == 288
    old = small_model.image_encoder.pos_embed.detach()
    grid = old[:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(18, 18), mode="bicubic", align_corners=False, antialias=False)
    want = want.permute(0, 2, 3, 1).reshape(1, 324, -1)
    got = m.image_encoder.pos_embed.detach()
    assert torch.allclose(got[:, :1], old[:, :1])
    assert torch.allclose(got[:, 1:], want, atol=1e-6)
    tokens, grid_shape = m.encode_image_tokens(torch.randn(1, 3, 288, 288))
    assert tokens.shape == (1, 324, 512) and grid_shape == (18, 18)


def test_tampered_key_fails_listing_it(tmp_path, small_model, vocab_dir):
    ck = _to_original_layout(small_model)
    sd = ck["state_dict"]
    sd["image_encoder.model.model.blocks.0.attn.qkv.weightX"] = sd.pop("image_encoder.model.model.blocks.0.attn.qkv.weight")
    torch.save(ck, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="blocks.0.attn.qkv.weight"):
        import_original(tmp_path / "bad.pth", load_tokenizer(vocab_dir), model_config=_small_cfg())
    ck2 = _to_original_layout(small_model)
    ck2["state_dict"]["text_projection.linear.weight"] = torch.zeros(512, 100)
    torch.save(ck2, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match="wrong shape: text_projection.weight"):
        import_original(tmp_path / "shape.pth", load_tokenizer(vocab_dir), model_config=_small_cfg())


def test_a_pth_with_a_smaller_vocabulary_than_berts_needs_its_tokenizer(tmp_path, small_model, vocab_dir):
    path = tmp_path / "own-vocab.pth"  # an original-layout file whose text tower has the tokens of vocab_dir
    torch.save(_to_original_layout(small_model), path)
    with pytest.raises(CheckpointError, match=r"own-vocab\.pth: its text tower has \d+ word embeddings, fewer than "
                                              r"the tokenizer's 30522 tokens \(give the tokenizer it was trained with"):
        load_model(path)  # bert-base-uncased by default, whose ids would index past the embeddings
    model = load_model(path, tokenizer=vocab_dir)
    batch = model.tokenize(["a photo of a cat."])
    assert model.encode_text(batch["input_ids"], batch["attention_mask"]).shape == (1, 512)


def test_a_training_run_folder_given_as_checkpoint_names_its_model(tmp_path, tiny_model):
    from simseg.config import save_config

    run = tmp_path / "run"  # what simseg train writes: the run's config.yaml, the final model in checkpoint/
    save_model(tiny_model, run / "checkpoint")
    save_config(to_dict(load_preset("tiny")), run / "config.yaml")
    with pytest.raises(CheckpointError, match=r"run/config\.yaml: not a simseg checkpoint config \(a training run's "
                                              r"folder: its model is .*run/checkpoint\)$"):
        load_model(run)


def test_a_training_run_folder_without_its_final_model_names_its_newest_checkpoint(tmp_path, tiny_model):
    from simseg.config import save_config

    run = tmp_path / "run"  # a run still training: periodic checkpoints only
    save_config(to_dict(load_preset("tiny")), run / "config.yaml")
    for step in (100, 200):
        save_model(tiny_model, run / "checkpoints" / f"step-{step:08d}")
    with pytest.raises(CheckpointError, match=r"run/config\.yaml: not a simseg checkpoint config \(a training run's "
                                              r"folder: its newest checkpoint is .*run/checkpoints/step-00000200\)$"):
        load_model(run)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_resizing_back_and_forth_does_not_compound(small_model):
    import copy

    m = copy.deepcopy(small_model)
    native = m.image_encoder.pos_embed.detach().clone()
    m.set_image_size(288)
    at288 = m.image_encoder.pos_embed.detach().clone()
    m.set_image_size(448)
    m.set_image_size(288)
    assert torch.equal(m.image_encoder.pos_embed.detach(), at288)
    m.set_image_size(224)
    assert torch.equal(m.image_encoder.pos_embed.detach(), native)
    # weights trained after a resize become the native ones
    with torch.no_grad():
        m.image_encoder.pos_embed.add_(1.0)
    m.set_image_size(288)
    assert not torch.equal(m.image_encoder.pos_embed.detach(), at288)


@pytest.mark.parametrize("source", ["own", "original"])
def test_loading_without_initialisation_equals_the_initialised_path(tmp_path, small_model, vocab_dir, source):
    """The fast start-up path (empty build, assigned weights) gives the embeddings and labels of the plain path
    (random initialisation, then the weights copied in) and draws no random number."""
    import numpy as np
    from PIL import Image

    from simseg.classnames import IMAGENET_TEMPLATES
    from simseg.embeddings import class_embeddings
    from simseg.segment import Segmenter

    if source == "own":
        path = save_model(small_model, tmp_path / "ck")
    else:
        path = tmp_path / "simseg.small.pth"
        torch.save(_to_original_layout(small_model), path)
    before = torch.get_rng_state()
    fast = load_model(path, tokenizer=vocab_dir)
    assert torch.equal(torch.get_rng_state(), before)  # nothing was randomly initialised
    assert not [n for n, t in [*fast.named_parameters(), *fast.named_buffers()] if t.is_meta]
    plain = build_model(fast.config, load_tokenizer(vocab_dir), pretrained=False)
    plain.load_state_dict(small_model.state_dict())
    plain.eval()
    for name, buf in plain.named_buffers():  # the buffers no state dict holds
        assert torch.equal(dict(fast.named_buffers())[name], buf), name
    classes = ["cat", "dog", "grass", "sky"]
    emb_fast = class_embeddings(fast, classes, IMAGENET_TEMPLATES, use_cache=False)
    emb_plain = class_embeddings(plain, classes, IMAGENET_TEMPLATES, use_cache=False)
    torch.testing.assert_close(emb_fast, emb_plain, rtol=0, atol=1e-6)
    rng = np.random.default_rng(3)
    for i in range(3):
        image = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8).repeat(24, 0).repeat(20, 1))
        a = Segmenter(fast, classes, templates="single", cache_dir=tmp_path, threshold_std=-10)(image)
        b = Segmenter(plain, classes, templates="single", cache_dir=tmp_path, threshold_std=-10)(image)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.scores, b.scores)


def test_a_report_stamp_reuses_the_verified_weights_hash(tmp_path, tiny_model):
    from simseg.app.report import provenance
    from simseg.checkpoint import checkpoint_fingerprint, file_sha256

    folder = save_model(tiny_model, tmp_path / "ck")
    loaded = load_model(folder)
    assert loaded.weights_file_sha256 == file_sha256(folder / "model.safetensors")
    assert provenance(folder, model=loaded)["checkpoint"] == checkpoint_fingerprint(folder)
    # a changed file is caught by loading it, so a stamp never carries a stale hash of a model that loaded
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:-1] + b"\0")
    with pytest.raises(Exception, match="does not match the sha256"):
        load_model(folder)
