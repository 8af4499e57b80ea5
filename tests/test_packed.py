"""Inference on packed linear weights: bit-identical to the model, sharing its parameters, never stale."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from simseg import packed
from simseg.packed import PackedLinear, packed_view
from simseg.segment import Segmenter

needs_mkl = pytest.mark.skipif(not packed.available(), reason="this torch build has no MKL packed linear ops")


@pytest.fixture(autouse=True)
def one_thread():
    """The packed path runs with one torch thread (as the lanes of segment_many on a CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def model(tiny_model):
    return tiny_model.eval()


def _linears(module: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in module.modules() if type(m) is kind]


@needs_mkl
def test_the_view_gives_the_models_values_exactly_and_shares_its_weights(model):
    view = packed_view(model)
    assert view is not model
    assert _linears(model.image_encoder, PackedLinear) == []  # the model is not changed
    wrapped = _linears(view.image_encoder, PackedLinear)
    assert len(wrapped) == len(_linears(model.image_encoder, nn.Linear)) > 0
    assert {id(p) for p in view.parameters()} == {id(p) for p in model.parameters()}
    assert view.text_encoder is model.text_encoder
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for shape in [(1, 3, 64, 64), (3, 3, 64, 64), (2, 3, 96, 64), (1, 3, 64, 64)]:
            x = torch.randn(*shape, generator=gen)
            a, grid_a = model.encode_image_tokens(x)
            b, grid_b = view.encode_image_tokens(x)
            assert grid_a == grid_b
            assert torch.equal(a, b)
            assert torch.equal(model.encode_image(x), view.encode_image(x))


@needs_mkl
def test_a_weight_changed_in_place_is_never_computed_from_an_old_pack():
    linear = nn.Linear(16, 8)
    layer = PackedLinear(linear)
    x = torch.randn(5, 16)
    with torch.inference_mode():
        layer(x)
    with torch.no_grad():
        linear.weight.mul_(-2.0)
        linear.bias.add_(1.0)
    with torch.inference_mode():
        assert torch.equal(layer(x), nn.functional.linear(x, linear.weight, linear.bias))
    assert len(layer._packs) <= packed.KEEP_PACKS
    with torch.inference_mode():
        for rows in (1, 2, 15, 16, 17, 40, 16, 100):
            assert torch.equal(layer(torch.ones(rows, 16)), linear(torch.ones(rows, 16)))
    assert len(layer._packs) <= packed.KEEP_PACKS


@needs_mkl
@pytest.mark.parametrize("in_features, out_features", [(16, 8), (384, 1152), (1536, 384), (768, 3072), (13, 7)])
def test_a_packed_layer_equals_the_ordinary_linear_bit_for_bit(in_features, out_features):
    gen = torch.Generator().manual_seed(in_features)
    linear = nn.Linear(in_features, out_features)
    layer = PackedLinear(linear)
    assert (layer.in_features, layer.out_features) == (in_features, out_features)
    assert layer.weight is linear.weight and layer.bias is linear.bias
    with torch.inference_mode():
        for rows in (1, 3, packed.MIN_ROWS, 17, 65, 197, 325, 1000):
            x = torch.randn(rows, in_features, generator=gen)
            assert torch.equal(layer(x), linear(x)), rows
        assert layer._packs  # packs were made, and checked against the ordinary linear
        x = torch.randn(2, 325, in_features, generator=gen)
        assert torch.equal(layer(x), linear(x))
        torch.set_num_threads(2)  # more threads: the ordinary linear, so the same values again
        assert torch.equal(layer(x), linear(x))


class _Counting(PackedLinear):
    """A packed layer that counts its packed products and can be told to make them wrong."""

    def __init__(self, linear: nn.Linear, off: float = 0.0):
        super().__init__(linear)
        self.off, self.calls = off, 0

    def _packed_product(self, x, pack, rows):
        self.calls += 1
        return super()._packed_product(x, pack, rows) + self.off


@needs_mkl
def test_a_pack_whose_product_differs_from_the_ordinary_linear_is_never_used():
    linear = nn.Linear(384, 1152)
    layer = _Counting(linear, off=1e-3)
    x = torch.randn(325, 384)
    with torch.inference_mode():
        for _ in range(2):
            assert torch.equal(layer(x), linear(x))
    assert layer.calls == 1  # the check as the pack was made, then the ordinary linear only
    assert list(layer._packs.values()) == [None]


@needs_mkl
def test_where_the_products_agree_the_packed_kernel_computes_the_layer():
    linear = nn.Linear(384, 1152)  # a ViT-S layer at 288 px: 325 tokens
    layer = _Counting(linear)
    x = torch.randn(325, 384)
    with torch.inference_mode():
        out = layer(x)
    if list(layer._packs.values()) == [None]:
        pytest.skip("on this CPU MKL's packed kernel sums in another order than the ordinary one at this shape")
    assert layer.calls == 2  # the check, then the call itself
    assert torch.equal(out, linear(x))


@needs_mkl
def test_with_autograd_or_other_dtypes_a_layer_is_the_ordinary_linear():
    linear = nn.Linear(16, 8)
    layer = PackedLinear(linear)
    x = torch.randn(4, 16, requires_grad=True)
    layer(x).sum().backward()
    assert linear.weight.grad is not None and x.grad is not None
    x64 = torch.randn(4, 16, dtype=torch.float64)
    with torch.inference_mode():
        out = PackedLinear(nn.Linear(16, 8).double())(x64)
    assert out.dtype == torch.float64
    with torch.inference_mode():
        assert PackedLinear(linear)(torch.zeros(0, 16)).shape == (0, 8)


@needs_mkl
def test_lanes_sharing_one_view_get_the_models_values(model):
    view = packed_view(model)
    inputs = [torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    with torch.inference_mode():
        expected = [model.encode_image_tokens(x)[0] for x in inputs]
    results: dict[int, torch.Tensor] = {}

    def lane(indices):
        with torch.inference_mode():
            for i in indices:
                results[i] = view.encode_image_tokens(inputs[i])[0]

    lanes = [threading.Thread(target=lane, args=(range(k, 6, 2),)) for k in range(2)]
    for t in lanes:
        t.start()
    for t in lanes:
        t.join()
    assert all(torch.equal(results[i], expected[i]) for i in range(6))


def test_without_the_ops_the_view_is_the_model_itself(model, monkeypatch):
    monkeypatch.setattr(packed, "available", lambda: False)
    assert packed_view(model) is model
    assert packed_view(object()) is not None


@needs_mkl
def test_segmenter_labels_equal_the_protocol_on_the_model_itself(model, tmp_path):
    classes = ["background", "cat", "dog", "grass"]
    for protocol in ("simseg", "dense"):
        seg = Segmenter(model, classes, protocol=protocol, crf=False, templates="single", cache_dir=tmp_path,
                        progress=False, **({"input_size": 64} if protocol == "simseg" else
                                           {"crop_size": 64, "stride": 48, "short_side": 64}))
        assert seg.model is model
        rng = np.random.default_rng(0)
        for _ in range(2):
            image = Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8))
            ours = seg(image)
            plain = seg.protocol(model, seg.class_emb, seg.class_names, image, seg.class_of_name)
            assert np.array_equal(ours.labels, plain.labels)
            assert np.array_equal(ours.scores, plain.scores)
