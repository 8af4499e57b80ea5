"""Bad inputs across every command, as a new user would give them: each ends with the right exit status, one complete
line on stderr naming the file or key at fault, and no traceback.

Each row of :data:`CASES` is a command line, the files it needs (created in the row's own folder), the exit status
and a piece of the error line. ``$d`` in an argument is the row's folder, ``$ck`` a good checkpoint folder of the tiny
model, ``$vocab`` its vocabulary folder and ``$img`` a good JPEG. Rows run in-process through
:func:`simseg.app.cli.main`; a few run through the installed ``simseg`` executable as well.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import string
import subprocess
import traceback
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

from simseg.app.cli import COMMANDS, main
from tests.test_properties import bomb_png


# ------------------------------------------------------------------------------------------------ file makers
def _image_bytes(fmt: str, size: tuple[int, int] = (24, 20), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


JPEG = _image_bytes("JPEG")
PNG = _image_bytes("PNG")
GIF = _image_bytes("GIF", mode="P")
RANDOM = bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8))
LATIN1 = "chat\nchien é\n".encode("latin-1")
DIR = object()  #: a folder instead of a file


def _zip(names: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in names.items():
            z.writestr(name, data)
    return buf.getvalue()


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def ckpt(edit: Callable[[dict], None] | None = None, weights: Callable[[bytes], bytes] | None = None,
         drop: str | None = None) -> Callable[[Path, dict], None]:
    """A copy of the good checkpoint, its ``config.yaml`` edited, its weights changed or one file removed."""
    import yaml

    def make(path: Path, world: dict) -> None:
        shutil.copytree(world["ck"], path)
        if edit is not None:
            doc = yaml.safe_load((path / "config.yaml").read_text())
            edit(doc)
            (path / "config.yaml").write_text(yaml.safe_dump(doc))
        if weights is not None:
            w = path / "model.safetensors"
            w.write_bytes(weights(w.read_bytes()))
        if drop is not None:
            target = path / drop
            shutil.rmtree(target) if target.is_dir() else target.unlink()

    return make


def raw_config(text: str) -> Callable[[Path, dict], None]:
    """A checkpoint whose ``config.yaml`` is ``text``."""
    def make(path: Path, world: dict) -> None:
        shutil.copytree(world["ck"], path)
        (path / "config.yaml").write_text(text)

    return make


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        *parents, last = path.split(".")
        node = doc
        for p in parents:
            node = node[p]
        node[last] = value

    return edit


def _without_weights_sha(doc: dict) -> None:
    doc.pop("weights_sha256", None)


def voc(images: dict[str, bytes | None] | None = None, labels: dict[str, bytes | None] | None = None,
        ids: list[str] | None = None) -> Callable[[Path, dict], None]:
    """A PASCAL VOC 2012 tree (two good samples by default); ``images`` / ``labels`` replace or remove files."""
    def make(path: Path, world: dict) -> None:
        from tests.test_evaluate import write_voc

        lab = np.zeros((20, 24), np.uint8)
        lab[5:10, 5:12] = 7
        stems = ["2008_000000", "2008_000001"]
        write_voc(path, {s: lab for s in stems})
        base = path / "VOCdevkit" / "VOC2012"
        for stem, data in (images or {}).items():
            target = base / "JPEGImages" / f"{stem}.jpg"
            target.unlink() if data is None else target.write_bytes(data)
        for stem, data in (labels or {}).items():
            target = base / "SegmentationClass" / f"{stem}.png"
            target.unlink() if data is None else target.write_bytes(data)
        if ids is not None:
            (base / "ImageSets" / "Segmentation" / "val.txt").write_text("".join(f"{i}\n" for i in ids))

    return make


def label_png(values: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(values.astype(np.uint8)).save(buf, format="PNG")  # grey: the values are the labels
    return buf.getvalue()


def image_folder(rows: str, images: dict[str, bytes] | None = None, name: str = "pairs.csv",
                 encoding: str = "utf-8") -> Callable[[Path, dict], None]:
    """A caption file ``name`` with ``rows`` beside its images (default: a.jpg and b.jpg, both good)."""
    def make(path: Path, world: dict) -> None:
        path.mkdir(parents=True, exist_ok=True)
        for image, data in (images if images is not None else {"a.jpg": JPEG, "b.jpg": JPEG}).items():
            (path / image).write_bytes(data)
        (path / name).write_bytes(rows.encode(encoding) if isinstance(rows, str) else rows)

    return make


# ------------------------------------------------------------------------------------------------ the table
def case(argv: str | list[str], status: int, message: str, files: dict | None = None, *, id: str | None = None,
         lines: int = 1, env: dict | None = None, cuda: bool = False, marks: Any = ()) -> Any:
    """One row. ``argv`` is split on spaces when a string; ``message`` must appear in the (one) error line;
    ``lines``: error lines expected (a command that goes on after a bad sample names each, then sums up);
    ``cuda``: run as on a machine without CUDA."""
    args = shlex.split(argv) if isinstance(argv, str) else list(argv)
    return pytest.param(args, status, message, files or {}, lines, env or {}, cuda, id=id or _row_id(args, message),
                        marks=marks)


def _row_id(args: list[str], message: str) -> str:
    """The command line with the options every row of its group shares left out (what is particular to the row),
    and where that is only a file name, the message expected."""
    text = " ".join(args)
    for common in (TRAIN, SEG, SEG_CK, SEG_IMG, EVAL, RET):  # longest first where one contains another
        text = text.replace(common, common.split()[0] + " ..." if text.startswith(common) else "...")
    if len(text.split()) <= 3 and message:
        text += f" -> {message[:60]}"
    return text[:100]


SEG = "segment $img --classes cat,dog --out $d/out --checkpoint $ck --no-crf --templates single --no-progress"
SEG_CK = "segment $img --classes cat,dog --out $d/out --no-crf --templates single --no-progress --checkpoint"
SEG_IMG = "--classes cat,dog --out $d/out --checkpoint $ck --no-crf --templates single --no-progress"
EVAL = "eval-seg --dataset pascal_voc --data-root $d/data --checkpoint $ck --no-crf --templates single --no-progress"
RET = "eval-retrieval --checkpoint $ck --out $d/out --no-progress --csv"
TRAIN = "train tiny model.tokenizer=$vocab train.output_dir=$d/run train.steps=1 train.batch_size=2 --no-progress"

CASES = [
    # ---------------------------------------------------------------- the top level and argument parsing
    case("frobnicate", 2, "invalid choice: 'frobnicate'", id="unknown command"),
    case("segment", 2, "the following arguments are required", id="segment without arguments"),
    case("segment $img --classes cat", 2, "--out", id="segment without --out"),
    case(SEG + " --protocol magic", 2, "--protocol: invalid choice: 'magic'"),
    case(SEG_CK + " $d/none --workers 0", 2, "--workers: must be at least 1, got 0",
         id="segment --workers 0 (refused before the checkpoint is opened)"),
    case(EVAL.replace("$ck", "$d/none") + " --workers 0", 2, "--workers: must be at least 1, got 0",
         id="eval-seg --workers 0 (refused before the checkpoint is opened)"),
    case(SEG + " --templates all", 2, "--templates: invalid choice: 'all'"),
    case(SEG + " --backend tensorrt", 2, "--backend: invalid choice: 'tensorrt'"),
    case(["segment", "$img", "--classes", "cat", "--out", "$d/out", "--checkpoint", ""], 2,
         "checkpoint: empty name", id="segment --checkpoint ''"),
    case("eval-retrieval --checkpoint $ck --batch-size many", 2, "--batch-size: invalid int value: 'many'"),
    case("serve --checkpoint $ck --port http", 2, "--port: invalid int value: 'http'"),
    case("export $ck $d/onnx --image-size big", 2, "--image-size: invalid int value: 'big'"),
    case("prepare", 2, "the following arguments are required: DATASET", id="prepare without a dataset"),
    case("prepare pascal-voc $d", 2, "invalid choice: 'pascal-voc'"),
    case("prepare coco-stuff", 2, "COCO_STUFF_DIR", id="prepare coco-stuff without a folder"),
    case("vocab", 2, "CAPTIONS_FILE", id="vocab without arguments"),
    case("train", 2, "config", id="train without a config"),
    case("info", 2, "checkpoint", id="info without a checkpoint"),
    case("convert-checkpoint $d/x.pth", 2, "out_dir"),
    case("push-to-hub $ck", 2, "ORG/NAME", id="push-to-hub without a repository"),
    case("demo --steps ten", 2, "--steps: invalid int value: 'ten'"),
    case("segment $img --classes cat --out $d/out --checkpoint $ck --unknown-flag", 2, "--unknown-flag"),

    # ---------------------------------------------------------------- segment: images
    case("segment $d/missing.jpg " + SEG_IMG, 1, "missing.jpg: file not found", lines=2),
    case("segment $d/photos " + SEG_IMG, 1, "photos: is a directory, not an image", {"photos": DIR}, lines=2),
    case("segment $d/empty.jpg " + SEG_IMG, 1, "empty.jpg: empty file (0 bytes)", {"empty.jpg": b""}, lines=2),
    case("segment $d/notes.jpg " + SEG_IMG, 1, "notes.jpg: not a readable image", {"notes.jpg": b"hello\n"}, lines=2),
    case("segment $d/cut.jpg " + SEG_IMG, 1, "cut.jpg: corrupt or truncated image", {"cut.jpg": JPEG[:200]},
         lines=2),
    case("segment $d/cut.png " + SEG_IMG, 1, "cut.png: corrupt or truncated image", {"cut.png": PNG[:80]}, lines=2),
    case("segment $d/noise.png " + SEG_IMG, 1, "noise.png: not a readable image", {"noise.png": RANDOM}, lines=2),
    case("segment $d/fake.png " + SEG_IMG, 1, "fake.png: not a readable image",
         {"fake.png": b"\x89PNG\r\n\x1a\n" + RANDOM[:100]}, lines=2),
    case("segment $d/bomb.png " + SEG_IMG, 1, "bomb.png: image of 400000000 pixels exceeds the limit of 100000000",
         {"bomb.png": bomb_png(20000, 20000)}, lines=2),
    case("segment $img $d/missing.jpg " + SEG_IMG, 1, "missing.jpg: file not found", lines=2,
         id="segment a good and a missing image"),

    # ---------------------------------------------------------------- segment: class names
    case("segment $img --out $d/out --checkpoint $ck", 2, "exactly one of --classes or --classes-file"),
    case(SEG + " --classes-file $d/c.txt", 2, "exactly one of --classes or --classes-file", {"c.txt": "cat\n"}),
    case(SEG.replace("cat,dog", "''"), 2, "class list: empty", id="segment --classes ''"),
    case(SEG.replace("cat,dog", "' , '"), 2, "empty class name at position 1", id="segment --classes ' , '"),
    case(SEG.replace("cat,dog", "cat,,dog"), 2, "empty class name at position 2"),
    case(SEG.replace("cat,dog", "cat,Cat"), 2, "duplicate class name 'Cat'"),
    case(SEG.replace("cat,dog", "cat,background"), 2, "'background' must be the first entry"),
    case(SEG.replace("cat,dog", ",".join(f"c{i}" for i in range(300))), 2, "a palette label PNG holds at most 255",
         id="segment 300 classes"),
    case(SEG.replace("--classes cat,dog", "--classes-file $d/c.txt"), 2,
         "c.txt: 300 classes; a palette label PNG holds at most 255",
         {"c.txt": "".join(f"c{i}\n" for i in range(300))}, id="segment --classes-file of 300 classes"),
    case(SEG.replace("--classes cat,dog", "--classes-file $d/none.txt"), 2, "none.txt: class file not found"),
    case(SEG.replace("--classes cat,dog", "--classes-file $d/cls"), 2, "cls: class file not found", {"cls": DIR}),
    case(SEG.replace("--classes cat,dog", "--classes-file $d/c.txt"), 2, "c.txt: class file is empty",
         {"c.txt": "\n\n \r\n"}, id="segment --classes-file of blank lines"),
    case(SEG.replace("--classes cat,dog", "--classes-file $d/c.txt"), 2, "c.txt: class file is not UTF-8 text",
         {"c.txt": LATIN1}, id="segment --classes-file in latin-1"),
    case(SEG.replace("--classes cat,dog", "--classes-file $d/c.txt"), 2, "c.txt: class list: duplicate class name",
         {"c.txt": "\ufeffcat\r\ndog\r\n\r\ncat\r\n"}, id="segment --classes-file BOM CRLF duplicate"),
    case(SEG.replace("--classes cat,dog", "--classes-file $d/c.jpg"), 2, "c.jpg: class file is not UTF-8 text",
         {"c.jpg": JPEG}, id="segment --classes-file is a JPEG"),

    # ---------------------------------------------------------------- segment: checkpoints and tokenizers
    case(SEG_CK + " $d/nothing", 2, "nothing: checkpoint not found"),
    case(SEG_CK + " $d/photo.jpg", 2, "photo.jpg: not a PyTorch checkpoint (it is a JPEG image", {"photo.jpg": JPEG}),
    case(SEG_CK + " $d/photo.png", 2, "photo.png: not a PyTorch checkpoint (it is a PNG image", {"photo.png": PNG}),
    case(SEG_CK + " $d/notes.txt", 2, "notes.txt: not a PyTorch checkpoint (it is a text file",
         {"notes.txt": "weights\n"}),
    case(SEG_CK + " $d/empty.pth", 2, "empty.pth: empty file (0 bytes)", {"empty.pth": b""}),
    case(SEG_CK + " $d/noise.pth", 2, "noise.pth: not a PyTorch checkpoint", {"noise.pth": RANDOM}),
    case(SEG_CK + " $d/cut.pth", 2, "cut.pth: not a checkpoint, or truncated/corrupt",
         {"cut.pth": _torch_bytes({"state_dict": {"a": torch.zeros(3)}})[:300]}),
    case(SEG_CK + " $d/other.zip", 2, "other.zip: not a checkpoint, or truncated/corrupt",
         {"other.zip": _zip({"readme.txt": b"hi"})}),
    case(SEG_CK + " $d/resnet.pth", 2, "resnet.pth: not a SimSeg checkpoint",
         {"resnet.pth": _torch_bytes({"state_dict": {"conv1.weight": torch.zeros(2, 3)}})}),
    case(SEG_CK + " $d/list.pth", 2, "list.pth: no state_dict of tensors", {"list.pth": _torch_bytes([1, 2, 3])}),
    case(SEG_CK + " $d/emptyfolder", 2, "emptyfolder: not a simseg checkpoint folder (no config.yaml)",
         {"emptyfolder": DIR}),
    case(SEG_CK + " $d/ck", 2, "ck/config.yaml: unreadable config", {"ck": raw_config("model: [unclosed\n")}),
    case(SEG_CK + " $d/ck", 2, "ck/config.yaml: not a simseg checkpoint config", {"ck": raw_config("- 1\n- 2\n")}),
    case(SEG_CK + " $d/ck", 2, "config.yaml: model.pooling: 'max' is not allowed (one of: loda, avg, cls)",
         {"ck": ckpt(_set("model.pooling", "max"))}),
    case(SEG_CK + " $d/ck", 2, "config.yaml: model.embed_dim: 0 is not allowed (must be >= 1)",
         {"ck": ckpt(_set("model.embed_dim", 0))}),
    case(SEG_CK + " $d/ck", 2, "config.yaml: model.image_topk: 'five' is not allowed (must be an integer)",
         {"ck": ckpt(_set("model.image_topk", "five"))}),
    case(SEG_CK + " $d/ck", 2, "config.yaml: model.vision.img_size: 100 is not allowed (must be a multiple",
         {"ck": ckpt(_set("model.vision.img_size", 100))}),
    case(SEG_CK + " $d/ck", 2, "config.yaml: model.colour: unknown config key", {"ck": ckpt(_set("model.colour", 1))}),
    case(SEG_CK + " $d/ck", 2, "config.yaml: model.vision: missing (required)",
         {"ck": ckpt(lambda doc: doc["model"].pop("vision"))}),
    case(SEG_CK + " $d/ck", 2, "ck: missing model.safetensors", {"ck": ckpt(drop="model.safetensors")}),
    case(SEG_CK + " $d/ck", 2, "model.safetensors: does not match the sha256 recorded in config.yaml",
         {"ck": ckpt(weights=lambda b: b[: len(b) // 2])}),
    case(SEG_CK + " $d/ck", 2, "model.safetensors: corrupt or truncated weights",
         {"ck": ckpt(_without_weights_sha, weights=lambda b: b[: len(b) // 2])}),
    case(SEG_CK + " $d/ck", 2, "model.safetensors: checkpoint does not match the model",
         {"ck": ckpt(lambda doc: (_without_weights_sha(doc), _set("model.embed_dim", 256)(doc)))}),
    case(SEG + " --tokenizer $d/nowhere", 2, "nowhere"),
    case(SEG_CK + " $d/ck", 2, "ck/tokenizer/vocab.txt: not a vocabulary (not UTF-8 text: byte 0)",
         {"ck": ckpt(), "ck/tokenizer/vocab.txt": b"\xff\xfe\x00junk"},
         id="segment a checkpoint whose vocab.txt is binary"),
    case(SEG_CK + " $d/ck", 2, "config.yaml: model.vision: timm cannot build",
         {"ck": ckpt(_set("model.vision.kwargs.depth", -2))}, id="segment a checkpoint timm cannot build"),
    case(SEG_CK + " $d/ck", 2, "config.yaml: model.text.config: transformers cannot build BERT",
         {"ck": ckpt(_set("model.text.config.num_attention_heads", 5))}, id="segment a checkpoint BERT cannot build"),
    case(SEG_CK + " $d/ck", 2, "ck/config.yaml: unreadable config (not UTF-8 text",
         {"ck": ckpt(), "ck/config.yaml": "format: simseg\nmodel: café\n".encode("latin-1")},
         id="segment a checkpoint config in latin-1"),
    case(SEG + " --tokenizer $d/tok", 2, "tok", {"tok": DIR}, id="segment --tokenizer folder without vocab.txt"),
    case(SEG + " --tokenizer $d/tok", 2, "vocab.txt", {"tok/vocab.txt": b""}, id="segment --tokenizer empty vocab"),
    case(SEG_CK + " hf-hub:nobody/nothing", 2, "hf-hub:nobody/nothing: not in the local Hugging Face cache",
         env={"HF_HUB_OFFLINE": "1"}),
    case(SEG_CK + " 'hf-hub:not a repo'", 2, "hf-hub:not a repo: not a Hugging Face Hub name"),

    # ---------------------------------------------------------------- segment: protocol, device, output, backend
    case(SEG + " --set threshold_std", 2, "--set 'threshold_std': expected key=value"),
    case(SEG + " --set =3", 2, "--set '=3': expected key=value"),
    case(SEG + " --set colour=3", 2, "colour"),
    case(SEG + " --set threshold_std=high", 2, "threshold_std"),
    case(SEG + " --set input_size=0", 2, "input_size"),
    case(SEG + " --set input_size=[1", 2, "--set 'input_size=[1': cannot parse the value"),
    case(SEG + " --protocol dense --set stride=0", 2, "stride"),
    case(SEG + " --set threshold_std=.nan", 2, "protocol parameter threshold_std: expected a finite number, got nan"),
    case(SEG + " --set input_size=.inf", 2, "protocol parameter input_size: expected a finite number, got inf"),
    case(SEG + " --protocol dense --set long_side=0", 2, "protocol parameter long_side: must be at least 1, got 0"),
    case(SEG + " --device ''", 2, "--device : not a device name", id="segment --device ''"),
    case(SEG + " --device cuda", 2, "--device cuda: no CUDA device is available on this machine", cuda=True),
    case(SEG + " --device cuda:1", 2, "--device cuda:1: no CUDA device is available on this machine", cuda=True),
    case(SEG + " --device gpu", 2, "--device gpu: not a device name"),
    case(SEG + " --device tpu", 2, "--device tpu"),
    case(SEG.replace("$d/out", "$d/taken"), 2, "--out $d/taken: cannot write there", {"taken": "a file"}),
    case(SEG.replace("$d/out", "/proc/simseg-out"), 2, "--out /proc/simseg-out: cannot write there"),
    case(SEG + " --cache-dir $d/c", 0, "warning: class-embedding cache not written to $d/c",
         {"c": "a file, not a folder"}, id="segment --cache-dir is a file (segments, warns)"),
    case(SEG + " --backend onnx", 2, "onnx"),

    # ---------------------------------------------------------------- info, convert-checkpoint, export
    case("info $d/none", 2, "none: checkpoint not found"),
    case("info $d/photo.jpg", 2, "photo.jpg: not a PyTorch checkpoint (it is a JPEG image", {"photo.jpg": JPEG}),
    case("info $d/ck", 2, "config.yaml: model.train_pooling: 'median' is not allowed",
         {"ck": ckpt(_set("model.train_pooling", "median"))}),
    case("info $d/ck", 2, "config.yaml: model.dropout: 2 is not allowed (must be <= 1)",
         {"ck": ckpt(_set("model.dropout", 2))}),
    case("info $d/ck", 2, "config.yaml: model.temperature_init: -1 is not allowed",
         {"ck": ckpt(_set("model.temperature_init", -1))}),
    case("info $ck --tokenizer $d/none", 2, "none"),
    case("convert-checkpoint $d/none.pth $d/out", 2, "none.pth: file not found"),
    case("convert-checkpoint $d/photo.jpg $d/out", 2, "photo.jpg: not a PyTorch checkpoint (it is a JPEG image",
         {"photo.jpg": JPEG}),
    case("convert-checkpoint $d/resnet.pth $d/out", 2, "resnet.pth: not a SimSeg checkpoint",
         {"resnet.pth": _torch_bytes({"fc.weight": torch.zeros(2, 2)})}),
    case("convert-checkpoint $d/x.pth $d/out", 2, "out: exists and is not a folder", {"x.pth": b"x", "out": "file"}),
    case("convert-checkpoint $d/x.pth $d/out", 2, "out: output folder exists and is not empty",
         {"x.pth": b"x", "out/keep.txt": "mine"}),
    case("convert-checkpoint $d/code.pth $d/out", 2, "code.pth: refused: the pickle needs arbitrary code",
         {"code.pth": _torch_bytes({"state_dict": {}, "opt": zipfile.ZipInfo("x")})}),
    case("export $d/none $d/onnx", 2, "none: checkpoint not found"),
    case("export $ck $d/onnx --opset 7", 2, "--opset 7: choose an opset from 14 to 23"),
    case("export $ck $d/onnx", 2, "onnx: output folder exists and is not empty", {"onnx/a.txt": "x"}),
    case("export $ck $d/onnx", 2, "onnx: exists and is not a folder", {"onnx": "x"}),
    case("export $ck $d/onnx --image-size 0", 2, "--image-size: must be at least 1, got 0"),
    case("export $ck /proc/simseg-onnx", 2, "OUT_DIR /proc/simseg-onnx: cannot write there"),
    case("export $ck $d/onnx --image-size 100", 2,
         "--image-size 100: must be a multiple of the patch size 16 of the model"),

    # ---------------------------------------------------------------- eval-seg
    case(EVAL, 2, "$d/data: data root not found", id="eval-seg missing data root"),
    case(EVAL.replace("--data-root $d/data ", ""), 2, "no data root: pass --data-root DIR or set SIMSEG_DATA",
         env={"SIMSEG_DATA": ""}),
    case(EVAL.replace("pascal_voc", "voc2012"), 2, "unknown dataset(s) 'voc2012'", {"data": DIR}),
    case(EVAL.replace("pascal_voc", "''"), 2, "no dataset given", {"data": DIR}, id="eval-seg --dataset ''"),
    case(EVAL.replace("pascal_voc", "pascal_voc,,ade"), 2, "unknown dataset(s) 'ade'", {"data": DIR}),
    case(EVAL.replace("pascal_voc", "all,pascal_voc"), 2, "dataset 'all' cannot be combined with dataset names",
         {"data": DIR}),
    case(EVAL, 2, "pascal_voc", {"data": DIR}, id="eval-seg benchmark not under the data root"),
    case(EVAL, 2, "val.txt", {"data": voc(ids=[])}, id="eval-seg empty val list"),
    case(EVAL, 2, "val.txt: cannot read list file (not UTF-8 text: byte 0)",
         {"data": voc(), "data/VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt": b"\xff\xfe2008_000000\n"},
         id="eval-seg a val list in UTF-16"),
    case(EVAL + " --limit 0", 2, "--limit: must be at least 1, got 0", {"data": DIR}),
    case(EVAL + " --num-overlays -1", 2, "--num-overlays: must be at least 0, got -1", {"data": DIR}),
    case(EVAL + " --preset sclip", 2, "--preset sclip: presets set the dense protocol", {"data": voc()}),
    case(EVAL + " --names-file $d/n.txt", 2, "--names-file $d/n.txt: file not found", {"data": voc()}),
    case(EVAL + " --names-dir $d/names", 2, "--names-dir $d/names: folder not found", {"data": voc()}),
    # a folder for the file and a file for the folder said "not found"
    case(EVAL + " --names-file $d/names", 2, "--names-file $d/names: is a folder (--names-dir takes one)",
         {"data": voc(), "names/pascal_voc.txt": "x"}),
    case(EVAL + " --names-dir $d/n.txt", 2, "--names-dir $d/n.txt: is a file (--names-file takes one)",
         {"data": voc(), "n.txt": "x"}),
    case(EVAL + " --names-dir $d/n --names-file $d/n.txt", 2, "--names-file and --names-dir: give one",
         {"data": voc()}),
    case(EVAL + " --names-file $d/n.txt", 2, "n.txt", {"data": voc(), "n.txt": "cat\ndog\n"},
         id="eval-seg names file with the wrong number of lines"),
    case(EVAL + " --names-dir $d/names", 2, "voc.txt name no benchmark", {"data": voc(), "names/voc.txt": "x"}),
    case(EVAL.replace("pascal_voc", "all") + " --names-file $d/n.txt", 2, "--names-file: applies to one benchmark",
         {"data": voc(), "n.txt": "x"}),
    case(EVAL + " --set top_n=-3", 2, "top_n", {"data": voc()}),
    case(EVAL + " --set bogus=1", 2, "bogus", {"data": voc()}),
    case(EVAL + " --device cuda", 2, "--device cuda: no CUDA device is available", {"data": voc()}, cuda=True),
    case(EVAL + " --out $d/report", 2, "--out $d/report: cannot write there", {"data": voc(), "report": "x"}),
    case(EVAL + " --set input_size=32 --out $d/r", 1, "2008_000001.jpg: not a readable image",
         {"data": voc(images={"2008_000001": b"\xff\xd8\xff junk"})}, lines=2, id="eval-seg a corrupt image"),
    case(EVAL + " --set input_size=32 --out $d/r", 1, "2008_000001.jpg: file not found",
         {"data": voc(images={"2008_000001": None})}, lines=2, id="eval-seg a missing image"),
    case(EVAL + " --set input_size=32 --out $d/r", 1, "2008_000001.png: not a readable label image",
         {"data": voc(labels={"2008_000001": b"not a png"})}, lines=2, id="eval-seg a corrupt label"),
    case(EVAL + " --set input_size=32 --out $d/r", 2, "2008_000001.png",
         {"data": voc(labels={"2008_000001": label_png(np.full((20, 24), 40))})},
         id="eval-seg label values outside the benchmark"),
    case(EVAL.replace("pascal_voc", "all").replace("--checkpoint $ck", "--checkpoint $d/none"), 2,
         "none: checkpoint not found", {"data": voc()}, id="eval-seg all with a missing checkpoint"),

    # ---------------------------------------------------------------- eval-retrieval
    case("eval-retrieval --checkpoint $ck", 2, "--dataset: required unless --csv is given"),
    case("eval-retrieval --checkpoint $ck --dataset f30k", 2, "no data root", env={"SIMSEG_DATA": ""}),
    case("eval-retrieval --checkpoint $ck --dataset f30k --data-root $d", 2, "f30k/valid.parquet: not found"),
    case("eval-retrieval --checkpoint $ck --dataset f30k --data-root $d", 2, "valid.parquet: not a readable parquet",
         {"f30k/valid.parquet": b"PAR1 not really"}),
    case(RET + " $d/none.csv", 2, "none.csv: file not found"),
    case(RET + " $d/pairs.csv", 2, "pairs.csv: missing column(s) caption", {"pairs.csv": "image,text\na.jpg,a cat\n"}),
    case(RET + " $d/pairs.csv", 2, "pairs.csv: missing column(s) image, caption", {"pairs.csv": ""}),
    case(RET + " $d/pairs.tsv", 2, "pairs.tsv: unknown caption file type '.tsv'", {"pairs.tsv": "x"}),
    case(RET + " $d/pairs.json", 2, "pairs.json: invalid JSON", {"pairs.json": "[{\"image\": \"a.jpg\","}),
    case(RET + " $d/pairs.json", 2, "pairs.json: expected a list of objects", {"pairs.json": "{\"image\": 1}"}),
    case(RET + " $d/pairs.json", 2, "pairs.json, row 0: image must be a path (a string), got 5",
         {"pairs.json": '[{"image": 5, "caption": "x"}]'}),
    case(RET + " $d/pairs.json", 2, "pairs.json, row 0: image must be a path (a string), got null",
         {"pairs.json": '[{"image": null, "caption": "x"}]'}),
    case(RET + " $d/pairs.json", 2, "pairs.json, row 0: image must be a path (a string), got [\"a.jpg\"]",
         {"pairs.json": '[{"image": ["a.jpg"], "caption": "x"}]'}),
    case(RET + " $d/pairs.json", 2, "pairs.json, row 0: id must be a string or an integer, got [1]",
         {"pairs.json": '[{"image": "a.jpg", "caption": "x", "id": [1]}]'}),
    case(RET + " $d/pairs.jsonl", 2, "pairs.jsonl, row 1: image_id must be a string or an integer, got {}",
         {"pairs.jsonl": '{"image": "a.jpg", "caption": "x"}\n{"image": "a.jpg", "caption": "y", "image_id": {}}\n'}),
    case(RET + " $d/pairs.jsonl", 2, "pairs.jsonl: line 2: invalid JSON",
         {"pairs.jsonl": "{\"image\": \"a.jpg\", \"caption\": \"x\"}\nnot json\n"}),
    case(RET + " $d/pairs.csv", 2, "pairs.csv: line 2: not UTF-8 text (byte 0xe9)",
         {"pairs.csv": "image,caption\na.jpg,café\n".encode("latin-1")},
         id="eval-retrieval a latin-1 CSV"),
    case(RET + " $d/pairs.json", 2, "pairs.json, row 1: missing caption",
         {"pairs.json": json.dumps([{"image": "a.jpg", "caption": "x"}, {"image": "b.jpg"}])}),
    case(RET + " $d/pairs.csv", 1, "1 unreadable image(s)",
         {"": image_folder("image,caption\na.jpg,a cat\nb.jpg,a dog\n", {"a.jpg": JPEG, "b.jpg": b"junk"})},
         lines=2, id="eval-retrieval a corrupt image"),
    case(RET + " $d/pairs.csv", 1, "1 unreadable image(s)",
         {"": image_folder("image,caption\na.jpg,a cat\nc.jpg,a dog\n", {"a.jpg": JPEG})},
         lines=2, id="eval-retrieval a missing image"),
    case(RET + " $d/pairs.csv", 2, "pairs.csv: missing column(s) caption (found: image, text)",
         {"pairs.csv": "\ufeffimage,text\r\na.jpg,a cat\r\n"}, id="eval-retrieval BOM CRLF CSV without captions"),
    case(RET + " $d/pairs.jsonl", 2, "pairs.jsonl: line 3: invalid JSON",
         {"pairs.jsonl": "\ufeff{\"image\": \"a.jpg\", \"caption\": \"x\"}\r\n\r\n{oops}\r\n"},
         id="eval-retrieval BOM CRLF JSONL with a bad line"),
    case(RET + " $d/pairs.json", 2, "pairs.json, row 0: caption id 0: caption is not a string",
         {"pairs.json": "[{\"image\": \"a.jpg\", \"caption\": 7}]"}),
    case(RET + " $d/pairs.csv", 2, "pairs.csv, row 1: caption id 1: empty caption",
         {"": image_folder("image,caption\na.jpg,a cat\nb.jpg,\n")}),
    case(RET + " $d/pairs.csv --batch-size 0", 2, "--batch-size: must be at least 1, got 0"),
    case(RET + " $d/pairs.csv --crop-size 400", 2, "--crop-size 400 is larger than --resize-size 324"),
    case(RET + " $d/pairs.csv --crop-size 100 --resize-size 120", 2,
         "--crop-size 100 is not a multiple of the model's patch size 16",
         {"": image_folder("image,caption\na.jpg,a cat\nb.jpg,a dog\n")}),
    case(RET + " $d/pairs.csv --device cuda", 2, "--device cuda: no CUDA device is available",
         {"": image_folder("image,caption\na.jpg,a cat\n")}, cuda=True),
    case(RET + " $d/pairs.csv --workers -1", 2, "--workers: must be at least 0, got -1",
         {"": image_folder("image,caption\na.jpg,a cat\n")}),

    # ---------------------------------------------------------------- train: configs and overrides
    case("train nosuchpreset", 2, "'nosuchpreset' is neither a preset"),
    case("train $d/none.yaml", 2, "none.yaml: config file not found"),
    case("train $d/exp.yaml", 2, "exp.yaml: invalid YAML", {"exp.yaml": "train: [lr: 1\n"}),
    case("train $d/exp.yaml", 2, "exp.yaml: a config must be a mapping", {"exp.yaml": "- 1\n"}),
    case("train $d/exp.yaml", 2, "config lacks the section(s)", {"exp.yaml": "train: {lr: 1}\n"}),
    case("train $d/exp.yaml", 2, "unknown preset 'tinyy'", {"exp.yaml": "base: tinyy\n"}),
    case("train $d/exp.yaml", 2, "train.lr: -0.5 is not allowed (must be > 0)",
         {"exp.yaml": "base: tiny\ntrain:\n  lr: -0.5\n"}),
    case("train $d/exp.yaml", 2, "train.lr: -0.5 is not allowed (must be > 0)",
         {"exp.yaml": "\ufeffbase: tiny\r\ntrain:\r\n  lr: -0.5\r\n"}, id="train YAML with BOM and CRLF"),
    case("train $d/exp.yaml", 2, "exp.yaml: trian: unknown config key (did you mean 'train'?)",
         {"exp.yaml": "base: tiny\ntrian:\n  lr: 1\n"},
         id="train YAML with a misspelt section"),
    case("train $d/exp.yaml", 2, "exp.yaml: not a YAML text file", {"exp.yaml": JPEG}, id="train a JPEG as config"),
    case("train $d/exp.yaml", 2, "exp.yaml", {"exp.yaml": LATIN1}, id="train a latin-1 config"),
    case("train $d/conf", 2, "conf: config file not found", {"conf": DIR}),
    case(TRAIN + " train.lr", 2, "override 'train.lr' is not of the form key=value"),
    case(TRAIN + " =3", 2, "override '=3' has an empty key"),
    case(TRAIN + " train.lrr=1", 2, "unknown config key 'train.lrr'"),
    case(TRAIN + " train.steps=0", 2, "train.steps: 0 is not allowed (must be >= 1)"),
    case(TRAIN + " train.steps=ten", 2, "train.steps: 'ten' is not allowed (must be an integer)"),
    case(TRAIN + " train.batch_size=-4", 2, "train.batch_size: -4 is not allowed (must be >= 1)"),
    case(TRAIN + " train.lr=0", 2, "train.lr: 0 is not allowed (must be > 0)"),
    case(TRAIN + " train.lr=fast", 2, "train.lr: 'fast' is not allowed (must be a number)"),
    case(TRAIN + " train.lr=.inf", 2, "train.lr: inf is not allowed (must be a finite number)"),
    case(TRAIN + " train.lr=.nan", 2, "train.lr: nan is not allowed (must be a finite number)"),
    case(TRAIN + " 'train.lr=${nope}'", 2, "cannot resolve the config: train.lr: Interpolation key 'nope' not found"),
    case(TRAIN + " 'train.lr=${nope'", 2, "override 'train.lr=${nope': invalid value"),
    case("train $d/exp.yaml", 2, "train.lr: Interpolation key 'oops' not found",
         {"exp.yaml": "base: tiny\ntrain:\n  lr: ${oops}\n"}, id="train YAML with a broken interpolation"),
    case("train $d/exp.yaml", 2, "exp.yaml: invalid YAML (ConstructorError: line 4, column 3: found duplicate key lr",
         {"exp.yaml": "base: tiny\ntrain:\n  lr: 1\n  lr: 2\n"}, id="train YAML with a duplicate key"),
    case(TRAIN + " data.crop_scale=[0.9,0.5]", 2, "data.crop_scale: [0.9, 0.5] is not allowed (must be [min, max]"),
    case(TRAIN + " 'data.train=[5]'", 2, "data.train[0]: 5 is not allowed (must be a mapping of source settings)"),
    case(TRAIN + " model.vision.name=nosuchvit", 2, "model.vision.name: unknown timm model 'nosuchvit'"),
    case(TRAIN + " train.betas=0.9", 2, "train.betas: 0.9 is not allowed (must be a list)"),
    case(TRAIN + " train.precision=fp8", 2, "train.precision: 'fp8' is not allowed (one of: auto, fp32, fp16, bf16)"),
    case(TRAIN + " train.device=gpu", 2, "train.device: 'gpu' is not allowed"),
    case(TRAIN + " model.pooling=max", 2, "model.pooling: 'max' is not allowed (one of: loda, avg, cls)"),
    case(TRAIN + " model.embed_dim=0", 2, "model.embed_dim: 0 is not allowed (must be >= 1)"),
    case(TRAIN + " data.image_size=100", 2, "data.image_size: 100 is not allowed (must be a multiple of the patch"),
    case(TRAIN + " data.image_size=8", 2, "data.image_size: 8 is not allowed"),
    case(TRAIN + " data.caption_augment_prob=1.5", 2, "data.caption_augment_prob: 1.5 is not allowed (must be <= 1)"),
    case(TRAIN + " data.crop_scale=[0.5,2]", 2, "data.crop_scale[1]: 2 is not allowed (must be <= 1)"),
    case(TRAIN + " 'data.train=[{type: lmdb, path: x}]'", 2, "data.train[0].type: 'lmdb' is not allowed"),
    case(TRAIN + " 'data.train=[{type: csv}]'", 2, "path", id="train a csv source without a path"),
    case(TRAIN + " 'data.train=[{type: csv, path: $d/none.csv}]'", 2, "none.csv: CSV file not found"),
    case(TRAIN + " 'data.train=[{type: csv, path: $d/pairs.csv}]'", 2, "pairs.csv: no column 'caption'",
         {"pairs.csv": "image,text\na.jpg,x\n"}),
    case(TRAIN + " 'data.train=[{type: csv, path: $d/pairs.csv}]'", 2, "pairs.csv: empty file", {"pairs.csv": ""}),
    case(TRAIN + " data.train=[]", 2, "data.train: no data source given"),
    case(TRAIN + " model.vision.kwargs.depth=-1", 2, "model.vision: timm cannot build 'vit_small_patch16_224'"),
    case(TRAIN + " model.vision.kwargs.colour=3", 2, "model.vision: timm cannot build 'vit_small_patch16_224'"),
    case(TRAIN + " model.text.config.hidden_size=63", 2, "model.text.config: transformers cannot build BERT"),
    case(TRAIN + " train.output_dir=/proc/simseg-run", 2, "train.output_dir /proc/simseg-run: cannot write there"),
    case(TRAIN + " train.output_dir=$d/file", 2, "train.output_dir $d/file: cannot write there", {"file": "x"}),
    case(TRAIN + " 'eval.retrieval={path: $d/none.csv}'", 2, "eval.retrieval.path $d/none.csv: $d/none.csv not found"),
    case(TRAIN + " 'eval.retrieval={path: $d/f30k}'", 2, "eval.retrieval.path $d/f30k: $d/f30k/valid.parquet not found",
         {"f30k": DIR}),
    case(TRAIN + " 'eval.segmentation={dataset: pascal_voc, data_root: $d/none}'", 2,
         "eval.segmentation: $d/none: data root not found"),
    case(TRAIN + " 'eval.segmentation={dataset: voc, data_root: $d}'", 2, "eval.segmentation: unknown dataset 'voc'"),
    case(TRAIN + " 'eval.retrieval={batch_size: 8}'", 2, "eval.retrieval.path: missing (required)"),
    case(TRAIN + " 'data.train=[{type: csv, path: $d/p.csv, colour: red}]'", 2, "colour"),
    case(TRAIN + " model.tokenizer=$d/none 'data.train=[{type: csv, path: $d/p.csv}]'", 2, "none",
         {"": image_folder("image,caption\na.jpg,a cat\nb.jpg,a dog\n", name="p.csv")}),
    case(TRAIN + " model.init=$d/photo.jpg 'data.train=[{type: csv, path: $d/p.csv}]'", 2,
         "photo.jpg: not a PyTorch checkpoint (it is a JPEG image",
         {"photo.jpg": JPEG, "": image_folder("image,caption\na.jpg,a cat\nb.jpg,a dog\n", name="p.csv")}),
    case(TRAIN + " train.device=cuda 'data.train=[{type: csv, path: $d/p.csv}]'", 2,
         "train.device=cuda: no CUDA device is available",
         {"": image_folder("image,caption\na.jpg,a cat\nb.jpg,a dog\n", name="p.csv")}, cuda=True),
    case(TRAIN + " train.device=cuda:0 'data.train=[{type: csv, path: $d/p.csv}]'", 2,
         "train.device=cuda:0: no CUDA device is available",
         {"": image_folder("image,caption\na.jpg,a cat\nb.jpg,a dog\n", name="p.csv")}, cuda=True),
    case(TRAIN + " train.precision=fp16 'data.train=[{type: csv, path: $d/p.csv}]'", 2,
         "train.precision: 'fp16' is not allowed on cpu (fp16 mixed precision needs CUDA",
         {"": image_folder("image,caption\na.jpg,a cat\nb.jpg,a dog\n", name="p.csv")}, cuda=True),
    case(TRAIN + " --resume $d/nowhere 'data.train=[{type: csv, path: $d/p.csv}]'", 2, "nowhere",
         {"": image_folder("image,caption\na.jpg,a cat\nb.jpg,a dog\n", name="p.csv")}),
    case(TRAIN + " 'data.train=[{type: webdataset, urls: \"$d/shards/{0..3}.tar\"}]'", 2, "shards",
         id="train webdataset shards that do not exist"),

    # ---------------------------------------------------------------- vocab
    case("vocab $d/none.txt $d/v", 2, "none.txt: file not found"),
    case("vocab $d/caps $d/v", 2, "caps: is a folder, not a captions file", {"caps": DIR}),
    case("vocab $d/c.txt $d/v", 2, "c.txt: no captions in the file", {"c.txt": "\n \r\n"}),
    case("vocab $d/c.txt $d/v", 2, "c.txt: line 2: not UTF-8 text", {"c.txt": LATIN1}),
    case("vocab $d/c.csv $d/v", 2, "c.csv: no 'caption' column in the header row", {"c.csv": "image,text\na,b\n"}),
    case("vocab $d/c.csv $d/v --column text", 2, "c.csv: no captions in the file", {"c.csv": "image,text\r\n\r\n"}),
    case("vocab $d/c.txt $d/v --vocab-size 3", 2, "--vocab-size: must be at least 6, got 3", {"c.txt": "a cat\n"}),
    case("vocab $d/c.txt $d/v", 2, "OUT_DIR $d/v: cannot write there", {"c.txt": "a cat\n", "v": "file"}),
    case("vocab $d/c.jpg $d/v", 2, "c.jpg: line", {"c.jpg": JPEG}, id="vocab a JPEG as captions"),

    # ---------------------------------------------------------------- push-to-hub (never reaches the network)
    case("push-to-hub $ck not/a/repo", 2, "not/a/repo: not a Hub repository id"),
    case("push-to-hub $ck me/model --license 'MIT License'", 2, "license 'MIT License'"),
    case("push-to-hub $ck me/model", 2, "me/model: cannot upload: HF_HUB_OFFLINE is set", env={"HF_HUB_OFFLINE": "1"}),
    case("push-to-hub $ck me/model", 2, "me/model: cannot upload: no Hugging Face token",
         env={"HF_HUB_OFFLINE": "", "HF_TOKEN": ""}),
    case("push-to-hub $d/none me/model", 2, "none: checkpoint not found", env={"HF_HUB_OFFLINE": "", "HF_TOKEN": "x"}),
    case("push-to-hub tiny me/model", 2, "tiny: a preset has random weights",
         env={"HF_HUB_OFFLINE": "", "HF_TOKEN": "x"}),
    case("push-to-hub $d/empty me/model", 2, "empty: not a simseg checkpoint folder (no config.yaml)",
         {"empty": DIR}, env={"HF_HUB_OFFLINE": "", "HF_TOKEN": "x"}),
    case("push-to-hub $d/photo.jpg me/model", 2, "photo.jpg: not a PyTorch checkpoint (it is a JPEG image",
         {"photo.jpg": JPEG}, env={"HF_HUB_OFFLINE": "", "HF_TOKEN": "x"}),
    case("push-to-hub $ck me/model --training-config $d/none.yaml", 2, "--training-config $d/none.yaml: file not found",
         env={"HF_HUB_OFFLINE": "", "HF_TOKEN": "x"}),
    case("push-to-hub $ck me/model --training-config $d/t.yaml", 2, "t.yaml", {"t.yaml": "train: [\n"},
         env={"HF_HUB_OFFLINE": "", "HF_TOKEN": "x"}, id="push-to-hub invalid training config"),
    case("push-to-hub $ck me/model --metrics $d/m.json", 2, "m.json", {"m.json": "{not json"},
         env={"HF_HUB_OFFLINE": "", "HF_TOKEN": "x"}, id="push-to-hub invalid metrics file"),
    case("push-to-hub $ck me/model --metrics $d/none.json", 2, "none.json",
         env={"HF_HUB_OFFLINE": "", "HF_TOKEN": "x"}, id="push-to-hub missing metrics file"),
    case("push-to-hub $ck me/model --training-config $d/t.yaml", 2, "unreadable config.yaml (not UTF-8 text: byte 0)",
         {"t.yaml": JPEG}, env={"HF_HUB_OFFLINE": "", "HF_TOKEN": "x"}, id="push-to-hub a JPEG as training config"),
    case("push-to-hub $ck me/model --metrics $d/m.json", 2, "m.json: not a JSON report (not UTF-8 text: byte 0)",
         {"m.json": JPEG}, env={"HF_HUB_OFFLINE": "", "HF_TOKEN": "x"}, id="push-to-hub a JPEG as metrics"),
    case("push-to-hub $ck me/model --metrics $d/m.json", 2, "m.json: not a JSON report (invalid JSON: line 1, column 2",
         {"m.json": "{not json"}, env={"HF_HUB_OFFLINE": "", "HF_TOKEN": "x"}, id="push-to-hub metrics not JSON"),

    # ---------------------------------------------------------------- prepare
    case("prepare coco-object $d/none", 2, "none"),
    case("prepare coco-stuff $d/none", 2, "none"),
    case("prepare coco-stuff $d/coco", 2, "coco", {"coco": DIR}, id="prepare coco-stuff empty folder"),
    case("prepare coco-stuff $d/coco --nproc 0", 2, "--nproc: must be at least 1, got 0", {"coco": DIR}),
    case("prepare cityscapes $d/none", 2, "none"),
    case("prepare cityscapes $d/city", 2, "city", {"city": DIR}, id="prepare cityscapes empty folder"),
    case("prepare cityscapes $d/city", 2, "broken_gtFine_labelIds.png: not a readable PNG", {
        "city/gtFine/val/x/broken_gtFine_labelIds.png": b"not a png"}, id="prepare cityscapes a corrupt label"),
    case("prepare pascal-context $d/VOCdevkit $d/none.json", 2, "none.json", {"VOCdevkit/VOC2010": DIR}),
    case("prepare pascal-context $d/VOCdevkit $d/t.json", 2, "t.json", {"VOCdevkit/VOC2010": DIR, "t.json": "{oops"},
         id="prepare pascal-context invalid JSON"),
    case("prepare pascal-context $d/VOCdevkit $d/t.json", 2, "t.json", {"VOCdevkit/VOC2010": DIR, "t.json": JPEG},
         id="prepare pascal-context a JPEG as JSON"),

    # ---------------------------------------------------------------- demo
    case("demo --steps 0 --out $d/demo", 2, "--steps"),
    case("demo --seed -1 --out $d/demo", 2, "--seed"),
    case("demo --out $d/demo", 2, "demo", {"demo/mine.txt": "keep"}, id="demo into a non-empty folder"),
    case("demo --out $d/demo", 2, "demo", {"demo": "a file"}, id="demo --out is a file"),

    # ---------------------------------------------------------------- serve (fails before listening)
    case("serve", 2, "give --checkpoint PATH, or --demo"),
    case("serve --demo", 2, "--demo: simseg-demo/loda/checkpoint not found"),
    case("serve --checkpoint $d/none", 2, "none: checkpoint not found"),
    case("serve --checkpoint $d/photo.jpg", 2, "photo.jpg: not a PyTorch checkpoint (it is a JPEG image",
         {"photo.jpg": JPEG}),
    case("serve --checkpoint $ck --device cuda", 2, "--device cuda: no CUDA device is available", cuda=True),
    case("serve --checkpoint $ck --device quantum", 2, "--device quantum: not a device name"),
    case("serve --checkpoint $ck --port 0", 2, "--port: must be between 1 and 65535, got 0"),
    case("serve --checkpoint $ck --port 70000", 2, "--port: must be between 1 and 65535, got 70000"),
    case("serve --checkpoint $ck --host no.such.host.invalid", 2, "cannot listen on no.such.host.invalid"),
    case("serve --checkpoint $ck --classes cat,,dog", 2, "empty class name at position 2"),
    case("serve --checkpoint $ck --max-pixels 0", 2, "--max-pixels: must be at least 1, got 0"),
    case("serve --checkpoint $ck --max-classes 0", 2, "--max-classes: must be at least 1, got 0"),
    case("serve --checkpoint $ck --queue 0", 2, "--queue: must be at least 1, got 0"),
    case("serve --checkpoint $ck --timeout 0", 2, "--timeout: must be a positive, finite number of seconds, got 0"),
    case("serve --checkpoint $ck --timeout nan", 2, "--timeout: must be a positive, finite number of seconds, got nan"),
    case("serve --checkpoint $ck --max-upload-mb 0", 2, "--max-upload-mb: must be a positive, finite number of MB"),
    case("serve --checkpoint $ck --max-upload-mb -1", 2, "--max-upload-mb: must be a positive, finite number of MB "
         "(at least one byte), got -1", id="serve --max-upload-mb -1 (not -1048576 bytes)"),
    case("serve --checkpoint $ck --max-upload-mb nan", 2, "--max-upload-mb: must be a positive, finite number of MB"),
    case("serve --checkpoint $ck --max-upload-mb inf", 2, "--max-upload-mb: must be a positive, finite number of MB"),
]


# ------------------------------------------------------------------------------------------------ the runner
@pytest.fixture(scope="module")
def world(tiny_model, vocab_dir, tmp_path_factory):
    """The good files rows refer to: a checkpoint folder of the tiny model, its vocabulary, a JPEG."""
    from simseg.checkpoint import save_model

    root = tmp_path_factory.mktemp("world")
    (root / "img.jpg").write_bytes(JPEG)
    return {"ck": save_model(tiny_model, root / "ck"), "vocab": Path(vocab_dir), "img": root / "img.jpg"}


def _subst(text: str, names: dict[str, Any]) -> str:
    return string.Template(text).safe_substitute({k: str(v) for k, v in names.items()})


def _make_files(folder: Path, files: dict, world: dict) -> None:
    for rel, content in files.items():
        target = folder / rel if rel else folder
        if content is DIR:
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(target, world)
        else:
            target.write_bytes(content.encode() if isinstance(content, str) else content)


def _balanced(line: str) -> bool:
    """Whether every bracket opened is closed: a line cut mid-sentence typically leaves one open. Quoted words
    (a parser's "expected ']'", a value as given) are not counted."""
    line = re.sub(r"'[^'\s]+'", "", line)
    depth = {"(": 0, "[": 0, "{": 0}
    closing = {")": "(", "]": "[", "}": "{"}
    for ch in line:
        if ch in depth:
            depth[ch] += 1
        elif ch in closing:
            depth[closing[ch]] -= 1
    return all(v == 0 for v in depth.values())


