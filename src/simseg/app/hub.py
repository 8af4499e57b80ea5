"""``simseg push-to-hub``: upload a checkpoint to the Hugging Face Hub with a model card."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from simseg.errors import InputError

HELP = "upload a checkpoint (weights, config, tokenizer, model card, reports) to the Hugging Face Hub"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT",
                        help="simseg checkpoint folder (its onnx/ export goes along), original .pth, "
                             "or hf-hub:ORG/NAME")
    parser.add_argument("repo_id", metavar="ORG/NAME", help="the Hub repository (created if it does not exist)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", default=None, help="branch to commit to (default: main)")
    parser.add_argument("--message", default=None, help="commit message")
    parser.add_argument("--license", default="mit", help="the model card's license field (default: mit)")
    parser.add_argument("--metrics", action="append", default=[], metavar="FILE",
                        help="a metrics.json of eval-seg / eval-retrieval to upload and tabulate (repeatable)")
    parser.add_argument("--training-config", default=None, metavar="YAML",
                        help="the training run's config.yaml for the card (default: the run folder's, if CKPT is "
                             "in one)")
    parser.add_argument("--tokenizer", default=None, help="folder with vocab.txt, for an original .pth")


def _checkpoint_folder(checkpoint: str, staging: Path, tokenizer: str | None) -> Path:
    """The simseg folder to upload from: the checkpoint folder itself, a Hub snapshot, or an original ``.pth``
    converted into ``staging``."""
    from simseg.checkpoint import _read_own_config, default_tokenizer, file_sha256, import_original, save_model
    from simseg.checkpoint_format import CONFIG_NAME
    from simseg.config import preset_names
    from simseg.hub import UPLOAD_PATTERNS, is_hub_name, resolve
    from simseg.tokenizer import load_tokenizer

    if is_hub_name(checkpoint):
        return resolve(checkpoint, UPLOAD_PATTERNS)
    path = Path(checkpoint)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            export = " (an ONNX export: push the checkpoint folder it was made from, with the export in its onnx/)" \
                if (path / "simseg_onnx.json").is_file() else ""
            raise InputError(f"{path}: not a simseg checkpoint folder (no {CONFIG_NAME}){export}")
        _read_own_config(path)  # a training run's folder or another tool's config: one line naming it, before staging
        return path
    if path.is_file():
        model = import_original(path, load_tokenizer(tokenizer) if tokenizer else default_tokenizer())
        return save_model(model, staging / "converted", meta={"converted_from": path.name,
                                                               "source_sha256": file_sha256(path)})
    if checkpoint in preset_names():
        raise InputError(f"{checkpoint}: a preset has random weights; train or convert a model and push its folder")
    raise InputError(f"{checkpoint}: checkpoint not found")


def run(args: argparse.Namespace) -> int:
    """Stage the checkpoint's files with a fresh model card and upload them in one commit."""
    from simseg.export import MANIFEST_NAME, find_onnx_folder
    from simseg.hub import (CARD_NAME, check_license, check_repo_id, find_training_config, hub_name, is_simseg_card,
                            read_config, stage_folder, store_metrics, upload_folder, upload_ready, write_model_card)

    check_repo_id(args.repo_id)
    check_license(args.license)
    token = upload_ready(args.repo_id)  # offline or no token: one line before any copying
    training = None
    if args.training_config:
        if not Path(args.training_config).is_file():
            raise InputError(f"--training-config {args.training_config}: file not found")
        training = read_config(args.training_config, label=f"--training-config {args.training_config}")
    with tempfile.TemporaryDirectory(prefix="simseg-push-") as tmp:
        tmp = Path(tmp)
        folder = _checkpoint_folder(args.checkpoint, tmp, args.tokenizer)
        if (folder / "onnx" / MANIFEST_NAME).is_file():  # an export of other weights must not go up beside these
            find_onnx_folder(folder, label=str(args.checkpoint))
        staged = stage_folder(folder, tmp / "upload")
        store_metrics(staged, args.metrics)
        card = staged / CARD_NAME
        if card.exists() and not is_simseg_card(card):
            print(f"keeping the model card {CARD_NAME} found in {folder} (it was not written by simseg)")
        else:
            if training is None and not str(args.checkpoint).startswith("hf-hub:"):
                training = find_training_config(folder)
            write_model_card(staged, repo_id=args.repo_id, license=args.license, training_config=training,
                             overwrite=True, revision=args.revision)
        files = sorted(p for p in staged.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in files)
        print(f"uploading {len(files)} files ({size / 1e6:.1f} MB) to {args.repo_id}"
              + (" (private)" if args.private else "") + ": " + ", ".join(p.relative_to(staged).as_posix()
                                                                          for p in files))
        url = upload_folder(staged, args.repo_id, private=args.private, revision=args.revision,
                            commit_message=args.message, token=token)
    print(f"done: {url}")
    name = hub_name(args.repo_id, args.revision)
    print(f"load it with: simseg.load_model(\"{name}\") or --checkpoint {name}")
    return 0
