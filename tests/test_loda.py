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
