"""Inference with the image tower's linear layers on pre-packed weights (CPU, fp32, Intel MKL).

A linear layer is a GEMM whose right-hand matrix (the weight) is the same on every call. MKL's packed GEMM
(``cblas_sgemm_pack``, exposed by torch as ``torch.ops.mkl._mkl_reorder_linear_weight`` / ``_mkl_linear``, the
ops torch's own compiler uses for frozen CPU graphs) lays the weight out once in the order its kernel reads it,
so a call skips that copy: about 15 % faster on the ViT's layers (see ``benchmarks/bench_segment.py``).

The packed path is taken only where it computes the same products in the same order as
``torch.nn.functional.linear``, so the outputs are bit-identical (tested): with one torch thread (how
:meth:`simseg.segment.Segmenter.segment_many` runs its lanes on a CPU; with more threads MKL may split the inner
dimension between them differently), at least :data:`MIN_ROWS` rows (MKL takes other kernels for fewer), and only
for a pack whose product equals the ordinary linear's bit for bit on a random input of the call's shape, checked
as the pack is made: which kernels MKL takes for which shapes depends on the CPU (on an AVX2 AMD EPYC the packed
and the ordinary kernels differ for small layers, 16 -> 8 features), and a layer where they disagree stays the
ordinary linear at that row count.

:func:`packed_view` gives a model whose image tower uses such layers and shares every parameter with the model
it was made from (nothing is copied, nothing of the original changes). A layer packs its weight for the row
count it sees (the packed layout depends on it) and keeps the packs of the two latest row counts; a pack made
before the weight changed in place (an optimizer step on a shared model) is never used again (the tensor's
version counter is part of its key). Where the ops are missing (a torch build without MKL), for inputs that are
not fp32 on the CPU, and where autograd records (the ops have no backward), a layer is the ordinary linear too.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Row counts whose packs a layer keeps.
KEEP_PACKS = 2
#: The fewest rows (tokens in the batch) computed on a packed weight.
MIN_ROWS = 16


def available() -> bool:
    """Whether this torch build has MKL's packed linear ops and MKL is usable."""
    try:
        return bool(torch.backends.mkl.is_available()) and hasattr(torch.ops.mkl, "_mkl_linear") and \
            hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight")
    except (AttributeError, RuntimeError):
        return False


class PackedLinear(nn.Module):
    """A :class:`torch.nn.Linear` (shared, not copied) computed with a packed weight at inference."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear
        self._packs: dict[tuple, torch.Tensor] = {}
        self._lock = threading.Lock()

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.linear.bias

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    def _pack(self, rows: int) -> torch.Tensor | None:
        """The weight packed for ``rows``, or None where MKL's packed product differs from the ordinary linear's
        (then the layer computes the ordinary linear at that row count)."""
        w, b = self.linear.weight, self.linear.bias
        key = (rows, w.data_ptr(), w._version, None if b is None else b._version)
        with self._lock:
            if key in self._packs:
                return self._packs[key]
            pack = torch.ops.mkl._mkl_reorder_linear_weight(w.detach(), rows)
            probe = torch.randn(rows, w.shape[1], generator=torch.Generator().manual_seed(rows))
            if not torch.equal(self._packed_product(probe, pack, rows), F.linear(probe, w, b)):
                pack = None
            while len(self._packs) >= KEEP_PACKS:
                self._packs.pop(next(iter(self._packs)))
            self._packs[key] = pack
            return pack

    def _packed_product(self, x: torch.Tensor, pack: torch.Tensor, rows: int) -> torch.Tensor:
        return torch.ops.mkl._mkl_linear(x, pack, self.linear.weight, self.linear.bias, rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.linear.weight, self.linear.bias
        if (x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32 or x.dim() < 2
                or (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))):
            return F.linear(x, w, b)
        rows = x.numel() // max(1, x.shape[-1])
        if rows < MIN_ROWS or torch.get_num_threads() != 1:
            return F.linear(x, w, b)
        pack = self._pack(rows)
        return F.linear(x, w, b) if pack is None else self._packed_product(x, pack, rows)

    def extra_repr(self) -> str:
        return f"in_features={self.linear.in_features}, out_features={self.linear.out_features}, packed"


def _with_packed_linears(module: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` whose every ``nn.Linear`` (at any depth) is wrapped in a :class:`PackedLinear`;
    parameters and buffers are the original's tensors."""
    if isinstance(module, nn.Linear):
        return PackedLinear(module)
    if not any(isinstance(m, nn.Linear) for m in module.modules()):
        return module
    new = copy.copy(module)
    new._modules = {name: None if child is None else _with_packed_linears(child)
                    for name, child in module._modules.items()}
    return new


def packed_view(model: Any) -> Any:
    """``model`` with its image tower's linear layers computed by :class:`PackedLinear` (see the module text): a
    shallow copy sharing every parameter, for inference. The model itself when the ops are unavailable or it has
    no ``image_encoder`` module."""
    tower = getattr(model, "image_encoder", None)
    if not available() or not isinstance(model, nn.Module) or not isinstance(tower, nn.Module):
        return model
    view = copy.copy(model)
    view._modules = dict(model._modules)
    view._modules["image_encoder"] = _with_packed_linears(tower)
    return view
