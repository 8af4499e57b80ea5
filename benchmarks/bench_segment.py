"""Speed of the ``simseg`` protocol on CPU against an original-equivalent reference, and of what surrounds it.

Everything is measured in one run on one machine, and printed as ratios next to the machine's load (timings taken
while other processes compete for the cores are not comparable between runs; ratios within a run are fairer):

The C allocator keeps freed memory (``simseg.allocator``, as the ``simseg`` command sets it as it starts) unless
``--malloc default``; both sides run in this one process, so the reference gains from it as much as ours.

- ``peak``: the fp32 matmul peak, a large ``torch.mm`` loop, at the thread counts used below.
- ``throughput``: the paper's protocol per image, whole (PIL image in, label map out), for a line-by-line port of
  the original pipeline (torchvision ``Resize((288, 288))`` + ``ToTensor`` + ``Normalize``, timm's forward of a ViT
  built at 288 with the resampled position embedding, the original's post-processing loop with its (C, H, W)
  float64 array and per-class interpolate / min-max / CRF / dilate / erode / resize, ``argmax``) and for ours:
  one image at a time, and pipelined (``Segmenter.segment_many``: CRF calls in worker processes, forward lanes). Both
  sides see the same images, warmed up on the same images, timed over the same images, steady state. ``same``:
  images whose labels equal the reference's. The limit is the CPU time of forward + CRF spread over the cores.
  The dense-CRF library's own calls are counted apart (``crf``): building the CRF, its kernels and the mean-field
  iterations; the unary (``-log(p + 1e-8)``) and the argmax of the marginals count as post-processing on both sides.
- ``forward``: the ViT forward (with projection, pooling, scores) in GFLOP/s and in % of the matmul peak, with the
  variants that decide it (packed linear weights, the allocator's thresholds, threads, attention kernel, batching,
  lanes running side by side).
- ``embeddings``: class embeddings of new classes with BERT-base, tokens/s against the BERT FLOP limit of the
  tokens they contain (analytic FLOPs per token at the measured peak): prompts sorted by length and packed into
  rows without padding (ours), sorted and padded per batch, in prompt order, and the original's padding to 25.
- ``forward``, ``embeddings`` and ``dense`` also time the model's linear layers as bare ``F.linear`` calls at the
  shapes the forward gives them (recorded by hooks): the BLAS library's speed at those shapes, and ours as a
  multiple of their time at the same matmul rate (the rest is attention, norms, activations, copies, Python).
  ``forward`` and ``dense`` time the ViT's attention kernel alone in the same way (bare
  ``scaled_dot_product_attention`` calls) and print the bound the two kernels set: the whole's FLOPs over the
  linears' and the attention's times alone, as a % of the peak, which no forward built from these kernels exceeds.
- every row's % of the peak is taken against the best matmul rate sampled between that row's own repetitions
  (column ``peak``): a shared machine's speed drifts within a run.
- ``dense``: the dense protocol per image against its own FLOP limit (the windows' forwards at the peak).
- ``startup``: a whole ``simseg segment`` process on one image with a warm cache (class embeddings and the traced
  image tower; median of 5), with a ViT-S/16 + BERT-base checkpoint written here (random weights: timing does not
  depend on them), beside the import of torch alone.

Class embeddings of the throughput section are random unit vectors, so the image-level scores spread like a trained
model's and the walk accepts a realistic 1-3 classes per image.

Run:
    python benchmarks/bench_segment.py [--images 30] [--model simseg-vit-s16] [--sections peak throughput ...]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import simseg
from simseg.allocator import CHOICES, ENV, from_environment
from simseg.classnames import IMAGENET_TEMPLATES, benchmark_classes
from simseg.crf import binary_unary, crf_from_unary
from simseg.packed import PackedLinear, packed_view
from simseg.segment import Segmenter

SECTIONS = ("peak", "throughput", "forward", "embeddings", "dense", "startup")


# ----------------------------------------------------------------------------------------------- helpers
def load() -> str:
    """The machine's load averages and how many other processes are running now."""
    with open("/proc/loadavg") as f:
        one, five, fifteen, running = f.read().split()[:4]
    return f"load {one} / {five} / {fifteen} (1 / 5 / 15 min), {running.split('/')[0]} running, {os.cpu_count()} cores"


class threads:
    """torch's intra-op threads inside a block."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


class PeakProbe:
    """The fp32 matmul rate at this moment: one timed (size x size) @ (size x size) ``torch.mm`` per :meth:`sample`.

    A shared machine's speed drifts within a run; a row's % of the peak is taken against the best rate sampled
    between that row's own repetitions (:func:`timed`), so that it compares the row with the machine as it was."""

    def __init__(self, size: int = 2048):
        self.size = size
        self.a, self.b = torch.randn(size, size), torch.randn(size, size)
        self.out = torch.empty(size, size)
        torch.mm(self.a, self.b, out=self.out)

    def sample(self) -> float:
        t0 = time.perf_counter()
        torch.mm(self.a, self.b, out=self.out)
        return 2 * self.size ** 3 / (time.perf_counter() - t0) / 1e9


