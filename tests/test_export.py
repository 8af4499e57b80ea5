"""ONNX export and the ONNX Runtime backend: graphs checked, equal to torch within 1e-4, the same labels through the
protocols, and one-line errors for exports of other models or other format versions."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from simseg.errors import CheckpointError, ConfigError, InputError, SimSegError
from simseg.loda import loda_pool

TOL = 1e-4


def test_masked_topk_mean_equals_loda_pool():
    from simseg.export import masked_topk_mean

    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(4, 9, 16, generator=gen)
    for lengths in ([9, 9, 9, 9], [9, 3, 7, 5], [2, 9, 1, 4]):
        mask = (torch.arange(9).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()
        for k in (1, 2, 3, 5):
            expected = loda_pool(tokens, k, mask)
            assert torch.allclose(masked_topk_mean(tokens, k, mask), expected, atol=1e-6), (lengths, k)
    assert torch.equal(tokens, torch.randn(4, 9, 16, generator=torch.Generator().manual_seed(0)))  # not modified


def test_export_folder_graphs_and_manifest(onnx_checkpoint, tiny_model):
    import onnx

    from simseg.checkpoint import file_sha256
    from simseg.export import MANIFEST_NAME, ONNX_FORMAT_VERSION

    folder = onnx_checkpoint / "onnx"
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["format_version"] == ONNX_FORMAT_VERSION and manifest["simseg_version"]
    assert manifest["source"]["weights_sha256"] == tiny_model.weights_hash
    assert manifest["source"]["checkpoint"]["sha256"] == file_sha256(onnx_checkpoint / "model.safetensors")
    assert manifest["image"]["sizes"] == [288, 64] and manifest["image"]["patch_size"] == 16
    assert manifest["embed_dim"] == 512 and manifest["pooling"] == "loda" and manifest["image_topk"] == 5
    assert manifest["temperature"] == pytest.approx(float(tiny_model.temperature().detach()))
    assert manifest["image"]["mean"] == list(tiny_model.mean) and manifest["image"]["std"] == list(tiny_model.std)
    assert (folder / "tokenizer" / "vocab.txt").read_text() == (onnx_checkpoint / "tokenizer" / "vocab.txt").read_text()
    assert max(manifest["verified"]["max_abs_diff"].values()) <= TOL
    for name, inputs, outputs in (("image_288.onnx", ["image"], ["patch_tokens", "image_embedding"]),
                                  ("text.onnx", ["input_ids", "attention_mask"], ["text_embedding"])):
        graph = onnx.load(str(folder / name))
        onnx.checker.check_model(graph, full_check=True)
        assert [i.name for i in graph.graph.input] == inputs and [o.name for o in graph.graph.output] == outputs
        batch_dims = [i.type.tensor_type.shape.dim[0] for i in graph.graph.input]
        assert all(d.dim_param and not d.dim_value for d in batch_dims), "the batch axis must be dynamic"
        props = {p.key: p.value for p in graph.metadata_props}
        assert props["simseg_weights_sha256"] == tiny_model.weights_hash
    image = onnx.load(str(folder / "image_288.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in image[1:]] == [3, 288, 288]
    text_len = onnx.load(str(folder / "text.onnx")).graph.input[0].type.tensor_type.shape.dim[1]
    assert text_len.dim_param, "the text length must be dynamic"


def test_onnx_model_outputs_equal_torch(onnx_checkpoint, tiny_model):
    from simseg.export import load_onnx_model

    onnx_model = load_onnx_model(onnx_checkpoint, threads=1)
    gen = torch.Generator().manual_seed(3)
    for size, batch in ((288, 1), (288, 3), (64, 5)):
        x = torch.randn(batch, 3, size, size, generator=gen)
        tokens, grid = onnx_model.encode_image_tokens(x)
        with torch.no_grad():
            ref_tokens, ref_grid = tiny_model.encode_image_tokens(x)
            ref_emb = tiny_model.encode_image(x)
        assert grid == ref_grid and tokens.shape == ref_tokens.shape
        assert (tokens - ref_tokens).abs().max() <= TOL
        assert (onnx_model.encode_image(x) - ref_emb).abs().max() <= TOL
    texts = ["a cat", "a photo of a dog on the grass.", "a bad photo of the big red circle next to a blue star."]
    for padding in ("longest", "max_length"):
        for chunk in (texts[:1], texts):
            batch = onnx_model.tokenize(chunk, padding=padding)
            with torch.no_grad():
                ref = tiny_model.encode_text(batch["input_ids"], batch["attention_mask"])
            assert (onnx_model.encode_text(batch["input_ids"], batch["attention_mask"]) - ref).abs().max() <= TOL
    assert float(onnx_model.temperature()) == pytest.approx(float(tiny_model.temperature().detach()))
    with pytest.raises(ConfigError, match="exported for input 64, 288.*asks for 224"):
        onnx_model.encode_image_tokens(torch.zeros(1, 3, 224, 224))


def test_segmenter_on_onnx_gives_the_torch_labels(onnx_checkpoint, tiny_model, tmp_path):
    import simseg
    from simseg.segment import Segmenter

    onnx_model = simseg.load_model(onnx_checkpoint, backend="onnx")
    rng = np.random.default_rng(5)
    images = [Image.fromarray(rng.integers(0, 256, (40 + 9 * i, 56, 3), dtype=np.uint8)) for i in range(3)]
    classes = ["cat", "dog", "grass"]
    for protocol, params in (("simseg", {"threshold_std": -10.0}), ("dense", {"crop_size": 64, "short_side": 64,
                                                                               "stride": 32})):
        torch_seg = Segmenter(tiny_model, classes, protocol=protocol, templates="single",
                              cache_dir=tmp_path / "torch", **params)
        onnx_seg = Segmenter(onnx_model, classes, protocol=protocol, templates="single",
                             cache_dir=tmp_path / "onnx", **params)
        assert (onnx_seg.class_emb - torch_seg.class_emb).abs().max() <= TOL
        for image in images:
            a, b = torch_seg(image), onnx_seg(image)
            assert np.abs(a.scores - b.scores).max() <= TOL
            assert np.array_equal(a.labels, b.labels), protocol
            assert a.labels.max() > 0  # something was segmented, so the maps were compared, not two backgrounds
    # a second segmenter reads the class embeddings that the first one cached under the ONNX text graph's key
    again = Segmenter(onnx_model, classes, protocol="simseg", templates="single", cache_dir=tmp_path / "onnx")
    assert len(list((tmp_path / "onnx").glob("*.npy"))) == 1 and torch.equal(again.class_emb, onnx_seg.class_emb)


def _copy_export(src, dst):
    shutil.copytree(src / "onnx", dst)
    return dst


def test_exports_of_other_models_or_versions_are_one_line_errors(onnx_checkpoint, tmp_path, tiny_model):
    import onnx

    import simseg
    from simseg.checkpoint import save_model
    from simseg.export import MANIFEST_NAME

    def fails(path, words, error=CheckpointError):
        with pytest.raises(error, match=words) as info:
            simseg.load_model(path, backend="onnx")
        assert "\n" not in str(info.value)

    fails(tmp_path / "nowhere", "not found", InputError)
    fails(onnx_checkpoint / "tokenizer", "no ONNX export")
    fails(tmp_path, "no ONNX export")
    plain = save_model(tiny_model, tmp_path / "plain-ck")  # a checkpoint folder: its export goes in its onnx/
    fails(plain, f"no ONNX export .*make one with: simseg export {plain} {plain / 'onnx'} --format onnx$")

    old = _copy_export(onnx_checkpoint, tmp_path / "old")
    manifest = json.loads((old / MANIFEST_NAME).read_text())
    (old / MANIFEST_NAME).write_text(json.dumps({**manifest, "format_version": 0, "simseg_version": "0.0.1"}))
    fails(old, "format version 0 .*simseg 0.0.1.* export the model again")

    other = _copy_export(onnx_checkpoint, tmp_path / "other")
    graph = onnx.load(str(other / "text.onnx"))  # a text graph whose metadata names other weights
    onnx.helper.set_model_props(graph, {**{p.key: p.value for p in graph.metadata_props},
                                        "simseg_weights_sha256": "f" * 64})
    onnx.save(graph, str(other / "text.onnx"))
    fails(other, r"text.onnx: exported from another model \(weights sha256 ffffffffffff")

    edited = _copy_export(onnx_checkpoint, tmp_path / "edited")
    blob = bytearray((edited / "image_64.onnx").read_bytes())
    blob[len(blob) // 2] ^= 1  # a byte of the weights
    (edited / "image_64.onnx").write_bytes(bytes(blob))
    fails(edited, "image_64.onnx: does not match the sha256")

    swapped = _copy_export(onnx_checkpoint, tmp_path / "swapped")
    (swapped / "image_64.onnx").write_bytes((swapped / "image_288.onnx").read_bytes())
    fails(swapped, "image_64.onnx: holds the image graph at 288, the manifest expects the image graph at 64")

    incomplete = _copy_export(onnx_checkpoint, tmp_path / "incomplete")
    (incomplete / "text.onnx").unlink()
    fails(incomplete, "text.onnx: missing")

    # an export that records no checkpoint file (made from a model in memory) is matched by the weights themselves
    same = save_model(tiny_model, tmp_path / "same-ck")
    shutil.copytree(onnx_checkpoint / "onnx", same / "onnx")
    manifest = json.loads((same / "onnx" / MANIFEST_NAME).read_text())
    (same / "onnx" / MANIFEST_NAME).write_text(json.dumps({**manifest, "source": {**manifest["source"],
                                                                                   "checkpoint": None}}))
    assert simseg.load_model(same, backend="onnx").weights_hash == tiny_model.weights_hash
    (same / "model.safetensors").unlink()
    fails(same, "cannot tell whether it was exported from this checkpoint")

    # a checkpoint whose onnx/ subfolder was exported from another model (same config, other random weights)
    from simseg.model import build_model

    other_model = build_model(tiny_model.config, tiny_model.tokenizer, pretrained=False).eval()
    ck = save_model(other_model, tmp_path / "other-ck")
    shutil.copytree(onnx_checkpoint / "onnx", ck / "onnx")
    fails(ck, "onnx: exported from another model")


def test_an_export_missing_its_tokenizer_or_a_manifest_entry_is_one_line(onnx_checkpoint, tmp_path, vocab_dir):
    import simseg
    from simseg.export import MANIFEST_NAME

    no_vocab = _copy_export(onnx_checkpoint, tmp_path / "no-vocab")
    shutil.rmtree(no_vocab / "tokenizer")
    with pytest.raises(CheckpointError, match=r"tokenizer/vocab.txt: missing \(the export is incomplete") as info:
        simseg.load_model(no_vocab, backend="onnx")
    assert "\n" not in str(info.value)
    assert simseg.load_model(no_vocab, backend="onnx", tokenizer=vocab_dir).tokenizer is not None  # one given: fine

    edited = _copy_export(onnx_checkpoint, tmp_path / "edited")
    manifest = json.loads((edited / MANIFEST_NAME).read_text())
    del manifest["embed_dim"]
    (edited / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"simseg_onnx.json: incomplete manifest \(no 'embed_dim'\)") as info:
        simseg.load_model(edited, backend="onnx")
    assert "\n" not in str(info.value)


def test_unsupported_exports_are_one_line_errors(tiny_model, vocab_dir, tmp_path, onnx_checkpoint):
    import simseg
    from simseg.export import export_onnx
    from simseg.model import build_model

    cases = [
        (simseg.load_model(onnx_checkpoint, backend="onnx"), (288,), CheckpointError, "takes a torch SimSegModel"),
        (tiny_model, (100,), InputError, "multiple of the patch size 16"),
        (tiny_model, (), InputError, "at least one image size"),
    ]
    distilled = build_model({"vision": {"name": "deit_tiny_distilled_patch16_224", "img_size": 32,
                                        "kwargs": {"embed_dim": 32, "depth": 1, "num_heads": 1}},
                             "text": {"name": "bert-base-uncased", "config": {
                                 "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 1,
                                 "intermediate_size": 32, "vocab_size": 400}}}, pretrained=False).eval()
    cases.append((distilled, (32,), CheckpointError, "VisionTransformerDistilled.*plain VisionTransformer"))
    training = build_model(tiny_model.config, tiny_model.tokenizer, pretrained=False)  # a new model, in train mode
    cases.append((training, (64,), CheckpointError, "training mode"))
    for model, sizes, error, words in cases:
        with pytest.raises(error, match=words) as info:
            export_onnx(model, tmp_path / "out", input_sizes=sizes)
        assert "\n" not in str(info.value)
    assert not (tmp_path / "out" / "simseg_onnx.json").exists()
    with pytest.raises(InputError, match="no CUDA provider"):
        simseg.load_model(onnx_checkpoint, backend="onnx", device="cuda")
    with pytest.raises(SimSegError, match="image_size"):
        simseg.load_model(onnx_checkpoint, backend="onnx", image_size=224)
