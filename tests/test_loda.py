import pytest
import torch

from simseg.loda import avg_pool, l2_normalize, loda_pool, pool_tokens


def test_loda_matches_hand_computation():
    # one sample, 4 tokens, 2 dims
    x = torch.tensor([[[1.0, 8.0], [4.0, 2.0], [3.0, 5.0], [2.0, 7.0]]])
    assert torch.allclose(loda_pool(x, 1), torch.tensor([[4.0, 8.0]]))
    assert torch.allclose(loda_pool(x, 2), torch.tensor([[3.5, 7.5]]))
    assert torch.allclose(loda_pool(x, 3), torch.tensor([[3.0, 20.0 / 3]]))
    # k larger than the number of tokens: mean of all
    assert torch.allclose(loda_pool(x, 10), x.mean(dim=1))


def test_masked_loda_ignores_padding_and_caps_k():
    x = torch.tensor([[[1.0], [2.0], [100.0]], [[5.0], [3.0], [4.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # padding (100) never wins; k=5 is capped at the shortest real length (2) for the whole batch
    out = loda_pool(x, 5, mask)
    assert torch.allclose(out, torch.tensor([[1.5], [4.5]]))
    # vanilla variant lets the padding token in
    assert torch.allclose(loda_pool(x, 1), torch.tensor([[100.0], [5.0]]))


def test_loda_never_writes_into_its_input():
    x = torch.randn(2, 6, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    before = x.clone()
    loda_pool(x, 2, mask)
    avg_pool(x, mask)
    assert torch.equal(x, before)


def test_loda_gradients_flow_to_topk_only():
    x = torch.tensor([[[1.0], [4.0], [3.0], [2.0]]], requires_grad=True)
    loda_pool(x, 2).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([[[0.0], [0.5], [0.5], [0.0]]]))


def test_avg_pool_masked_and_errors():
    x = torch.tensor([[[2.0], [4.0], [9.0]]])
    assert torch.allclose(avg_pool(x, torch.tensor([[1, 1, 0]])), torch.tensor([[3.0]]))
    with pytest.raises(ValueError):
        loda_pool(x, 1, torch.tensor([[0, 0, 0]]))
    with pytest.raises(ValueError):
        pool_tokens(x, "max", 1)
    with pytest.raises(ValueError):
        pool_tokens(x, "cls", 1)


def test_l2_normalize_uses_eps():
    v = l2_normalize(torch.tensor([[3.0, 4.0]]))
    assert torch.allclose(v, torch.tensor([[0.6, 0.8]]), atol=1e-6)
    assert torch.all(l2_normalize(torch.zeros(1, 3)) == 0)


def test_l2_normalize_is_the_originals_formula_bit_for_bit():
    """x / (sqrt(sum(x ** 2)) + 1e-8) computed as pow(2).sum().sqrt(): embeddings and gradients bit-identical to that
    expression; torch.norm rounds differently in the last bits (so the formula is not a detail)."""
    g = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(64, 512, generator=g)).requires_grad_(True)
    ref = x.detach().clone().requires_grad_(True)
    got = l2_normalize(x)
    want = ref / (ref.pow(2).sum(dim=-1, keepdim=True).sqrt() + 1e-8)
    assert torch.equal(got, want)
    weights = torch.randn(64, 512, generator=g)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    assert torch.equal(x.grad, ref.grad)
    with_norm = x.detach() / (x.detach().norm(dim=-1, keepdim=True) + 1e-8)
    assert not torch.equal(got.detach(), with_norm)


def test_the_model_pools_patches_with_top5_and_words_with_top1(tiny_model):
    """The model's embeddings are LoDA with the paper's k, computed here from its projected tokens: per dimension the
    mean of the 5 largest patch values, the largest real (non-padding) word value; then / (norm + 1e-8)."""
    from simseg.config import load_preset

    for preset in ("simseg-vit-s16", "simseg-vit-b16", "tiny"):
        model_cfg = load_preset(preset)["model"]
        assert (model_cfg["image_topk"], model_cfg["text_topk"]) == (5, 1), preset
    assert (tiny_model.image_topk, tiny_model.text_topk) == (5, 1)
    x = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    batch = tiny_model.tokenize(["a photo of a cat on the grass.", "a dog"], padding="max_length")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        patches, _ = tiny_model.encode_image_tokens(x)
        words = tiny_model.text_tokens(ids, mask)
        image = tiny_model.encode_image(x)
        text = tiny_model.encode_text(ids, mask)
        vanilla = tiny_model.encode_text(ids, mask, masked=False)

    def unit(v):
        return v / (v.pow(2).sum(dim=-1, keepdim=True).sqrt() + 1e-8)

    top5 = torch.stack([patches[b].sort(dim=0, descending=True).values[:5].mean(dim=0) for b in range(2)])
    torch.testing.assert_close(image, unit(top5), rtol=0, atol=1e-6)
    real_max = torch.stack([words[b, mask[b].bool()].max(dim=0).values for b in range(2)])
    torch.testing.assert_close(text, unit(real_max), rtol=0, atol=1e-6)
    torch.testing.assert_close(vanilla, unit(words.max(dim=1).values), rtol=0, atol=1e-6)
    # the fixture tells k apart: k = 4 or 6, or the padding let in, would be other embeddings
    for k in (4, 6):
        other = torch.stack([patches[b].sort(dim=0, descending=True).values[:k].mean(dim=0) for b in range(2)])
        assert (unit(other) - image).abs().max() > 1e-4
    assert (vanilla - text).abs().max() > 1e-4


def test_masked_k_is_capped_exactly_at_the_shortest_sequence():
    x = torch.arange(1.0, 8.0).view(1, 7, 1).repeat(2, 1, 1)  # values 1..7 in both rows
    five_real = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]])  # shortest = 5 = k: no cap
    assert torch.equal(loda_pool(x, 5, five_real), torch.tensor([[3.0], [5.0]]))  # mean(1..5), mean(3..7)
    four_real = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]])  # shortest = 4: k becomes 4
    assert torch.equal(loda_pool(x, 5, four_real), torch.tensor([[2.5], [5.5]]))
    assert torch.equal(loda_pool(x[:, :5], 5), torch.tensor([[3.0], [3.0]]))  # exactly k tokens: all of them
    assert torch.equal(loda_pool(x[:, :4], 5), torch.tensor([[2.5], [2.5]]))  # fewer: k capped at the count