def matmul_peak(n_threads: int, seconds: float = 1.5) -> float:
    """Best GFLOP/s of :class:`PeakProbe`'s ``torch.mm`` over a loop of ``seconds``."""
    with threads(n_threads):
        probe = PeakProbe()
        best = 0.0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            best = max(best, probe.sample())
    return best


def vit_flops(vit: torch.nn.Module, grid: tuple[int, int], embed_dim: int = 512) -> float:
    """Multiply-adds x 2 of a timm ViT's forward at ``grid`` patches, with the projection of the patch tokens."""
    patches = grid[0] * grid[1]
    n = patches + vit.num_prefix_tokens
    width = vit.embed_dim
    hidden = vit.blocks[0].mlp.fc1.out_features
    patch_in = vit.patch_embed.proj.weight[0].numel()
    per_block = 2 * n * width * 3 * width + 2 * n * width * width + 4 * n * width * hidden + 4 * n * n * width
    return len(vit.blocks) * per_block + 2 * patches * patch_in * width + 2 * patches * width * embed_dim


def bert_flops_per_token(bert: torch.nn.Module, length: float, embed_dim: int = 512) -> float:
    """FLOPs per real token of a BERT encoder (and the projection) over sequences of ``length`` tokens."""
    c = bert.config
    h, inter = c.hidden_size, c.intermediate_size
    per_layer = 2 * 4 * h * h + 4 * h * inter + 4 * length * h
    return c.num_hidden_layers * per_layer + 2 * h * embed_dim


def synthetic_images(n: int, width: int = 500, height: int = 375, seed: int = 0) -> list[Image.Image]:
    """Photo-like test images: smooth colour fields with a few flat shapes and mild noise."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        low = rng.integers(0, 256, size=(6, 8, 3)).astype(np.uint8)
        img = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
        for _ in range(int(rng.integers(2, 5))):
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            if rng.random() < 0.5:
                cv2.circle(img, center, int(rng.integers(30, 120)), color, -1)
            else:
                size = (int(rng.integers(40, 200)), int(rng.integers(40, 160)))
                cv2.rectangle(img, center, (center[0] + size[0], center[1] + size[1]), color, -1)
        noise = rng.normal(0, 4, img.shape)
        images.append(Image.fromarray(np.clip(img + noise, 0, 255).astype(np.uint8)))
    return images


class TimedCRF:
    """``crf_fn`` for the segmenter that times our unary computation and the library's calls separately."""

    def __init__(self) -> None:
        self.library = 0.0
        self.calls = 0

    def __call__(self, image: np.ndarray, prob: np.ndarray, **kw) -> np.ndarray:
        unary = binary_unary(prob)
        t0 = time.perf_counter()
        mask = crf_from_unary(image, unary, **kw)
        self.library += time.perf_counter() - t0
        self.calls += 1
        return mask


# ----------------------------------------------------------------------------------------------- the reference
def _original_dense_crf(img: np.ndarray, probs: np.ndarray, timer: list, n_labels: int = 2) -> np.ndarray:
    """The original's CRF function, step by step; ``timer`` collects the seconds of the library's own calls."""
    import pydensecrf.densecrf as dcrf

    h, w = probs.shape
    probs = np.expand_dims(probs, 0)
    probs = np.append(1 - probs, probs, axis=0)
    unary = np.ascontiguousarray((-np.log(probs + 1e-8)).reshape((n_labels, -1))).astype(np.float32)
    t0 = time.perf_counter()
    d = dcrf.DenseCRF2D(w, h, n_labels)
    d.setUnaryEnergy(unary)
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=40, srgb=13, rgbim=np.ascontiguousarray(img), compat=10)
    q = d.inference(3)
    timer.append(time.perf_counter() - t0)
    return np.argmax(np.array(q), axis=0).reshape((h, w))


