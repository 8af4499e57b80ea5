"""``simseg export``: a checkpoint's towers as ONNX graphs for ONNX Runtime (``simseg segment --backend onnx``)."""

from __future__ import annotations

import argparse

from simseg.app.options import check_at_least, empty_output_folder, output_dir
from simseg.errors import InputError

HELP = "export a checkpoint's image and text towers as ONNX graphs (run them with --backend onnx)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="simseg checkpoint folder, original .pth, hf-hub:ORG/NAME")
    parser.add_argument("out_dir", metavar="OUT_DIR",
                        help="folder for the graphs and simseg_onnx.json (CKPT/onnx keeps them with the checkpoint)")
    parser.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default: onnx)")
    parser.add_argument("--image-size", dest="image_sizes", type=int, action="append", default=None, metavar="S",
                        help="square input size of an image graph, repeatable (default: the input size of the "
                             "protocol segment uses with this checkpoint: 288, the simseg protocol's, unless it "
                             "records other evaluation defaults; add the dense protocol's crop size, e.g. 448, to run "
                             "it too)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 18)")
    parser.add_argument("--tokenizer", default=None, help="folder with vocab.txt (default: the checkpoint's)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip running the graphs in ONNX Runtime against torch after the export")
    parser.add_argument("--force", action="store_true", help="write into a non-empty output folder")


def _default_size(checkpoint: str) -> tuple[int, str | None]:
    """The input size ``segment`` runs this checkpoint at by default, and what says so when its recorded evaluation
    defaults chose it (None: the paper's 288)."""
    from simseg.app.options import resolve_protocol
    from simseg.checkpoint import evaluation_defaults
    from simseg.protocols import make_params

    name, params, used = resolve_protocol(None, {}, evaluation_defaults(checkpoint))
    made = make_params(name, **params)
    size = int(made.input_size if name == "simseg" else made.crop_size)
    return size, (f"image size {size}: the {name} protocol's, recorded in {checkpoint} (--image-size to choose)"
                  if used.get("protocol") or used.get("params") else None)


def run(args: argparse.Namespace) -> int:
    """Export, check with onnx.checker and against torch in ONNX Runtime, print the files and the differences."""
    from simseg.checkpoint import checkpoint_fingerprint, load_model
    from simseg.export import DEFAULT_OPSET, MANIFEST_NAME, export_onnx

    out = empty_output_folder(args.out_dir, args.force)
    if args.opset is not None and not 14 <= args.opset <= 23:
        raise InputError(f"--opset {args.opset}: choose an opset from 14 to 23")
    for size in args.image_sizes or []:
        check_at_least("--image-size", size, 1)
    model = load_model(args.checkpoint, tokenizer=args.tokenizer)
    for size in args.image_sizes or []:
        if size % model.patch_size:
            raise InputError(f"--image-size {size}: must be a multiple of the patch size {model.patch_size} of the "
                             "model")
    output_dir(out, "OUT_DIR")  # an unwritable folder fails here, in one line, not inside the exporter
    sizes = args.image_sizes
    if not sizes:
        default, note = _default_size(args.checkpoint)
        sizes = [default]
        if note:
            print(note)
    fingerprint = checkpoint_fingerprint(args.checkpoint)
    source = fingerprint if fingerprint.get("sha256") else {"path": str(args.checkpoint)}
    manifest = export_onnx(model, out, input_sizes=sizes, opset=args.opset or DEFAULT_OPSET,
                           source=source, verify=not args.no_verify)
    files = [(g["file"], g["bytes"]) for g in manifest["image"]["graphs"].values()]
    files.append((manifest["text"]["file"], manifest["text"]["bytes"]))
    print(f"wrote {out}: " + ", ".join(f"{name} ({size / 1e6:.1f} MB)" for name, size in files)
          + f", {MANIFEST_NAME}" + (", tokenizer/" if manifest["tokenizer"] else " (no tokenizer: pass --tokenizer)"))
    print(f"image graphs: input (batch, 3, S, S) for S in {manifest['image']['sizes']}, outputs patch_tokens "
          f"(batch, N, {manifest['embed_dim']}) and image_embedding; text graph: input_ids and attention_mask "
          f"(batch, length), output text_embedding; opset {manifest['opset']}, checked by onnx.checker")
    verified = manifest.get("verified")
    if verified:
        worst = max(verified["max_abs_diff"].values())
        print(f"ONNX Runtime vs torch: max |difference| {worst:.1e} (tolerance {verified['tolerance']:g}); "
              f"run it with: simseg segment IMG --checkpoint {out} --backend onnx ...")
    return 0
