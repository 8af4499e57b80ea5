"""ONNX Runtime against torch on the CPU: images/s of the image tower and prompts/s of the text tower, for the tiny
preset and ViT-S/16 + BERT-base at 288 (random weights), from one export made here.

    python benchmarks/onnx_speed.py [--models tiny simseg-vit-s16] [--size 288] [--repeat 5] [--threads 1]

Both backends compute the same outputs (patch tokens and the pooled embedding; the masked, pooled text embedding)
with the same number of threads (``--threads``, default 1: on a shared machine a second thread mostly waits for a
busy core, which slows torch's small operations by an order of magnitude), in the same process, one after the other,
so the ratio is the number to read; the machine's load is printed with it. Also printed: the export's wall time
and file sizes, and the largest difference between the backends' outputs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def _bert_vocab(folder: str) -> str:
    """A BERT-sized vocabulary (30,522 entries): the real one is not downloaded here."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = ["a", "photo", "of", "the", "bad", "big", "small", "cat", "dog", "car", "person", "tree", "."]
    filler = [f"w{i}" for i in range(30522 - len(specials) - len(words))]
    with open(os.path.join(folder, "vocab.txt"), "w") as f:
        f.write("\n".join(specials + words + filler) + "\n")
    return folder


def _rate(fn, items: int, repeat: int) -> float:
    fn()  # warm-up (ONNX Runtime plans its memory on the first run)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return items / best


def bench(name: str, size: int, repeat: int, tmp: str, threads: int) -> None:
    import torch

    from simseg.classnames import IMAGENET_TEMPLATES
    from simseg.config import load_preset, to_dict
    from simseg.export import _ImageGraph, export_onnx, load_onnx_model
    from simseg.model import build_model, parameter_counts
    from simseg.tokenizer import load_tokenizer

    tok = load_tokenizer(_bert_vocab(tempfile.mkdtemp(dir=tmp)))
    torch.manual_seed(0)
    model = build_model(to_dict(load_preset(name).model), tok, pretrained=False).eval()
    out = os.path.join(tmp, name)
    t0 = time.perf_counter()
    manifest = export_onnx(model, out, input_sizes=[size])
    export_s = time.perf_counter() - t0
    onnx_model = load_onnx_model(out, threads=threads)
    image_mb = manifest["image"]["graphs"][str(size)]["bytes"] / 1e6
    text_mb = manifest["text"]["bytes"] / 1e6
    print(f"\n{name} ({parameter_counts(model)['total'] / 1e6:.1f}M parameters) at {size} x {size}: export "
          f"{export_s:.0f} s, image_{size}.onnx {image_mb:.1f} MB, text.onnx {text_mb:.1f} MB; "
          f"verified max |diff| {max(manifest['verified']['max_abs_diff'].values()):.1e}")

    graph = _ImageGraph(model, size)
    prompts = [t.format("dog") for t in IMAGENET_TEMPLATES]  # one class in the 80 templates
    batch = tok(prompts, max_length=25, padding="longest")
    rows = []
    for b in (1, 8):
        x = torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(b))
        with torch.inference_mode():
            t_rate = _rate(lambda: graph(x), b, repeat)
        o_rate = _rate(lambda: onnx_model._run_image(x), b, repeat)
        with torch.inference_mode():
            diff = (onnx_model.encode_image_tokens(x)[0] - graph(x)[0]).abs().max().item()
        rows.append((f"image tower, batch {b}", "images/s", t_rate, o_rate, diff))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.inference_mode():
        t_rate = _rate(lambda: model.encode_text(ids, mask), len(prompts), repeat)
    o_rate = _rate(lambda: onnx_model.encode_text(ids, mask), len(prompts), repeat)
    with torch.inference_mode():
        diff = (onnx_model.encode_text(ids, mask) - model.encode_text(ids, mask)).abs().max().item()
    rows.append((f"text tower, {len(prompts)} prompts", "prompts/s", t_rate, o_rate, diff))
    print(f"{'':<28}{'unit':<11}{'torch':>10}{'ONNX RT':>10}{'ratio':>8}{'max |diff|':>12}")
    for what, unit, t_rate, o_rate, diff in rows:
        print(f"{what:<28}{unit:<11}{t_rate:>10.1f}{o_rate:>10.1f}{o_rate / t_rate:>7.2f}x{diff:>12.1e}")


def main() -> None:
    import onnxruntime
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "simseg-vit-s16"])
    parser.add_argument("--size", type=int, default=288)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="threads of both backends")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} thread(s) each, "
          f"{os.cpu_count()} CPUs; load average before: {open('/proc/loadavg').read().split()[:3]}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            bench(name, args.size, args.repeat, tmp, args.threads)
    print(f"\nload average after: {open('/proc/loadavg').read().split()[:3]} (ratios of one run; absolute rates "
          "depend on the machine and its load)")


if __name__ == "__main__":
    main()
