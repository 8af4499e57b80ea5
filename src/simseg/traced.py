"""A checkpoint's image tower traced at one input size and kept in the cache folder: a quick start for images.

Building the image tower needs timm, and importing timm imports torchvision, which imports torch's compiler stack:
about 1.5 s of every ``simseg segment`` before any work, more than the work itself for one image. Once a process has
loaded a checkpoint folder the ordinary way, :func:`save_traced_tower` records the tower (ViT, position embedding of
the input size, projection) with ``torch.jit.trace``, together with what the segmenter needs to know of the model.
A later process calls :func:`load_traced_model`, which gives a :class:`TracedImageModel` without importing timm and
without reading or hashing the weights file, or None when there is no valid trace; the caller then loads the model
the ordinary way.

A trace is found only for the same folder with the same files: the size, modification time and inode of its config,
weights and vocabulary are recorded and compared, and the versions of torch, timm and simseg are part of its name.
The traced program runs the eager model's operations without the graph optimiser (``optimized_execution(False)``),
so its outputs are the eager model's (tested to be equal). simseg writes it into the user's own cache (atomically,
program first, metadata last) and runs it only while it is the file written then: its size, modification time and
inode are recorded too (hashing its 90 MB would cost a tenth of the start).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from simseg.errors import InputError, TextTowerAbsentError

#: The layout of a trace's metadata; a change makes older traces unused (they are then traced again).
TRACE_FORMAT = 1
TRACE_FOLDER = "image-towers"
_FILES = ("config.yaml", "model.safetensors", "tokenizer/vocab.txt")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _stat(path: Path) -> list[int] | None:
    """(size, mtime in ns, inode) of a file; None when it is absent or unreadable."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns), int(st.st_ino)]


def _identity(checkpoint_dir: Path) -> dict[str, list[int] | None]:
    """:func:`_stat` of the folder's config, weights and vocabulary."""
    return {name: _stat(checkpoint_dir / name) for name in _FILES}


def trace_paths(checkpoint_dir: str | os.PathLike, input_size: int,
                cache_dir: str | os.PathLike) -> tuple[Path, Path]:
    """(traced program, metadata) paths of a checkpoint folder's trace at ``input_size`` in ``cache_dir``."""
    key = {"format": TRACE_FORMAT, "checkpoint": os.path.realpath(checkpoint_dir), "input_size": int(input_size),
           "torch": torch.__version__, "timm": _version("timm"), "simseg": _version("simseg")}
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    folder = Path(cache_dir).expanduser() / TRACE_FOLDER
    return folder / f"{name}.pt", folder / f"{name}.json"


class _TokensAndClass(torch.nn.Module):
    """What is traced: projected patch tokens (B, N, D) and the projected first prefix token (B, D), computed by the
    model's own method. Only the image tower and its projection are submodules, so only their weights are kept."""

    def __init__(self, model: Any):
        super().__init__()
        self.image_encoder = model.image_encoder
        self.image_projection = model.image_projection
        object.__setattr__(self, "_features", model._image_features)  # a bound method, not a submodule

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patches, first = self._features(images)
        return self.image_projection(patches), self.image_projection(first)