def reference_labels(x: torch.Tensor, tokens: torch.Tensor, scores: torch.Tensor, class_emb: torch.Tensor,
                     mean_: tuple, std_: tuple, raw_hw: tuple[int, int], top_n: int = 10,
                     patch_size: int = 16) -> tuple[np.ndarray, list]:
    """The original evaluation loop's post-processing, written out plainly; returns labels and the CRF calls'
    library seconds."""
    image_mean = torch.tensor(mean_).view(1, 3, 1, 1)
    image_norm = torch.tensor(std_).view(1, 3, 1, 1)
    num_patch = x.shape[-1] // patch_size
    image_raw = (((x * image_norm) + image_mean) * 255).type(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    image_a = Image.fromarray(image_raw[0])
    im_f_a = F.normalize(tokens, dim=-1, p=2)
    topk_scores, topk_index = scores.topk(top_n)
    threshold = topk_scores.mean() + 1.0 * topk_scores.std()
    raw_h, raw_w = raw_hw
    temp_pred = np.zeros((len(class_emb), raw_h, raw_w))
    timer: list = []
    for index in topk_index[:5]:
        if index in [0, 255]:
            continue
        attn = im_f_a @ class_emb[index].unsqueeze(-1)
        attn = attn.reshape(num_patch, num_patch)
        attn = F.interpolate(attn.unsqueeze(0).unsqueeze(0), scale_factor=patch_size, mode="nearest")[0][0]
        attn = attn.cpu().numpy()
        score = float(scores[index])
        if score < threshold:
            break
        norm_attn = (attn - attn.min()) / (attn.max() - attn.min())
        binary_mask = (_original_dense_crf(np.array(image_a).astype(np.uint8), norm_attn, timer) * 255).astype("uint8")
        kernel = np.ones((7, 7), dtype=np.uint8)
        final_mask = cv2.dilate(binary_mask, kernel, 5)
        final_mask = cv2.erode(final_mask, kernel, 3)
        final_mask = cv2.resize(final_mask.astype(np.uint8), dsize=(raw_w, raw_h), interpolation=cv2.INTER_NEAREST)
        temp_pred[index] = final_mask * score
    return temp_pred.argmax(0), timer


class Reference:
    """The original's whole per-image pipeline on a model's weights: its transforms, timm's forward of a ViT built
    at the input size (position embedding resampled once, as the original's loader), pooling, scores and the
    post-processing loop."""

    def __init__(self, model, class_emb: torch.Tensor, size: int = 288):
        import timm
        from torchvision import transforms as T

        vit = model.image_encoder
        grid = (size // model.patch_size, size // model.patch_size)
        kwargs = (model.config.get("vision") or {}).get("kwargs") or {}
        self.vit = timm.create_model(model.config["vision"]["name"], num_classes=0, img_size=size, **kwargs).eval()
        state = {k: v for k, v in vit.state_dict().items()}
        with torch.no_grad():
            state["pos_embed"] = model.position_embedding(grid).detach().clone()
        self.vit.load_state_dict(state)
        self.proj = copy.deepcopy(model.image_projection).eval()
        self.class_emb = class_emb
        self.mean, self.std = model.mean, model.std
        self.patch = model.patch_size
        self.transform = T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(self.mean, self.std)])

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.proj(self.vit.forward_features(x)[:, 1:])
        pooled = tokens.topk(5, dim=1).values.mean(dim=1)
        pooled = pooled / (pooled.pow(2).sum(dim=-1, keepdim=True).sqrt() + 1e-8)
        return tokens[0], (pooled[0].unsqueeze(0) * self.class_emb).sum(dim=1)

    def __call__(self, image: Image.Image) -> tuple[np.ndarray, dict]:
        t0 = time.perf_counter()
        x = self.transform(image.convert("RGB")).unsqueeze(0)
        t1 = time.perf_counter()
        tokens, scores = self.forward(x)
        t2 = time.perf_counter()
        labels, timer = reference_labels(x, tokens, scores, self.class_emb, self.mean, self.std,
                                         (image.height, image.width), patch_size=self.patch)
        t3 = time.perf_counter()
        return labels, {"pre": t1 - t0, "fwd": t2 - t1, "post": t3 - t2 - sum(timer), "crf": sum(timer),
                        "calls": len(timer), "total": t3 - t0}


# ----------------------------------------------------------------------------------------------- sections
def make_segmenter(preset: str, vocab: str, classes: list[str]) -> Segmenter:
    torch.manual_seed(0)  # the random weights decide how many classes the walk accepts: keep them fixed
    model = simseg.load_model(preset, tokenizer=vocab)
    seg = Segmenter(model, classes, templates="single", cache_dir=None)
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(len(classes), seg.class_emb.shape[1], generator=gen)
    seg.class_emb = emb / emb.norm(dim=-1, keepdim=True)
    return seg


