"""``simseg eval-seg``: zero-shot semantic segmentation on one benchmark, several, or all eight, with reports.

    simseg eval-seg --dataset pascal_voc --data-root data --checkpoint simseg.vit-s.pth --out runs/voc
    simseg eval-seg --dataset all --protocol dense --preset sclip --checkpoint simseg.vit-s.pth --out runs/all
    torchrun --nproc_per_node 8 -m simseg eval-seg --dataset coco_object --checkpoint ckpt/ --out runs/coco

One benchmark: rank 0 prints a per-class table and writes ``metrics.json`` (metrics, the protocol and its
parameters, the preset, the class names, the checkpoint path and sha256, software versions, bad samples),
``per_class_iou.png`` and a few prediction overlays into ``--out``.

Several (``--dataset all`` or ``a,b,c``): the same report per benchmark in ``<out>/<dataset>/``, then
``<out>/summary.md``, ``summary.json`` and ``summary.png``: mIoU per benchmark in the column order of the
open-vocabulary papers (with background VOC21, Context60, COCO-Object; without VOC20, Context59, COCO-Stuff,
Cityscapes, ADE20K), with the protocol, the preset and the checkpoint stamp. With ``all``, a benchmark missing from
the data root is listed as missing; one named explicitly must be there.

Resuming: a benchmark whose ``metrics.json`` in its report folder was made with the same checkpoint (sha256), data
root, image count and limit, protocol parameters, preset, class names and synonyms is not evaluated again
(``reused``), unless ``--recompute``; anything else is evaluated. A report with bad samples is always redone.

A sample that cannot be read is reported, counted and listed; the command then exits with status 1 unless
``--skip-bad`` is given. Label values outside a benchmark's classes stop the run with an error naming the file
and the values: those labels are not the benchmark's.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simseg.app.options import (add_checkpoint_options, add_device_option, add_parallel_options, add_protocol_options,
                                check_at_least, describe_recorded, output_dir, parallel_plan, parse_set,
                                resolve_device, torch_threads)
from simseg.presets import DEFAULT_DENSE_PRESET, DENSE_PRESETS, PRESET_SOURCES
from simseg.segdata import BENCHMARKS

HELP = "zero-shot semantic segmentation on one, several or all eight benchmarks (VOC, Context, COCO, ADE, ...)"

#: ``--preset`` value that keeps the dense protocol's own defaults.
NO_PRESET = "none"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, metavar="all|NAME[,NAME...]",
                        help=f"benchmark(s): all, or one or more of {', '.join(BENCHMARKS)}, comma-separated")
    parser.add_argument("--data-root", default=None,
                        help="folder holding VOCdevkit/, coco_stuff164k/, cityscapes/, ade/ (default: $SIMSEG_DATA)")
    add_checkpoint_options(parser)
    add_protocol_options(parser)
    sources = "; ".join(f"{name}: {source}" for name, source in PRESET_SOURCES.items())
    parser.add_argument("--preset", default=None, choices=[*DENSE_PRESETS, NO_PRESET],
                        help=f"dense protocol: per-benchmark short side, window and background threshold ({sources}; "
                             f"default {DEFAULT_DENSE_PRESET}; {NO_PRESET}: the protocol's own defaults); "
                             "--set overrides single values")
    parser.add_argument("--names-file", default=None, metavar="FILE",
                        help="one benchmark: class names with synonyms, one line per class in label order, names "
                             "separated by commas; a class scores as the max over its names")
    parser.add_argument("--names-dir", default=None, metavar="DIR",
                        help="several benchmarks: a folder of <dataset>.txt names files (benchmarks without one "
                             "use their standard names)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images of each benchmark")
    parser.add_argument("--out", default=None,
                        help="report folder (default: simseg-eval/<dataset> for one benchmark; simseg-eval for "
                             "several, with one subfolder per benchmark)")
    parser.add_argument("--recompute", action="store_true",
                        help="evaluate again even where a matching report exists")
    parser.add_argument("--skip-bad", action="store_true", help="exit 0 even if some samples could not be read")
    parser.add_argument("--num-overlays", type=int, default=4,
                        help="prediction overlays to write per benchmark (default 4)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_parallel_options(parser)
    add_device_option(parser)


def _cell(v: float | None) -> str:
    return f"{v:6.2f}" if v is not None else "   n/a"


def format_table(metrics: dict, title: str) -> str:
    """A plain-text table: one row per class (IoU, Acc), then mIoU / aAcc / mAcc."""
    width = max([len("class")] + [len(n) for n in metrics["per_class"]])
    lines = [title, f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}", "-" * (width + 16)]
    for name, row in metrics["per_class"].items():
        lines.append(f"{name:<{width}}  {_cell(row['IoU'])}  {_cell(row['Acc'])}")
    lines.append("-" * (width + 16))
    for key in ("mIoU", "aAcc", "mAcc"):
        lines.append(f"{key:<{width}}  {_cell(metrics[key])}")
    return "\n".join(lines)


def overlay_writer(out_dir: Path, class_names: list[str], count: int):
    """A prediction callback that writes prediction and ground-truth overlays of the first ``count`` samples.

    Its ``remove()`` deletes the files it wrote, and ``out_dir`` if that leaves it empty (an evaluation that stopped).
    """
    from simseg.segdata import IGNORE_INDEX

    written: list[Path] = []

    def write(index: int, sample_id: str, image: Any, gt: Any, result: Any) -> None:
        import numpy as np

        from simseg.visualize import overlay

        if len(written) >= 2 * count:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        scores = getattr(result, "scores", None)
        # Cityscapes ids hold a city folder ("frankfurt/frankfurt_000000_000294"): one flat file name per sample
        stem = sample_id.replace("/", "_")
        written.append(out_dir / f"{stem}_pred.png")
        overlay(image, np.asarray(result.labels), class_names, scores=scores).save(written[-1])
        # ignored pixels (255) are drawn as background: the overlay only knows class indices
        shown = np.where(gt == IGNORE_INDEX, 0, gt).astype(np.int32)
        written.append(out_dir / f"{stem}_gt.png")
        overlay(image, shown, class_names).save(written[-1])

    def remove() -> None:
        for path in written:
            path.unlink(missing_ok=True)
        _remove_if_empty(out_dir)

    write.remove = remove
    return write


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty, or not there
        pass


# ----------------------------------------------------------------------------------------------- the plan
@dataclass
class _Plan:
    """One benchmark of a run: what it is evaluated with, where its report goes, and whether it is reused."""

    name: str
    title: str
    present: bool
    reason: str = ""
    dataset: Any = None
    params: dict = field(default_factory=dict)
    preset: dict | None = None
    overrides: dict = field(default_factory=dict)
    recorded: dict = field(default_factory=dict)  # the checkpoint's recorded evaluation defaults this run used
    synonyms: list[list[str]] | None = None
    names_file: str | None = None
    report_dir: Path | None = None
    key: dict = field(default_factory=dict)
    reused: dict | None = None  # the matching report, when reused
    stale: str = ""  # why an existing report was not reused
    result: dict | None = None  # the report written by this run (or the reused one)


def resolve_preset(protocol: str, preset: str | None) -> str | None:
    """The dense preset a run uses: the named one, the default one for ``dense``, None for ``none`` or ``simseg``.

    Raises:
        ConfigError: a preset named for the ``simseg`` protocol.
    """
    from simseg.errors import ConfigError

    if protocol != "dense":
        if preset not in (None, NO_PRESET):
            raise ConfigError(f"--preset {preset}: presets set the dense protocol; add --protocol dense")
        return None
    if preset == NO_PRESET:
        return None
    return preset or DEFAULT_DENSE_PRESET


def _names_source(args: argparse.Namespace, name: str) -> Path | None:
    if args.names_file:
        return Path(args.names_file)
    if args.names_dir:
        path = Path(args.names_dir) / f"{name}.txt"
        return path if path.is_file() else None
    return None


def _expected_protocol_info(args: argparse.Namespace, params: dict) -> dict:
    """What :meth:`Segmenter.protocol_info` will report for these settings, known before loading the model; it also
    checks the parameters, so a bad ``--set`` fails before any long work."""
    from simseg.classnames import resolve_templates, templates_name
    from simseg.segment import make_protocol

    templates = resolve_templates(args.templates)
    info = make_protocol(args.protocol, crf=not args.no_crf, **params).info()
    return {**info, "templates": templates_name(templates), "num_templates": len(templates)}


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def stale_reason(report: dict, key: dict, sha256: str | None) -> str | None:
    """Why a stored report cannot stand for a run with ``key`` (None when it can).

    Args:
        report: a ``metrics.json`` read back.
        key: the run's settings (:func:`_plan`'s ``key``: dataset, data root, image count, limit, protocol,
            preset, class names, names).
        sha256: the run's checkpoint sha256 (None for a preset of random weights: never reused).
    """
    if sha256 is None:
        return "the checkpoint is a preset of random weights"
    if (report.get("checkpoint") or {}).get("sha256") != sha256:
        return "another checkpoint"
    for name, value in _jsonable(key).items():
        if report.get(name) != value:
            if isinstance(value, dict) and isinstance(report.get(name), dict):
                old = report[name]
                diff = sorted(k for k in set(value) | set(old) if value.get(k) != old.get(k))
                return f"another {name} ({', '.join(diff)})"
            return f"another {name.replace('_', ' ')}"
    if report.get("num_bad"):
        return "it has bad samples"
    return None


def _read_report(path: Path) -> dict | None:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return report if isinstance(report, dict) else None


def _plan(presence: Any, args: argparse.Namespace, root: Path, out: Path, single: bool, preset: str | None,
          overrides: dict, recorded: dict, sha256: str | None) -> _Plan:
    """Everything about one benchmark that is known before the model is loaded."""
    from simseg.classnames import read_synonym_file
    from simseg.evaluate import evaluation_classes
    from simseg.presets import dense_preset
    from simseg.protocols import benchmark_parameters
    from simseg.segdata import SegmentationBenchmark

    plan = _Plan(presence.name, presence.title, presence.present, presence.reason)
    if not presence.present:
        return plan
    plan.dataset = SegmentationBenchmark(plan.name, root)
    preset_params = dense_preset(preset, plan.name) if preset else {}
    # the paper's per-benchmark settings, then the preset, then the checkpoint's recorded defaults, then --set
    plan.params = benchmark_parameters(plan.name, args.protocol, {**preset_params, **recorded, **overrides})
    plan.preset = {"name": preset, "source": PRESET_SOURCES[preset], "params": preset_params} if preset else None
    plan.overrides = dict(overrides)
    plan.recorded = {"params": {k: v for k, v in recorded.items() if k not in overrides}}
    source = _names_source(args, plan.name)
    if source is not None:
        plan.synonyms = read_synonym_file(source, num_classes=len(plan.dataset.class_names))
        plan.names_file = str(source)
    plan.report_dir = out if single else out / plan.name
    classes, _ = evaluation_classes(plan.dataset.class_names)
    plan.key = {
        "dataset": plan.name,
        "data_root": str(root.resolve()),
        "num_images": len(plan.dataset),
        "limit": args.limit,
        "protocol": _expected_protocol_info(args, plan.params),
        "preset": plan.preset,
        "class_names": classes,
        "names": plan.synonyms,
    }
    if args.recompute:
        return plan
    stored = plan.report_dir / "metrics.json"
    if stored.is_file():
        report = _read_report(stored)
        reason = "it cannot be read" if report is None else stale_reason(report, plan.key, sha256)
        if reason is None:
            plan.reused = report
        else:
            plan.stale = f"{stored} not reused: {reason}"
    return plan


# ----------------------------------------------------------------------------------------------- one benchmark
def _evaluate(plan: _Plan, model: Any, args: argparse.Namespace, stamp: dict, rank: int,
              world_size: int) -> tuple[dict, str]:
    """Evaluate one benchmark; on rank 0 write its report folder. Returns the report and a title for its table."""
    from simseg.app.report import describe_protocol, write_json
    from simseg.evaluate import evaluate_segmentation, evaluation_classes
    from simseg.segdata import LabelValueError
    from simseg.segment import Segmenter
    from simseg.visualize import iou_bar_chart

    dataset, out = plan.dataset, plan.report_dir
    created = rank == 0 and not out.exists()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    classes, offset = evaluation_classes(dataset.class_names)
    segmenter = Segmenter(model, dataset.class_names, protocol=args.protocol, crf=not args.no_crf,
                          templates=args.templates, cache_dir=args.cache_dir, synonyms=plan.synonyms,
                          progress=rank == 0 and not args.no_progress, **plan.params)
    overlays = overlay_writer(out / "overlays", classes, args.num_overlays) if rank == 0 else None
    # consecutive images overlap (CRF calls in worker processes, forwards in lanes): the labels of one at a time
    parallel = parallel_plan(args, str(model.device), segmenter.crf)
    try:
        with torch_threads(parallel["threads"]):
            metrics = evaluate_segmentation(segmenter, dataset, limit=args.limit, rank=rank, world_size=world_size,
                                            on_prediction=overlays if args.num_overlays else None,
                                            progress=not args.no_progress, crf_workers=parallel["crf_workers"],
                                            lanes=parallel["lanes"])
    except LabelValueError:
        # the labels are not this benchmark's: no report, and none of this run's overlays or folders left behind
        if overlays is not None:
            overlays.remove()
        if created:
            _remove_if_empty(out)
        raise
    protocol = segmenter.protocol_info()
    report = {
        **plan.key,
        "title": plan.title,
        "split": "val",
        "num_classes": len(dataset.class_names),
        "mIoU": metrics["mIoU"],
        "aAcc": metrics["aAcc"],
        "mAcc": metrics["mAcc"],
        "per_class_IoU": {name: row["IoU"] for name, row in metrics["per_class"].items()},
        "per_class_Acc": {name: row["Acc"] for name, row in metrics["per_class"].items()},
        "num_evaluated": metrics["num_evaluated"],
        "num_bad": metrics["num_bad"],
        "bad_samples": metrics["bad_samples"],
        "protocol": protocol,
        "overrides": plan.overrides,
        "recorded_defaults_used": plan.recorded,
        "names_file": plan.names_file,
        "background_prepended": bool(offset),
        **stamp,
        "seconds": round(metrics["seconds"], 3),
    }
    preset = f", preset {plan.preset['name']}" if plan.preset else ""
    if rank == 0:
        write_json(out / "metrics.json", report)
        iou_bar_chart(report["per_class_IoU"], out / "per_class_iou.png",
                      f"{plan.name}: mIoU {_cell(metrics['mIoU'])} ({protocol.get('name')}{preset}), "
                      f"{args.checkpoint}")
    title = (f"{plan.name}: {metrics['num_evaluated']}/{metrics['num_images']} images, "
             f"protocol {describe_protocol(protocol)}{preset}, checkpoint {args.checkpoint}")
    return report, title


def _per_class_metrics(report: dict) -> dict:
    """The metrics dict :func:`format_table` reads, from a report."""
    per_class = {name: {"IoU": iou, "Acc": report["per_class_Acc"].get(name)}
                 for name, iou in report["per_class_IoU"].items()}
    return {"per_class": per_class, "mIoU": report["mIoU"], "aAcc": report["aAcc"], "mAcc": report["mAcc"]}


# ----------------------------------------------------------------------------------------------- the summary
def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _per_benchmark_keys(plans: list[_Plan], protocol: str) -> list[str]:
    """Protocol parameters shown per benchmark: those a preset or the paper's per-benchmark defaults set, and any
    that differ between the evaluated benchmarks; the others are shown once."""
    from simseg.protocols import BENCHMARK_DEFAULTS

    keys: list[str] = []
    for plan in plans:
        keys += list((plan.preset or {}).get("params", {}))
        keys += list(BENCHMARK_DEFAULTS.get(plan.name, {}).get(protocol, {}))
    infos = [p.result["protocol"] for p in plans if p.result]
    for k in (infos[0] if infos else {}):
        if any(info.get(k) != infos[0].get(k) for info in infos):
            keys.append(k)
    return list(dict.fromkeys(k for k in keys if k != "name"))


def summary_rows(plans: list[_Plan]) -> list[dict]:
    """One row per benchmark of the run, in the papers' column order."""
    rows = []
    for plan in plans:
        row: dict[str, Any] = {"name": plan.name, "title": plan.title}
        if not plan.present:
            row.update(status="missing", reason=plan.reason)
        elif plan.result is None:
            row.update(status="pending")
        else:
            r = plan.result
            row.update(status="reused" if plan.reused is not None else "computed", mIoU=r["mIoU"], aAcc=r["aAcc"],
                       mAcc=r["mAcc"], num_images=r["num_images"], num_evaluated=r["num_evaluated"],
                       num_bad=r["num_bad"], seconds=r.get("seconds"), protocol=r["protocol"],
                       preset=r.get("preset"), names_file=r.get("names_file"),
                       report=f"{plan.name}/metrics.json")
        rows.append(row)
    return rows


