"""Symmetric InfoNCE across ranks.

Each rank scores its local image rows against the text embeddings of ALL ranks (and vice versa); the targets are
the local rows' global indices. The gather passes gradients back (all-gather forward, reduce-sum + slice backward),
so with DDP's gradient averaging the update equals the one of a single process on the concatenated batch.
Rank and world size are arguments: nothing here reads global state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _GatherWithGrad(torch.autograd.Function):
    """All-gather forward; backward sums the incoming gradients over ranks and keeps this rank's slice."""

    @staticmethod
    def forward(ctx, features: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
        out = features.new_empty((ctx.world * features.shape[0], *features.shape[1:]))
        dist.all_gather_into_tensor(out, features.contiguous())
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        b = grad.shape[0] // ctx.world
        return grad[ctx.rank * b:(ctx.rank + 1) * b]


def gather_features(features: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenate ``features`` (B, D) from every rank in rank order, keeping the autograd graph.

    Every rank must pass the same B. With ``world_size == 1`` the input is returned unchanged.
    """
    if world_size == 1:
        return features
    return _GatherWithGrad.apply(features)


def contrastive_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    temperature: torch.Tensor | float,
    rank: int = 0,
    world_size: int = 1,
    all_image_emb: torch.Tensor | None = None,
    all_text_emb: torch.Tensor | None = None,
) -> torch.Tensor:
    """0.5 * (CE(image -> text) + CE(text -> image)) for this rank's rows.

    Args:
        image_emb, text_emb: (B, D) local L2-normalised embeddings; row i of each is a matching pair.
        temperature: logits = similarity / temperature (already clamped by the caller).
        rank, world_size: position of this process; features are gathered when world_size > 1.
        all_image_emb, all_text_emb: pre-gathered (world_size * B, D) embeddings, to skip the gather.

    Returns:
        the scalar loss averaged over the local rows.
    """
    if image_emb.shape != text_emb.shape:
        raise ValueError(
            f"image and text embeddings differ in shape: {tuple(image_emb.shape)} vs {tuple(text_emb.shape)}")
    if all_text_emb is None:
        all_text_emb = gather_features(text_emb, world_size)
    if all_image_emb is None:
        all_image_emb = gather_features(image_emb, world_size)
    b = image_emb.shape[0]
    targets = torch.arange(b, device=image_emb.device) + rank * b
    logits_i2t = image_emb @ all_text_emb.t() / temperature
    logits_t2i = text_emb @ all_image_emb.t() / temperature
    return 0.5 * (F.cross_entropy(logits_i2t, targets) + F.cross_entropy(logits_t2i, targets))
