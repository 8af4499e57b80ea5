"""``simseg demo``: segmentation learned from captions alone, on the built-in synthetic world, in minutes on a CPU.

The paper's central claim, made visible on a laptop: a dual encoder trained contrastively on image-caption pairs,
with no mask and no box, learns *where* the named things are when its pooling is LoDA (per-dimension top-k over
patches), and does not when the image is pooled through its [CLS] token. The demo:

1. generates seeded training scenes (:mod:`simseg.synthetic`) and writes them as a CSV folder of JPEGs, the format
   of CC3M-style data, so training reads them with the same reader as real data;
2. trains a WordPiece vocabulary on the training captions;
3. trains the ``demo`` preset (a 1.4M-parameter ViT + BERT) with LoDA, from the captions only;
4. writes held-out scenes (another seed) as a PASCAL VOC split and a retrieval parquet, and evaluates zero-shot
   colour segmentation (classes = background + the six colours) with both protocols, and retrieval;
5. trains and evaluates the same model with [CLS] pooling, the baseline;
6. writes ``report.md`` (metrics, definitions, a picture grid, training curves, the verdict) and ``results.json``.

Metrics (all from dataset-level confusion matrices, in percent):

- *colour mIoU with background*: all pixels, seven classes, background predicted by the protocol itself: the
  paper's ``simseg`` protocol (image-level class selection, per-class min-max maps, dense CRF) or the ``dense``
  protocol's probability threshold (0.99).
- *colour fg mIoU, background known*: ground-truth background pixels are ignored and the prediction is restricted
  to the six colours (``dense`` protocol with ``bg_threshold=0``: every pixel gets its most similar colour); mIoU
  over the six colours. It measures localisation of the learned words alone.
- *retrieval R@1*: among the held-out images (one caption each), in both directions.

Thresholds, checked on the LoDA run (:data:`THRESHOLDS`): colour mIoU with background >= 45 % with the paper's
protocol and >= 45 % with the dense protocol (p 0.99), colour fg mIoU >= 85 %, LoDA minus CLS colour fg mIoU >= 50
points.

The LoDA run's checkpoint (tokenizer included) lands in ``<out>/loda/checkpoint``, where ``simseg serve --demo``
finds it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from simseg.errors import InputError

HELP = "learn segmentation from captions on a built-in synthetic world, then report"

#: Default output folder (``simseg serve --demo`` looks for ``<this>/loda/checkpoint``).
DEFAULT_OUT = "simseg-demo"
#: Held-out scenes come from ``seed + EVAL_SEED_OFFSET``, a stream disjoint from the training one.
EVAL_SEED_OFFSET = 1_000_003
#: What the demo must reach to PASS, as fractions (not percent): colour mIoU with background under the paper's
#: protocol (``paper_miou``) and the dense one (``bg_miou``), colour fg mIoU (``fg_miou``), LoDA minus CLS (``gap``).
THRESHOLDS = {"paper_miou": 0.45, "fg_miou": 0.85, "bg_miou": 0.45, "gap": 0.50}
#: The largest ``--seed`` (training seeds torch's generators with it, plus the epoch).
MAX_SEED = 2**32 - 1
#: What the demo writes in its output folder; ``--force`` removes exactly these (never anything else).
OUTPUTS = ("data", "loda", "cls", "report.md", "results.json", "grid.png", "similarity_maps.png",
           "training_curves.png")
#: What the demo (and training, in a run folder) writes inside its output folders: a folder of that name holding
#: anything else is not the demo's, and ``--force`` refuses to remove it (``data`` is a common name).
OUTPUT_CONTENTS = {
    "data": {"train", "vocab", "eval"},
    "loda": {"checkpoint", "checkpoints", "metrics.jsonl", "config.yaml", "tensorboard", "wandb", "cache"},
    "cls": {"checkpoint", "checkpoints", "metrics.jsonl", "config.yaml", "tensorboard", "wandb", "cache"},
}


@dataclass(frozen=True)
class DemoPlan:
    """How much work a demo run does.

    Attributes:
        steps: training steps of each run (None: the preset's ``train.steps``).
        batch_size: training batch (None: the preset's ``train.batch_size``).
        lr: peak learning rate (None: the preset's ``train.lr``).
        train_scenes: distinct training scenes (the loader cycles through them in reshuffled epochs).
        eval_scenes: held-out scenes for segmentation.
        retrieval_scenes: held-out scenes for retrieval (the first ones of the segmentation set), one caption each.
        grid_rows: held-out scenes shown in the picture grid.
    """

    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    train_scenes: int = 5120
    eval_scenes: int = 200
    retrieval_scenes: int = 100
    grid_rows: int = 6


DEFAULT_PLAN = DemoPlan()
#: The default's training (80 steps of batch 64) on fewer held-out scenes: what the test runs.
QUICK_PLAN = DemoPlan(eval_scenes=100, grid_rows=4)


def segmentation_protocols(input_size: int) -> dict[str, dict[str, Any]]:
    """The evaluations run on each model: name -> Segmenter arguments (protocol, crf, parameters).

    ``input_size`` is the side the demo model is built for (64): the scenes are evaluated at their own size, one
    window, with no resampling.
    """
    dense = {"short_side": input_size, "crop_size": input_size, "stride": input_size}
    return {
        # every pixel gets its most similar colour: background never predicted (scored with GT background ignored)
        "dense_colours": {"protocol": "dense", "crf": False, "params": {**dense, "bg_threshold": 0.0}},
        # background where the best colour's softmax probability is below 0.99
        "dense_threshold": {"protocol": "dense", "crf": False, "params": {**dense, "bg_threshold": 0.99}},
        # the paper's protocol: image-level class selection, similarity maps, dense CRF, closing
        "simseg": {"protocol": "simseg", "crf": True, "params": {"input_size": input_size}},
    }


def recorded_evaluation(input_size: int) -> dict[str, Any]:
    """The evaluation defaults the demo's checkpoints record (``meta.evaluation``): the protocols at the model's
    input size, ``dense`` with the background threshold by default (the one that scores highest on this world), the
    colour classes. ``segment``, ``eval-seg``, ``eval-retrieval`` and ``serve`` use them unless told otherwise."""
    from simseg.synthetic import colour_class_names

    protocols = segmentation_protocols(input_size)
    return {"input_size": input_size, "protocol": "dense",
            "protocols": {"simseg": protocols["simseg"]["params"], "dense": protocols["dense_threshold"]["params"]},
            "retrieval": {"resize_size": input_size, "crop_size": input_size},
            "classes": ", ".join(colour_class_names()[1:])}


# ------------------------------------------------------------------------------------------------ arguments
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``simseg demo``."""
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help=f"output folder (default {DEFAULT_OUT}); must be missing or empty unless --force")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"training steps of each run (default {_preset_steps()}, --quick included)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training scenes and of training (default 0); "
                                                            f"held-out scenes use seed + {EVAL_SEED_OFFSET}")
    parser.add_argument("--force", action="store_true",
                        help="write into an existing output folder, replacing the demo's own files there")
    parser.add_argument("--quick", action="store_true",
                        help="a shorter run (the same training, 100 held-out scenes instead of 200) for tests")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _preset_steps() -> int:
    from simseg.config import load_preset

    return int(load_preset("demo").train.steps)


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse an output folder that exists (unless ``force``) or cannot be written; say which and why.

    An existing empty folder is accepted: nothing in it can be lost.

    Raises:
        InputError: ``out`` is a file, exists and is not empty without ``force``, or is not writable.
    """
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    if out.is_dir():
        if any(out.iterdir()) and not force:
            raise InputError(f"--out {out}: folder exists; pass --force to overwrite the demo's files in it, or "
                             "choose another --out")
        if not os.access(out, os.W_OK | os.X_OK):
            raise InputError(f"--out {out}: folder is not writable")
        return
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: cannot create it ({parent} is not a writable folder)")


def _check_arguments(steps: int | None, seed: int) -> None:
    if steps is not None and steps < 1:
        raise InputError(f"--steps: must be at least 1, got {steps}")
    if not 0 <= seed <= MAX_SEED:  # a larger one overflows torch's seeding, after the data were generated
        raise InputError(f"--seed: must be a non-negative integer up to {MAX_SEED}, got {seed}")


# ------------------------------------------------------------------------------------------------ data
def _generate(n: int, seed: int, desc: str, progress: bool) -> list:
    """``synthetic.generate_scenes(n, seed)`` with a progress bar (the same rng stream, so the same scenes)."""
    from simseg.progress import progress_bar
    from simseg.synthetic import generate_scene

    rng = np.random.default_rng(seed)
    return [generate_scene(rng) for _ in progress_bar(range(n), desc=desc, unit="scene", disable=not progress,
                                                      leave=False)]


def prepare_data(out: Path, plan: DemoPlan, seed: int, progress: bool = True) -> dict[str, Any]:
    """Generate and export the training and held-out scenes; train the WordPiece vocabulary.

    Returns:
        ``{"train_csv", "vocab", "seg_root", "retrieval", "eval_scenes"}`` (paths, and the held-out scenes for the
        picture grid).
    """
    from simseg.synthetic import export_csv_folder, export_retrieval_parquet, export_segmentation_split
    from simseg.tokenizer import train_wordpiece_vocab

    data = out / "data"
    train_scenes = _generate(plan.train_scenes, seed, "training scenes", progress)
    train_csv = export_csv_folder(train_scenes, data / "train", image_format="jpg")
    vocab = train_wordpiece_vocab([s.caption for s in train_scenes], data / "vocab", vocab_size=1000)
    eval_scenes = _generate(max(plan.eval_scenes, plan.retrieval_scenes), seed + EVAL_SEED_OFFSET,
                            "held-out scenes", progress)
    seg_root = export_segmentation_split(eval_scenes[:plan.eval_scenes], data / "eval")
    retrieval = export_retrieval_parquet(eval_scenes[:plan.retrieval_scenes], data / "eval", captions_per_image=1,
                                         seed=seed)
    return {"train_csv": train_csv, "vocab": vocab, "seg_root": seg_root, "retrieval": retrieval,
            "eval_scenes": eval_scenes[:plan.eval_scenes]}


class ColourSplit:
    """The exported held-out split read through :class:`simseg.segdata.SegmentationBenchmark` (the VOC reader),
    with the colour class names of its ``classes.txt`` instead of VOC's."""

    def __init__(self, root: Path):
        from simseg.segdata import SegmentationBenchmark

        self._bench = SegmentationBenchmark("pascal_voc", root)
        self.name = "synthetic colours"
        self.class_names = (root / "classes.txt").read_text(encoding="utf-8").split()
        self.sample_ids = self._bench.sample_ids

    def __len__(self) -> int:
        return len(self._bench)

    def __getitem__(self, index: int):
        return self._bench[index]


# ------------------------------------------------------------------------------------------------ training
def demo_config(out_dir: Path, vocab: Path, train_csv: Path, seed: int, plan: DemoPlan, pooling: str) -> dict:
    """The resolved training config of one run: the ``demo`` preset with the run's paths, seed, plan and pooling."""
    from simseg.config import load_config, to_dict

    overrides = [f"model.tokenizer={vocab}", f"train.output_dir={out_dir}", f"train.seed={seed}",
                 f"model.pooling={pooling}"]
    for key, value in (("steps", plan.steps), ("batch_size", plan.batch_size), ("lr", plan.lr)):
        if value is not None:
            overrides.append(f"train.{key}={value}")
    cfg = to_dict(load_config("demo", overrides))
    cfg["data"]["train"] = [{"type": "csv", "path": str(train_csv)}]
    return cfg


def train_run(cfg: dict, progress: bool = True) -> dict:
    """Train one run; the demo never resumes, so the intermediate training checkpoints are removed afterwards."""
    from simseg.train import train

    summary = train(cfg, progress=progress)
    shutil.rmtree(Path(cfg["train"]["output_dir"]) / "checkpoints", ignore_errors=True)
    return summary


# ------------------------------------------------------------------------------------------------ evaluation
def evaluate_model(
    model: Any,
    split: ColourSplit,
    retrieval: Path,
    cache_dir: Path,
    grid_indices: Sequence[int] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Every metric of the demo for one model.

    Returns:
        ``{"segmentation": {protocol name: {"fg_mIoU", "mIoU", "per_class", "fg_per_class", "mIoU_by_objects",
        "protocol"}}, "patch_similarity": {...}, "colour_embedding_mean_cosine": float,
        "retrieval": {metric: value, "protocol"}, "predictions": {protocol name: {index: labels}}}``; mIoUs
        and recalls in percent.
    """
    from simseg.evaluate import evaluate_segmentation
    from simseg.metrics import ConfusionMatrix
    from simseg.retrieval import evaluate_retrieval, protocol_info
    from simseg.segdata import IGNORE_INDEX
    from simseg.segment import Segmenter

    classes = split.class_names
    out: dict[str, Any] = {"segmentation": {}, "predictions": {}}
    keep = set(grid_indices)
    for name, spec in segmentation_protocols(model.image_size).items():
        segmenter = Segmenter(model, classes, protocol=spec["protocol"], crf=spec["crf"], cache_dir=cache_dir,
                              **spec["params"])
        fg = ConfusionMatrix(len(classes), ignore_index=IGNORE_INDEX)
        by_count: dict[int, Any] = {}  # objects in the scene -> confusion matrix over all pixels
        kept: dict[int, np.ndarray] = {}

        def on_prediction(index: int, sample_id: str, image: Any, gt: np.ndarray, result: Any) -> None:
            labels = np.asarray(result.labels)
            fg.update(labels, np.where(gt == 0, IGNORE_INDEX, gt))  # background pixels not scored
            # every object has its own colour, so the colours present count the objects
            count = int(sum(1 for c in np.unique(gt) if 0 < c < len(classes)))
            by_count.setdefault(count, ConfusionMatrix(len(classes), ignore_index=IGNORE_INDEX)).update(labels, gt)
            if index in keep:
                kept[index] = labels

        metrics = evaluate_segmentation(segmenter, split, on_prediction=on_prediction, progress=progress)
        # background is not a class here; a colour pixel predicted as background still counts as a miss
        fg_metrics = fg.compute(classes, exclude=[0])
        out["segmentation"][name] = {
            "fg_mIoU": fg_metrics["mIoU"],
            "mIoU": metrics["mIoU"],
            "aAcc": metrics["aAcc"],
            "per_class": {k: v["IoU"] for k, v in metrics["per_class"].items()},
            "fg_per_class": {k: v["IoU"] for k, v in fg_metrics["per_class"].items()},
            "num_images": metrics["num_evaluated"],
            # mIoU with background over the scenes holding 1, 2, 3 objects (classes absent from them not averaged)
            "mIoU_by_objects": {str(k): by_count[k].compute(classes)["mIoU"] for k in sorted(by_count)},
            "protocol": segmenter.protocol_info(),
        }
        out["predictions"][name] = kept
    # How much the colour embeddings share (mean pairwise cosine), and where each colour's map is high: what the
    # paper protocol's per-class min-max maps depend on (report).
    colours = segmenter.class_emb[1:].float()
    cos = (colours @ colours.T).cpu().numpy()
    out["colour_embedding_mean_cosine"] = float((cos.sum() - np.trace(cos)) / (len(cos) * (len(cos) - 1)))
    out["patch_similarity"] = patch_similarity(model, split, segmenter.class_emb)
    size = model.image_size
    r = evaluate_retrieval(model, retrieval, crop_size=size, resize_size=size, progress=progress, num_workers=1)
    out["retrieval"] = {k: r[k] for k in ("I2T_R@1", "I2T_R@5", "T2I_R@1", "T2I_R@5", "RSUM", "num_images",
                                          "num_captions") if k in r}
    # as eval-retrieval's metrics.json: the transforms, input size and pooling that produced these numbers
    out["retrieval"]["protocol"] = protocol_info(model, resize_size=size, crop_size=size)
    return out


def _patch_class_cosines(model: Any, transform: Any, image: Any, emb: Any) -> tuple[np.ndarray, tuple[int, int]]:
    """(patches, classes) cosines of one image's L2-normalised patch tokens with the class embeddings ``emb``, and
    the patch grid: the per-class maps of the paper's protocol before they are stretched."""
    import torch

    with torch.inference_mode():
        tokens, grid = model.encode_image_tokens(transform(image.convert("RGB")).unsqueeze(0).to(model.device))
    return (torch.nn.functional.normalize(tokens[0].float(), dim=-1) @ emb.T).cpu().numpy(), grid


def patch_similarity(model: Any, split: ColourSplit, class_emb: Any, limit: int = 100) -> dict[str, float]:
    """Mean cosine of a colour's class embedding with the patch tokens of three kinds of patch, over the colours
    present in the first ``limit`` held-out scenes: patches of that colour (``own``), of another colour in the same
    scene (``other_object``) and of background (``background``); a patch counts when at least 90 % of its pixels have
    one label. Also ``background_level``: where background falls between the scene's lowest and highest value of
    the colour's map (0 = lowest, 1 = highest), the quantity the paper protocol's min-max normalisation acts on.
    """
    from simseg.transforms import eval_transform

    size, patch = model.image_size, model.patch_size
    transform = eval_transform(size, mode="square", mean=model.mean, std=model.std)
    emb = class_emb.float().to(model.device)
    sums: dict[str, list[float]] = {"own": [], "other_object": [], "background": [], "background_level": []}
    for index in range(min(limit, len(split))):
        image, gt, _ = split[index]
        gt = np.asarray(gt)
        if gt.shape != (size, size):
            continue
        sim, (gh, gw) = _patch_class_cosines(model, transform, image, emb)  # (patches, classes)
        blocks = gt.reshape(gh, patch, gw, patch).transpose(0, 2, 1, 3).reshape(gh * gw, patch * patch)
        patch_label = np.full(gh * gw, -1)
        for c in np.unique(gt):
            share = (blocks == c).mean(axis=1)
            patch_label[share >= 0.9] = c
        present = [int(c) for c in np.unique(gt) if 0 < c < emb.shape[0]]
        bg = patch_label == 0
        for c in present:
            values = sim[:, c]
            own = patch_label == c
            other = (patch_label > 0) & (patch_label != c)
            if own.any():
                sums["own"].append(values[own].mean())
            if other.any():
                sums["other_object"].append(values[other].mean())
            if bg.any():
                sums["background"].append(values[bg].mean())
                lo, hi = values.min(), values.max()
                if hi > lo:
                    sums["background_level"].append(((values[bg] - lo) / (hi - lo)).mean())
    return {k: float(np.mean(v)) if v else None for k, v in sums.items()}


def write_similarity_maps(path: Path, model: Any, split: ColourSplit, segmenter: Any, limit: int = 4) -> Path | None:
    """The paper protocol's maps on the first ``limit`` held-out scenes with two or more objects: image, ground
    truth, the protocol's labels, then each present colour's similarity map min-max normalised over the scene (on
    the patch grid, as the protocol stretches it before the CRF; bright = 1; colours in label order). Where another
    colour's object is the darkest part of a map, the background is left near the middle. None when no scene has two
    objects."""
    from PIL import Image

    from simseg.segment import minmax
    from simseg.transforms import eval_transform
    from simseg.visualize import image_grid

    size, scale = model.image_size, 2
    transform = eval_transform(size, mode="square", mean=model.mean, std=model.std)
    emb = segmenter.class_emb.float().to(model.device)
    rows = []
    for index in range(len(split)):
        image, gt, _ = split[index]
        gt = np.asarray(gt)
        present = [int(c) for c in np.unique(gt) if 0 < c < emb.shape[0]]
        if len(present) < 2:
            continue
        sim, grid = _patch_class_cosines(model, transform, image, emb)
        sim = sim.reshape(*grid, -1)
        cells = [image.convert("RGB").resize((size * scale,) * 2, Image.NEAREST), _label_picture(gt, scale),
                 _label_picture(np.asarray(segmenter(image).labels), scale)]
        for c in present:
            m = minmax(sim[:, :, c])
            grey = Image.fromarray(np.rint((np.zeros(grid) if m is None else m) * 255).astype(np.uint8))
            cells.append(grey.resize((size * scale,) * 2, Image.NEAREST))
        rows.append(cells)
        if len(rows) == limit:
            break
    if not rows:
        return None
    titles = ["image", "ground truth", "paper protocol", "map: 1st colour", "map: 2nd colour", "map: 3rd colour"]
    image_grid(rows, path, titles=titles, cell_height=size * scale)
    return path


def verdict(loda: dict, cls: dict) -> list[dict[str, Any]]:
    """The thresholds checked on the results: ``[{"name", "value", "threshold", "passed"}]`` (fractions)."""
    seg, seg_cls = loda["segmentation"], cls["segmentation"]
    fg, fg_cls = seg["dense_colours"]["fg_mIoU"] / 100, seg_cls["dense_colours"]["fg_mIoU"] / 100
    rows = [
        ("LoDA colour mIoU with background (simseg, the paper's protocol)", seg["simseg"]["mIoU"] / 100,
         THRESHOLDS["paper_miou"]),
        ("LoDA colour fg mIoU, background known (dense, colours only)", fg, THRESHOLDS["fg_miou"]),
        ("LoDA colour mIoU with background (dense, background below p = 0.99)", seg["dense_threshold"]["mIoU"] / 100,
         THRESHOLDS["bg_miou"]),
        ("LoDA minus CLS, colour fg mIoU (dense, colours only)", fg - fg_cls, THRESHOLDS["gap"]),
    ]
    return [{"name": n, "value": v, "threshold": t, "passed": bool(v >= t)} for n, v, t in rows]


# ------------------------------------------------------------------------------------------------ report
def _label_picture(labels: np.ndarray, scale: int) -> Any:
    """A label map painted in the classes' own colours (background dark grey), enlarged without blurring."""
    from PIL import Image

    from simseg.synthetic import COLOURS

    palette = np.array([(40, 40, 40)] + [rgb for _, rgb in COLOURS], dtype=np.uint8)
    labels = np.asarray(labels)
    rgb = palette[np.clip(labels, 0, len(palette) - 1)]
    rgb[labels == 255] = (255, 255, 255)
    return Image.fromarray(rgb).resize((labels.shape[1] * scale, labels.shape[0] * scale), Image.NEAREST)


#: The picture grid's prediction columns, the three views side by side: (title, run, protocol).
GRID_COLUMNS = (
    ("paper protocol", "loda", "simseg"),
    ("dense, p >= 0.99", "loda", "dense_threshold"),
    ("CLS baseline", "cls", "simseg"),
)


def write_grid(path: Path, scenes: Sequence[Any], results: dict[str, dict], indices: Sequence[int]) -> Path:
    """Rows of held-out scenes: image, ground truth, then the predictions of :data:`GRID_COLUMNS`."""
    from PIL import Image

    from simseg.visualize import image_grid

    scale = 2
    rows = []
    for i in indices:
        scene = scenes[i]
        image = Image.fromarray(np.asarray(scene.image)).resize((scene.image.shape[1] * scale,) * 2, Image.NEAREST)
        row = [image, _label_picture(scene.colour_mask, scale)]
        row += [_label_picture(results[run]["predictions"][protocol][i], scale) for _, run, protocol in GRID_COLUMNS]
        rows.append(row)
    titles = ["image", "ground truth", *(title for title, _, _ in GRID_COLUMNS)]
    image_grid(rows, path, titles=titles, cell_height=scene.image.shape[0] * scale)
    return path


def write_curves(path: Path, runs: dict[str, Path]) -> Path:
    """Training loss (and temperature) against step for each run, from its ``metrics.jsonl``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_temp) = plt.subplots(1, 2, figsize=(9, 3.2))
    try:
        for label, run_dir in runs.items():
            records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
            records = [r for r in records if "loss" in r]
            steps = [r["step"] for r in records]
            ax_loss.plot(steps, [r["loss"] for r in records], label=label)
            ax_temp.plot(steps, [r["temperature"] for r in records], label=label)
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("contrastive loss")
        ax_loss.set_title("training loss")
        ax_loss.legend()
        ax_temp.set_xlabel("step")
        ax_temp.set_ylabel("temperature")
        ax_temp.set_title("learned temperature")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


#: The table's rows: (view, run, protocol giving the mIoU with background, protocol giving the fg mIoU).
VIEWS = (
    ("paper protocol (simseg, dense CRF), LoDA model", "loda", "simseg", "simseg"),
    ("dense protocol (p = 0.99; fg: colours only), LoDA model", "loda", "dense_threshold", "dense_colours"),
    ("CLS baseline, paper protocol", "cls", "simseg", "simseg"),
    ("CLS baseline, dense protocol", "cls", "dense_threshold", "dense_colours"),
)


def metrics_table(loda: dict, cls: dict) -> str:
    """The three views side by side (markdown; also printed): paper protocol, dense protocol, CLS baseline."""
    runs = {"loda": loda, "cls": cls}
    lines = ["| view | colour mIoU with background | colour fg mIoU, background known |", "|---|---:|---:|"]
    for title, run, with_bg, fg in VIEWS:
        seg = runs[run]["segmentation"]
        lines.append(f"| {title} | {_pct(seg[with_bg]['mIoU'])} | {_pct(seg[fg]['fg_mIoU'])} |")
    n = loda["retrieval"].get("num_images")
    r = {k: v["retrieval"] for k, v in runs.items()}
    lines.append("")
    lines.append(f"Retrieval among {n} held-out images (R@1, image to text / text to image): LoDA "
                 f"{_pct(r['loda'].get('I2T_R@1'))} / {_pct(r['loda'].get('T2I_R@1'))}, CLS "
                 f"{_pct(r['cls'].get('I2T_R@1'))} / {_pct(r['cls'].get('T2I_R@1'))}.")
    return "\n".join(lines)


def verdict_lines(rows: Sequence[dict]) -> list[str]:
    return [f"{'PASS' if r['passed'] else 'FAIL'}  {r['name']}: {r['value']:.3f} (threshold {r['threshold']:.2f})"
            for r in rows]


def baseline_note(results: dict) -> str:
    """How far each run's training got, in words: a loss still near ln(batch) means chance-level embeddings."""
    chance = float(np.log(results["batch_size"]))
    plateau = {}
    parts = []
    for label, name in (("loda", "LoDA"), ("cls", "CLS")):
        loss = results["training"][label]["final_loss"]
        plateau[label] = loss > 0.95 * chance
        state = "still at chance level" if plateau[label] else "well below chance level"
        parts.append(f"the {name} run's final training loss is {loss:.2f} ({state}, ln {results['batch_size']} = "
                     f"{chance:.2f})")
    text = "Training: " + "; ".join(parts) + "."
    if plateau["cls"] and not plateau["loda"]:
        text += (" With the same model, data and budget, [CLS] pooling had not left its initial plateau, so its "
                 "retrieval is at chance as well: LoDA learns faster here, besides learning where the words are.")
    return text


def _num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def map_note(loda: dict) -> str:
    """Why the paper's protocol works (or not) on this run, in words, from the run's own patch similarities."""
    sim = loda.get("patch_similarity") or {}
    own, other, bg, level = (sim.get(k) for k in ("own", "other_object", "background", "background_level"))
    text = (f"In this run a colour's class embedding has a mean cosine of {_num(own)} with the patches of that "
            f"colour, {_num(other)} with the patches of another colour in the same scene and {_num(bg)} with "
            f"background patches; within each scene, background lies at {_num(level)} of the way from the map's "
            "lowest value (0) to its highest (1).")
    if level is not None and level >= 0.5:
        text += (" Background above the middle of the map is what makes the paper's protocol mark it as the "
                 "colour: its maps fail here, whatever the dense protocol shows.")
    return text


def count_note(loda: dict) -> str:
    """The paper protocol's mIoU by the number of objects in the scene, in words."""
    by = loda["segmentation"]["simseg"].get("mIoU_by_objects") or {}
    dense = loda["segmentation"]["dense_threshold"].get("mIoU_by_objects") or {}
    if not by:
        return ""
    parts = ", ".join(f"{_pct(by[k])} with {k} object{'s' if k != '1' else ''}" for k in sorted(by))
    dparts = ", ".join(f"{_pct(dense[k])}" for k in sorted(dense))
    return (f"By the number of objects in the scene, the paper's protocol scores {parts} (the dense protocol: "
            f"{dparts}). A colour's map is stretched between its own object and the least similar patch of the "
            "scene; with several colours that is another colour's object, which leaves the background nearer the "
            "middle, and the image-level selection (mean + 1 std of all seven scores) also tends to keep only the "
            "two best colours of a three-colour scene. Most scenes of this world hold one or two objects.")


def maps_section(results: dict) -> str:
    """The report's paragraph and picture of the paper protocol's similarity maps (empty when none were drawn)."""
    if not results.get("similarity_maps"):
        return ""
    return (
        "The paper protocol's maps on held-out scenes with two or three objects (LoDA model): image, ground truth, "
        "the protocol's labels, then the similarity map of each colour in the scene, in label order, as the "
        "protocol stretches it (min-max over the scene, on the patch grid; bright = most similar). A colour's "
        "darkest patches are another colour's object, not the background, so the background sits near the middle "
        "of the map, where the CRF may give it to the colour.\n\n![similarity maps](similarity_maps.png)\n\n")


def write_report(out: Path, results: dict) -> Path:
    """``report.md``: what ran, the three views side by side, the verdict, a plain-words summary, definitions,
    the pictures."""
    loda, cls = results["loda"], results["cls"]
    plan, timing = results["plan"], results["seconds"]
    simseg_protocol = loda["segmentation"]["simseg"]["protocol"]
    simseg_params = ", ".join(f"{k}={v}" for k, v in simseg_protocol.items() if k != "name")
    rows = results["verdict"]
    text = f"""# simseg demo: segmentation learned from captions alone

A {results['parameters'] / 1e6:.2f}M-parameter dual encoder (ViT patch 8 on 64 x 64 scenes, 2-layer BERT with a
WordPiece vocabulary of {results['vocab_size']} tokens trained on the captions) was trained from scratch for
{results['steps']} steps of batch {results['batch_size']} (peak lr {results['lr']:g}) on {plan['train_scenes']}
synthetic scenes and their captions (seed {results['seed']}), once with **LoDA** pooling and once with **[CLS]**
pooling. No mask, box or class label was used in training. Segmentation and retrieval are zero-shot, on
{plan['eval_scenes']} held-out scenes (seed {results['eval_seed']}); the classes are `background` and the six colour
words.

## In plain words

The model saw pictures of coloured shapes with one-line captions ("a red circle next to a blue star on dark
grey stone") and learned only which caption goes with which picture; nobody marked a single pixel. LoDA builds a
picture's summary, feature by feature, from the few patches that respond most, so the features that make a picture
match the word "red" have to come from its red patches. Afterwards every patch can be asked how much it looks like
"red", and the picture coloured in. The table asks that question three ways: **the paper's protocol** decides
which colours the picture contains, then outlines each one on its own similarity map; **the dense protocol** gives
every pixel its most similar colour, or background when no colour is sure; **the CLS baseline** is the same model
trained the same way but summarising the picture through its single [CLS] token, which can learn what a picture
contains without learning where.

## Results (percent)

{metrics_table(loda, cls)}

## Verdict

```
{chr(10).join(verdict_lines(rows))}
```

{baseline_note(results)}

## Why the captions name the background

The paper's protocol stretches each colour's similarity map between the scene's least and most similar patch and
keeps what the CRF finds near the top. That works only where background patches are among the least similar to
every colour. Every class embedding is mostly its prompt ("a photo of a red."), and the words all captions share
("a", "picture of", "and") have to be matched by some patches: LoDA takes, feature by feature, the patches that
respond most, and for the features of words every caption has, background patches are in every picture. When no
caption describes the background, background patches become what those shared words match, so they match every
colour's embedding almost as well as the colour's own patches do, and the stretched map marks them as the colour.
The world's captions therefore say what the objects lie on, always with the surface's brightness and tint ("on
dark grey stone", "on a light brown wooden floor"), as real captions name the scene around the objects: background
patches get words of their own. How many kinds of surface the captions tell apart matters: where few kinds are
named, the background patches of all pictures still collapse onto nearly one feature that the shared words match,
and the longer the training, the more (a longer run of this demo scores lower on the paper's protocol, not
higher). This world names 28 kinds (dark or light, grey or brown, seven textures). {map_note(loda)}

{count_note(loda)}

## Definitions

- **colour mIoU with background**: all pixels, mIoU over background + six colours of a dataset-level confusion
  matrix (intersection and union summed over all images), background predicted by the protocol. "paper protocol":
  the `simseg` protocol ({simseg_params}): image-level class selection (mean + 1 std of the top scores; the
  background class is skipped), per-class similarity maps min-max normalised, 2-label dense CRF, 7 x 7 closing;
  pixels no accepted class covers are background. "dense protocol": a pixel is background when its best colour's
  softmax probability (over the six colours, at the model's learned temperature) is below 0.99.
- **colour fg mIoU, background known**: ground-truth background pixels are ignored; mIoU over the six colours; a
  colour pixel predicted as background counts as a miss. For the dense protocol this is its "colours only" variant:
  every pixel takes its most similar colour (cosine of the L2-normalised patch token and the class embedding,
  bilinearly upsampled, softmax over the colours; background never predicted), which measures where the learned
  words are, and nothing else.
- **retrieval R@1**: each held-out image has one caption; image to text: fraction of images whose caption is the
  most similar of all captions; text to image: fraction of captions whose image is the most similar of all images.
- Class embeddings: the 80 ImageNet prompt templates ("a photo of a {{}}.", ...), masked text pooling, mean over
  templates; the `background` class is prompted by its name like the others.

## Pictures

Held-out scenes: image, ground truth, then {', '.join(f'"{t}"' for t, _, _ in GRID_COLUMNS)}: the paper's protocol
and the dense protocol on the LoDA model, and the paper's protocol on the CLS baseline. Label colours are the class
colours; dark grey is background.

![grid](grid.png)

{maps_section(results)}Training curves (contrastive loss and learned temperature per step, from `loda/metrics.jsonl` and
`cls/metrics.jsonl`):

![training curves](training_curves.png)

## Run

- command: `{results['command']}`
- wall time: {timing['total']:.0f} s (data {timing['data']:.0f} s, LoDA training {timing['train_loda']:.0f} s, CLS
  training {timing['train_cls']:.0f} s, evaluation {timing['eval_loda'] + timing['eval_cls']:.0f} s); CPU time
  {results['cpu_seconds']:.0f} s; torch threads {results['threads']}
- LoDA checkpoint: `loda/checkpoint` (sha256 {results['checkpoints']['loda']['sha256'][:16]}...), served by
  `simseg serve --demo`; CLS checkpoint: `cls/checkpoint` (sha256 {results['checkpoints']['cls']['sha256'][:16]}...)
- software: {', '.join(f'{k} {v}' for k, v in results['versions'].items() if v)}
- every number with its protocol parameters: `results.json`
"""
    from simseg.files import atomic_write_text

    return atomic_write_text(out / "report.md", text)


# ------------------------------------------------------------------------------------------------ the demo
def run_demo_pipeline(
    out: Path,
    plan: DemoPlan,
    seed: int = 0,
    progress: bool = True,
    command: str = "simseg demo",
    log: Any = print,
) -> dict[str, Any]:
    """The whole demo in ``out`` (which must be writable; see :func:`check_out_dir`). Returns the results dict that
    is also written to ``results.json``."""
    import torch

    import simseg
    from simseg.checkpoint import checkpoint_fingerprint, record_evaluation_defaults
    from simseg.app.report import software_versions, write_json
    from simseg.model import parameter_counts
    from simseg.segment import Segmenter

    start, cpu_start = time.perf_counter(), time.process_time()  # CPU time of all this process's threads
    seconds: dict[str, float] = {}
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {out}: cannot create it ({e.strerror or e})") from None

    log(f"[1/5] synthetic data: {plan.train_scenes} training scenes (seed {seed}), {plan.eval_scenes} held-out "
        f"(seed {seed + EVAL_SEED_OFFSET}) -> {out / 'data'}")
    t = time.perf_counter()
    data = prepare_data(out, plan, seed, progress)
    seconds["data"] = time.perf_counter() - t

    runs: dict[str, Path] = {}
    summaries: dict[str, dict] = {}
    configs: dict[str, dict] = {}
    for step_no, (label, pooling) in enumerate((("loda", "loda"), ("cls", "cls")), start=2):
        cfg = configs[label] = demo_config(out / label, data["vocab"], data["train_csv"], seed, plan, pooling)
        log(f"[{step_no}/5] training with {pooling.upper()} pooling: {cfg['train']['steps']} steps of batch "
            f"{cfg['train']['batch_size']} -> {out / label}")
        t = time.perf_counter()
        summaries[label] = train_run(cfg, progress)
        record_evaluation_defaults(out / label / "checkpoint",
                                   recorded_evaluation(int(cfg["model"]["vision"]["img_size"])))
        seconds[f"train_{label}"] = time.perf_counter() - t
        runs[label] = out / label

    split = ColourSplit(data["seg_root"])
    grid_indices = list(range(min(plan.grid_rows, len(split))))
    results: dict[str, Any] = {}
    sizes: dict[str, tuple[int, int]] = {}  # parameters and vocabulary size of each model
    maps_written = False
    with tempfile.TemporaryDirectory(prefix="simseg-demo-cache-") as cache:
        for step_no, label in ((4, "loda"), (5, "cls")):
            log(f"[{step_no}/5] evaluating the {label.upper()} model: segmentation on {len(split)} held-out scenes "
                f"(3 protocols), retrieval among {plan.retrieval_scenes}")
            t = time.perf_counter()
            model = simseg.load_model(runs[label] / "checkpoint")
            sizes[label] = (parameter_counts(model)["total"], model.tokenizer.vocab_size)
            results[label] = evaluate_model(model, split, data["retrieval"], Path(cache), grid_indices, progress)
            if label == "loda":
                spec = segmentation_protocols(model.image_size)["simseg"]
                maps = Segmenter(model, split.class_names, protocol=spec["protocol"], crf=spec["crf"],
                                 cache_dir=Path(cache), progress=False, **spec["params"])
                maps_written = write_similarity_maps(out / "similarity_maps.png", model, split, maps) is not None
            seconds[f"eval_{label}"] = time.perf_counter() - t

    write_grid(out / "grid.png", data["eval_scenes"], results, grid_indices)
    write_curves(out / "training_curves.png", {"LoDA": runs["loda"], "CLS": runs["cls"]})
    seconds["total"] = time.perf_counter() - start
    report = {
        "command": command,
        "seed": seed,
        "eval_seed": seed + EVAL_SEED_OFFSET,
        # the plan as run: steps, batch and lr resolved from the preset where the plan leaves them to it
        "plan": asdict(replace(plan, steps=int(configs["loda"]["train"]["steps"]),
                               batch_size=int(configs["loda"]["train"]["batch_size"]),
                               lr=float(configs["loda"]["train"]["lr"]))),
        "steps": int(configs["loda"]["train"]["steps"]),
        "batch_size": int(configs["loda"]["train"]["batch_size"]),
        "lr": float(configs["loda"]["train"]["lr"]),
        "parameters": sizes["loda"][0],
        "vocab_size": sizes["loda"][1],
        "loda": {k: v for k, v in results["loda"].items() if k != "predictions"},
        "cls": {k: v for k, v in results["cls"].items() if k != "predictions"},
        "verdict": verdict(results["loda"], results["cls"]),
        "similarity_maps": "similarity_maps.png" if maps_written else None,
        "thresholds": THRESHOLDS,
        "training": summaries,
        "checkpoints": {label: checkpoint_fingerprint(runs[label] / "checkpoint") for label in runs},
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu_start,
        "threads": torch.get_num_threads(),
        "versions": software_versions(),
    }
    write_report(out, report)
    write_json(out / "results.json", report)
    return report


def clear_previous_outputs(out: Path) -> None:
    """Remove what an earlier demo wrote in ``out`` (the names of :data:`OUTPUTS`); leave everything else alone.

    Raises:
        InputError: a folder of one of those names holds something the demo does not write (it is someone else's);
            nothing is removed then.
    """
    for name, expected in OUTPUT_CONTENTS.items():
        folder = out / name
        if folder.is_dir() and not folder.is_symlink():
            foreign = sorted(p.name for p in folder.iterdir() if p.name not in expected and not p.name.startswith("."))
            if foreign:
                raise InputError(f"--out {out}: {folder} holds {', '.join(foreign[:3])}"
                                 f"{', ...' if len(foreign) > 3 else ''}, which simseg demo does not write; --force "
                                 "replaces only the demo's own files: move it or choose another --out")
    for name in OUTPUTS:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def _command_line(args: argparse.Namespace) -> str:
    parts = ["simseg demo", f"--out {args.out}", f"--seed {args.seed}"]
    if args.steps is not None:
        parts.append(f"--steps {args.steps}")
    parts += [flag for flag, on in (("--quick", args.quick), ("--force", args.force)) if on]
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    """Run ``simseg demo``; prints the metrics table and the verdict.

    Returns:
        0 when every threshold is met, 1 otherwise (the report is written either way).

    Raises:
        InputError: ``--steps`` below 1, a ``--seed`` outside 0..MAX_SEED, or an output folder that exists (without
            ``--force``) or cannot be written.
    """
    _check_arguments(args.steps, args.seed)
    out = Path(args.out)
    check_out_dir(out, args.force)
    if args.force and out.is_dir():
        clear_previous_outputs(out)
    base = QUICK_PLAN if args.quick else DEFAULT_PLAN
    plan = replace(base, steps=args.steps) if args.steps is not None else base
    results = run_demo_pipeline(out, plan, seed=args.seed, progress=not args.no_progress,
                                command=_command_line(args))
    print()
    print(metrics_table(results["loda"], results["cls"]))
    print()
    for line in verdict_lines(results["verdict"]):
        print(line)
    passed = all(r["passed"] for r in results["verdict"])
    print(f"\n{'all thresholds met' if passed else 'some thresholds NOT met'}; report: {out / 'report.md'} "
          f"({results['seconds']['total']:.0f} s wall, {results['cpu_seconds']:.0f} s CPU)")
    return 0 if passed else 1
