"""Token pooling: LoDA (locality-driven alignment), masked average, and CLS.

LoDA pools each feature dimension independently: the mean of its top-k values over the token axis.
k = 5 for image patches and k = 1 (a per-dimension max) for text tokens.

All functions are pure: they never write into their inputs (the original wrote -10000 into its caller's tensor).
"""

from __future__ import annotations

import torch

#: Value given to padding tokens so they never win the top-k (as in the original: -10000).
_PAD_FILL = -1e4


def loda_pool(tokens: torch.Tensor, k: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-dimension mean of the top-k token values.

    Args:
        tokens: (B, N, D) token features.
        k: how many of the largest values to average per dimension.
        mask: optional (B, N) with 1/True for real tokens and 0/False for padding. When given ("masked" variant, used
            at evaluation), padding tokens never enter the top-k and k is capped at the shortest real length in the
            batch. Without it ("vanilla" variant) every token counts. Training uses either (``model.train_pooling``).

    Returns:
        (B, D) pooled features (not normalised).
    """
    if tokens.dim() != 3:
        raise ValueError(f"loda_pool expects (B, N, D) tokens, got shape {tuple(tokens.shape)}")
    if k < 1:
        raise ValueError(f"loda_pool: k must be >= 1, got {k}")
    k = min(k, tokens.shape[1])
    if mask is not None:
        valid = mask.to(torch.bool)
        shortest = int(valid.sum(dim=1).min().item())
        if shortest < 1:
            raise ValueError("loda_pool: a sequence in the batch has no unmasked token")
        k = min(k, shortest)
        tokens = tokens.masked_fill(~valid.unsqueeze(-1), _PAD_FILL)  # out of place
    return tokens.topk(k, dim=1).values.mean(dim=1)


def avg_pool(tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over tokens, padding excluded when a (B, N) mask is given."""
    if mask is None:
        return tokens.mean(dim=1)
    m = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def pool_tokens(
    tokens: torch.Tensor,
    method: str,
    k: int,
    mask: torch.Tensor | None = None,
    cls_token: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pool (B, N, D) tokens by ``method``: "loda", "avg" or "cls" (then ``cls_token`` (B, D) is returned)."""
    if method == "loda":
        return loda_pool(tokens, k, mask)
    if method == "avg":
        return avg_pool(tokens, mask)
    if method == "cls":
        if cls_token is None:
            raise ValueError("pool_tokens: 'cls' pooling needs the [CLS] token features")
        return cls_token
    raise ValueError(f"unknown pooling method {method!r}: choose loda, avg or cls")


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Divide by (norm + 1e-8), as the original does for pooled embeddings.

    The norm is computed as the original computes it, ``x.pow(2).sum(-1, keepdim=True).sqrt()``: ``torch.norm``
    rounds differently in the last bits, and with this formula embeddings and their gradients are bit-identical to
    the original's.
    """
    return x / (x.pow(2).sum(dim=-1, keepdim=True).sqrt() + 1e-8)
