"""Time the ``simseg`` protocol per image on CPU: model forward vs post-processing.

For ViT-S/16 and ViT-B/16 at 288 x 288 (random weights: timing does not depend on them), on synthetic 500 x 375
images, it reports per image: preprocessing, model forward, our post-processing, the dense-CRF library's own calls
(counted apart: their cost is fixed by fidelity), the ratio post / forward and images per second. It also runs a line-by-line
reference of the original post-processing (a (C, H, W) float64 array, per-class map, per-class resize) on the same
forward outputs, checks that the labels are identical, and prints its cost for comparison.

Class embeddings are computed before timing (one template, a small vocabulary) and then replaced by random unit
vectors, so the image-level scores spread like a trained model's and the walk accepts a realistic 1-3 classes.

Run:
    python benchmarks/bench_segment.py [--images 10] [--models simseg-vit-s16 simseg-vit-b16] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from statistics import mean, median

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import simseg
from simseg.classnames import benchmark_classes
from simseg.crf import binary_unary, crf_from_unary
from simseg.segment import Segmenter
from simseg.tokenizer import train_wordpiece_vocab


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
        self.ours = 0.0
        self.library = 0.0
        self.calls = 0

    def __call__(self, image: np.ndarray, prob: np.ndarray, **kw) -> np.ndarray:
        t0 = time.perf_counter()
        unary = binary_unary(prob)
        t1 = time.perf_counter()
        mask = crf_from_unary(image, unary, **kw)
        t2 = time.perf_counter()
        self.ours += t1 - t0
        self.library += t2 - t1
        self.calls += 1
        return mask


def _original_dense_crf(img: np.ndarray, probs: np.ndarray, n_labels: int = 2) -> np.ndarray:
    """The original's CRF function, step by step (unary from np.append, argmax over the marginals)."""
    import pydensecrf.densecrf as dcrf

    h, w = probs.shape
    probs = np.expand_dims(probs, 0)
    probs = np.append(1 - probs, probs, axis=0)
    d = dcrf.DenseCRF2D(w, h, n_labels)
    unary = np.ascontiguousarray((-np.log(probs + 1e-8)).reshape((n_labels, -1))).astype(np.float32)
    d.setUnaryEnergy(unary)
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=40, srgb=13, rgbim=np.ascontiguousarray(img), compat=10)
    q = d.inference(3)
    return np.argmax(np.array(q), axis=0).reshape((h, w))


def reference_labels(x: torch.Tensor, tokens: torch.Tensor, scores: torch.Tensor, class_emb: torch.Tensor,
                     mean_: tuple, std_: tuple, raw_hw: tuple[int, int], top_n: int = 10,
                     patch_size: int = 16) -> tuple[np.ndarray, float]:
    """The original evaluation loop's post-processing, written out plainly; returns labels and CRF library seconds."""
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
    crf_seconds = 0.0
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
        t0 = time.perf_counter()
        binary_mask = (_original_dense_crf(np.array(image_a).astype(np.uint8), norm_attn) * 255).astype("uint8")
        crf_seconds += time.perf_counter() - t0
        kernel = np.ones((7, 7), dtype=np.uint8)
        final_mask = cv2.dilate(binary_mask, kernel, 5)
        final_mask = cv2.erode(final_mask, kernel, 3)
        final_mask = cv2.resize(final_mask.astype(np.uint8), dsize=(raw_w, raw_h), interpolation=cv2.INTER_NEAREST)
        temp_pred[index] = final_mask * score
    return temp_pred.argmax(0), crf_seconds


def bench_model(preset: str, images: list[Image.Image], vocab: str, classes: list[str], repeats: int) -> dict:
    torch.manual_seed(0)  # the random weights decide how many classes the walk accepts: keep them fixed
    model = simseg.load_model(preset, tokenizer=vocab)  # the Segmenter sets the ViT to 288
    seg = Segmenter(model, classes, templates="single", cache_dir=None)
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(len(classes), seg.class_emb.shape[1], generator=gen)
    seg.class_emb = emb / emb.norm(dim=-1, keepdim=True)
    # warm-up: the first calls allocate and pick kernels
    x0 = seg.preprocess(images[0])
    for _ in range(3):
        seg.forward(x0)

    rows = []
    mismatched = 0
    for image in images:
        t0 = time.perf_counter()
        x = seg.preprocess(image)
        t1 = time.perf_counter()
        tokens, grid, scores = seg.forward(x)
        t2 = time.perf_counter()
        post_runs = []
        for _ in range(repeats):  # the post-processing is short: repeat to steady the number
            crf = TimedCRF()
            ta = time.perf_counter()
            result = seg.postprocess(x, tokens, grid, scores, image.size, crf_fn=crf)
            tb = time.perf_counter()
            post_runs.append((tb - ta - crf.library, crf.library, crf.calls))
        ours, library, calls = min(post_runs, key=lambda r: r[0])
        tr = time.perf_counter()
        ref, ref_crf = reference_labels(x, tokens, scores, seg.class_emb, model.mean, model.std,
                                        (image.height, image.width))
        ref_total = time.perf_counter() - tr
        same = np.array_equal(ref, result.labels)
        mismatched += not same
        rows.append({"pre": t1 - t0, "fwd": t2 - t1, "post": ours, "crf": library, "calls": calls,
                     "ref_post": ref_total - ref_crf, "ref_crf": ref_crf})
    # forward and preprocessing: medians, robust to another process stealing a core for a moment; the parts whose
    # work depends on how many classes an image accepts: means over the images
    summary = {k: (median if k in ("pre", "fwd") else mean)(r[k] for r in rows) for k in rows[0]}
    summary["mismatched"] = mismatched
    summary["n"] = len(rows)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--models", nargs="+", default=["simseg-vit-s16", "simseg-vit-b16"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=3, help="post-processing repeats per image (min taken)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    classes = benchmark_classes("pascal_voc")
    images = synthetic_images(args.images)
    print(f"simseg protocol, CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{len(images)} synthetic 500x375 images, {len(classes)} VOC classes, input 288")
    with tempfile.TemporaryDirectory() as tmp:
        vocab = str(train_wordpiece_vocab(classes + ["a photo of a {}."], tmp, vocab_size=200))
        header = (f"{'model':<16}{'pre ms':>8}{'fwd ms':>8}{'post ms':>9}{'crf ms':>8}{'crf/img':>8}"
                  f"{'post/fwd':>9}{'img/s':>7}{'ref post':>9}{'same':>6}")
        print(header)
        failed = False
        for preset in args.models:
            s = bench_model(preset, images, vocab, classes, args.repeats)
            total = s["pre"] + s["fwd"] + s["post"] + s["crf"]
            print(f"{preset:<16}{s['pre'] * 1e3:8.1f}{s['fwd'] * 1e3:8.1f}{s['post'] * 1e3:9.2f}"
                  f"{s['crf'] * 1e3:8.1f}{s['calls']:8.2f}{s['post'] / s['fwd']:9.3f}{1 / total:7.2f}"
                  f"{s['ref_post'] * 1e3:9.2f}{s['n'] - s['mismatched']:>4}/{s['n']}")
            failed |= s["mismatched"] > 0
    print("per image (pre, fwd: medians; the rest: means); post = our post-processing without the dense-CRF library's calls (crf ms, per image); "
          "ref post = the same part in a line-by-line port of the original; same = images whose labels equal the "
          "reference's")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
