"""``simseg info`` and ``simseg convert-checkpoint``: look into a checkpoint, import a released one."""

from __future__ import annotations

import argparse

from simseg.app.options import empty_output_folder

INFO_HELP = "print a checkpoint's or preset's config and parameter counts"
CONVERT_HELP = "convert an original SimSeg .pth checkpoint to the simseg format"


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="simseg checkpoint folder, original .pth, preset name, hf-hub:ORG/NAME, or "
                                           "an ONNX export folder")
    parser.add_argument("--tokenizer", default=None, help="folder with vocab.txt (or a Hugging Face name)")


def _run_onnx_info(args: argparse.Namespace) -> int:
    """Print what an ONNX export folder holds (its graphs checked as ``--backend onnx`` checks them)."""
    from omegaconf import OmegaConf

    from simseg.checkpoint import checkpoint_fingerprint, load_model

    model = load_model(args.checkpoint, tokenizer=args.tokenizer, backend="onnx")
    fp = checkpoint_fingerprint(args.checkpoint, backend="onnx")
    manifest = model.manifest
    print(f"checkpoint: {args.checkpoint}")
    print(f"format: ONNX export (simseg_onnx.json sha256 {fp['sha256']}; run it with --backend onnx)")
    print(f"exported from weights sha256: {fp.get('source_weights_sha256') or 'not recorded'}")
    print("config:")
    print("  " + OmegaConf.to_yaml(OmegaConf.create(model.config)).replace("\n", "\n  ").rstrip())
    print(f"image sizes: {', '.join(map(str, model.image_sizes))} (patch {model.patch_size})")
    print(f"temperature: {float(model.temperature()):.5f}")
    print(f"tokenizer: {'none' if model.tokenizer is None else f'{model.tokenizer.vocab_size} tokens'}")
    print("graphs:")
    for entry in [*manifest["image"]["graphs"].values(), manifest["text"]]:
        print(f"  {entry['file']:<18}{(model.folder / entry['file']).stat().st_size:>14,} bytes")
    return 0


def run_info(args: argparse.Namespace) -> int:
    """Print the config, sizes and parameter counts of a checkpoint."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from simseg.checkpoint import CONFIG_NAME, checkpoint_fingerprint, evaluation_defaults, load_model
    from simseg.export import MANIFEST_NAME
    from simseg.model import parameter_counts

    path = Path(args.checkpoint)
    if path.is_dir() and (path / MANIFEST_NAME).is_file() and not (path / CONFIG_NAME).is_file():
        return _run_onnx_info(args)
    model = load_model(args.checkpoint, tokenizer=args.tokenizer)
    recorded = evaluation_defaults(args.checkpoint)
    print(f"checkpoint: {args.checkpoint}")
    fp = checkpoint_fingerprint(args.checkpoint)
    if fp.get("sha256"):
        print(f"sha256: {fp['sha256']}")
    print("config:")
    print("  " + OmegaConf.to_yaml(OmegaConf.create(model.config)).replace("\n", "\n  ").rstrip())
    print(f"image size: {model.image_size} (patch {model.patch_size})")
    print(f"temperature: {float(model.temperature().detach()):.5f}")
    print(f"tokenizer: {'none' if model.tokenizer is None else f'{model.tokenizer.vocab_size} tokens'}")
    if recorded:
        print("evaluation defaults (used by segment, eval-seg, eval-retrieval and serve unless overridden):")
        print("  " + OmegaConf.to_yaml(OmegaConf.create(recorded)).replace("\n", "\n  ").rstrip())
    else:
        print("evaluation defaults: the paper's (none recorded)")
    print("parameters:")
    for k, v in parameter_counts(model).items():
        print(f"  {k:<14}{v:>14,}")
    return 0


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="original SimSeg checkpoint (simseg.vit-s.pth / simseg.vit-b.pth)")
    parser.add_argument("out_dir", help="folder to write the simseg checkpoint into")
    parser.add_argument("--tokenizer", default=None,
                        help="folder with the BERT vocab.txt to store beside the weights (default: bert-base-uncased)")
    parser.add_argument("--force", action="store_true", help="overwrite a non-empty output folder")


def run_convert(args: argparse.Namespace) -> int:
    """Import an original checkpoint (every key checked) and save it in the simseg format."""
    from simseg.checkpoint import default_tokenizer, file_sha256, import_original, save_model
    from simseg.model import parameter_counts
    from simseg.tokenizer import load_tokenizer

    out = empty_output_folder(args.out_dir, args.force)
    tok = load_tokenizer(args.tokenizer) if args.tokenizer else default_tokenizer()
    model = import_original(args.src, tok)
    save_model(model, out, meta={"converted_from": str(args.src), "source_sha256": file_sha256(args.src)})
    counts = parameter_counts(model)
    print(f"wrote {out} ({counts['total']:,} parameters; tokenizer: {'saved' if tok else 'none, pass --tokenizer'})")
    return 0
