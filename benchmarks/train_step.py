"""Training-step rate and peak memory: ``simseg train``'s step against an original-equivalent step.

ViT-S/16 + BERT-base (random weights: timing does not depend on them), batch 32 at 224, fp32, on CPU (and on the
GPU too when one is present). Every configuration runs the same number of steps in its own subprocess (so peak
memory, ``ru_maxrss`` on CPU and ``max_memory_allocated`` on GPU, belongs to it alone), on the same images and
captions, timed from ``zero_grad`` to the end of ``optimizer.step()`` after the same untimed warm-up steps (3 unless
``--warmup`` says otherwise: a process's first steps run slower while its memory is first mapped and the allocator's
free lists fill, so fewer would time start-up rather than training; tokenisation is the data loader's work on both
sides and is left out of both):

- ``reference``: the original's step on the same model: its forward/backward boundaries (one forward of both
  towers, the loss, one backward), captions padded to 25 tokens, and a plain fp32 ``torch.optim.AdamW`` (one tensor
  at a time, as it runs on a CPU). The towers run as their libraries run them today (timm's and BERT's
  ``scaled_dot_product_attention``), as the original code does with current timm and transformers.
- ``original-era attention``: the same with the explicit ``softmax(q k^T) v`` attention of the libraries the
  original was written against (timm's ``fused_attn = False``, BERT's eager attention), for information only.
- one row per change, added one at a time, so each one's share shows: captions padded to the longest in the batch
  (``train.pad_captions: auto``; the masked pooling ignores padding), the fused AdamW kernel (``train.adamw:
  fused``), the C allocator keeping freed memory (``simseg.allocator``, what the ``simseg`` command sets as it
  starts; the rows above run with glibc's defaults, as the original's script does): ``ours`` is what
  ``simseg train`` runs by default.
- ``ours + packed captions``: ``train.pad_captions: packed``, the captions of the batch packed into rows without
  padding (BERT computes real tokens only).
- ``ours + train.compile``: the opt-in ``torch.compile`` of the training forward (first steps compile; not timed).

Captions have realistic lengths (4 to 22 words, one word-piece each, as image-caption data sets), so padding to the
longest in a batch of 32 saves what it would save in training, no more. Printed: seconds per step, images/s,
GFLOP/s and % of the fp32 matmul peak measured in the same run (model FLOPs: 3 x the forward's, real tokens only),
peak memory, and every row as a ratio to the reference, with the machine's load. ``--repeats N`` runs every row N
times in turn and shows each row's median run: on a shared machine whose speed drifts, the rows then see the same
drift.

    python benchmarks/train_step.py [--batch 32] [--steps 3] [--warmup 3] [--repeats 1] [--model simseg-vit-s16] \
        [--rows ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

#: Each row: (name, settings). The settings build the step in :func:`_one`.
ROWS = {
    "reference": {"attention": "sdpa", "padding": "max_length", "adamw": "loop", "compile": False,
                  "malloc": "default"},
    "original-era attention": {"attention": "explicit", "padding": "max_length", "adamw": "loop", "compile": False,
                               "malloc": "default"},
    "+ padding to the longest": {"attention": "sdpa", "padding": "auto", "adamw": "loop", "compile": False,
                                 "malloc": "default"},
    "+ fused AdamW": {"attention": "sdpa", "padding": "auto", "adamw": "fused", "compile": False,
                      "malloc": "default"},
    "ours (+ freed memory kept)": {"attention": "sdpa", "padding": "auto", "adamw": "fused", "compile": False,
                                   "malloc": "keep"},
    "ours + packed captions": {"attention": "sdpa", "padding": "packed", "adamw": "fused", "compile": False,
                               "malloc": "keep"},
    "ours + train.compile": {"attention": "sdpa", "padding": "auto", "adamw": "fused", "compile": True,
                             "malloc": "keep"},
}


def _load() -> str:
    with open("/proc/loadavg") as f:
        one, five, fifteen, running = f.read().split()[:4]
    return f"load {one} / {five} / {fifteen} (1 / 5 / 15 min), {running.split('/')[0]} running"


def _captions(n: int, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(f"w{rng.randrange(2000)}" for _ in range(rng.randint(4, 22))) for _ in range(n)]


def _matmul_peak(device: str, size: int = 2048, seconds: float = 1.5) -> float:
    """Best fp32 GFLOP/s of a (size x size) @ (size x size) ``torch.mm`` over a loop of ``seconds``."""
    import torch

    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    out = torch.empty(size, size, device=device)
    torch.mm(a, b, out=out)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10 if device == "cuda" else 1):
            torch.mm(a, b, out=out)
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, (10 if device == "cuda" else 1) * 2 * size ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


def _step_flops(model, batch: int, real_tokens: int, size: int) -> float:
    """Model FLOPs of one step: 3 x the forward's (forward + backward), the text side counted on real tokens."""
    vit, bert = model.image_encoder, model.text_encoder
    n = (size // model.patch_size) ** 2 + vit.num_prefix_tokens
    w, hidden = vit.embed_dim, vit.blocks[0].mlp.fc1.out_features
    per_block = 2 * n * w * 3 * w + 2 * n * w * w + 4 * n * w * hidden + 4 * n * n * w
    patches = n - vit.num_prefix_tokens
    image = len(vit.blocks) * per_block + 2 * patches * vit.patch_embed.proj.weight[0].numel() * w \
        + 2 * patches * w * model.embed_dim
    c = bert.config
    mean_len = real_tokens / batch
    per_token = c.num_hidden_layers * (8 * c.hidden_size ** 2 + 4 * c.hidden_size * c.intermediate_size
                                       + 4 * mean_len * c.hidden_size) + 2 * c.hidden_size * model.embed_dim
    return 3 * (batch * image + real_tokens * per_token)


def _one(model_name: str, device: str, batch: int, steps: int, row: str, warmup: int) -> dict:
    from simseg.allocator import ENV, from_environment

    settings = ROWS[row]
    from_environment({ENV: settings["malloc"]})
    import torch

    from simseg.config import load_preset, to_dict
    from simseg.loss import contrastive_loss
    from simseg.model import build_model
    from simseg.optim import adamw, param_groups
    from simseg.tokenizer import load_tokenizer
    from simseg.train import caption_padding, compile_forward, contrastive_step, packs_captions

    with tempfile.TemporaryDirectory() as d:  # a BERT-sized vocabulary (the real one has the same size)
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        words = [f"w{i}" for i in range(30522 - len(specials))]
        with open(f"{d}/vocab.txt", "w") as f:
            f.write("\n".join(specials + words) + "\n")
        tok = load_tokenizer(d)
    preset = load_preset(model_name)
    cfg, tc = to_dict(preset.model), to_dict(preset.train)
    torch.manual_seed(0)
    model = build_model(cfg, tok, pretrained=False).to(device).train()
    masked = model.train_pooling == "masked"
    if settings["attention"] == "explicit":
        for block in model.image_encoder.blocks:
            block.attn.fused_attn = False
        model.text_encoder.set_attn_implementation("eager")
    groups = param_groups(model, float(tc["weight_decay"]))
    betas, lr, eps = tuple(tc["betas"]), float(tc["lr"]), float(tc["eps"])
    if row in ("reference", "original-era attention"):  # the original's optimizer, written out
        opt = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=False)
    else:  # as simseg train builds it
        opt = adamw(groups, lr=lr, betas=betas, eps=eps, kernel=settings["adamw"])
    compiled = compile_forward(model, torch.device(device)) if settings["compile"] else False
    images = torch.randn(batch, 3, 224, 224, device=device)
    padding = caption_padding(masked, settings["padding"])
    packed = packs_captions(masked, settings["padding"])
    tokens = model.tokenize(_captions(batch), padding=padding)
    real_tokens = int(tokens["attention_mask"].sum())

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def reference_step():
        opt.zero_grad(set_to_none=True)
        img, txt = model(images, tokens["input_ids"], tokens["attention_mask"], masked=masked)
        loss = contrastive_loss(img, txt, model.temperature())
        loss.backward()
        opt.step()
        sync()

    def our_step():  # what simseg train runs per step in one process (chunk_size 0, fp32)
        opt.zero_grad(set_to_none=True)
        contrastive_step(model, images, tokens["input_ids"], tokens["attention_mask"], masked=masked, packed=packed)
        opt.step()
        sync()

    step = reference_step if row in ("reference", "original-era attention") else our_step
    t0 = time.perf_counter()
    for _ in range(max(warmup, 3 if compiled else 1)):  # compiling: the first steps compile forward and backward
        step()
    warm_s = time.perf_counter() - t0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"s_per_step": dt, "peak_mib": peak, "warm_s": warm_s, "compiled": compiled,
            "tokens": real_tokens if packed else int(tokens["input_ids"].numel()), "real_tokens": real_tokens,
            "flops": _step_flops(model, batch, real_tokens, 224), "threads": torch.get_num_threads()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="simseg-vit-s16")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed steps first, on every row, at least 1 (3 on the train.compile row, whose first "
                        "steps compile); the first steps of a process run slower while its memory is first mapped "
                        "and the allocator's free lists fill")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of every row, in turn (round robin); each row shows its median run")
    p.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, and cuda if present)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one configuration
    a = p.parse_args()
    a.warmup = max(1, a.warmup)  # at least one untimed step, as the help says
    if a.one:
        device, row = a.one.split(":", 1)
        print(json.dumps(_one(a.model, device, a.batch, a.steps, row, a.warmup)))
        return 0
    import torch

    devices = a.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    rows = ["reference"] + [r for r in a.rows if r != "reference"]
    print(f"{a.model}, batch {a.batch} at 224, fp32, {a.steps} timed steps after {a.warmup} warm-up steps, median "
          f"of {a.repeats} run(s) per row taken in turn, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; start: {_load()}")
    for device in devices:
        peak = _matmul_peak(device)
        print(f"\n[{device}] fp32 matmul peak (torch.mm 2048^3, measured now): {peak:.1f} GFLOP/s; {_load()}")
        print(f"{'':<28}{'s/step':>8}{'img/s':>7}{'x ref':>7}{'GFLOP/s':>9}{'% peak':>8}{'peak MiB':>10}"
              f"{'x ref':>7}{'tokens':>8}  notes")
        runs: dict[str, list[dict]] = {row: [] for row in rows}
        failed: dict[str, str] = {}
        for _ in range(a.repeats):  # round robin: a drift of the machine's speed reaches every row alike
            for row in rows:
                if row in failed:
                    continue
                out = subprocess.run([sys.executable, __file__, "--model", a.model, "--batch", str(a.batch),
                                      "--steps", str(a.steps), "--warmup", str(a.warmup), "--one", f"{device}:{row}"],
                                     check=False, capture_output=True, text=True)
                if out.returncode:
                    failed[row] = (out.stderr.strip().splitlines() or ["?"])[-1]
                    continue
                runs[row].append(json.loads(out.stdout.strip().splitlines()[-1]))
        results = {}
        for row in rows:
            if row in failed:
                print(f"{row:<28}failed: {failed[row]}")
                continue
            by_time = sorted(runs[row], key=lambda r: r["s_per_step"])
            r = results[row] = by_time[len(by_time) // 2]  # the median run (of an odd number; upper middle else)
            ref = results.get("reference", r)
            gflops = r["flops"] / r["s_per_step"] / 1e9
            note = f"warm-up {r['warm_s']:.0f} s (compiling)" if r["compiled"] else (
                "train.compile fell back to eager" if ROWS[row]["compile"] else "")
            print(f"{row:<28}{r['s_per_step']:8.2f}{a.batch / r['s_per_step']:7.2f}"
                  f"{ref['s_per_step'] / r['s_per_step']:7.2f}{gflops:9.1f}{100 * gflops / peak:8.1f}"
                  f"{r['peak_mib']:10.0f}{r['peak_mib'] / ref['peak_mib']:7.2f}{r['tokens']:8d}  {note}")
        if "reference" in results:
            print(f"x ref: step rate (and peak memory) over the reference's; tokens: text tokens computed "
                  f"({results['reference']['real_tokens']} real); {results['reference']['flops'] / 1e9:.0f} GFLOP "
                  f"per step (model FLOPs); end: {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
