"""Training state on disk: the checkpoints a run writes, how a killed run finds where to resume (on one machine or on
several without a shared file system), and the weights a fine-tuning run starts from.

A run writes ``<output_dir>/checkpoints/step-XXXXXXXX/``: a model checkpoint (:func:`simseg.checkpoint.save_model`,
so ``load_model`` reads it), ``train_state.pt`` (optimizer, scaler, every rank's random states) and ``state.json``
(step, world size, counters and every rank's data-stream positions, the sha256 of ``train_state.pt``). The folder is
written under a temporary name and renamed into place, then the ``latest`` pointer is updated, so a run killed at any
moment leaves only complete checkpoints behind. Damaged ones (a garbage pointer, a missing or truncated weights file,
a ``state.json`` that does not parse, a truncated ``train_state.pt``) are skipped with a warning naming them; the newest
valid checkpoint is used.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simseg import distributed as du
from simseg.errors import CheckpointError, InputError, SimSegError
from simseg.files import atomic_write_bytes, atomic_write_json
from simseg.model import SimSegModel

STATE_NAME = "train_state.pt"
STATE_JSON = "state.json"
LATEST_NAME = "latest"
_STEP_DIR = re.compile(r"step-\d{8}")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


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
    ``latest`` pointer, then prune old checkpoints (``keep`` newest; 0 keeps all). The folder is also a model
    checkpoint for ``load_model``.

    ``extra`` (counters, data positions: plain JSON values) goes to ``state.json``; ``rng`` holds every rank's
    :func:`rng_snapshot`, so each rank resumes its own dropout stream. Checkpoints of later steps than this one (left
    by a run that was rewound to an earlier checkpoint) are removed, and so are the half-written temp folders of
    processes killed while saving (:func:`remove_orphaned_temp_folders`)."""
    from simseg.checkpoint import save_model

    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model(model, tmp, meta={"step": step})
    buf = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rng}, buf)
    blob = buf.getvalue()
    atomic_write_bytes(tmp / STATE_NAME, blob)
    atomic_write_json(tmp / STATE_JSON, {"step": step, "world_size": len(rng), "extra": extra,
                                         "train_state_sha256": hashlib.sha256(blob).hexdigest()})
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_bytes(root / LATEST_NAME, final.name.encode())
    remove_orphaned_temp_folders(root)
    done = sorted(p for p in root.glob("step-*") if p.name <= final.name)
    stale = [p for p in root.glob("step-*") if p.name > final.name]
    for old in stale + (done[:-keep] if keep > 0 else []):
        shutil.rmtree(old, ignore_errors=True)
    return final


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # it exists (another user's), or the id cannot be checked: keep its folder
    return True


def remove_orphaned_temp_folders(root: Path) -> list[Path]:
    """Remove the ``.tmp-step-*-PID`` folders under ``root`` (a run's ``checkpoints/``) whose writer process is gone:
    a process killed while saving leaves one, a whole checkpoint's size, that nothing would read or remove. The
    folder of a process that still runs (one saving now) is kept. Returns the folders removed."""
    removed = []
    for tmp in sorted(Path(root).glob(".tmp-step-*")):
        pid = tmp.name.rsplit("-", 1)[-1]
        if tmp.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def read_training_state(ckpt: Path) -> dict:
    """``{"step", "optimizer", "scaler", "rng", "extra"}`` of a checkpoint folder.

    Raises:
        CheckpointError: a file is missing, ``state.json`` does not parse, or ``train_state.pt`` is truncated or
            unreadable (each named).
    """
    ckpt = Path(ckpt)
    blob_path = ckpt / STATE_NAME
    try:
        blob = blob_path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt}: no {STATE_NAME}") from None
    except OSError as e:
        raise CheckpointError(f"{blob_path}: unreadable ({e})") from None
    meta = None
    json_path = ckpt / STATE_JSON
    if json_path.exists():
        try:
            meta = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise CheckpointError(f"{json_path}: not valid JSON ({type(e).__name__}: {e})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("step"), int) or not isinstance(meta.get("extra"),
                                                                                                  dict):
            raise CheckpointError(f"{json_path}: lacks an integer 'step' and an 'extra' mapping")
        recorded = meta.get("train_state_sha256")
        if recorded and hashlib.sha256(blob).hexdigest() != recorded:
            raise CheckpointError(f"{blob_path}: does not match the sha256 recorded in {STATE_JSON} (truncated?)")
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{blob_path}: unreadable ({type(e).__name__})") from None
    if not isinstance(state, dict) or "optimizer" not in state or "rng" not in state:
        raise CheckpointError(f"{blob_path}: not a training state")
    if meta is not None:
        state.update(step=meta["step"], extra=meta["extra"])
    elif "step" not in state:  # a folder from before state.json held its own step
        raise CheckpointError(f"{ckpt}: no {STATE_JSON}")
    state.setdefault("extra", {})
    return state


