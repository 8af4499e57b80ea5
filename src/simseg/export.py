"""ONNX export of the two towers, and the ONNX Runtime backend that runs them behind the model's interface.

An export folder holds:

- ``image_<S>.onnx`` per exported input size S: input ``image`` (B, 3, S, S), normalised as the model expects;
  outputs ``patch_tokens`` (B, N, D), the projected patch tokens (not normalised), and ``image_embedding`` (B, D),
  the pooled, L2-normalised embedding. The size is fixed (the position embedding for that grid is computed once in
  torch, exactly as the model resamples it per call, and stored as a constant); the batch is dynamic.
- ``text.onnx``: inputs ``input_ids`` and ``attention_mask`` (B, L), both dynamic; output ``text_embedding`` (B, D),
  pooled with padding excluded (the masked variant, as :meth:`simseg.model.SimSegModel.encode_text` at evaluation)
  and L2-normalised.
- ``tokenizer/vocab.txt`` and ``simseg_onnx.json``, the manifest: simseg's version and the export format version,
  the source weights' sha256 (and the checkpoint file's), the model config and its hash, input sizes, patch size,
  embedding width, pooling, temperature, mean / std, and every graph's sha256. Each graph also carries the weights'
  sha256 and the format version in its own metadata.

:class:`OnnxModel` reads such a folder (checking that the graphs, the manifest and, for a checkpoint's ``onnx/``
subfolder, the checkpoint's weights belong together) and offers what the protocols use (``encode_image_tokens``,
``encode_image``, ``encode_text``, ``tokenize``, ``temperature()``, ``patch_size``, ``mean``, ``std``, ...), so
:class:`simseg.segment.Segmenter` runs on it unchanged, with the same post-processing in torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from simseg.checkpoint_format import CONFIG_NAME, TOKENIZER_DIR, WEIGHTS_NAME
from simseg.errors import CheckpointError, ConfigError, InputError, one_line
from simseg.files import atomic_write_bytes, atomic_write_json
from simseg.loda import _PAD_FILL, avg_pool, l2_normalize, pool_tokens
from simseg.model import SimSegModel, state_sha256
from simseg.schema import POOLINGS
from simseg.tokenizer import Tokenizer, load_tokenizer

MANIFEST_NAME = "simseg_onnx.json"
ONNX_FORMAT = "simseg-onnx"
#: Bump when the graphs' inputs, outputs or meaning, or the manifest's layout, change: older folders are refused.
ONNX_FORMAT_VERSION = 1
DEFAULT_OPSET = 18
#: Largest difference from torch an export may show on its check batch (outputs are compared elementwise).
TOLERANCE = 1e-4
TEXT_FILE = "text.onnx"
IMAGE_INPUTS, IMAGE_OUTPUTS = ("image",), ("patch_tokens", "image_embedding")
TEXT_INPUTS, TEXT_OUTPUTS = ("input_ids", "attention_mask"), ("text_embedding",)


def image_file(size: int) -> str:
    return f"image_{int(size)}.onnx"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _require(*modules: str) -> None:
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise InputError(f"ONNX needs the {name} package: pip install 'simseg[onnx]'") from None


# ------------------------------------------------------------------------------------------------ graphs
def masked_topk_mean(tokens: torch.Tensor, k: int, mask: torch.Tensor) -> torch.Tensor:
    """Masked LoDA (:func:`simseg.loda.loda_pool` with a mask) written with shape-generic operations, for export.

    ``loda_pool`` caps k at the shortest real length in the batch as a Python int, which an exported graph cannot
    hold for a dynamic batch; here the cap is a tensor: the values are sorted once and the first ``k_eff`` averaged.
    For k = 1 (the paper's text pooling) it is a masked per-dimension max.
    """
    valid = mask.to(torch.bool).unsqueeze(-1)
    filled = tokens.masked_fill(~valid, _PAD_FILL)
    if k == 1:
        return filled.amax(dim=1)
    values = filled.sort(dim=1, descending=True).values
    k_eff = mask.to(torch.int64).sum(dim=1).min().clamp(max=k)
    take = (torch.arange(values.shape[1], device=values.device) < k_eff).to(values.dtype).view(1, -1, 1)
    return (values * take).sum(dim=1) / k_eff.to(values.dtype)


class _ImageGraph(nn.Module):
    """The image tower at one input size: (B, 3, S, S) -> patch tokens (B, N, D), pooled embedding (B, D)."""

    def __init__(self, model: SimSegModel, size: int):
        super().__init__()
        self.model = model
        grid = (size // model.patch_size,) * 2
        native = tuple(model.image_encoder.patch_embed.grid_size)
        with torch.no_grad():  # the resampled position embedding becomes a constant of the graph
            pos = None if grid == native else model.position_embedding(grid).detach().clone()
        self.register_buffer("pos_embed", pos)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        patches, cls = model._image_features(image, self.pos_embed)
        tokens = model.image_projection(patches)
        cls_proj = model.image_projection(cls) if model.pooling == "cls" else None
        return tokens, l2_normalize(pool_tokens(tokens, model.pooling, model.image_topk, None, cls_token=cls_proj))


class _TextGraph(nn.Module):
    """The text tower: (B, L) ids and mask -> masked-pooled, L2-normalised embedding (B, D)."""

    def __init__(self, model: SimSegModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        model = self.model
        tokens = model.text_tokens(input_ids, attention_mask)
        if model.pooling == "avg":
            pooled = avg_pool(tokens, attention_mask)
        elif model.pooling == "cls":
            pooled = tokens[:, 0]
        else:
            pooled = masked_topk_mean(tokens, model.text_topk, attention_mask)
        return l2_normalize(pooled)


def check_exportable(model: Any, input_sizes: Sequence[int]) -> list[int]:
    """The sizes to export, or one line saying why this model cannot be exported.

    Supported: a :class:`~simseg.model.SimSegModel` in eval mode whose image tower is a timm ``VisionTransformer``
    and whose text tower is a transformers ``BertModel``, pooled by loda, avg or cls; sizes that are positive
    multiples of the patch size.
    """
    from timm.models.vision_transformer import VisionTransformer
    from transformers import BertModel

    if not isinstance(model, SimSegModel):
        raise CheckpointError(f"cannot export a {type(model).__name__}: the ONNX exporter takes a torch SimSegModel "
                              "(load it with backend='torch')")
    if model.training:
        raise CheckpointError("cannot export a model in training mode (dropout would be exported): call model.eval()")
    vit, bert = model.image_encoder, model.text_encoder
    if type(vit) is not VisionTransformer:
        raise CheckpointError(f"cannot export the image tower {type(vit).__name__} "
                              f"({model.config.get('vision', {}).get('name')}): the ONNX exporter supports timm's "
                              "plain VisionTransformer")
    if not isinstance(bert, BertModel):
        raise CheckpointError(f"cannot export the text tower {type(bert).__name__}: the ONNX exporter supports "
                              "transformers' BertModel")
    if model.pooling not in POOLINGS:
        raise CheckpointError(f"cannot export pooling {model.pooling!r}")
    sizes = []
    for size in input_sizes:
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < model.patch_size \
                or size % model.patch_size:
            raise InputError(f"image size {size!r}: must be a positive multiple of the patch size {model.patch_size}")
        if int(size) not in sizes:
            sizes.append(int(size))
    if not sizes:
        raise InputError("give at least one image size to export")
    return sizes


def _export_graph(module: nn.Module, args: tuple, input_names: Sequence[str], output_names: Sequence[str],
                  dynamic_shapes: dict, opset: int, metadata: dict[str, str], what: str) -> bytes:
    """``torch.onnx.export`` (the dynamo exporter) of one graph, metadata added, checked by ``onnx.checker``."""
    import onnx

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's notes on axis names and decompositions
            program = torch.onnx.export(module, args, f=None, input_names=list(input_names),
                                        output_names=list(output_names), dynamic_shapes=dynamic_shapes,
                                        opset_version=opset, dynamo=True, verbose=False, report=False)
        proto = program.model_proto
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # the exporter's errors are many and deep: one line naming the tower and the cause
        raise CheckpointError(f"ONNX export of the {what} failed ({type(e).__name__}: {one_line(e)})") from None
    onnx.helper.set_model_props(proto, metadata)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise CheckpointError(f"ONNX export of the {what}: the graph fails onnx.checker ({one_line(e)})") \
            from None
    return proto.SerializeToString()


def _session(blob_or_path: bytes | str, providers: Sequence[Any] = ("CPUExecutionProvider",),
             threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT's notes on initializers are not for users
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(blob_or_path, sess_options=options, providers=list(providers))


def _max_diff(a: np.ndarray, b: torch.Tensor) -> float:
    return float(np.abs(a.astype(np.float64) - b.detach().cpu().double().numpy()).max())


def _check_batch_text(model: SimSegModel) -> dict[str, torch.Tensor]:
    """Two prompts of different lengths (so padding is exercised); random ids when the model has no tokenizer."""
    if model.tokenizer is not None:
        batch = model.tokenizer(["a photo of a cat.", "a bad photo of the big dog on the green grass."],
                                max_length=model.max_length, padding="longest")
        if batch["input_ids"].shape[1] > 2:
            return batch
    vocab = int(model.text_encoder.config.vocab_size)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def export_onnx(
    model: SimSegModel,
    out_dir: str | os.PathLike,
    input_sizes: Sequence[int] = (288,),
    opset: int = DEFAULT_OPSET,
    source: dict | None = None,
    verify: bool = True,
) -> dict:
    """Export the image tower (one graph per input size) and the text tower as ONNX graphs into ``out_dir``.

    Args:
        model: a torch model in eval mode (never changed).
        out_dir: the export folder (created if needed; files of the same names are replaced).
        input_sizes: square input sizes of the image graphs (the protocol's: 288 for ``simseg``, the crop size
            for ``dense``).
        opset: the ONNX opset.
        source: the checkpoint's fingerprint (``{"path", "sha256"}``) to record, so a checkpoint's ``onnx/``
            subfolder can be checked against its weights file without hashing the tensors.
        verify: run every graph in ONNX Runtime on a check batch (batch 2 and 1) and require outputs within
            :data:`TOLERANCE` of torch.

    Returns:
        The manifest (also written as ``simseg_onnx.json``, last, so a partial export is never loadable).

    Raises:
        CheckpointError: a model the exporter does not support, an export that fails or differs from torch.
        InputError: the ONNX packages are missing, a bad input size.
    """
    from simseg.version import __version__

    _require("onnx", "onnxscript", *(("onnxruntime",) if verify else ()))
    import onnx

    sizes = check_exportable(model, input_sizes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = model.weights_hash
    meta_common = {"simseg_format": ONNX_FORMAT, "simseg_format_version": str(ONNX_FORMAT_VERSION),
                   "simseg_version": __version__, "simseg_weights_sha256": weights}
    batch = torch.export.Dim("batch")
    diffs: dict[str, float] = {}
    gen = torch.Generator().manual_seed(0)
    images: dict[str, Any] = {}
    for size in sizes:
        graph = _ImageGraph(model, size)
        example = torch.randn(2, 3, size, size, generator=gen)
        blob = _export_graph(graph, (example,), IMAGE_INPUTS, IMAGE_OUTPUTS, {"image": {0: batch}}, opset,
                             {**meta_common, "simseg_graph": "image", "simseg_input_size": str(size)},
                             f"image tower at {size} x {size}")
        if verify:
            session = _session(blob)
            for n in (2, 1):
                x = example[:n]
                tokens, pooled = session.run(list(IMAGE_OUTPUTS), {"image": x.numpy()})
                with torch.no_grad():
                    ref_tokens, ref_pooled = graph(x)
                for key, a, b in (("patch_tokens", tokens, ref_tokens), ("image_embedding", pooled, ref_pooled)):
                    diffs[f"image_{size}/{key}"] = max(diffs.get(f"image_{size}/{key}", 0.0), _max_diff(a, b))
        atomic_write_bytes(out / image_file(size), blob)
        images[str(size)] = {"file": image_file(size), "sha256": _sha256(blob), "bytes": len(blob),
                             "grid": [size // model.patch_size] * 2}
    text = _TextGraph(model)
    example = _check_batch_text(model)
    max_positions = int(model.text_encoder.config.max_position_embeddings)
    length = torch.export.Dim("length", max=max_positions)
    blob = _export_graph(text, (example["input_ids"], example["attention_mask"]), TEXT_INPUTS, TEXT_OUTPUTS,
                         {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}}, opset,
                         {**meta_common, "simseg_graph": "text"}, "text tower")
    if verify:
        session = _session(blob)
        for n in (2, 1):
            ids, mask = example["input_ids"][:n], example["attention_mask"][:n]
            got, = session.run(list(TEXT_OUTPUTS), {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
            with torch.no_grad():
                ref = model.encode_text(ids, mask)
            diffs["text/text_embedding"] = max(diffs.get("text/text_embedding", 0.0), _max_diff(got, ref))
    worst = max(diffs.items(), key=lambda kv: kv[1], default=("", 0.0))
    if worst[1] > TOLERANCE:
        raise CheckpointError(f"ONNX export: {worst[0]} differs from torch by {worst[1]:.2e} in ONNX Runtime "
                              f"(more than {TOLERANCE:g})")
    atomic_write_bytes(out / TEXT_FILE, blob)
    if model.tokenizer is not None:
        model.tokenizer.save(out / TOKENIZER_DIR)
    config = dict(model.config)
    manifest = {
        "format": ONNX_FORMAT,
        "format_version": ONNX_FORMAT_VERSION,
        "simseg_version": __version__,
        "source": {"weights_sha256": weights, "text_weights_sha256": model.text_weights_hash,
                   "config_sha256": _sha256(json.dumps(config, sort_keys=True, default=str).encode()),
                   "checkpoint": dict(source) if source else None},
        "model": config,
        "image": {"graphs": images, "sizes": sizes, "patch_size": model.patch_size, "inputs": list(IMAGE_INPUTS),
                  "outputs": list(IMAGE_OUTPUTS), "mean": list(model.mean), "std": list(model.std)},
        "text": {"file": TEXT_FILE, "sha256": _sha256(blob), "bytes": len(blob), "inputs": list(TEXT_INPUTS),
                 "outputs": list(TEXT_OUTPUTS), "max_length": model.max_length, "max_positions": max_positions,
                 "vocab_size": int(model.text_encoder.config.vocab_size), "pooling_variant": "masked"},
        "embed_dim": model.embed_dim,
        "pooling": model.pooling,
        "image_topk": model.image_topk,
        "text_topk": model.text_topk,
        "temperature": float(model.temperature().detach()),
        "tokenizer": TOKENIZER_DIR if model.tokenizer is not None else None,
        "opset": opset,
        "exported_with": {"torch": torch.__version__, "onnx": onnx.__version__},
        "verified": {"tolerance": TOLERANCE, "max_abs_diff": diffs} if verify else None,
    }
    atomic_write_json(out / MANIFEST_NAME, manifest)
    return manifest


# ------------------------------------------------------------------------------------------------ reading
def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of an export folder, checked for format and format version.

    Raises:
        CheckpointError: no manifest, an unreadable one, or one of another format version.
    """
    from simseg.version import __version__

    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a simseg ONNX export (no {MANIFEST_NAME})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ONNX_FORMAT:
        raise CheckpointError(f"{path}: not a simseg ONNX manifest")
    if manifest.get("format_version") != ONNX_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: ONNX export format version {manifest.get('format_version')} (written by simseg "
            f"{manifest.get('simseg_version')}); simseg {__version__} reads version {ONNX_FORMAT_VERSION}: export "
            "the model again")
    for key in ("source", "image", "text", "model"):
        if not isinstance(manifest.get(key), dict):
            raise CheckpointError(f"{path}: incomplete manifest (no {key!r})")
    return manifest


def _check_source(checkpoint: Path, export: Path, manifest: dict, label: str) -> None:
    """Refuse a checkpoint's ``onnx/`` subfolder that was exported from other weights than the checkpoint's."""
    from simseg.hub import read_config

    source = manifest["source"]
    recorded = (source.get("checkpoint") or {}).get("sha256")
    file_sha = read_config(checkpoint / CONFIG_NAME).get("weights_sha256")
    if recorded and recorded == file_sha:
        return  # exported from this very weights file
    if (checkpoint / WEIGHTS_NAME).is_file():  # another file (e.g. the .pth it was converted from): the tensors decide
        from safetensors.torch import load_file

        theirs, ours = source.get("weights_sha256"), state_sha256(load_file(str(checkpoint / WEIGHTS_NAME)))
    elif recorded and file_sha:
        theirs, ours = recorded, file_sha
    else:
        raise CheckpointError(f"{label}/onnx: cannot tell whether it was exported from this checkpoint (the manifest "
                              f"records no checkpoint sha256): export it with simseg export {label} {label}/onnx")
    if theirs != ours:
        raise CheckpointError(f"{label}/onnx: exported from another model (weights sha256 {str(theirs)[:12]}; this "
                              f"checkpoint's {str(ours)[:12]}): export it again")


def find_onnx_folder(path: str | os.PathLike, label: str | None = None) -> Path:
    """The export folder of ``path``: ``path`` itself, or the ``onnx/`` subfolder of a checkpoint folder (checked
    to come from that checkpoint's weights).

    Raises:
        InputError: ``path`` does not exist.
        CheckpointError: no export there, or the subfolder's export is of another model.
    """
    p = Path(path)
    label = label or str(path)
    if not p.exists():
        raise InputError(f"{label}: not found")
    if (p / MANIFEST_NAME).is_file():
        return p
    if (p / "onnx" / MANIFEST_NAME).is_file() and (p / CONFIG_NAME).is_file():
        _check_source(p, p / "onnx", read_manifest(p / "onnx"), label)
        return p / "onnx"
    from simseg.hub import is_hub_name

    if not (p / CONFIG_NAME).is_file():
        raise CheckpointError(f"{label}: no ONNX export ({MANIFEST_NAME}); make one with: "
                              f"simseg export CHECKPOINT {label if p.is_dir() else 'OUT_DIR'} --format onnx")
    # a checkpoint folder: its export belongs in its onnx/ subfolder (a Hub snapshot is not written to: export it here)
    how = f"simseg export {label} OUT_DIR --format onnx, then use OUT_DIR" if is_hub_name(label) else \
        f"simseg export {label} {p / 'onnx'} --format onnx"
    raise CheckpointError(f"{label} (nor in its onnx/ subfolder): no ONNX export ({MANIFEST_NAME}); make one with: "
                          f"{how}")


def _providers(device: str | torch.device) -> list[Any]:
    import onnxruntime as ort

    dev = torch.device(device)
    if dev.type == "cpu":
        return ["CPUExecutionProvider"]
    if dev.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise InputError(f"device {device}: this onnxruntime has no CUDA provider (pip install onnxruntime-gpu), "
                             "or use the cpu")
        return [("CUDAExecutionProvider", {"device_id": dev.index or 0}), "CPUExecutionProvider"]
    raise InputError(f"device {device}: the ONNX backend runs on cpu or cuda")


class OnnxModel:
    """The two towers of an export folder in ONNX Runtime, with the interface the protocols use.

    Tensors go in and come out as CPU torch tensors, so the post-processing is the torch model's. Built by
    :func:`load_onnx_model`.
    """

    training = False

    def __init__(self, folder: Path, manifest: dict, image_sessions: dict[int, Any], text_session: Any,
                 tokenizer: Tokenizer | None, label: str, providers: list[Any]):
        self.folder = folder
        self.manifest = manifest
        self.label = label
        self.providers = providers
        self._image = image_sessions
        self._text = text_session
        self.tokenizer = tokenizer
        image, text = manifest["image"], manifest["text"]
        self.mean = tuple(float(v) for v in image["mean"])
        self.std = tuple(float(v) for v in image["std"])
        self.patch_size = int(image["patch_size"])
        self.image_sizes = sorted(image_sessions)
        self.embed_dim = int(manifest["embed_dim"])
        self.pooling = str(manifest["pooling"])
        self.image_topk = int(manifest["image_topk"])
        self.text_topk = int(manifest["text_topk"])
        self.max_length = int(text["max_length"])
        self.max_positions = int(text["max_positions"])
        self.config: dict[str, Any] = dict(manifest["model"])
        self.weights_hash = str(manifest["source"]["weights_sha256"])
        # what class embeddings depend on: this text graph (its sha256), not the torch weights it came from
        self.text_weights_hash = "onnx:" + str(text["sha256"])
        self._temperature = float(manifest["temperature"])

    def __repr__(self) -> str:
        return (f"OnnxModel({self.label!r}, image sizes {self.image_sizes}, patch {self.patch_size}, "
                f"embed_dim {self.embed_dim}, pooling {self.pooling})")

    @property
    def device(self) -> torch.device:
        """Where inputs are taken from and outputs are returned (ONNX Runtime copies them to its own device)."""
        return torch.device("cpu")

    @property
    def image_size(self) -> int:
        """The first exported input size."""
        return self.image_sizes[0]

    def eval(self) -> "OnnxModel":
        return self

    def temperature(self) -> torch.Tensor:
        """The model's clamped temperature at export."""
        return torch.tensor(self._temperature, dtype=torch.float32)

    def require_input_size(self, size: int) -> None:
        """One line when the image graphs were not exported for ``size``."""
        if int(size) not in self._image:
            raise ConfigError(
                f"{self.label}: the ONNX image graph was exported for input {', '.join(map(str, self.image_sizes))}, "
                f"the protocol asks for {size} (export again with --image-size {size}, or use --backend torch)")

    # ---------------------------------------------------------------- image
    def _run_image(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray, int]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, S, S), got shape {tuple(images.shape)}")
        height, width = int(images.shape[-2]), int(images.shape[-1])
        if height != width:
            raise ConfigError(f"{self.label}: the ONNX image graphs take square inputs, got {height} x {width}")
        self.require_input_size(height)
        x = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        tokens, pooled = self._image[height].run(list(IMAGE_OUTPUTS), {"image": x})
        return tokens, pooled, height

    def encode_image_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, N, embed_dim) projected patch tokens (not normalised) and the patch grid (gh, gw)."""
        tokens, _, size = self._run_image(images)
        g = size // self.patch_size
        return torch.from_numpy(tokens), (g, g)

    def encode_image(self, images: torch.Tensor, masked: bool = True, normalize: bool = True) -> torch.Tensor:
        """(B, embed_dim) pooled, L2-normalised image embedding (the graph has no unnormalised output)."""
        if not normalize:
            raise ValueError("the ONNX image graph returns L2-normalised embeddings only")
        return torch.from_numpy(self._run_image(images)[1])

    # ---------------------------------------------------------------- text
    def tokenize(self, texts: list[str] | str, padding: str = "max_length") -> dict[str, torch.Tensor]:
        """Token ids and attention mask for ``texts`` (max_length 25)."""
        if self.tokenizer is None:
            raise ConfigError(f"{self.label}: this ONNX export has no tokenizer: pass a folder with vocab.txt as "
                              "tokenizer=... (or --tokenizer)")
        return self.tokenizer(texts, max_length=self.max_length, padding=padding)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, masked: bool = True,
                    normalize: bool = True) -> torch.Tensor:
        """(B, embed_dim) pooled text embedding, padding excluded (the evaluation variant), L2-normalised."""
        if not masked or not normalize:
            raise ValueError("the ONNX text graph computes the masked, L2-normalised embedding only")
        if input_ids.shape[-1] > self.max_positions:
            raise InputError(f"{self.label}: {input_ids.shape[-1]} tokens, the text tower takes at most "
                             f"{self.max_positions}")
        feeds = {"input_ids": np.ascontiguousarray(input_ids.detach().cpu().numpy().astype(np.int64)),
                 "attention_mask": np.ascontiguousarray(attention_mask.detach().cpu().numpy().astype(np.int64))}
        return torch.from_numpy(self._text.run(list(TEXT_OUTPUTS), feeds)[0])


def _open_graph(path: Path, entry: dict, manifest: dict, role: str, size: int | None, providers: list[Any],
                threads: int | None = None) -> Any:
    """An ONNX Runtime session of one graph, after checking it belongs to the manifest's model and export."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (the export is incomplete)")
    blob = path.read_bytes()
    try:
        session = _session(blob, providers, threads)
    except Exception as e:  # ORT's InvalidProtobuf / Fail / ...
        raise CheckpointError(f"{path}: not a readable ONNX graph ({type(e).__name__}: {one_line(e)})") from None
    meta = session.get_modelmeta().custom_metadata_map
    weights = manifest["source"]["weights_sha256"]
    if meta.get("simseg_format") != ONNX_FORMAT:
        raise CheckpointError(f"{path}: not a graph exported by simseg")
    if meta.get("simseg_format_version") != str(ONNX_FORMAT_VERSION):
        raise CheckpointError(f"{path}: exported with ONNX format version {meta.get('simseg_format_version')} (simseg "
                              f"{meta.get('simseg_version')}), the manifest and this simseg use "
                              f"{ONNX_FORMAT_VERSION}: export the model again")
    if meta.get("simseg_weights_sha256") != weights:
        raise CheckpointError(f"{path}: exported from another model (weights sha256 "
                              f"{str(meta.get('simseg_weights_sha256'))[:12]}, the manifest's {str(weights)[:12]})")
    if meta.get("simseg_graph") != role or (size is not None and meta.get("simseg_input_size") != str(size)):
        raise CheckpointError(f"{path}: holds the {meta.get('simseg_graph')} graph"
                              + (f" at {meta.get('simseg_input_size')}" if meta.get("simseg_input_size") else "")
                              + f", the manifest expects the {role} graph" + (f" at {size}" if size else ""))
    if _sha256(blob) != entry.get("sha256"):
        raise CheckpointError(f"{path}: does not match the sha256 recorded in {MANIFEST_NAME} (changed after export)")
    inputs = tuple(i.name for i in session.get_inputs())
    outputs = tuple(o.name for o in session.get_outputs())
    want = (IMAGE_INPUTS, IMAGE_OUTPUTS) if role == "image" else (TEXT_INPUTS, TEXT_OUTPUTS)
    if (inputs, outputs) != want:
        raise CheckpointError(f"{path}: inputs {inputs} and outputs {outputs}, expected {want[0]} and {want[1]}")
    return session