_PROGRESS = re.compile(r"\d+%\|")


def error_lines(err: str) -> list[str]:
    """The lines of stderr but progress bars (tqdm's, where a command has no --no-progress)."""
    return [line for line in err.splitlines() if line.strip() and not _PROGRESS.search(line)]


def run_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as e:  # argparse
        status = e.code if isinstance(e.code, int) else 1
    except BaseException:
        out, err = capsys.readouterr()
        pytest.fail(f"traceback from {argv}:\n{traceback.format_exc()}\nstderr: {err}")
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def row_env(monkeypatch, tmp_path, world):
    """Each row in its own folder, with the caches there and no GPU where the row says so."""
    folder = tmp_path / "d"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setenv("SIMSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_TOKEN", raising=False)

    def apply(env: dict, cuda: bool) -> None:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        if "HF_HUB_OFFLINE" in env:
            from huggingface_hub import constants

            monkeypatch.setattr(constants, "HF_HUB_OFFLINE", env["HF_HUB_OFFLINE"] == "1")
        if cuda:
            monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
            monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)

    # whatever a row does, nothing is uploaded
    import simseg.hub

    def no_upload(*args, **kwargs):
        raise AssertionError("a bad-input row reached the upload")

    monkeypatch.setattr(simseg.hub, "upload_folder", no_upload)
    return folder, apply


