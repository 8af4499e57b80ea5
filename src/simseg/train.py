"""Training a caption-supervised dual encoder, from one CPU process to many GPUs on many nodes.

One CPU or GPU, no torch.distributed::

    simseg train tiny model.tokenizer=path/to/vocab data.train='[{type: csv, path: data/train_anno.csv}]'

One node with 8 GPUs (the global batch ``train.batch_size`` is split over the ranks)::

    torchrun --standalone --nproc_per_node=8 -m simseg train simseg-vit-s16 train.output_dir=runs/s16

Two nodes with 8 GPUs each (run on both nodes, NODE_RANK 0 and 1)::

    torchrun --nnodes=2 --nproc_per_node=8 --node_rank=$NODE_RANK --rdzv_backend=c10d \
        --rdzv_endpoint=$MASTER_HOST:29500 -m simseg train simseg-vit-s16 train.output_dir=runs/s16

SLURM (one task per node; torchrun starts the per-GPU processes)::

    srun --nodes=2 --ntasks-per-node=1 --gpus-per-node=8 bash -c 'torchrun --nnodes=$SLURM_NNODES \
        --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=$(scontrol show hostnames $SLURM_JOB_NODELIST \
        | head -n1):29500 -m simseg train simseg-vit-s16'

Add ``--resume auto`` to continue a killed run from its last valid checkpoint (model, optimizer, scaler, schedule,
step, RNG states and the data position of every rank and loader worker, webdataset streams included: the loss
curve continues exactly when the world size and ``data.num_workers`` are unchanged). Rank 0 decides the checkpoint;
a rank on a node without it (no shared file system) receives the state from rank 0.

Fine-tuning: ``model.init=PATH`` (a simseg folder or an original ``.pth``) starts at step 0 from those weights, every
key checked, the position embedding resampled to ``model.vision.img_size``; nothing is downloaded.

Deterministic mode, for debugging and cross-implementation checks: ``data.augment=false data.shuffle=false
train.schedule=constant model.dropout=0`` (square resize, source order, constant learning rate, no dropout), and for
bit-exact equality with the original's step ``train.adamw=loop train.pad_captions=max_length``, with
``train.checkpoint_every=1 train.keep_checkpoints=0`` to keep every step's weights. Each step's loss is in
``metrics.jsonl``, its updated weights in ``checkpoints/step-N/model.safetensors`` and its gradients in AdamW's first
moments (``train_state.pt``): ``g_1 = m_1 / (1 - beta1)``, ``g_n = (m_n - beta1 * m_(n-1)) / (1 - beta1)``.

The loop is one function, :func:`train`. Data parallelism: each rank embeds its share of the global batch, the
contrastive loss gathers embeddings with gradients (:mod:`simseg.loss`), and gradients are averaged over ranks with an
explicit all-reduce after the backward passes (what DDP does; done by hand because the decoupled accumulation's
backward runs outside a single forward). Decoupled accumulation (GradCache, the original's "BSGS"): a rank's batch is
embedded in chunks without a graph, one loss is computed over the whole global batch, then each chunk is re-embedded
with a graph and back-propagated with the cached embedding gradients. Its gradients equal a full-batch step.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from simseg import distributed as du
from simseg.errors import CheckpointError, ConfigError, InputError
from simseg.files import atomic_write_bytes
from simseg.loss import contrastive_loss
from simseg.model import SimSegModel
from simseg.optim import adamw, lr_scale, param_groups, set_lr
from simseg.schema import validate_config
from simseg.train_state import resume_checkpoint, restore_rng, rng_snapshot, save_training_checkpoint


# ------------------------------------------------------------------------------------------------ one step
def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _chunks(n: int, size: int) -> list[slice]:
    size = n if size <= 0 else size
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def contrastive_step(
    model: SimSegModel,
    images: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    rank: int = 0,
    world_size: int = 1,
    chunk_size: int = 0,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    loss_scale: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    masked: bool | None = None,
    packed: bool = False,
) -> torch.Tensor:
    """Forward and backward of one contrastive step on this rank's share of the global batch.

    With ``chunk_size`` of 0 (or >= the local batch) this is a plain forward/backward. Otherwise the decoupled
    accumulation: (1) embed every chunk without a graph, remembering the RNG state (dropout) of each; (2) one loss on
    all embeddings (gathered over ranks), backward to the embeddings and the temperature; (3) per chunk, restore its
    RNG state, embed again with a graph, and back-propagate the cached embedding gradients. Gradients accumulate in
    ``.grad`` (not averaged over ranks: see :func:`average_gradients`). ``masked`` is the text pooling's variant
    (None: the model's ``train_pooling``); ``packed`` packs the captions without padding (:func:`packs_captions`).
    Returns the loss (detached).
    """
    n = images.shape[0]
    temperature = model.temperature()
    if chunk_size <= 0 or chunk_size >= n:
        with autocast():
            img, txt = model(images, input_ids, attention_mask, masked=masked, packed=packed)
        loss = contrastive_loss(img.float(), txt.float(), temperature, rank, world_size)
        loss_scale(loss).backward()
        return loss.detach()

    device = images.device
    parts = _chunks(n, chunk_size)
    states, img_parts, txt_parts = [], [], []
    with torch.no_grad():
        for s in parts:
            states.append(_rng_state(device))
            with autocast():
                i, t = model(images[s], input_ids[s], attention_mask[s], masked=masked, packed=packed)
            img_parts.append(i.float())
            txt_parts.append(t.float())
    after = _rng_state(device)
    img = torch.cat(img_parts).requires_grad_(True)
    txt = torch.cat(txt_parts).requires_grad_(True)
    loss = contrastive_loss(img, txt, temperature, rank, world_size)
    loss_scale(loss).backward()
    for s, state in zip(parts, states):
        _set_rng_state(state, device)
        with autocast():
            i, t = model(images[s], input_ids[s], attention_mask[s], masked=masked, packed=packed)
        surrogate = (i.float() * img.grad[s]).sum() + (t.float() * txt.grad[s]).sum()
        surrogate.backward()
    _set_rng_state(after, device)
    return loss.detach()


def average_gradients(model: torch.nn.Module, world_size: int) -> None:
    """All-reduce gradients and divide by ``world_size`` (one flat buffer; no-op in a single process).

    When the gradients are views of one buffer (:class:`GradientBuffer`) the all-reduce runs on that buffer in place;
    otherwise they are packed into one and unpacked after (two copies of every gradient).
    """
    if world_size <= 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = GradientBuffer.base_of(grads)
    if flat is not None:
        du.all_reduce_sum(flat)
        flat /= world_size
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    du.all_reduce_sum(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


class GradientBuffer:
    """Every trainable parameter's ``.grad`` as a view of one flat buffer, so that the all-reduce of data parallelism
    runs on the buffer itself (no packing and unpacking copies, what DDP's gradient buckets do).

    The backward passes accumulate into the views in place; :meth:`zero` clears them for the next step (in place of
    ``optimizer.zero_grad``, which would replace the views). One buffer per dtype and device is not needed: the
    model's trainable parameters share one (fp32 master weights).
    """

    def __init__(self, model: torch.nn.Module):
        params = [p for p in model.parameters() if p.requires_grad]
        first = params[0]
        self.flat = torch.zeros(sum(p.numel() for p in params), dtype=first.dtype, device=first.device)
        self.params = params
        self.attach()

    def attach(self) -> None:
        """(Re)point every parameter's ``.grad`` at its slice of the buffer."""
        offset = 0
        for p in self.params:
            p.grad = self.flat[offset: offset + p.numel()].view_as(p)
            offset += p.numel()

    def zero(self) -> None:
        """Clear the gradients in place (re-pointing any ``.grad`` that something replaced)."""
        self.flat.zero_()
        if any(p.grad is None or p.grad._base is not self.flat for p in self.params):
            self.attach()

    @staticmethod
    def base_of(grads: list[torch.Tensor]) -> torch.Tensor | None:
        """The flat buffer that ``grads`` tile exactly, in order, or None."""
        if not grads or grads[0]._base is None:
            return None
        base = grads[0]._base
        if base.dim() != 1 or not base.is_contiguous():
            return None
        offset = 0
        start = base.data_ptr()
        size = base.element_size()
        for g in grads:
            if g._base is not base or g.data_ptr() != start + offset * size or not g.is_contiguous():
                return None
            offset += g.numel()
        return base if offset == base.numel() else None


def caption_padding(masked: bool, setting: str = "auto") -> str:
    """How training pads captions (``train.pad_captions``). ``auto``: to the longest in the batch when the text
    pooling is masked (BERT attends only to real tokens and the masked pooling ignores padding, so the embeddings are
    the same to float rounding at a fraction of the cost), to ``max_length`` for the vanilla pooling, where padding
    tokens count. ``max_length``: always to 25 tokens, the original's (bit-exact cross-implementation checks)."""
    return "longest" if masked and setting in ("auto", "packed") else "max_length"


def packs_captions(masked: bool, setting: str = "auto") -> bool:
    """``train.pad_captions: packed``: as ``auto``, and the captions of a batch are then packed into rows without
    padding (:meth:`simseg.model.SimSegModel.text_tokens_packed`: each attends only to itself at its own positions),
    so BERT computes real tokens only. The same embeddings and gradients to float rounding; dropout draws its masks
    over the packed rows, so a run differs from an ``auto`` run as two seeds do. The masked pooling only (the vanilla
    pooling counts padding tokens: ``max_length``, not packed)."""
    return masked and setting == "packed"


def compiler_problem(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot compile for ``device`` here (None: it can). Inductor builds C++ kernels on a CPU
    and Triton kernels on a GPU."""
    if device.type == "cpu":
        names = [os.environ.get("CXX") or "", "g++", "c++", "clang++"]
        if not any(n and shutil.which(n) for n in names):
            return "no C++ compiler (g++, c++ or clang++) on PATH"
        return None
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    return None


def compile_forward(model: SimSegModel, device: torch.device) -> bool:
    """``train.compile``: compile the training forward (``model(...)``) with ``torch.compile``; evaluations, which call
    the encoders' methods, stay eager, and the state dict keeps its keys. Falls back to eager with a warning where no
    compiler works. Returns whether the forward is compiled."""
    problem = compiler_problem(device)
    if problem is not None:
        if du.is_main_process():
            print(f"warning: train.compile=true but torch.compile cannot run here ({problem}): training eagerly",
                  flush=True)
        return False
    model.compile()
    return True


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Give every rank rank 0's weights (as DDP does at construction); no-op in a single process."""
    if du.get_world_size() <= 1:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


# ------------------------------------------------------------------------------------------------ logging
class _Logger:
    """metrics.jsonl on rank 0, TensorBoard when installed, wandb when installed and asked for."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int, use_wandb: bool, cfg: dict):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = self.wandb = None
        self.last_loss = None  # the last loss logged up to the resume step (a finished run resumed runs no step)
        if not enabled:
            return
        if self.path.exists():  # drop what a killed run logged after its last checkpoint (and a cut-off line)
            kept = []
            for ln in self.path.read_text().splitlines():
                try:
                    record = json.loads(ln)
                    if record.get("step", 0) <= resume_step:
                        kept.append(ln)
                        self.last_loss = record.get("loss", self.last_loss)
                except ValueError:
                    continue
            atomic_write_bytes(self.path, "".join(ln + "\n" for ln in kept).encode())
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            pass
        if use_wandb:
            try:
                import wandb

                self.wandb = wandb.init(project="simseg", config=cfg, dir=str(run_dir))
            except ImportError:
                print("warning: train.wandb=true but wandb is not installed")

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if isinstance(v, (int, float)) and k != "step":
                if self.tb is not None:
                    self.tb.add_scalar(k, v, record["step"])
        if self.wandb is not None:
            self.wandb.log(record, step=record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ------------------------------------------------------------------------------------------------ evaluation hooks
def run_evaluations(model: SimSegModel, eval_cfg: dict, device: torch.device,
                    cache_dir: str | Path | None = None) -> dict:
    """The periodic evaluations of the config's ``eval`` section, with the code and parameters of ``simseg
    eval-retrieval`` / ``simseg eval-seg``. Returns flat metrics, and beside each evaluation's numbers the protocol
    that produced them (``retrieval/protocol``, ``seg/protocol``: names and every parameter).

    ``eval.retrieval``: ``{path, batch_size: 64, resize_size: 324, crop_size: 288, resize_mode: square}`` (the
    paper's transform unless set). ``eval.segmentation``: ``{dataset, data_root ($SIMSEG_DATA if unset), protocol:
    simseg, crf: true, params: {}, limit: null, classes: null, templates: null}``; the benchmark's paper settings
    (e.g. N = 30 for PASCAL Context) apply unless ``params`` sets them, as in ``eval-seg``. Called on every rank at
    the same step: both evaluations shard their data over the ranks and combine results.
    """
    out: dict[str, Any] = {}
    was_training = model.training
    model.eval()
    try:
        if eval_cfg.get("retrieval"):
            from simseg.protocols import RetrievalParams
            from simseg.retrieval import evaluate_retrieval, protocol_info

            r = dict(eval_cfg["retrieval"])
            sizes = (int(r.get("resize_size", RetrievalParams.resize_size)),
                     int(r.get("crop_size", RetrievalParams.crop_size)), str(r.get("resize_mode",
                                                                                  RetrievalParams.resize_mode)))
            metrics = evaluate_retrieval(model, r["path"], device=device, batch_size=int(r.get("batch_size", 64)),
                                         skip_bad=True, resize_size=sizes[0], crop_size=sizes[1],
                                         resize_mode=sizes[2], progress=False)
            out.update({f"retrieval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
            out["retrieval/protocol"] = protocol_info(model, *sizes)
        if eval_cfg.get("segmentation"):
            from simseg.evaluate import evaluate_segmentation, evaluation_classes
            from simseg.protocols import DEFAULT_PROTOCOL, benchmark_parameters
            from simseg.segdata import SegmentationBenchmark, resolve_data_root
            from simseg.segment import Segmenter

            s = dict(eval_cfg["segmentation"])
            protocol = s.get("protocol", DEFAULT_PROTOCOL)
            bench = SegmentationBenchmark(s["dataset"], resolve_data_root(s.get("data_root")),
                                          class_names=s.get("classes"))
            classes, _ = evaluation_classes(bench.class_names)
            params = benchmark_parameters(s["dataset"], protocol, dict(s.get("params") or {}))
            seg = Segmenter(model, classes, protocol=protocol, crf=bool(s.get("crf", True)),
                            templates=s.get("templates"), cache_dir=s.get("cache_dir", cache_dir), progress=False,
                            **params)
            metrics = evaluate_segmentation(seg, bench, limit=s.get("limit"), rank=du.get_rank(),
                                            world_size=du.get_world_size(), progress=False)
            out.update({f"seg/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
            out["seg/dataset"] = s["dataset"]
            out["seg/protocol"] = seg.protocol_info()
    finally:
        model.train(was_training)
    return out


def _describe_evaluations(step: int, metrics: dict) -> str:
    """One log line per evaluation: its headline numbers and the protocol that produced them."""
    lines = []
    for prefix, keys in (("retrieval", ("I2T_R@1", "T2I_R@1", "RSUM")), ("seg", ("mIoU",))):
        info = metrics.get(f"{prefix}/protocol")
        if info is None:
            continue
        numbers = ", ".join(f"{k} {metrics[f'{prefix}/{k}']:.2f}" for k in keys if f"{prefix}/{k}" in metrics)
        params = ", ".join(f"{k}={v}" for k, v in info.items() if k != "name" and not isinstance(v, (dict, list)))
        where = f" on {metrics['seg/dataset']}" if prefix == "seg" else ""
        lines.append(f"eval at step {step}{where}: {numbers} (protocol {info.get('name')}: {params})")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the loop
def check_run_inputs(cfg: dict) -> None:
    """Fail now, in one line naming the key, on what would otherwise stop a run only later: an output folder that
    cannot be written (the first checkpoint), an evaluation source that is not there (the first evaluation).

    Raises:
        ConfigError: ``train.output_dir`` not writable, ``eval.retrieval.path`` or ``eval.segmentation``'s
            benchmark not found.
    """
    run_dir = Path(cfg["train"]["output_dir"])
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".simseg-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"train.output_dir {run_dir}: cannot write there ({e.strerror or e})") from None
    evaluations = cfg.get("eval") or {}
    retrieval = evaluations.get("retrieval")
    if retrieval:
        path = Path(retrieval["path"])
        target = path / "valid.parquet" if path.is_dir() else path
        if not target.is_file():
            raise ConfigError(f"eval.retrieval.path {retrieval['path']}: {target} not found")
    segmentation = evaluations.get("segmentation")
    if segmentation:
        from simseg.segdata import SegmentationBenchmark, resolve_data_root

        try:
            SegmentationBenchmark(segmentation["dataset"], resolve_data_root(segmentation.get("data_root")),
                                  class_names=segmentation.get("classes"))
        except InputError as e:
            raise ConfigError(f"eval.segmentation: {e}") from None


def check_fresh_output(run_dir: Path) -> None:
    """Refuse to start a new run (no ``--resume``) in a folder that holds one: starting would empty its
    ``metrics.jsonl`` at once and replace or prune its checkpoints at the first checkpoint of the new run.

    Raises:
        ConfigError: ``train.output_dir`` holds training checkpoints, a final checkpoint or logged steps.
    """
    steps = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*") if p.is_dir())
    log = run_dir / "metrics.jsonl"
    if steps:
        held = f"checkpoints up to {steps[-1]}"
    elif (run_dir / "checkpoint").is_dir():
        held = "a final checkpoint"
    elif log.is_file() and log.stat().st_size:
        held = "a metrics.jsonl of logged steps"
    else:
        return
    raise ConfigError(f"train.output_dir {run_dir}: already holds a run ({held}); continue it with --resume auto, "
                      "or choose another train.output_dir (or remove that run)")


#: Model keys a resumed run may change: where the weights first came from, the vocabulary's location (the checkpoint
#: holds its own copy), and what the run applies itself (dropout, the training pooling, pretrained initialisation).
_RESUME_FREE_KEYS = ("init", "tokenizer", "dropout", "train_pooling", "pretrained")


def model_config_differences(saved: dict, wanted: dict, prefix: str = "model") -> list[str]:
    """The keys of the config's ``model`` section (``wanted``) whose value differs from a checkpoint's (``saved``), as
    ``key: checkpoint value vs config value``; keys only the checkpoint has (filled in when it was built) and
    :data:`_RESUME_FREE_KEYS` are not compared."""
    differences = []
    for key, value in wanted.items():
        if key in _RESUME_FREE_KEYS:
            continue
        have = saved.get(key) if isinstance(saved, dict) else None
        if isinstance(value, dict):
            differences += model_config_differences(have if isinstance(have, dict) else {}, value, f"{prefix}.{key}")
        elif have != value:
            differences.append(f"{prefix}.{key}: {have!r} vs {value!r}")
    return differences


def _device(name: str) -> torch.device:
    """``train.device``: auto, cpu, cuda (this process's GPU under torchrun) or cuda:N, checked before the model
    moves there."""
    try:
        return du.resolve_device(name, "train.device", du.get_local_rank())
    except InputError as e:
        raise ConfigError(str(e)) from None


def resolve_precision(name: str, device: torch.device) -> str:
    """``train.precision``: ``auto`` is fp16 mixed precision on CUDA (what the original trained with) and fp32 on
    CPU (bf16 matmul is ~100x slower than fp32 on plain CPUs); fp32, fp16 and bf16 are taken as given.

    Raises:
        ConfigError: fp16 on a device other than CUDA (its loss scaling is CUDA's: without it, fp16 gradients
            underflow).
    """
    if name == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.precision: 'fp16' is not allowed on {device.type} (fp16 mixed precision needs CUDA "
                          "for its loss scaling; use fp32 or bf16)")
    return name


def initial_model(model_cfg: dict, load_init: bool = True) -> SimSegModel:
    """The model a fresh run starts from: built from the ``model`` section (pretrained towers as configured) or,
    with ``model.init``, built without any download and given that checkpoint's weights
    (:func:`simseg.train_state.load_init_weights`: every key checked, the position embedding resampled).
    ``load_init=False`` builds the architecture only (ranks other than 0 receive rank 0's weights).

    Raises:
        ConfigError: no tokenizer (``model.tokenizer``, or a simseg ``model.init`` folder holding one).
        InputError, CheckpointError: ``model.init`` is missing, not a checkpoint, or of another architecture.
    """
    from simseg.model import build_model
    from simseg.tokenizer import load_tokenizer
    from simseg.train_state import load_init_weights

    init = model_cfg.get("init")
    tok_source = model_cfg.get("tokenizer")
    if not tok_source and init and (Path(init) / "tokenizer" / "vocab.txt").is_file():
        tok_source = Path(init) / "tokenizer"
    if not tok_source:
        raise ConfigError("model.tokenizer: give a Hugging Face name or a folder with vocab.txt")
    tokenizer = load_tokenizer(tok_source)
    if not init:
        return build_model(model_cfg, tokenizer)
    model = build_model(model_cfg, tokenizer, pretrained=False)
    if load_init:
        load_init_weights(model, init)
    return model


def _initial_model_everywhere(model_cfg: dict) -> SimSegModel:
    """:func:`initial_model` on every rank as a collective: rank 0 reads ``model.init`` (the other ranks get its
    weights by the broadcast that follows, so a node without the file trains too), and an error on any rank is
    raised on every rank instead of leaving the others waiting."""
    from simseg.errors import InputError, SimSegError

    model, problem = None, None
    try:
        model = initial_model(model_cfg, load_init=du.is_main_process())
    except SimSegError as e:
        problem = (type(e).__name__, f"{e}" if du.get_world_size() == 1 else f"rank {du.get_rank()}: {e}")
    first = next((p for p in du.all_gather_object(problem) if p), None)
    if first is not None:
        raise {"InputError": InputError, "CheckpointError": CheckpointError}.get(first[0], ConfigError)(first[1])
    return model


def train(cfg: dict, resume: str = "none", batch_iter: Iterator[dict] | None = None, progress: bool = True) -> dict:
    """Train with a resolved config (a plain dict). Returns a summary (final loss, steps, lost samples, paths).

    Args:
        cfg: the merged config (``model``, ``data``, ``train``, ``eval`` sections); not changed.
        resume: "none", "auto" (newest valid checkpoint in the output folder, if any), or a checkpoint folder.
        batch_iter: batches to use instead of the configured data sources (tests, the demo): an iterator of
            ``{"images", "captions", "skipped"}`` for THIS rank, starting at the resume step.
        progress: show a progress bar on rank 0 (redrawn on a terminal, whole lines every 30 s in a log).
    """
    from simseg.checkpoint import save_model
    from simseg.config import save_config
    from simseg.model import set_dropout
    from simseg.progress import progress_bar

    validate_config(cfg)
    tc, mc, dc = cfg["train"], cfg["model"], cfg["data"]
    du.init_distributed()
    rank, world = du.get_rank(), du.get_world_size()
    device = _device(tc.get("device", "auto"))
    precision = resolve_precision(tc.get("precision", "auto"), device)
    schedule = str(tc.get("schedule", "cosine"))  # values checked by the schema
    train_pooling = str(mc.get("train_pooling") or "masked")
    run_dir = Path(tc["output_dir"])
    check_run_inputs(cfg)
    if resume in ("none", "", None):
        check_fresh_output(run_dir)
    total_steps, global_batch = int(tc["steps"]), int(tc["batch_size"])
    if global_batch % world:
        raise ConfigError(f"train.batch_size ({global_batch}) must be a positive multiple of the world size ({world})")
    local_batch = global_batch // world
    num_streams = max(1, int(dc.get("num_workers", 0)))

    seed = int(tc.get("seed", 0))
    torch.manual_seed(seed + rank)
    random.seed(seed + rank)
    np.random.seed((seed + rank) % (1 << 32))

    # ---- model, optimizer, resume (a collective: rank 0 decides, every rank ends with the same state)
    found = resume_checkpoint(run_dir, resume)
    start_step, extra = 0, {}
    if found is not None:
        ckpt, state, model = found
        differences = model_config_differences(model.config, mc)
        if differences:
            raise ConfigError(f"--resume: {ckpt} holds another model than the config's (checkpoint vs config: "
                              f"{'; '.join(differences[:3])}); a resumed run keeps its model: resume with the model "
                              "config it was trained with")
        start_step, extra = int(state["step"]), dict(state["extra"])
        if start_step > total_steps:
            raise ConfigError(f"train.steps: {total_steps} is fewer than the {start_step} steps of {ckpt}, the "
                              "checkpoint resumed from")
        if du.is_main_process():
            print(f"resuming from {ckpt} (step {start_step})", flush=True)
        if mc.get("dropout") is not None:
            set_dropout(model, mc["dropout"])
    else:
        model = _initial_model_everywhere(mc)
    model.to(device).train()
    broadcast_parameters(model)
    opt = adamw(param_groups(model, float(tc["weight_decay"]), bool(tc.get("decay_exclude_1d", False))),
                lr=float(tc["lr"]), betas=tuple(tc["betas"]), eps=float(tc["eps"]),
                kernel=str(tc.get("adamw", "fused")))
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    if found is not None:
        try:
            opt.load_state_dict(found[1]["optimizer"])
        except ValueError as e:
            raise CheckpointError(f"{found[0]}: its optimizer state does not fit this run ({e}); resume with the "
                                  "train.decay_exclude_1d it was saved with") from None
        if scaler is not None and found[1].get("scaler"):
            scaler.load_state_dict(found[1]["scaler"])
    resolved = copy.deepcopy(cfg)
    resolved["train"]["precision"] = precision  # what was chosen, not "auto"
    if du.is_main_process():
        save_config(resolved, run_dir / "config.yaml")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()

    # ---- data
    saved_data = extra.get("data") or {}
    positions: dict = {}
    if found is not None and saved_data:
        if saved_data.get("world_size") == world and saved_data.get("num_streams") == num_streams:
            positions = dict(saved_data["positions"][rank])
        elif du.is_main_process():
            print(f"warning: the checkpoint's data positions were saved with {saved_data.get('world_size')} rank(s) "
                  f"x {saved_data.get('num_streams')} loader stream(s), this run has {world} x {num_streams}: "
                  "streamed sources restart from fresh seeded streams (map-style sources stay exact)", flush=True)
    mixing: list[dict] = []
    if batch_iter is None:
        loader = _build_loader(cfg, model, rank, world, local_batch, start_step, positions)
        mixing = loader.dataset.mixing()
        if du.is_main_process():
            print("data: " + "; ".join(f"{m['source']} size {m['size']} share {m['share']:.3f}" for m in mixing),
                  flush=True)
        batch_iter = iter(loader)
    logger = _Logger(run_dir, du.is_main_process(), start_step, bool(tc.get("wandb", False)), resolved)
    if found is not None:  # last: building the loader iterator above draws from the global RNG
        restore_rng(found[1]["rng"], rank, world, device)

    # ---- loop
    bar = progress_bar(total=total_steps, initial=start_step, disable=not (progress and du.is_main_process()),
                       desc="train", unit="step")
    loss_value, t_last, n_last = float("nan"), time.perf_counter(), 0
    saved_bad = extra.get("bad_samples")
    local_bad = int(saved_bad[rank]) if isinstance(saved_bad, list) and len(saved_bad) == world else 0
    saved_by_source = extra.get("bad_samples_by_source")
    n_sources = len(mixing) or len(dc.get("train") or [])
    local_by_source = (list(saved_by_source[rank]) if isinstance(saved_by_source, list)
                       and len(saved_by_source) == world and len(saved_by_source[rank]) == n_sources
                       else [0] * n_sources)
    keep = int(tc.get("keep_checkpoints", 3))
    masked = train_pooling == "masked"
    pad_captions = str(tc.get("pad_captions", "auto"))
    padding, packed = caption_padding(masked, pad_captions), packs_captions(masked, pad_captions)
    if tc.get("compile", False):
        compile_forward(model, device)
    grads = GradientBuffer(model) if world > 1 else None  # in a single process the backward's own tensors are kept

    def by_source_total() -> list[int]:
        rows = du.all_gather_object(local_by_source)
        return [sum(col) for col in zip(*rows)] if rows and rows[0] else []

    def checkpoint(step_done: int) -> None:  # a collective: every rank calls it, rank 0 writes
        rngs = du.all_gather_object(rng_snapshot(device))
        state = {"bad_samples": du.all_gather_object(local_bad),
                 "bad_samples_by_source": du.all_gather_object(local_by_source),
                 "data": {"world_size": world, "num_streams": num_streams,
                          "positions": du.all_gather_object(positions)}}
        if du.is_main_process():
            save_training_checkpoint(run_dir, step_done, model, opt, scaler, state, rngs, keep)

    ckpt_every, log_every = int(tc.get("checkpoint_every", 0)), max(1, int(tc.get("log_every", 10)))
    eval_every = int(tc.get("eval_every", 0))
    eval_cache = run_dir / "cache" / "text"
    base_lr, warmup, floor = float(tc["lr"]), float(tc.get("warmup", 0.025)), float(tc.get("lr_floor", 0.1))
    for step in range(start_step, total_steps):
        batch = next(batch_iter)
        local_bad += int(batch.get("skipped", 0))
        for i, n in enumerate(batch.get("skipped_by_source") or []):
            if i < len(local_by_source):
                local_by_source[i] += int(n)
        if "positions" in batch:  # where this batch's stream stopped: saved with the next checkpoint
            positions[str(batch["stream"])] = {str(k): v for k, v in batch["positions"].items()}
        lr = base_lr * lr_scale(step, total_steps, warmup, floor, schedule)
        set_lr(opt, lr)
        tokens = model.tokenize(list(batch["captions"]), padding=padding)
        images = batch["images"].to(device, non_blocking=True)
        if grads is not None:
            grads.zero()
        else:
            opt.zero_grad(set_to_none=True)
        loss = contrastive_step(model, images, tokens["input_ids"], tokens["attention_mask"], rank, world,
                                int(tc.get("chunk_size", 0)), autocast,
                                scaler.scale if scaler is not None else (lambda x: x), masked=masked, packed=packed)
        average_gradients(model, world)
        if scaler is not None:
            scaler.unscale_(opt)
        if float(tc.get("grad_clip", 0)) > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(tc["grad_clip"]))
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        n_last += global_batch
        bar.update(1)
        done = step + 1
        if done % log_every == 0 or done == total_steps:  # every rank: the loss and counts are reduced
            loss_value = float(du.all_reduce_sum(loss.clone())) / world
            bad_total = sum(du.all_gather_object(local_bad))
            bad_sources = by_source_total()
            now = time.perf_counter()
            ips = n_last / max(now - t_last, 1e-9)
            t_last, n_last = now, 0
            # no redraw of its own: in a log file every redraw is a line (the bar's next one shows the numbers)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.1f}", refresh=False)
            record = {"step": done, "loss": loss_value, "lr": lr, "temperature": model.temperature().item(),
                      "images_per_s": ips, "bad_samples": bad_total}
            if bad_sources:
                record["bad_samples_by_source"] = bad_sources
            logger.log(record)
        if eval_every and done % eval_every == 0 and done != total_steps:
            metrics = run_evaluations(model, cfg.get("eval") or {}, device, eval_cache)
            logger.log({"step": done, **metrics})
            if du.is_main_process() and metrics:
                bar.write(_describe_evaluations(done, metrics))
        if ckpt_every and done % ckpt_every == 0 and done != total_steps:
            checkpoint(done)
    bar.close()

    if start_step < total_steps:
        checkpoint(total_steps)
    final_metrics = run_evaluations(model, cfg.get("eval") or {}, device, eval_cache)
    bad_total = sum(du.all_gather_object(local_bad))
    bad_sources = by_source_total()
    summary: dict[str, Any] = {
        "steps": total_steps, "final_loss": loss_value if start_step < total_steps else logger.last_loss,
        "bad_samples": bad_total,
        "bad_samples_by_source": bad_sources, "output_dir": str(run_dir), "precision": precision,
        "train_pooling": train_pooling, "schedule": schedule, "world_size": world, "data": mixing,
    }
    if du.is_main_process():
        if final_metrics:
            logger.log({"step": total_steps, **final_metrics})
            summary["eval"] = final_metrics
            print(_describe_evaluations(total_steps, final_metrics), flush=True)
        save_model(model.eval(), run_dir / "checkpoint", meta={"step": total_steps, "summary": summary})
        summary["checkpoint"] = str(run_dir / "checkpoint")
    logger.close()
    du.barrier()
    if summary["bad_samples"] and du.is_main_process():
        per = ", ".join(f"{m['source']}: {n}" for m, n in zip(mixing, bad_sources)) if mixing else ""
        print(f"lost {summary['bad_samples']} training sample(s){f' ({per})' if per else ''}; see the warnings above",
              flush=True)
    return summary


def _build_loader(cfg: dict, model: SimSegModel, rank: int, world: int, local_batch: int, start_step: int,
                  positions: dict | None = None):
    from simseg.data import build_sources, build_train_loader
    from simseg.transforms import CaptionAugmenter, eval_transform, train_transform

    dc, tc = cfg["data"], cfg["train"]
    sources, weights = build_sources(list(dc.get("train") or []))
    size = int(dc.get("image_size", 224))
    augment = bool(dc.get("augment", True))
    if augment:
        transform = train_transform(size=size, scale=tuple(dc.get("crop_scale", (0.6, 1.0))),
                                    autoaugment=bool(dc.get("autoaugment", True)), mean=model.mean, std=model.std)
    else:  # deterministic: the square evaluation resize, no crop, no AutoAugment
        transform = eval_transform(size, mode="square", mean=model.mean, std=model.std)
    prob = float(dc.get("caption_augment_prob", 0.0)) if augment else 0.0
    caption_fn = CaptionAugmenter(model.tokenizer, prob) if prob > 0 else None
    return build_train_loader(sources, weights, local_batch, transform, rank=rank, world_size=world,
                              seed=int(tc.get("seed", 0)), num_workers=int(dc.get("num_workers", 0)),
                              start_batch=start_step, caption_fn=caption_fn, pin_memory=torch.cuda.is_available(),
                              shuffle=bool(dc.get("shuffle", True)), stream_positions=positions or None)
