"""Training-step throughput and peak memory: ViT-S/16 + BERT-base at 224, batch 32, with and without the decoupled
(GradCache) accumulation. Runs on CPU, and on the GPU too when one is present.

    python benchmarks/train_step.py [--batch 32] [--chunk 8] [--steps 3] [--model simseg-vit-s16]

Each configuration runs in its own subprocess so that peak memory (ru_maxrss on CPU, max_memory_allocated on GPU)
belongs to that configuration alone. Printed: seconds per step, images/s, peak memory, and the ratios of the
accumulated step to the plain one (accumulation trades ~1/3 more compute for memory that scales with the chunk).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time


def _one(model_name: str, device: str, batch: int, chunk: int, steps: int) -> dict:
    import torch

    from simseg.config import load_preset, to_dict
    from simseg.model import build_model
    from simseg.optim import param_groups
    from simseg.tokenizer import load_tokenizer
    from simseg.train import contrastive_step

    with tempfile.TemporaryDirectory() as d:  # a BERT-sized vocabulary (the real one is not downloadable here)
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        words = [f"w{i}" for i in range(30522 - len(specials))]
        open(f"{d}/vocab.txt", "w").write("\n".join(specials + words) + "\n")
        tok = load_tokenizer(d)
    cfg = to_dict(load_preset(model_name).model)
    torch.manual_seed(0)
    model = build_model(cfg, tok, pretrained=False).to(device).train()
    opt = torch.optim.AdamW(param_groups(model, 0.2), lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
    images = torch.randn(batch, 3, 224, 224, device=device)
    captions = [" ".join(f"w{(i * 7 + j) % 500}" for j in range(12)) for i in range(batch)]
    tokens = model.tokenize(captions)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        opt.zero_grad(set_to_none=True)
        contrastive_step(model, images, tokens["input_ids"], tokens["attention_mask"], chunk_size=chunk)
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"device": device, "chunk": chunk, "s_per_step": dt, "images_per_s": batch / dt, "peak_mib": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="simseg-vit-s16")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one configuration
    a = p.parse_args()
    if a.one:
        device, chunk = a.one.split(":")
        print(json.dumps(_one(a.model, device, a.batch, int(chunk), a.steps)))
        return
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"{a.model}, batch {a.batch} at 224, {a.steps} timed steps after one warm-up, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'device':<7}{'chunk':>7}{'s/step':>10}{'img/s':>9}{'peak MiB':>10}")
    for device in devices:
        rows = []
        for chunk in (0, a.chunk):
            out = subprocess.run([sys.executable, __file__, "--model", a.model, "--batch", str(a.batch),
                                  "--steps", str(a.steps), "--one", f"{device}:{chunk}"],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            label = "none" if chunk == 0 else str(chunk)
            print(f"{device:<7}{label:>7}{r['s_per_step']:>10.2f}{r['images_per_s']:>9.2f}{r['peak_mib']:>10.0f}")
        plain, acc = rows
        print(f"{device}: accumulated / plain: time x{acc['s_per_step'] / plain['s_per_step']:.2f}, "
              f"peak memory x{acc['peak_mib'] / plain['peak_mib']:.2f}")


if __name__ == "__main__":
    main()