def section_throughput(seg: Segmenter, images: list[Image.Image], warm: list[Image.Image], n_threads: int,
                       cores: int, fwd1_s: float) -> None:
    ref = Reference(seg.model, seg.class_emb, seg.params.input_size)
    rows = {}
    with threads(n_threads):
        for image in warm:
            ref(image)
            seg(image)
        ref_out = [ref(image) for image in images]
        ref_labels = [labels for labels, _ in ref_out]
        r = {k: statistics.fmean(t[k] for _, t in ref_out) for k in ref_out[0][1]}
        rows["reference (original port)"] = (r["total"], ref_labels, f"{n_threads} threads")
        # ours, one image at a time, with the CRF library's calls timed apart
        parts = []
        for image in images:
            crf = TimedCRF()
            t0 = time.perf_counter()
            x = seg.preprocess(image)
            t1 = time.perf_counter()
            tokens, grid, scores = seg.forward(x)
            t2 = time.perf_counter()
            result = seg.postprocess(x, tokens, grid, scores, image.size, crf_fn=crf)
            t3 = time.perf_counter()
            parts.append(({"pre": t1 - t0, "fwd": t2 - t1, "post": t3 - t2 - crf.library, "crf": crf.library,
                           "calls": crf.calls, "total": t3 - t0}, result.labels))
        o = {k: statistics.fmean(p[k] for p, _ in parts) for k in parts[0][0]}
        rows["ours, one image at a time"] = (o["total"], [lab for _, lab in parts], f"{n_threads} threads")
    configs = [(f"ours, {cores} lanes x 1 thread + {cores} CRF workers", cores, cores, 1),
               (f"ours, 1 lane x {n_threads} threads + {cores} CRF workers", 1, cores, n_threads),
               (f"ours, {cores + 1} lanes x 1 thread + {cores} CRF workers", cores + 1, cores, 1)]
    from simseg.crf import CRFPool

    for name, lanes, workers, t in configs:
        with threads(t), CRFPool(workers) as pool:
            pool.start().wait_ready()  # its start (once per run of eval-seg or segment) is not the steady state
            stream = seg.segment_many(warm + images, lanes=lanes, crf_pool=pool)
            for _ in warm:  # the pipeline is full and its workers started: time the steady state from here
                next(stream)
            t0 = time.perf_counter()
            out = [r.labels for r in stream]
            rows[name] = ((time.perf_counter() - t0) / len(images), out, f"{t} thread(s) per lane")
    crf_cpu = o["crf"]
    limit = (fwd1_s + o["pre"] + o["post"] + crf_cpu) / cores  # our post holds the unary, upsampling, closing
    print(f"\n[throughput] simseg protocol, {len(images)} images 500x375, {len(seg.class_names)} classes, input "
          f"{seg.params.input_size}; steady state after {len(warm)} warm-up images; {load()}")
    print(f"{'':<50}{'ms/img':>8}{'img/s':>7}{'x ref':>7}{'same':>7}  notes")
    ref_ms = rows["reference (original port)"][0]
    failed = False
    for name, (seconds, labels, note) in rows.items():
        same = sum(np.array_equal(a, b) for a, b in zip(labels, ref_labels))
        failed |= same != len(images)
        print(f"{name:<50}{seconds * 1e3:8.1f}{1 / seconds:7.2f}{ref_ms / seconds:7.2f}{same:>4}/{len(images)}  {note}")
    print(f"{'limit: CPU time per image / cores':<50}{limit * 1e3:8.1f}{1 / limit:7.2f}{ref_ms / limit:7.2f}"
          f"{'':>7}  (pre {o['pre'] * 1e3:.0f} + forward {fwd1_s * 1e3:.0f} at 1 thread + post {o['post'] * 1e3:.0f}"
          f" + CRF {crf_cpu * 1e3:.0f} ms) / {cores} cores")
    print(f"per image (means)        {'pre':>7}{'fwd':>7}{'post':>7}{'crf':>7}{'calls':>7}")
    for name, t in (("reference", r), ("ours", o)):
        print(f"  {name:<23}{t['pre'] * 1e3:7.1f}{t['fwd'] * 1e3:7.1f}{t['post'] * 1e3:7.1f}{t['crf'] * 1e3:7.1f}"
              f"{t['calls']:7.2f}  ms; crf = the dense-CRF library's calls, apart")
    return failed


def timed(fn, reps: int, probe: PeakProbe) -> tuple[float, float]:
    """Median seconds of ``fn`` over ``reps`` runs, and the best matmul rate (GFLOP/s, at the threads in force)
    sampled before each run and after the last."""
    times, rates = [], [probe.sample()]
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        rates.append(probe.sample())
    return statistics.median(times), max(rates)


def timed_in_lanes(fn, probe: PeakProbe, cores: int) -> tuple[float, float]:
    """Seconds of one run of ``fn`` at one torch thread (its lanes side by side), and the best ``cores``-thread
    matmul rate sampled just before and just after it."""
    with threads(cores):
        before = probe.sample()
    with threads(1):
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
    with threads(cores):
        return seconds, max(before, probe.sample())


def recorded_calls(run, shape_of) -> list[tuple]:
    """``shape_of(module, args)`` of every module call while ``run()`` runs (a global forward pre-hook, so modules
    of any model count), skipping the calls it gives None for."""
    calls: list[tuple] = []

    def record(layer, args):
        shape = shape_of(layer, args)
        if shape is not None:
            calls.append(shape)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        run()
    finally:
        handle.remove()
    return calls


