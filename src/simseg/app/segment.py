"""``simseg segment``: segment your own images with any class names; label PNGs, overlays with legends, a report."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from simseg.app.options import (add_checkpoint_options, add_device_option, add_parallel_options, add_protocol_options,
                                check_at_least, describe_recorded, output_dir, parallel_plan, parse_set, resolve_device,
                                resolve_protocol, torch_threads)
from simseg.errors import InputError, SimSegError

HELP = "segment your own images with any list of class names"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMG", help="image files to segment")
    parser.add_argument("--classes", default=None, help='comma-separated class names, e.g. "cat,dog,grass"')
    parser.add_argument("--classes-file", default=None, help="text file with class names (one per line or commas)")
    add_checkpoint_options(parser)
    add_protocol_options(parser)
    parser.add_argument("--out", required=True, help="output folder for <stem>_labels.png and <stem>_overlay.png")
    parser.add_argument("--backend", default="torch", choices=["torch", "onnx"],
                        help="torch (default), or onnx: the towers of a 'simseg export' folder in ONNX Runtime")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (on a terminal it redraws in place; in a log, a line every 30 s)")
    add_parallel_options(parser)
    add_device_option(parser)


def output_stems(paths: Sequence[str]) -> list[str]:
    """File stems for the outputs, made unique when two inputs share a name (``a/x.jpg``, ``b/x.png``)."""
    stems: list[str] = []
    used: set[str] = set()
    for p in paths:
        stem = Path(p).stem or "image"
        candidate, n = stem, 2
        while candidate in used:
            candidate, n = f"{stem}_{n}", n + 1
        used.add(candidate)
        stems.append(candidate)
    return stems


def load_segmenter(args: argparse.Namespace, classes: list[str], protocol: str, params: dict, device: Any):
    """The model and its Segmenter. With the torch backend on the CPU, the paper's protocol and a checkpoint folder,
    a traced image tower in the cache serves first (:mod:`simseg.traced`: neither timm nor the weights file is
    read); otherwise the model is loaded for images only (no text tower), which serves when the class embeddings are
    cached, and failing that it is loaded whole. A model loaded the ordinary way then leaves its trace for the next
    start."""
    import simseg
    from simseg.errors import TextTowerAbsentError
    from simseg.segment import Segmenter

    def segmenter(model):
        return Segmenter(model, classes, protocol=protocol, crf=not args.no_crf, templates=args.templates,
                         cache_dir=args.cache_dir, progress=not args.no_progress, **params)

    def build(text: bool):
        model = simseg.load_model(args.checkpoint, tokenizer=args.tokenizer, device=device, backend=args.backend,
                                  text=text)
        return model, segmenter(model)

    traceable = (args.backend == "torch" and str(device) == "cpu" and protocol == "simseg"
                 and Path(args.checkpoint).is_dir())
    traced = None
    if traceable:
        from simseg.embeddings import cache_folder
        from simseg.protocols import make_params
        from simseg.traced import load_traced_model

        cache = cache_folder(args.cache_dir)
        size = make_params(protocol, **params).input_size
        traced = load_traced_model(args.checkpoint, size, cache, tokenizer=args.tokenizer)
        if traced is not None:
            try:
                return traced, segmenter(traced)
            except TextTowerAbsentError:  # these class names are not cached yet
                pass
    built = None
    if args.backend == "torch":
        # the warnings of an attempt that falls back would be given twice: hold them until it is known to serve
        with warnings.catch_warnings(record=True) as held:
            warnings.simplefilter("always")
            try:
                built = build(text=False)
            except TextTowerAbsentError:  # the class embeddings are not cached yet: they need the text tower
                built = None
        if built is not None:
            for w in held:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if built is None:
        built = build(text=True)
    if traceable and traced is None:  # a valid trace that only lacked these class names stays as it is
        _leave_trace(built[0], args.checkpoint, size, cache)
    return built


def _leave_trace(model: Any, checkpoint: str, size: int, cache: Path) -> None:
    """Write the model's traced image tower for the next start; a cache that cannot be written costs only that."""
    from simseg.traced import save_traced_tower

    if cache.exists() and not cache.is_dir():  # the class-embedding cache has said so already: one warning
        return
    try:
        save_traced_tower(model, checkpoint, size, cache)
    except (OSError, SimSegError) as e:
        warnings.warn(f"{cache}: the traced image tower for a quick start could not be written ({e})")


def _write_png(image: Any, path: Path) -> None:
    """Write an output PNG atomically (no half-written file after a kill); an unwritable path (a folder of that name,
    a read-only file, a full disk) is one error naming the file."""
    import io

    from simseg.files import atomic_write_bytes

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as e:
        raise InputError(f"{path}: cannot write ({e.strerror or e})") from None