def _average(rows: list[dict]) -> tuple[float | None, int]:
    values = [r["mIoU"] for r in rows if r.get("mIoU") is not None]
    return (sum(values) / len(values) if values else None), len(values)


def format_summary(rows: list[dict], header: dict, per_benchmark: list[str]) -> str:
    """The summary as markdown: the mIoU row in the papers' column order, then one line per benchmark."""
    mean, count = _average(rows)
    avg = _fmt(mean) if count == len(rows) or mean is None else f"{_fmt(mean)} ({count} of {len(rows)})"
    cells = []
    for r in rows:
        cells.append(r["status"] if r["status"] in ("missing", "pending") else _fmt(r["mIoU"]))
    lines = [
        "# Zero-shot semantic segmentation, mIoU (%)",
        "",
        "| checkpoint | " + " | ".join(r["title"] for r in rows) + " | Avg |",
        "|---|" + "---:|" * (len(rows) + 1),
        f"| {header['model']} | " + " | ".join(cells) + f" | {avg} |",
        "",
        f"- protocol: {header['protocol']}",
        f"- preset: {header['preset']}",
        f"- checkpoint: {header['checkpoint']}",
        f"- software: {header['software']}",
        "",
        "| benchmark | mIoU | aAcc | mAcc | images | status | " + " | ".join(per_benchmark + ["names"]) + " |",
        "|---|---:|---:|---:|---:|---|" + "---|" * (len(per_benchmark) + 1),
    ]
    for r in rows:
        if r["status"] in ("missing", "pending"):
            status = f"missing: {r['reason']}" if r["status"] == "missing" else "pending"
            lines.append(f"| {r['title']} | | | | | {status} |" + " |" * (len(per_benchmark) + 1))
            continue
        images = f"{r['num_evaluated']}/{r['num_images']}"
        status = r["status"] + (f" ({r['num_bad']} bad)" if r["num_bad"] else "")
        values = [str(r["protocol"].get(k, "")) for k in per_benchmark] + [r.get("names_file") or "standard"]
        lines.append(f"| {r['title']} | {_fmt(r['mIoU'])} | {_fmt(r['aAcc'])} | {_fmt(r['mAcc'])} | {images} | "
                     f"{status} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def summary_chart(rows: list[dict], path: Path, title: str) -> None:
    """mIoU per benchmark as bars in the papers' column order; missing or pending benchmarks are labelled so."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(rows) + 1.5), 3.6))
    try:
        xs = range(len(rows))
        values = [r.get("mIoU") for r in rows]
        ax.bar(xs, [v or 0.0 for v in values], color="#4878cf")
        for x, r, v in zip(xs, rows, values):
            text = r["status"] if r["status"] in ("missing", "pending") else _fmt(v)
            ax.text(x, (v or 0.0) + 1.0, text, ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([r["title"] for r in rows], fontsize=8, rotation=20)
        ax.set_ylim(0, 105)
        ax.set_ylabel("mIoU (%)")
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def write_summary(out: Path, plans: list[_Plan], args: argparse.Namespace, stamp: dict, preset: str | None) -> str:
    """Write ``summary.md``, ``summary.json`` and ``summary.png`` of the run so far; return the markdown."""
    from simseg.app.report import short_sha, write_json
    from simseg.files import atomic_write_text

    rows = summary_rows(plans)
    per_benchmark = _per_benchmark_keys(plans, args.protocol)
    infos = [r["protocol"] for r in rows if "protocol" in r]
    shared = {k: v for k, v in (infos[0] if infos else {}).items() if k not in per_benchmark and k != "name"}
    protocol_line = f"{args.protocol} ({', '.join(f'{k}={v}' for k, v in shared.items())})" if shared else args.protocol
    overrides = parse_set(args.params)
    preset_line = f"{preset}: {PRESET_SOURCES[preset]}" if preset else "none (the protocol's own parameters)"
    recorded = next((p.recorded.get("params") for p in plans if p.recorded.get("params")), {})
    if recorded:  # they replace the preset's values of the same names: say so beside it
        preset_line += "; the checkpoint's recorded defaults " + ", ".join(f"{k}={v}" for k, v in recorded.items())
    if overrides:
        preset_line += "; --set " + ", ".join(f"{k}={v}" for k, v in overrides.items())
    checkpoint = stamp["checkpoint"]
    versions = stamp.get("versions", {})
    header = {
        "model": f"{checkpoint['path']} ({short_sha(checkpoint)})",
        "protocol": protocol_line,
        "preset": preset_line,
        "checkpoint": f"{checkpoint['path']}, sha256 {checkpoint.get('sha256') or 'n/a (preset, random weights)'}",
        "software": ", ".join(f"{k} {v}" for k, v in versions.items() if v),
    }
    markdown = format_summary(rows, header, per_benchmark)
    mean, count = _average(rows)
    summary = {
        "metric": "mIoU",
        "order": [r["name"] for r in rows],
        "benchmarks": rows,
        "average_mIoU": mean,
        "average_over": count,
        "protocol": args.protocol,
        "shared_protocol_parameters": shared,
        "per_benchmark_parameters": per_benchmark,
        "preset": {"name": preset, "source": PRESET_SOURCES[preset]} if preset else None,
        "recorded_defaults_used": recorded,
        "overrides": overrides,
        "limit": args.limit,
        "data_root": next((p.key["data_root"] for p in plans if p.key), None),
        **stamp,
    }
    atomic_write_text(out / "summary.md", markdown)
    write_json(out / "summary.json", summary)
    summary_chart(rows, out / "summary.png",
                  f"mIoU, {args.protocol}" + (f" preset {preset}" if preset else "") + f", {header['model']}")
    return markdown


# ----------------------------------------------------------------------------------------------- the command
def _check_names_options(args: argparse.Namespace, names: list[str], single: bool) -> None:
    from simseg.errors import ConfigError, InputError

    if args.names_file and args.names_dir:
        raise ConfigError("--names-file and --names-dir: give one (a file for one benchmark, a folder for several)")
    if args.names_file and not single:
        raise ConfigError("--names-file: applies to one benchmark; for several, use --names-dir DIR holding "
                          "<dataset>.txt files")
    if args.names_file and not Path(args.names_file).is_file():
        what = "is a folder (--names-dir takes one)" if Path(args.names_file).is_dir() else "file not found"
        raise InputError(f"--names-file {args.names_file}: {what}")
    if args.names_dir:
        folder = Path(args.names_dir)
        if not folder.is_dir():
            what = "is a file (--names-file takes one)" if folder.exists() else "folder not found"
            raise InputError(f"--names-dir {folder}: {what}")
        unknown = sorted(p.name for p in folder.glob("*.txt") if p.stem not in BENCHMARKS)
        if unknown:
            raise InputError(f"--names-dir {folder}: {', '.join(unknown)} name no benchmark; files are "
                             f"<dataset>.txt with <dataset> one of {', '.join(BENCHMARKS)}")


def run(args: argparse.Namespace) -> int:
    """Evaluate, print, write the reports; exit 1 on bad samples (unless ``--skip-bad``)."""
    import simseg
    from simseg.app.report import bad_samples_exit, provenance
    from simseg.checkpoint import evaluation_defaults
    from simseg.protocols import DEFAULT_PROTOCOL
    from simseg.distributed import all_gather_object, get_local_rank, get_rank, get_world_size, init_distributed
    from simseg.errors import InputError
    from simseg.progress import progress_bar
    from simseg.segdata import parse_benchmark_selection, resolve_data_root, select_benchmarks

    check_at_least("--limit", args.limit, 1)
    check_at_least("--num-overlays", args.num_overlays, 0)
    check_at_least("--workers", args.workers, 1)
    names, explicit = parse_benchmark_selection(args.dataset)
    single = explicit and len(names) == 1
    _check_names_options(args, names, single)
    # the protocol: --protocol, else the checkpoint's recorded one, else the paper's (a new Namespace: args stays)
    evaluation = evaluation_defaults(args.checkpoint)
    protocol = args.protocol or evaluation.get("protocol") or DEFAULT_PROTOCOL
    used = {"protocol": protocol} if args.protocol is None and evaluation.get("protocol") else {}
    args = argparse.Namespace(**{**vars(args), "protocol": protocol})
    recorded = dict((evaluation.get("protocols") or {}).get(protocol, {}))
    preset = resolve_preset(args.protocol, args.preset)
    overrides = parse_set(args.params)
    root = resolve_data_root(args.data_root)
    presence = select_benchmarks(root, args.dataset)
    if not any(p.present for p in presence):  # a wrong --data-root, not a run with nothing to report
        raise InputError(f"{root}: no benchmark found; is it the data root (the folder holding VOCdevkit/, "
                         "coco_stuff164k/, cityscapes/, ade/)?")
    distributed = init_distributed()
    rank, world_size = get_rank(), get_world_size()
    device = resolve_device(args.device, get_local_rank() if distributed else None)
    out = output_dir(Path(args.out) if args.out else Path("simseg-eval") / (names[0] if single else ""))
    stamp = provenance(args.checkpoint, device, world_size=world_size)
    sha256 = stamp["checkpoint"].get("sha256")
    plans = [_plan(p, args, root, out, single, preset, overrides, recorded, sha256) for p in presence]
    for plan in plans:
        plan.recorded.update(used)
    note = describe_recorded(args.checkpoint, {**used, "params": {k: v for k, v in recorded.items()
                                                                  if k not in overrides}}, "--protocol and --set")
    if note and rank == 0:
        print(note)
    # rank 0's reading of the report folders decides for every rank, so all ranks evaluate the same benchmarks
    decided = all_gather_object([(p.reused, p.stale) for p in plans])[0]
    for plan, (reused, stale) in zip(plans, decided):
        plan.reused, plan.stale = reused, stale
    main = rank == 0
    todo = [p for p in plans if p.present]
    model = None
    if any(p.reused is None for p in todo):
        model = simseg.load_model(args.checkpoint, tokenizer=args.tokenizer, device=device)
    bar = progress_bar(todo, desc="benchmarks", unit="benchmark", disable=not main or single or args.no_progress)
    num_bad = 0
    for plan in bar:
        bar.set_postfix_str(plan.name)
        if plan.stale and main:
            bar.write(plan.stale)
        where = plan.report_dir / "metrics.json"
        if plan.reused is not None:
            plan.result = plan.reused
            title = f"{plan.name}: reused {where} (same checkpoint, data, protocol and classes; --recompute redoes it)"
            line = f"{plan.title} ({plan.name}): mIoU {_fmt(plan.result['mIoU'])}, reused {where}"
        else:
            plan.result, title = _evaluate(plan, model, args, stamp, rank, world_size)
            line = (f"{plan.title} ({plan.name}): mIoU {_fmt(plan.result['mIoU'])}, "
                    f"{plan.result['num_evaluated']}/{plan.result['num_images']} images, "
                    f"{plan.result['seconds']:.1f} s -> {where}")
        num_bad += plan.result["num_bad"]
        if main and single:
            print(format_table(_per_class_metrics(plan.result), title))
            sha = stamp["checkpoint"]["sha256"]
            print(f"checkpoint sha256: {sha if sha else 'n/a (preset)'}")
            print(f"report: {where}" + (" (reused)" if plan.reused is not None else ""))
        elif main:
            bar.write(line)
            write_summary(out, plans, args, stamp, preset)  # after each benchmark: a stopped run keeps its table
    bar.close()
    if main and not single:
        for plan in plans:
            if not plan.present:
                print(f"{plan.title} ({plan.name}): missing: {plan.reason}")
        print((out / "summary.md").read_text(encoding="utf-8"), end="")
        print(f"summary: {out / 'summary.md'}, {out / 'summary.json'}, {out / 'summary.png'}")
    return bad_samples_exit(num_bad, f"{num_bad} bad sample(s), listed in the report(s)", args.skip_bad)