def save_traced_tower(model: Any, checkpoint_dir: str | os.PathLike, input_size: int,
                      cache_dir: str | os.PathLike) -> Path:
    """Trace ``model``'s image tower at ``input_size`` (a batch of one, on the CPU) and write it with its metadata.

    ``model`` must be what :func:`simseg.checkpoint.load_model` gave for ``checkpoint_dir`` (a simseg folder), so that
    its weights sha256 is the verified one. The traced program is written first and the metadata last, each
    atomically: a trace without metadata is never used.

    Returns:
        The metadata path.

    Raises:
        InputError: the model is not on the CPU, or has no verified weights sha256 (not loaded from a folder).
    """
    from simseg.files import atomic_write_bytes, atomic_write_json

    checkpoint_dir = Path(checkpoint_dir)
    if model.device.type != "cpu":
        raise InputError(f"save_traced_tower: the model is on {model.device}; a trace is made on the CPU")
    digest = getattr(model, "weights_file_sha256", None)
    if not digest:
        raise InputError(f"{checkpoint_dir}: save_traced_tower needs a model loaded from a simseg checkpoint folder")
    identity = _identity(checkpoint_dir)
    program_path, meta_path = trace_paths(checkpoint_dir, input_size, cache_dir)
    program_path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 3, int(input_size), int(input_size))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python conditions: the size is fixed, as intended
        traced = torch.jit.trace(_TokensAndClass(model).eval(), example, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    atomic_write_bytes(program_path, buffer.getvalue())
    temperature = float(model.temperature().detach().float())
    atomic_write_json(meta_path, {
        "format": TRACE_FORMAT,
        "program": _stat(program_path),
        "checkpoint": os.path.realpath(checkpoint_dir),
        "files": identity,
        "input_size": int(input_size),
        "weights_file_sha256": digest,
        "text_weights_hash": model.text_weights_hash,
        "embed_dim": int(model.embed_dim),
        "patch_size": int(model.patch_size),
        "mean": list(model.mean), "std": list(model.std),
        "pooling": model.pooling, "image_topk": int(model.image_topk), "text_topk": int(model.text_topk),
        "max_length": int(model.max_length), "temperature": temperature,
        "config": model.config,
    })
    return meta_path


def load_traced_model(checkpoint_dir: str | os.PathLike, input_size: int, cache_dir: str | os.PathLike,
                      tokenizer: Any = None) -> "TracedImageModel | None":
    """The traced image model of a checkpoint folder at ``input_size``, or None when there is no valid trace (none
    written, the folder's files changed since, other library versions, or an unreadable or altered file).

    ``tokenizer``: a folder, a Hugging Face name or a Tokenizer; default the folder's own (it decides which cached
    class embeddings are found). Never imports timm, transformers or torchvision.
    """
    from simseg.tokenizer import load_tokenizer

    checkpoint_dir = Path(checkpoint_dir)
    program_path, meta_path = trace_paths(checkpoint_dir, input_size, cache_dir)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if (not isinstance(meta, dict) or meta.get("format") != TRACE_FORMAT
            or meta.get("files") != _identity(checkpoint_dir) or meta.get("program") != _stat(program_path)):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's note that TorchScript gives way to torch.export
            program = torch.jit.load(str(program_path), map_location="cpu")
    except Exception:  # a torch that cannot read it (or has no TorchScript): the ordinary load serves
        return None
    if tokenizer is None and (checkpoint_dir / "tokenizer" / "vocab.txt").is_file():
        tokenizer = checkpoint_dir / "tokenizer"
    tok = load_tokenizer(tokenizer) if tokenizer is not None and not hasattr(tokenizer, "vocab") else tokenizer
    try:
        return TracedImageModel(program, meta, tok, str(checkpoint_dir))
    except (KeyError, TypeError, ValueError):  # metadata edited by hand: the ordinary load serves
        return None


class TracedImageModel:
    """A checkpoint's image tower as a traced program, with the interface the segmentation protocols use.

    Images only: class embeddings must come from the cache (encoding text raises
    :class:`~simseg.errors.TextTowerAbsentError`, on which a caller loads the whole model). Inputs must be a batch
    of one at the traced size. Built by :func:`load_traced_model`.
    """

    training = False
    has_text_tower = False

    def __init__(self, program: Any, meta: dict[str, Any], tokenizer: Any, label: str):
        self._program = program
        self.label = label
        self.tokenizer = tokenizer
        self.input_size = int(meta["input_size"])
        self.embed_dim = int(meta["embed_dim"])
        self.patch_size = int(meta["patch_size"])
        self.mean = tuple(float(v) for v in meta["mean"])
        self.std = tuple(float(v) for v in meta["std"])
        self.pooling = str(meta["pooling"])
        self.image_topk = int(meta["image_topk"])
        self.text_topk = int(meta["text_topk"])
        self.max_length = int(meta["max_length"])
        self.config: dict[str, Any] = dict(meta["config"])
        self.text_weights_hash = str(meta["text_weights_hash"])
        self.weights_file_sha256 = str(meta["weights_file_sha256"])
        self._temperature = float(meta["temperature"])

    def __repr__(self) -> str:
        return f"TracedImageModel({self.label!r}, input {self.input_size}, patch {self.patch_size}, {self.pooling})"

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def image_size(self) -> int:
        return self.input_size

    def eval(self) -> "TracedImageModel":
        return self

    def temperature(self) -> torch.Tensor:
        """The checkpoint's clamped temperature."""
        return torch.tensor(self._temperature, dtype=torch.float32)

    def _run(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, 3, self.input_size, self.input_size)
        if tuple(images.shape) != shape:
            raise ValueError(f"{self.label}: the traced image tower takes {shape}, got {tuple(images.shape)}")
        with torch.jit.optimized_execution(False):  # the recorded operations as they are: the eager model's values
            return self._program(images)

    def encode_image_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(1, N, embed_dim) projected patch tokens (not normalised) and the patch grid (gh, gw)."""
        g = self.input_size // self.patch_size
        return self._run(images)[0], (g, g)

    def encode_image(self, images: torch.Tensor, masked: bool = True, normalize: bool = True) -> torch.Tensor:
        """(1, embed_dim) pooled image embedding, as :meth:`simseg.model.SimSegModel.encode_image`."""
        from simseg.loda import l2_normalize, pool_tokens

        tokens, first = self._run(images)
        cls = first if self.pooling == "cls" else None
        pooled = pool_tokens(tokens, self.pooling, self.image_topk, None, cls_token=cls)
        return l2_normalize(pooled) if normalize else pooled

    def tokenize(self, texts: Any, padding: str = "max_length") -> Any:
        raise TextTowerAbsentError(f"{self.label}: the traced image tower has no text tower; load the whole model")

    def encode_text(self, *args: Any, **kwargs: Any) -> Any:
        raise TextTowerAbsentError(f"{self.label}: the traced image tower has no text tower; load the whole model")