@pytest.mark.parametrize(("argv", "status", "message", "files", "lines", "env", "cuda"), CASES)
def test_bad_input_gives_one_clear_line(argv, status, message, files, lines, env, cuda, world, row_env, capsys):
    folder, apply = row_env
    names = {**world, "d": folder}
    _make_files(folder, files, world)
    apply({k: _subst(v, names) for k, v in env.items()}, cuda)
    argv = [_subst(a, names) for a in argv]
    status_got, _, err = run_in_process(argv, capsys)
    message = _subst(message, names)
    assert "Traceback" not in err, err
    shown = error_lines(err)
    assert status_got == status, f"exit status {status_got}, expected {status}; stderr:\n{err}"
    assert len(shown) == lines, f"expected {lines} error line(s), got:\n{err}"
    hit = [line for line in shown if message in line]
    assert hit, f"no error line contains {message!r}:\n{err}"
    for line in shown:
        assert _balanced(line), f"a line cut short: {line!r}"
    if status == 2:
        command = argv[0] if argv[0] in COMMANDS else None
        prefix = f"simseg {command}" if command else "simseg"
        assert shown[0].startswith(prefix) and ": error: " in shown[0], shown[0]


def test_the_table_covers_every_command_with_over_a_hundred_rows():
    commands = {p.values[0][0] for p in CASES}
    assert set(COMMANDS) <= commands | {"frobnicate"}, set(COMMANDS) - commands
    assert len(CASES) >= 100