def linear_calls(run) -> list[tuple[int, int, int, bool]]:
    """(rows, in_features, out_features, bias) of every linear layer's call while ``run()`` runs (``nn.Linear`` and
    :class:`simseg.packed.PackedLinear`); rows: the vectors of the call (tokens, images)."""
    def shape_of(layer, args):
        if isinstance(layer, (torch.nn.Linear, PackedLinear)):
            x = args[0]
            return x.numel() // x.shape[-1], layer.in_features, layer.out_features, layer.bias is not None
        return None

    return recorded_calls(run, shape_of)


def matmuls_alone(calls: list[tuple[int, int, int, bool]], reps: int, probe: PeakProbe) -> tuple[float, float, float]:
    """``calls`` run as bare ``F.linear`` calls one after another (random inputs of the same shapes, one weight per
    layer shape): what the linear layers of a forward cost with nothing around them, the part of a forward that the
    BLAS library's speed at those shapes sets. Returns :func:`timed`'s median seconds and matmul rate, and the calls'
    FLOPs."""
    tensors = {}
    for rows, k, n, bias in calls:
        if (rows, k) not in tensors:
            tensors[(rows, k)] = torch.randn(rows, k)
        if (k, n, bias) not in tensors:
            tensors[(k, n, bias)] = (torch.randn(n, k) * 0.02, torch.randn(n) if bias else None)

    def run():
        with torch.inference_mode():
            for rows, k, n, bias in calls:
                F.linear(tensors[(rows, k)], *tensors[(k, n, bias)])

    run()
    seconds, peak = timed(run, reps, probe)
    return seconds, peak, float(sum(2 * rows * k * n for rows, k, n, _ in calls))


def attention_calls(run) -> list[tuple[int, int, int, int]]:
    """(batch, heads, tokens, head_dim) of every call of a timm attention layer while ``run()`` runs."""
    def shape_of(layer, args):
        if hasattr(layer, "num_heads") and hasattr(layer, "qkv"):
            b, n, c = args[0].shape
            return b, layer.num_heads, n, c // layer.num_heads
        return None

    return recorded_calls(run, shape_of)


def attention_alone(calls: list[tuple[int, int, int, int]], reps: int,
                    probe: PeakProbe) -> tuple[float, float, float]:
    """``calls`` run as bare ``F.scaled_dot_product_attention`` calls (random q, k, v of the same shapes): the
    attention kernel's part of a forward with nothing around it. Returns :func:`timed`'s median seconds and matmul
    rate, and the calls' FLOPs (4 x tokens^2 x head_dim per head)."""
    tensors = {shape: tuple(torch.randn(*shape) for _ in range(3)) for shape in set(calls)}

    def run():
        with torch.inference_mode():
            for shape in calls:
                F.scaled_dot_product_attention(*tensors[shape])

    run()
    seconds, peak = timed(run, reps, probe)
    return seconds, peak, float(sum(4 * b * h * n * n * d for b, h, n, d in calls))


def print_kernel_bound(linears: tuple[float, float, float], attention: tuple[float, float, float], flops: float,
                       unit: str) -> None:
    """One line: the attention kernel alone, and the bound the two kernels set: ``flops`` (the whole's) over the
    linears' and the attention's times alone, each scaled to one matmul rate, as a % of that rate (the most the
    whole could reach if norms, activations, copies and Python took no time)."""
    (lin_s, lin_peak, _), (att_s, att_peak, att_flops) = linears, attention
    bound = flops / (lin_s * lin_peak / att_peak + att_s) / 1e9 / att_peak
    print(f"  the attention kernel alone (bare scaled_dot_product_attention at the same shapes and threads): "
          f"{att_s * 1e3:.1f} ms{unit}, {100 * att_flops / att_s / 1e9 / att_peak:.1f} % of the peak ({att_peak:.1f}) "
          f"on its own FLOPs; the two kernels alone bound the whole at {100 * bound:.1f} % of the peak")


def print_matmul_ceiling(seconds: float, peak: float, matmul_flops: float, whole: float, whole_peak: float,
                         unit: str) -> None:
    """One line: the linear layers' matmuls alone (``seconds`` at matmul rate ``peak``) against the whole they are
    part of (``whole`` seconds at rate ``whole_peak``), the matmuls' time scaled to the whole's rate first (the
    machine's speed drifts between the two; below 1.00x, the drift was larger than the work around the matmuls)."""
    at_whole_rate = seconds * peak / whole_peak
    print(f"  the linear layers' matmuls alone (bare F.linear at the same shapes and threads): {seconds * 1e3:.1f} ms"
          f"{unit}, {100 * matmul_flops / seconds / 1e9 / peak:.1f} % of the peak ({peak:.1f}) on their own FLOPs; "
          f"ours takes {whole / at_whole_rate:.2f}x their time at the same matmul rate (the rest: attention, norms, "
          f"activations, copies, Python)")


