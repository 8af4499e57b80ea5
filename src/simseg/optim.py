"""AdamW parameter groups and the paper's learning-rate schedule."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from simseg.errors import ConfigError
from simseg.schema import SCHEDULES

#: Learning-rate schedules: ``cosine`` (the paper's: linear warm-up, cosine to a floor) and ``constant``.


def param_groups(model: nn.Module, weight_decay: float, exclude_1d: bool = False) -> list[dict]:
    """AdamW parameter groups.

    Args:
        model: the model whose trainable parameters are grouped.
        weight_decay: the decoupled weight decay.
        exclude_1d: False (the original's optimizer, whose parameter-group rules are empty): ONE group, every
            parameter decayed, biases, LayerNorm weights and the temperature included. True (the open_clip
            convention): 0-d and 1-d parameters (biases, norm scales and shifts, the temperature) in a second group
            without decay.

    Returns:
        The groups, ``[{"params", "weight_decay"}, ...]`` (empty groups are left out).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not exclude_1d:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


#: AdamW kernels: ``fused`` (one kernel over every tensor, CPU and CUDA), ``foreach`` (multi-tensor ops) and
#: ``loop`` (one tensor at a time, what the original's ``torch.optim.AdamW`` ran on a CPU). The same update.
ADAMW_KERNELS = ("fused", "foreach", "loop")


def adamw(groups: list[dict], lr: float, betas: tuple[float, float], eps: float, kernel: str = "fused"
          ) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over ``groups`` with the chosen kernel.

    ``fused`` reads and writes each parameter, gradient and moment once per step instead of once per elementwise
    op: on a CPU the optimizer step of ViT-S/16 + BERT-base (131M parameters) takes a fraction of the loop's time,
    with no extra memory (``foreach`` holds temporaries for every tensor at once). Where the fused kernel is not
    available (a device or dtype it does not support), the ``foreach`` kernel is used.
    """
    if kernel not in ADAMW_KERNELS:
        raise ConfigError(f"AdamW kernel {kernel!r} is not one of {', '.join(ADAMW_KERNELS)}")
    options = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}[kernel]
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **options)
    except (RuntimeError, TypeError, ValueError):
        if kernel != "fused":
            raise
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=True)


def warmup_steps(total_steps: int, warmup: float) -> int:
    """Number of warm-up steps: ``int(total_steps * warmup)``, truncated as the original's scheduler does."""
    return int(total_steps * warmup)


def lr_scale(step: int, total_steps: int, warmup: float = 0.025, floor: float = 0.1, schedule: str = "cosine") -> float:
    """Multiplier of the base learning rate at ``step`` (0-based).

    ``cosine``: linear warm-up from 0 over the first ``int(total_steps * warmup)`` steps (``step / warmup_steps``, as
    the original's scheduler), then a cosine from 1 down to ``floor``:
    ``floor + (1 - floor) * 0.5 * (1 + cos(pi * progress))`` (with floor 0.1: the original's 0.1 + 0.9 * ...).
    ``constant``: 1 at every step (no warm-up, no decay), for debugging and cross-implementation checks.

    Raises:
        ConfigError: an unknown schedule.
    """
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ConfigError(f"train.schedule: {schedule!r} is not one of {', '.join(SCHEDULES)}")
    n_warm = warmup_steps(total_steps, warmup)
    if step < n_warm:
        return step / n_warm
    span = max(1, total_steps - n_warm)
    progress = min(1.0, (step - n_warm) / span)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