def checkpoint_candidates(run_dir: Path) -> list[Path]:
    """The run's checkpoint folders, newest first, the one the ``latest`` pointer names first (a pointer that is
    garbage or names a folder that is not there is reported and ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    candidates = sorted((p for p in root.glob("step-*") if _STEP_DIR.fullmatch(p.name) and p.is_dir()), reverse=True)
    latest = root / LATEST_NAME
    if latest.is_file():
        try:
            name = latest.read_bytes().decode("ascii").strip()
        except (OSError, UnicodeDecodeError):
            name = None
        if name is None or not _STEP_DIR.fullmatch(name):
            _warn(f"ignoring {latest}: it does not name a checkpoint folder (garbage); using the newest valid one")
        elif root / name in candidates:
            candidates.remove(root / name)
            candidates.insert(0, root / name)
        else:
            _warn(f"ignoring {latest}: it names {name}, which is not there; using the newest valid one")
    return candidates


def find_resume_checkpoint(run_dir: Path) -> tuple[Path, dict, SimSegModel] | None:
    """The newest valid checkpoint of a run: its folder, training state and model; None when the run has none.

    Damaged checkpoints are skipped, each with a warning naming it and why, so a run killed while writing resumes
    from the previous complete checkpoint.

    Raises:
        CheckpointError: the run has checkpoint folders but none of them is valid (one line listing them).
    """
    from simseg.checkpoint import load_model

    candidates = checkpoint_candidates(run_dir)
    skipped = []
    for ckpt in candidates:
        try:
            state = read_training_state(ckpt)
            model = load_model(ckpt)
            return ckpt, state, model
        except (CheckpointError, InputError) as e:
            _warn(f"skipping damaged checkpoint {ckpt}: {e}")
            skipped.append(ckpt.name)
    if skipped:
        raise CheckpointError(f"{Path(run_dir) / 'checkpoints'}: no valid checkpoint to resume from "
                              f"({len(skipped)} damaged: {', '.join(skipped)}); repair or remove them, or start a "
                              "new run in another train.output_dir")
    return None


def restore_rng(rngs: list[dict], rank: int, world: int, device: torch.device) -> None:
    """Restore this rank's random states (rank 0's when the world size changed: then resume is not exact)."""
    rng = rngs[rank] if len(rngs) == world else rngs[0]
    torch.set_rng_state(rng["torch"])
    random.setstate((3, tuple(rng["python"]), rng["python_pos"]))
    _set_numpy_state(rng["numpy"])
    if rng.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)


# ------------------------------------------------------------------------------------------------ several ranks
def _weights_sha(ckpt: Path) -> str | None:
    from simseg.checkpoint import WEIGHTS_NAME, file_sha256

    try:
        return file_sha256(ckpt / WEIGHTS_NAME)
    except OSError:
        return None


def resume_checkpoint(run_dir: Path, resume: str | os.PathLike | None) -> tuple[Path, dict, SimSegModel] | None:
    """The checkpoint a run resumes from, on every rank: ``resume`` is ``"none"``, ``"auto"`` (the run's newest
    valid checkpoint, if any) or a checkpoint folder. A collective: every rank calls it.

    Rank 0 decides (its own folder), and tells every rank the step and the sha256 of the weights. Each other rank
    reads the same checkpoint from its own file system; a rank that cannot (no shared file system, a missing or
    different file) says which file it lacks and receives the model and training state from rank 0 instead. Every
    rank goes through the same collectives whatever fails, so nothing hangs.

    Raises:
        CheckpointError: on every rank, when rank 0 cannot read the checkpoint asked for (named), or has only
            damaged ones.
    """
    from simseg.checkpoint import load_model
    from simseg.model import build_model

    if resume in ("none", "", None):
        return None
    rank = du.get_rank()
    found, decision = None, None
    if rank == 0:
        try:
            if resume == "auto":
                found = find_resume_checkpoint(Path(run_dir))
            else:
                ckpt = Path(resume)
                if ckpt.is_file():
                    raise CheckpointError(f"--resume {ckpt}: a file, not a training checkpoint folder (to start from "
                                          f"its weights: model.init={ckpt})")
                if not ckpt.is_dir():
                    raise CheckpointError(f"--resume {ckpt}: no such checkpoint folder")
                if not (ckpt / STATE_NAME).exists() and (ckpt / "model.safetensors").is_file():
                    raise CheckpointError(f"--resume {ckpt}: a model without training state (no {STATE_NAME}): give "
                                          f"a folder of the run's checkpoints/, or start from its weights with "
                                          f"model.init={ckpt}")
                found = (ckpt, read_training_state(ckpt), load_model(ckpt))
            decision = None if found is None else {"name": found[0].name, "path": str(found[0]),
                                                    "step": int(found[1]["step"]), "sha256": _weights_sha(found[0])}
        except Exception as e:  # rank 0 must reach the broadcast below whatever happened
            decision = {"error": str(e) if isinstance(e, SimSegError) else f"{resume}: {type(e).__name__}: {e}",
                        "type": type(e).__name__}
    decision = du.broadcast_object(decision)
    if decision is None:
        return None
    if "error" in decision:
        raise (InputError if decision["type"] == "InputError" else CheckpointError)(decision["error"])
    if du.get_world_size() == 1:
        return found

    problem = None
    if rank != 0:
        ckpt = Path(run_dir) / "checkpoints" / decision["name"] if resume == "auto" else Path(decision["path"])
        try:
            if not ckpt.is_dir():
                raise CheckpointError(f"{ckpt}: not found")
            sha = _weights_sha(ckpt)
            if sha != decision["sha256"]:
                raise CheckpointError(f"{ckpt / 'model.safetensors'}: " + ("not found" if sha is None else
                                      "differs from rank 0's"))
            state = read_training_state(ckpt)
            if int(state["step"]) != decision["step"]:
                raise CheckpointError(f"{ckpt / STATE_JSON}: step {state['step']}, rank 0 resumes step "
                                      f"{decision['step']}")
            found = (ckpt, state, load_model(ckpt))
        except Exception as e:  # whatever it is, this rank must reach the collectives below
            problem = f"{e}"
    problems = du.all_gather_object(problem)
    if any(problems):
        payload = None
        if rank == 0:
            model = found[2]
            payload = {"config": model.config, "tokenizer": model.tokenizer, "state": found[1],
                       "weights": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
        payload = du.broadcast_object(payload)
        if problem:
            _warn(f"rank {rank}: cannot read the checkpoint rank 0 resumes from ({problem}): received the model and "
                  "training state from rank 0")
            model = build_model(payload["config"], payload["tokenizer"], pretrained=False)
            model.load_state_dict(payload["weights"], strict=True)
            found = (Path(decision["path"]), payload["state"], model)
    return found


# ------------------------------------------------------------------------------------------------ fine-tuning
def _resample_position_embedding(state: dict[str, torch.Tensor], model: SimSegModel) -> dict[str, torch.Tensor]:
    """The checkpoint's position embedding resampled to the model's patch grid, as the original's loader does
    (bicubic, align_corners False, no antialias; the [CLS] position kept), when only the grid differs."""
    from timm.layers import resample_abs_pos_embed

    key = "image_encoder.pos_embed"
    vit = model.image_encoder
    if key not in state or getattr(vit, "pos_embed", None) is None or state[key].shape == vit.pos_embed.shape:
        return state
    src, own = state[key], vit.pos_embed
    prefix = 0 if getattr(vit, "no_embed_class", False) else int(vit.num_prefix_tokens)
    old = int(round((src.shape[1] - prefix) ** 0.5))
    if src.dim() != 3 or src.shape[2] != own.shape[2] or old * old != src.shape[1] - prefix:
        return state  # not a square grid of the same width: reported as a wrong shape
    out = dict(state)
    out[key] = resample_abs_pos_embed(src.float(), new_size=list(vit.patch_embed.grid_size), old_size=[old, old],
                                      num_prefix_tokens=prefix, interpolation="bicubic",
                                      antialias=False).to(src.dtype)
    return out


def load_init_weights(model: SimSegModel, path: str | os.PathLike) -> None:
    """Copy the weights of a checkpoint into ``model`` (built from the training config) for fine-tuning.

    ``path`` is a simseg checkpoint folder or an original SimSeg ``.pth``. Every key is checked as on import: the
    checkpoint must hold exactly the model's keys with the model's shapes, except the position embedding, which is
    resampled to the model's patch grid as the original's loader does. Nothing is downloaded.

    Raises:
        InputError: the path does not exist.
        CheckpointError: not a checkpoint, or one of another architecture (every missing, unexpected and mis-shaped
            key is named, with the file).
    """
    from simseg.checkpoint import _load_checked, load_model, read_original_state

    p = Path(path)
    if not p.exists():
        raise InputError(f"model.init: {p}: file not found")
    try:
        if p.is_dir():
            state = load_model(p).state_dict()
        else:
            state = read_original_state(p)[1]
        _load_checked(model, _resample_position_embedding(state, model), str(p))
    except SimSegError as e:
        raise type(e)(f"model.init: {e}") from None