def section_forward(seg: Segmenter, n_threads: int, cores: int, kept: bool, reps: int = 7) -> float:
    """Prints the forward table; returns the 1-thread forward seconds (the CPU time of one forward). ``kept``: the
    allocator keeps freed memory (then a row shows the forward with glibc's default thresholds)."""
    from concurrent.futures import ThreadPoolExecutor

    from simseg.allocator import keep_freed_memory

    model = seg.model
    size = seg.params.input_size
    grid = (size // model.patch_size, size // model.patch_size)
    flops = vit_flops(model.image_encoder, grid, model.embed_dim)
    x = torch.randn(1, 3, size, size)
    x2 = torch.randn(2, 3, size, size)
    ref = Reference(model, seg.class_emb, size)
    plain = copy.deepcopy(model)
    for block in plain.image_encoder.blocks:
        block.attn.fused_attn = False  # the explicit softmax(q k^T) v of the original's hand-written forward
    plain = packed_view(plain)

    packed = packed_view(model)  # what Segmenter runs: the image tower's linears on packed weights

    def ours(batch=x, m=packed):
        with torch.inference_mode():
            return m.encode_image_tokens(batch)

    def ours_memory_returned():
        keep_freed_memory(False)
        try:
            return ours()
        finally:
            keep_freed_memory(True)

    def ours_no_grad(batch=x):
        with torch.no_grad():
            return packed.encode_image_tokens(batch)

    rows, ceilings, attention = [], {}, {}
    probe = PeakProbe()
    for t in sorted({1, n_threads}):
        with threads(t):
            for _ in range(2):
                ours(), ref.forward(x), ours(m=plain), ours(x2), ours(m=model)
            rows.append(("ours (packed linears, SDPA, inference_mode)", t, 1, *timed(ours, reps, probe)))
            rows.append(("ours, linears unpacked", t, 1, *timed(lambda: ours(m=model), reps, probe)))
            if kept:
                rows.append(("ours, allocator defaults (memory returned)", t, 1,
                             *timed(ours_memory_returned, reps, probe)))
            rows.append(("ours, torch.no_grad", t, 1, *timed(ours_no_grad, reps, probe)))
            rows.append(("ours, explicit softmax attention", t, 1, *timed(lambda: ours(m=plain), reps, probe)))
            rows.append(("ours, batch of 2 images", t, 2, *timed(lambda: ours(x2), reps, probe)))
            rows.append((f"reference: timm forward at {size}", t, 1, *timed(lambda: ref.forward(x), reps, probe)))
            ceilings[t] = matmuls_alone(linear_calls(lambda: ours(m=model)), reps, probe)
            attention[t] = attention_alone(attention_calls(lambda: ours(m=model)), reps, probe)
    # lanes: one-thread forwards side by side, as segment_many runs them on a CPU
    with threads(1), ThreadPoolExecutor(cores) as pool:
        list(pool.map(lambda _: ours(), range(cores)))
        lanes_s, lanes_peak = timed_in_lanes(lambda: list(pool.map(lambda _: ours(), range(cores * reps))), probe,
                                             cores)
        lanes_s /= reps  # seconds for `cores` images
    print(f"\n[forward] ViT at {size} ({grid[0]}x{grid[1]} patches), {flops / 1e9:.2f} GFLOP per image (analytic, "
          f"with the projection); median of {reps}; {load()}")
    print(f"{'':<44}{'threads':>8}{'ms/img':>8}{'GFLOP/s':>9}{'% peak':>8}{'peak':>7}")
    one_thread = None
    for name, t, batch, seconds, peak in rows:
        per_image = seconds / batch
        if name.startswith("ours (") and t == 1:
            one_thread = per_image
        print(f"{name:<44}{t:>8}{per_image * 1e3:8.1f}{flops / per_image / 1e9:9.1f}"
              f"{100 * flops / per_image / 1e9 / peak:8.1f}{peak:7.1f}")
    per_image, peak = lanes_s / cores, lanes_peak
    print(f"{f'ours, {cores} lanes x 1 thread side by side':<44}{cores:>8}{per_image * 1e3:8.1f}"
          f"{flops / per_image / 1e9:9.1f}{100 * flops / per_image / 1e9 / peak:8.1f}{peak:7.1f}"
          f"   (segment_many on a CPU)")
    print("% peak: of the best fp32 matmul rate (GFLOP/s, 2048^3 torch.mm at the row's thread count; column peak) "
          "sampled between the row's repetitions")
    for t, ceiling in ceilings.items():
        print(f"{t} thread(s):", end="")
        whole = next(r for r in rows if r[0].startswith("ours (") and r[1] == t)
        print_matmul_ceiling(*ceiling, whole[3], whole[4], " per image")
        print_kernel_bound(ceiling, attention[t], flops, " per image")
    return one_thread


def section_embeddings(preset: str, n_threads: int, peak: float, num_classes: int, reps: int = 3) -> None:
    from simseg.embeddings import encode_class_names

    torch.manual_seed(0)
    model = simseg.load_model(preset)  # BERT-base with the shipped bert-base-uncased vocabulary
    classes = benchmark_classes("pascal_voc")[:num_classes]
    prompts = [t.format(c) for c in classes for t in IMAGENET_TEMPLATES]
    tok = model.tokenize(prompts, padding="longest")
    lengths = tok["attention_mask"].sum(dim=1).float()
    tokens = int(lengths.sum())
    # attention costs per token grow with the sequence: the mean real length over the prompts
    flops = tokens * bert_flops_per_token(model.text_encoder, float(lengths.mean()), model.embed_dim)

    def unsorted(batch_size: int = 256, padding: str = "longest"):
        with torch.no_grad():
            for s in range(0, len(prompts), batch_size):
                b = model.tokenize(prompts[s:s + batch_size], padding=padding)
                model.encode_text(b["input_ids"], b["attention_mask"])

    def sorted_padded(batch_size: int = 256):
        order = torch.sort(lengths, stable=True).indices
        with torch.no_grad():
            for s in range(0, len(prompts), batch_size):
                rows = order[s:s + batch_size]
                width = int(lengths[rows].max())
                model.encode_text(tok["input_ids"][rows, :width], tok["attention_mask"][rows, :width])

    rows = []
    with threads(n_threads):
        probe = PeakProbe()
        encode_class_names(model, classes[:1], IMAGENET_TEMPLATES[:8], progress=False)  # warm-up
        rows.append(("ours: sorted, packed without padding, batch 256", *timed(
            lambda: encode_class_names(model, classes, IMAGENET_TEMPLATES, progress=False), reps, probe)))
        rows.append(("sorted, each batch padded to its longest", *timed(sorted_padded, reps, probe)))
        rows.append(("prompt order, padded to the longest of 256", *timed(unsorted, reps, probe)))
        rows.append(("original: prompt order, padded to 25", *timed(
            lambda: unsorted(padding="max_length"), reps, probe)))
        ceiling = matmuls_alone(linear_calls(lambda: encode_class_names(
            model, classes, IMAGENET_TEMPLATES, progress=False)), reps, probe)
    print(f"\n[embeddings] {len(classes)} classes x {len(IMAGENET_TEMPLATES)} templates = {len(prompts)} prompts, "
          f"{tokens} tokens (mean {float(lengths.mean()):.1f}), BERT-base {flops / tokens / 1e6:.0f} MFLOP/token; "
          f"{n_threads} threads; median of {reps}; {load()}")
    print(f"{'':<46}{'s':>7}{'tokens/s':>10}{'% limit':>9}{'limit s':>9}{'peak':>7}")
    for name, seconds, row_peak in rows:
        limit = flops / (row_peak * 1e9)
        print(f"{name:<46}{seconds:7.2f}{tokens / seconds:10.0f}{100 * limit / seconds:9.1f}{limit:9.2f}"
              f"{row_peak:7.1f}")
    print(f"limit: the real tokens' FLOPs at the best fp32 matmul rate (GFLOP/s, column peak) sampled between the "
          f"row's repetitions (the run's first peak measurement: {peak:.1f})")
    print_matmul_ceiling(*ceiling, rows[0][1], rows[0][2], " for ours")


def section_dense(seg: Segmenter, images: list[Image.Image], n_threads: int, cores: int) -> None:
    dense = Segmenter(seg.model, seg.class_names, protocol="dense", templates="single", cache_dir=None)
    dense.class_emb = seg.class_emb
    model = seg.model
    rows = []
    with threads(n_threads):
        first = dense(images[0])
        windows = first.details["windows"]
        crop = dense.params.crop_size
        flops = windows * vit_flops(model.image_encoder, (crop // model.patch_size,) * 2, model.embed_dim)
        probe = PeakProbe()

        def one_at_a_time():
            for image in images:
                dense(image)

        seconds, rate = timed(one_at_a_time, 1, probe)
        rows.append((f"one image at a time, {n_threads} threads", seconds / len(images), rate))
        linears = matmuls_alone(linear_calls(lambda: dense(images[0])), 3, probe)
        attention = attention_alone(attention_calls(lambda: dense(images[0])), 3, probe)

    def stream():  # the whole stream, filling and draining the lanes included
        for _ in dense.segment_many(images, lanes=cores):
            pass

    with threads(1):
        for _ in dense.segment_many(images[:cores], lanes=cores):  # warm-up
            pass
    seconds, rate = timed_in_lanes(stream, probe, cores)
    rows.append((f"segment_many, {cores} lanes x 1 thread", seconds / len(images), rate))
    print(f"\n[dense] {len(images)} images 500x375 -> short side {dense.params.short_side}, {windows} windows of "
          f"{crop} (stride {dense.params.stride}), {flops / 1e9:.1f} GFLOP per image; {load()}")
    print(f"{'':<44}{'ms/img':>8}{'GFLOP/s':>9}{'% limit':>9}{'peak':>7}")
    for name, seconds, p in rows:
        print(f"{name:<44}{seconds * 1e3:8.1f}{flops / seconds / 1e9:9.1f}{100 * flops / seconds / 1e9 / p:9.1f}"
              f"{p:7.1f}")
    print("limit: the windows' forwards at the best fp32 matmul rate (GFLOP/s, column peak) at the threads used, "
          "sampled just before and after the row")
    print(f"{n_threads} thread(s), one image:", end="")
    print_matmul_ceiling(*linears, rows[0][1], rows[0][2], " per image")
    print_kernel_bound(linears, attention, flops, " per image")


def section_startup(preset: str, runs: int = 5) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        from simseg.checkpoint import save_model

        save_model(simseg.load_model(preset), tmp / "ck")
        synthetic_images(1)[0].save(tmp / "photo.jpg")
        cmd = [sys.executable, "-m", "simseg", "segment", str(tmp / "photo.jpg"), "--classes", "cat,dog,grass",
               "--checkpoint", str(tmp / "ck"), "--out", str(tmp / "out"), "--cache-dir", str(tmp / "cache")]

        def once() -> float:
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            return time.perf_counter() - t0

        cold = once()  # fills the class-embedding cache (4 names x 80 templates) and writes the traced image tower
        warm = [once() for _ in range(runs)]

        def floor(code: str) -> float:
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
                times.append(time.perf_counter() - t0)
            return statistics.median(times)

        torch_alone, with_timm = floor("import torch"), floor("import torch, timm")
    print(f"\n[startup] whole process: python -m simseg segment (1 image 500x375, 3 classes, 80 templates), "
          f"{preset} checkpoint; {load()}")
    print(f"  first run (empty cache: class embeddings encoded, image tower traced): {cold:.2f} s")
    print(f"  warm: median {statistics.median(warm):.2f} s of {runs} ({', '.join(f'{w:.2f}' for w in warm)}); "
          "class embeddings and the traced image tower from the cache: timm, torchvision and transformers are not "
          "imported, the weights file is neither read nor hashed")
    print(f"  python -c 'import torch' alone: median {torch_alone:.2f} s of 3; 'import torch, timm' (what loading the "
          f"image tower the ordinary way imports): {with_timm:.2f} s; target: warm <= 2.5 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--model", default="simseg-vit-s16")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--embed-classes", type=int, default=6, help="classes of the embeddings section (x 80)")
    parser.add_argument("--dense-images", type=int, default=6)
    parser.add_argument("--malloc", choices=CHOICES, default="keep",
                        help="keep: the C allocator keeps freed memory, as the simseg command sets it (both sides "
                             "run in this process, so the reference gains from it too); default: glibc's defaults")
    args = parser.parse_args(argv)
    kept = from_environment({ENV: args.malloc})
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n_threads = args.threads or cores
    torch.set_num_threads(n_threads)
    print(f"simseg benchmark, CPU, torch {torch.__version__}, {cores} cores, {n_threads} threads, freed memory "
          f"{'kept' if kept else 'returned (allocator defaults)'}; start: {load()}")
    peaks = {t: matmul_peak(t) for t in sorted({1, n_threads, cores})}
    print("[peak] fp32 torch.mm 2048^3: " + ", ".join(f"{t} thread(s) {p:.1f} GFLOP/s" for t, p in peaks.items()))
    classes = benchmark_classes("pascal_voc")
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        from simseg.tokenizer import train_wordpiece_vocab

        vocab = str(train_wordpiece_vocab(classes + ["a photo of a {}."], tmp, vocab_size=200))
        seg = make_segmenter(args.model, vocab, classes) if {"throughput", "forward", "dense"} & set(args.sections) \
            else None
        fwd1 = None
        if "forward" in args.sections or "throughput" in args.sections:
            fwd1 = section_forward(seg, n_threads, cores, kept)
        if "throughput" in args.sections:
            images = synthetic_images(args.images)
            warm = synthetic_images(args.warmup, seed=1)
            failed |= section_throughput(seg, images, warm, n_threads, cores, fwd1)
        if "dense" in args.sections:
            section_dense(seg, synthetic_images(args.dense_images, seed=2), n_threads, cores)
    if "embeddings" in args.sections:
        section_embeddings(args.model, n_threads, peaks[n_threads], args.embed_classes)
    if "startup" in args.sections:
        section_startup(args.model)
    print(f"\nend: {load()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
