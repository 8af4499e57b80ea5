"""AdamW parameter groups and the paper's learning-rate schedule."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weight decay on matrices and embeddings; none on norms, biases and the temperature."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2:  # biases, norm scales and shifts, the (0-d) temperature
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_scale(step: int, total_steps: int, warmup: float = 0.025, floor: float = 0.1) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based).

    Linear warm-up from 0 over the first ``warmup`` fraction of the steps (``step / warmup_steps``, as the
    original's scheduler), then a cosine from 1 down to ``floor``:
    ``floor + (1 - floor) * 0.5 * (1 + cos(pi * progress))`` (with floor 0.1: the original's 0.1 + 0.9 * ...).
    """
    warmup_steps = int(round(warmup * total_steps))
    if step < warmup_steps:
        return step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
