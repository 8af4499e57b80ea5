"""What every report of the applications carries: provenance (checkpoint, protocol, software, device), one atomic
JSON writer, and the rule for bad samples at the end of an evaluation."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from simseg.files import atomic_write_json

#: Distributions whose versions can change a number.
VERSIONED = ("simseg", "torch", "torchvision", "timm", "transformers", "tokenizers", "numpy", "pillow",
             "opencv-python-headless", "pydensecrf2", "onnxruntime")


def software_versions() -> dict[str, str | None]:
    """Python's version and those of :data:`VERSIONED` (None when not installed)."""
    import platform
    from importlib import metadata

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for dist in VERSIONED:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def provenance(checkpoint: str | os.PathLike, device: Any = None, backend: str = "torch",
               model: Any = None, **extra: Any) -> dict[str, Any]:
    """The block every report ends with: the checkpoint (path and sha256), software versions, the device, and the
    backend when it is not torch (the ONNX export's fingerprint then stands for the checkpoint). ``model``: the model
    loaded from ``checkpoint``, whose verified weights sha256 (when it has one) is used instead of reading the file
    again."""
    from simseg.checkpoint import checkpoint_fingerprint

    known = getattr(model, "weights_file_sha256", None) if backend == "torch" else None
    out: dict[str, Any] = {"checkpoint": checkpoint_fingerprint(checkpoint, backend=backend, weights_sha256=known),
                           "versions": software_versions()}
    if backend != "torch":
        out["backend"] = backend
    if device is not None:
        out["device"] = str(device)
    out.update(extra)
    return out


def short_sha(checkpoint: dict[str, Any]) -> str:
    """The first 12 hex digits of a fingerprint's sha256, or a note for presets."""
    sha = checkpoint.get("sha256")
    return sha[:12] if sha else "n/a (preset, random weights)"


def describe_protocol(info: dict[str, Any]) -> str:
    """``name (k=v, ...)`` of a protocol's info, for printed lines."""
    params = ", ".join(f"{k}={v}" for k, v in info.items() if k != "name")
    return f"{info.get('name')} ({params})"


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write a report atomically (indented JSON)."""
    return atomic_write_json(path, obj)


def bad_samples_exit(count: int, what: str, skip_bad: bool) -> int:
    """The exit status after an evaluation that met ``count`` bad samples: 0 when none or accepted with
    ``--skip-bad`` (a warning), else 1 with an error line. ``what`` describes them (e.g. "3 bad sample(s)...")."""
    if not count:
        return 0
    if skip_bad:
        print(f"warning: {what} (skipped with --skip-bad)", file=sys.stderr)
        return 0
    print(f"error: {what}; pass --skip-bad to accept them", file=sys.stderr)
    return 1