def run(args: argparse.Namespace) -> int:
    """Write a label PNG and an overlay per image, print the classes found, and write ``segment.json``.

    ``segment.json`` holds per image the classes found with their scores and the image-level scores of every class,
    plus the protocol and its parameters, the checkpoint (path and sha256) and the software versions. The protocol
    is the checkpoint's recorded evaluation default where it has one (under ``--protocol`` / ``--set``), else the
    paper's.

    Returns:
        0 when every image was segmented, 1 when any could not be read or segmented (each is reported by name).
    """
    from simseg.app.report import describe_protocol, provenance, short_sha, write_json
    from simseg.checkpoint import evaluation_defaults
    from simseg.classnames import parse_class_list, read_class_file
    from simseg.images import load_image
    from simseg.progress import progress_bar
    from simseg.visualize import label_image, overlay

    if (args.classes is None) == (args.classes_file is None):
        raise InputError("give the class names with exactly one of --classes or --classes-file")
    classes = read_class_file(args.classes_file) if args.classes_file else parse_class_list(args.classes)
    if len(classes) > 256:
        source = args.classes_file or "--classes"
        raise InputError(f"{source}: {len(classes) - 1} classes; a palette label PNG holds at most 255 (plus "
                         "background)")
    check_at_least("--workers", args.workers, 1)  # before loading a model: fail fast
    protocol, params, recorded = resolve_protocol(args.protocol, parse_set(args.params),
                                                  evaluation_defaults(args.checkpoint))
    if protocol == "simseg" and not args.no_crf:
        from simseg.crf import require_densecrf

        require_densecrf()  # before loading a model: fail fast
    device = resolve_device(args.device)
    out = output_dir(args.out)
    model, segmenter = load_segmenter(args, classes, protocol, params, device)
    if args.backend == "onnx":
        model.require_input_size(segmenter.protocol.input_size)  # one line now, not one per image
    info = segmenter.protocol_info()
    stamp = provenance(args.checkpoint, device, backend=args.backend, model=model)
    note = describe_recorded(args.checkpoint, recorded, "--protocol and --set")
    if note:
        print(note)
    print(f"protocol {describe_protocol(info)}; checkpoint {args.checkpoint} (sha256 {short_sha(stamp['checkpoint'])})")

    records: list[dict[str, Any]] = []
    failed = 0
    todo = list(zip(args.images, output_stems(args.images)))
    # the bar goes to stderr, the per-image lines to stdout: each stays readable when one of them is redirected
    bar = progress_bar(todo, desc="segment", unit="img", disable=args.no_progress or len(todo) < 2)
    # several images overlap (CRF calls in worker processes, forwards in lanes): the same labels as one at a time
    plan = parallel_plan(args, device, segmenter.crf, images=len(todo))
    if args.backend != "torch":  # ONNX Runtime runs its own threads: one lane feeds it
        plan = {**plan, "lanes": 1, "threads": 0}
    loaded: list[Any] = []  # the images in flight, oldest first

    def images():
        for path, _ in todo:
            try:
                image = load_image(path)
            except SimSegError as e:
                loaded.append(None)
                yield e  # passes through the pipeline in its place
                continue
            loaded.append(image)
            yield image

    with torch_threads(plan["threads"]):
        results = segmenter.segment_many(images(), crf_workers=plan["crf_workers"], lanes=plan["lanes"],
                                         return_exceptions=True)
        for (path, stem), result in zip(bar, results):
            image = loaded.pop(0)
            try:
                if isinstance(result, SimSegError):
                    raise result
                _write_png(label_image(result.labels), out / f"{stem}_labels.png")
                _write_png(overlay(image, result.labels, result.class_names, scores=result.scores),
                           out / f"{stem}_overlay.png")
            except SimSegError as e:
                failed += 1
                # a read error names the image already (once is enough); another (an output) gets its name
                named = str(e).startswith(f"{path}: ")
                bar.write(f"error: {e}" if named else f"{path}: error: {e}", file=sys.stderr)
                records.append({"image": str(path), "error": str(e)})
                continue
            found = ", ".join(f"{name} {score:.3f}" for name, score in result.found) or "nothing (all background)"
            bar.write(f"{path}: {found}", file=sys.stdout)
            records.append({
                "image": str(path),
                "labels": f"{stem}_labels.png",
                "overlay": f"{stem}_overlay.png",
                "size": [image.width, image.height],
                "found": [{"class": name, "score": score} for name, score in result.found],
                "scores": {name: float(v) for name, v in zip(result.class_names, result.scores)},
                "details": result.details,
            })
    bar.close()
    write_json(out / "segment.json", {"classes": segmenter.class_names, "protocol": info,
                                      "recorded_defaults_used": recorded, **stamp, "images": records,
                                      "num_failed": failed})
    if failed:
        print(f"{failed} of {len(args.images)} image(s) failed", file=sys.stderr)
    return 1 if failed else 0