def load_onnx_model(path: str | os.PathLike, tokenizer: str | os.PathLike | Tokenizer | None = None,
                    device: str | torch.device = "cpu", label: str | None = None,
                    threads: int | None = None) -> OnnxModel:
    """An :class:`OnnxModel` from an export folder (or a checkpoint folder with the export in ``onnx/``).

    Every graph is checked against the manifest (format version, source weights, role and size, sha256) before it
    is used.

    Args:
        path: the export folder, or a checkpoint folder holding one in ``onnx/``.
        tokenizer: a folder with ``vocab.txt`` or a Tokenizer; default the export's own ``tokenizer/``.
        device: ``cpu``, or ``cuda`` with onnxruntime-gpu.
        label: how messages name the model (default ``path``).
        threads: ONNX Runtime's intra-op threads (default: its own choice, the physical cores).

    Raises:
        CheckpointError: not an export, another format version, graphs of another model or changed since export.
        InputError: onnxruntime missing, the folder missing.
    """
    _require("onnxruntime")
    label = label or str(path)
    folder = find_onnx_folder(path, label)
    manifest = read_manifest(folder)
    providers = _providers(device)
    sessions = {}
    try:
        for key, entry in manifest["image"].get("graphs", {}).items():
            sessions[int(key)] = _open_graph(folder / entry["file"], entry, manifest, "image", int(key), providers,
                                             threads)
        if not sessions:
            raise CheckpointError(f"{folder / MANIFEST_NAME}: lists no image graph")
        text = _open_graph(folder / manifest["text"]["file"], manifest["text"], manifest, "text", None, providers,
                           threads)
        tok = None
        if tokenizer is not None:
            tok = load_tokenizer(tokenizer)
        elif manifest.get("tokenizer"):
            vocab_file = folder / manifest["tokenizer"] / "vocab.txt"
            if not vocab_file.is_file():
                raise CheckpointError(f"{vocab_file}: missing (the export is incomplete; or pass a folder with "
                                      "vocab.txt as tokenizer=... / --tokenizer)")
            tok = load_tokenizer(folder / manifest["tokenizer"])
        vocab = manifest["text"].get("vocab_size")
        if tok is not None and vocab is not None and tok.vocab_size > int(vocab):
            raise CheckpointError(f"{label}: the tokenizer has {tok.vocab_size} tokens but the text graph only "
                                  f"{vocab} embeddings")
        return OnnxModel(folder, manifest, sessions, text, tok, label, providers)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # a manifest edited or written by another tool
        what = f"no {e.args[0]!r}" if isinstance(e, KeyError) else f"{type(e).__name__}: {one_line(e)}"
        raise CheckpointError(f"{folder / MANIFEST_NAME}: incomplete manifest ({what})") from None
