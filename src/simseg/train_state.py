"""Training state on disk: the checkpoints a run writes and how a killed run finds where to resume.

A run writes ``<output_dir>/checkpoints/step-XXXXXXXX/``: a model checkpoint (:func:`simseg.checkpoint.save_model`,
so ``load_model`` reads it) plus ``train_state.pt`` (optimizer, scaler, step, every rank's random states, data
position and counters). The folder is written under a temporary name and renamed into place, then the ``latest``
pointer is updated, so a run killed at any moment leaves only complete checkpoints behind.
"""

from __future__ import annotations

import io
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simseg.errors import CheckpointError, InputError
from simseg.files import atomic_write_bytes
from simseg.model import SimSegModel

STATE_NAME = "train_state.pt"
LATEST_NAME = "latest"


def _numpy_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _set_numpy_state(s: dict) -> None:
    np.random.set_state((s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["cached"]))


def rng_snapshot(device: torch.device) -> dict:
    """This process's random states (torch CPU, the device's CUDA generator, Python, NumPy)."""
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "python_pos": random.getstate()[2], "numpy": _numpy_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def save_training_checkpoint(
    run_dir: Path, step: int, model: SimSegModel, optimizer: torch.optim.Optimizer, scaler: Any,
    extra: dict, rng: list[dict], keep: int = 3,
) -> Path:
    """Write ``run_dir/checkpoints/step-XXXXXXXX/`` atomically (a temp folder renamed into place), then the
    ``latest`` pointer, then prune old checkpoints. The folder is also a model checkpoint for ``load_model``.

    ``rng`` holds every rank's :func:`rng_snapshot`, so each rank resumes its own dropout stream. Checkpoints of
    later steps than this one (left by a run that was rewound to an earlier checkpoint) are removed."""
    from simseg.checkpoint import save_model

    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model(model, tmp, meta={"step": step})
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng,
        "extra": extra,
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(tmp / STATE_NAME, buf.getvalue())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_bytes(root / LATEST_NAME, final.name.encode())
    done = sorted(p for p in root.glob("step-*") if p.name <= final.name)
    stale = [p for p in root.glob("step-*") if p.name > final.name]
    for old in stale + (done[:-keep] if keep > 0 else []):
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_training_state(ckpt: Path) -> dict:
    try:
        return torch.load(ckpt / STATE_NAME, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt}: no {STATE_NAME}") from None
    except Exception as e:
        raise CheckpointError(f"{ckpt / STATE_NAME}: unreadable ({type(e).__name__})") from None


def find_resume_checkpoint(run_dir: Path) -> tuple[Path, dict, SimSegModel] | None:
    """The newest complete checkpoint of a run: its folder, training state and model. Damaged ones are skipped
    (reported), so a run killed while writing resumes from the previous complete checkpoint."""
    from simseg.checkpoint import load_model

    root = run_dir / "checkpoints"
    if not root.is_dir():
        return None
    candidates = sorted(root.glob("step-*"), reverse=True)
    latest = root / LATEST_NAME
    if latest.is_file():
        named = root / latest.read_text().strip()
        if named in candidates:
            candidates.remove(named)
            candidates.insert(0, named)
    for ckpt in candidates:
        try:
            state = read_training_state(ckpt)
            model = load_model(ckpt)
            return ckpt, state, model
        except (CheckpointError, InputError) as e:
            print(f"warning: skipping damaged checkpoint {ckpt}: {e}")
    return None


def restore_rng(rngs: list[dict], rank: int, world: int, device: torch.device) -> None:
    """Restore this rank's random states (rank 0's when the world size changed: then resume is not exact)."""
    rng = rngs[rank] if len(rngs) == world else rngs[0]
    torch.set_rng_state(rng["torch"])
    random.setstate((3, tuple(rng["python"]), rng["python_pos"]))
    _set_numpy_state(rng["numpy"])
    if rng.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)
