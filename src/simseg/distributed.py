"""torch.distributed helpers that also work in a single process without any process group.

State is always read from ``torch.distributed`` (never cached here), so one code path serves a laptop and a cluster.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed(backend: str | None = None) -> bool:
    """Join the process group described by torchrun's environment variables, if any.

    Returns True when running distributed. Chooses NCCL when CUDA is available, gloo otherwise.
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(get_local_rank())
    dist.init_process_group(backend=backend)
    return True


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (no-op in a single process) and return it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_object(obj):
    """Gather a picklable object from every rank into a list (a one-element list in a single process)."""
    if not is_distributed():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (pickled; the argument is ignored elsewhere). A single process gets
    ``obj`` back."""
    if not is_distributed():
        return obj
    box = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def resolve_device(name: str | None, label: str = "device", local_rank: int | None = None) -> torch.device:
    """The device to run on, checked before anything is put there.

    Args:
        name: ``cpu``, ``cuda``, ``cuda:N``, ...; None or ``auto``: CUDA when available, else the CPU.
        label: how the setting is named in messages (``--device``, ``train.device``).
        local_rank: under torchrun, the GPU of this process: a bare ``cuda`` (or auto) becomes ``cuda:<local rank>``.

    Raises:
        InputError: not a device name, CUDA asked for on a machine without it, or a GPU index beyond those present
            (one line naming the setting, its value and what would work).
    """
    from simseg.errors import InputError

    shown = f"{label}={name}" if "." in label else f"{label} {name}"
    if name is None or name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        name = "cuda"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise InputError(f"{shown}: not a device name (cpu, cuda, cuda:1, ...)") from None
    cpu = f"{label}=cpu" if "." in label else f"{label} cpu"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{shown}: no CUDA device is available on this machine; use {cpu}")
        count = torch.cuda.device_count()
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
        if device.index is not None and device.index >= count:
            raise InputError(f"{shown}: this machine has {count} CUDA device(s), numbered from 0 to {count - 1}")
    elif device.type != "cpu":
        # mps, xpu, ...: torch names more device types than any one build runs on; trying a tensor tells
        try:
            torch.empty(0, device=device)
        except Exception:
            raise InputError(f"{shown}: this PyTorch cannot use that device; use {cpu} or cuda") from None
    return device