# ------------------------------------------------------------------------------------------------ the executable
EXECUTABLE_ROWS = [
    (["segment", "$d/photos", "--classes", "cat", "--out", "$d/out", "--checkpoint", "tiny"], 1,
     "photos: is a directory, not an image", {"photos": DIR}),
    (["segment", "$img", "--classes", "cat", "--out", "$d/out", "--checkpoint", "$d/photo.jpg"], 2,
     "photo.jpg: not a PyTorch checkpoint (it is a JPEG image", {"photo.jpg": JPEG}),
    (["segment", "$img", "--classes", "cat", "--out", "$d/out", "--checkpoint", "tiny", "--device", "cuda"], 2,
     "--device cuda: no CUDA device is available", {}),
    (["train", "tiny", "train.lr=-1", "--no-progress"], 2, "train.lr: -1 is not allowed (must be > 0)", {}),
    (["train", "tiny", "--resume", "auto", "train.batch_size=0"], 2, "train.batch_size: 0 is not allowed", {}),
    (["frobnicate"], 2, "invalid choice: 'frobnicate'", {}),
]


@pytest.mark.parametrize(("argv", "status", "message", "files"), EXECUTABLE_ROWS,
                         ids=[" ".join(r[0][:3]) for r in EXECUTABLE_ROWS])
def test_bad_input_through_the_simseg_executable(argv, status, message, files, world, tmp_path):
    exe = shutil.which("simseg")
    if exe is None:
        pytest.skip("the simseg console script is not installed (pip install -e .)")
    import simseg

    folder = tmp_path / "d"
    folder.mkdir()
    _make_files(folder, files, world)
    names = {**world, "d": folder}
    src = str(Path(simseg.__file__).resolve().parents[1])  # the simseg under test, whichever install the script is
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "CUDA_VISIBLE_DEVICES": "", "SIMSEG_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([exe, *[_subst(a, names) for a in argv]], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == status, proc.stderr
    shown = error_lines(proc.stderr)
    assert any(_subst(message, names) in line for line in shown), proc.stderr
    assert len(shown) == (2 if status == 1 else 1), proc.stderr


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path):
    """``simseg info tiny | head -1``: the pipe's reader is gone before the command writes (here closed before the
    process starts), so every write fails; the command ends with status 1 and nothing on stderr, no traceback."""
    import sys

    import simseg

    src = str(Path(simseg.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "SIMSEG_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "simseg", "info", "tiny"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == 1 and proc.stderr == "", proc.stderr
