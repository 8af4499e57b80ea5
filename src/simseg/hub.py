"""Models on the Hugging Face Hub: ``hf-hub:ORG/NAME[@revision]`` names, model cards, uploads.

A simseg model on the Hub is a simseg checkpoint folder (``model.safetensors``, ``config.yaml``,
``tokenizer/vocab.txt``) with a model card (``README.md``), optionally evaluation reports (``*.json``,
``metrics/*.json``) and an ONNX export (``onnx/``). Names are resolved by ``huggingface_hub.snapshot_download`` into
its standard cache, fetching only the files the caller needs; with ``HF_HUB_OFFLINE=1`` only the cache is read.
Every failure (no such repository or revision, not in the cache while offline, no simseg config in the repository,
no network, no token) is a :class:`~simseg.errors.SimSegError` with one line naming the model and the problem.

This module reads and writes folders and plain values only (it imports neither the model nor the checkpoint
loader), so :mod:`simseg.checkpoint` can resolve names through it and :mod:`simseg.model` can write cards with it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from simseg.checkpoint_format import CONFIG_NAME, TOKENIZER_DIR, WEIGHTS_NAME
from simseg.errors import CheckpointError, InputError, describe_read_error, one_line
from simseg.files import atomic_write_text

HUB_PREFIX = "hf-hub:"
CARD_NAME = "README.md"
#: The marker that tells a card simseg wrote (and may rewrite) from one a person wrote (kept as it is).
CARD_MARKER = "<!-- written by simseg: rewritten by save_pretrained / push-to-hub unless this line is removed -->"
#: Files a torch model needs from a repository.
MODEL_FILES = (CONFIG_NAME, WEIGHTS_NAME, f"{TOKENIZER_DIR}/*")
#: Files the ONNX backend needs (the export lives in ``onnx/``; ``config.yaml`` ties it to the weights).
ONNX_FILES = (CONFIG_NAME, "onnx/*")
#: What an upload carries from a checkpoint folder (never optimizer state or temporary files).
UPLOAD_PATTERNS = (CONFIG_NAME, WEIGHTS_NAME, f"{TOKENIZER_DIR}/*", CARD_NAME, "*.json", "metrics/*.json", "onnx/*")
_TRUE = {"1", "ON", "YES", "TRUE"}
_REPO_ID = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?/[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?$")


# ------------------------------------------------------------------------------------------------ names
def is_hub_name(name: Any) -> bool:
    """True for a string that starts with ``hf-hub:``."""
    return isinstance(name, str) and name.startswith(HUB_PREFIX)


def parse_hub_name(name: str) -> tuple[str, str | None]:
    """``hf-hub:ORG/NAME[@revision]`` -> (``ORG/NAME``, revision or None).

    Raises:
        InputError: not of that form.
    """
    body = name[len(HUB_PREFIX):] if is_hub_name(name) else name
    repo_id, _, revision = body.partition("@")
    if not _valid_repo_id(repo_id) or (revision == "" and "@" in body):
        raise InputError(f"{name}: not a Hugging Face Hub name (expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION)")
    return repo_id, revision or None


def hub_name(repo_id: str, revision: str | None = None) -> str:
    """``hf-hub:ORG/NAME``, with ``@revision`` unless it is None or ``main``."""
    return f"{HUB_PREFIX}{repo_id}" + (f"@{revision}" if revision and revision != "main" else "")


def _valid_repo_id(repo_id: str) -> bool:
    """The Hub's rule: letters, digits, '-', '_', '.', beginning and ending with a letter or digit ('_' may end it),
    no '--' or '..', not ending in '.git', a name of at most 96 characters."""
    return bool(_REPO_ID.match(repo_id)) and "--" not in repo_id and ".." not in repo_id \
        and not repo_id.endswith(".git") and len(repo_id.split("/")[-1]) <= 96


def check_repo_id(repo_id: str) -> str:
    """``ORG/NAME`` as the Hub accepts it, or a one-line error."""
    if not _valid_repo_id(repo_id):
        raise InputError(f"{repo_id}: not a Hub repository id (expected ORG/NAME: letters, digits, '-', '_', '.')")
    return repo_id


def check_license(license: str) -> str:
    """A Hub ``license`` id (``mit``, ``apache-2.0``, ``cc-by-4.0``, ``other``, ...), or a one-line error."""
    if not isinstance(license, str) or not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", license):
        raise InputError(f"license {license!r}: expected a Hub license id such as mit, apache-2.0, cc-by-4.0 or other")
    return license


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, read now (huggingface_hub reads it once, at
    import; a process that sets it later is still honoured here)."""
    from_env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").upper() in _TRUE
    try:
        from huggingface_hub import constants

        return from_env or bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return from_env


def _require_hub() -> None:
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise InputError("hf-hub: names and uploads need huggingface_hub: pip install 'simseg[hub]'") from None


def _errors() -> dict[str, type]:
    """huggingface_hub's error classes present in the installed version (some are recent)."""
    from huggingface_hub import errors

    names = ("RepositoryNotFoundError", "RevisionNotFoundError", "GatedRepoError", "LocalEntryNotFoundError",
             "EntryNotFoundError", "IncompleteSnapshotError", "OfflineModeIsEnabled", "HfHubHTTPError",
             "LocalTokenNotFoundError")
    return {n: getattr(errors, n) for n in names if isinstance(getattr(errors, n, None), type)}


def _status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def _hub_failure(name: str, error: BaseException, offline_now: bool) -> str:
    """One line for a failed download or lookup of ``name``."""
    kinds = _errors()

    def isa(*names: str) -> bool:
        return any(n in kinds and isinstance(error, kinds[n]) for n in names)

    if isa("GatedRepoError"):
        return f"{name}: the repository is gated: accept its terms on the Hub and log in (hf auth login)"
    if isa("RevisionNotFoundError"):
        return f"{name}: no such revision in the repository"
    if isa("RepositoryNotFoundError"):
        return f"{name}: no such repository on the Hugging Face Hub (or it is private and no token here can read it)"
    if isa("IncompleteSnapshotError"):
        return f"{name}: the cached copy is incomplete and the Hub cannot be reached to finish it"
    if offline_now or isa("OfflineModeIsEnabled"):
        return (f"{name}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set (download it once with the "
                "network, or point HF_HUB_CACHE / HF_HOME at a cache that has it)")
    if isa("LocalEntryNotFoundError"):
        return f"{name}: the Hugging Face Hub cannot be reached and the model is not in the local cache"
    if isa("HfHubHTTPError") and _status(error):
        return f"{name}: the Hugging Face Hub answered HTTP {_status(error)}"
    return f"{name}: cannot fetch from the Hugging Face Hub ({type(error).__name__}: {one_line(error)})"


# ------------------------------------------------------------------------------------------------ download
def resolve(
    name: str,
    allow_patterns: Sequence[str] = MODEL_FILES,
    required: Sequence[str] = (CONFIG_NAME, WEIGHTS_NAME),
    local_only: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """The local folder of ``hf-hub:ORG/NAME[@revision]``: a snapshot in the Hugging Face cache.

    Only files matching ``allow_patterns`` are fetched (the weights, config and tokenizer by default: never a whole
    repository). The folder must hold a simseg ``config.yaml`` and every file in ``required``.

    Args:
        name: the model's name with the ``hf-hub:`` prefix.
        allow_patterns: glob patterns of the files to fetch.
        required: files that must be in the snapshot.
        local_only: only read the cache; default: whether ``HF_HUB_OFFLINE`` is set.
        cache_dir: the cache; default huggingface_hub's (``HF_HUB_CACHE``, else ``HF_HOME/hub``).

    Raises:
        InputError: a malformed name, huggingface_hub missing, the repository or revision missing, not in the cache
            while offline, the Hub unreachable.
        CheckpointError: the repository holds no simseg model (no simseg config, a required file missing).
    """
    from simseg.version import __version__

    repo_id, revision = parse_hub_name(name)
    _require_hub()
    from huggingface_hub import constants, snapshot_download

    offline_now = offline() if local_only is None else bool(local_only)
    try:
        folder = Path(snapshot_download(
            repo_id=repo_id, revision=revision, allow_patterns=list(allow_patterns), local_files_only=offline_now,
            cache_dir=None if cache_dir is None else str(cache_dir), library_name="simseg",
            library_version=__version__))
    except (ImportError, KeyboardInterrupt):
        raise
    except Exception as e:  # huggingface_hub's errors, httpx's connection errors, OSError
        raise InputError(_hub_failure(name, e, offline_now)) from None
    at = f" at revision {revision}" if revision else ""
    config = folder / CONFIG_NAME
    if not config.is_file():
        raise CheckpointError(f"{name}: the repository has no simseg {CONFIG_NAME}{at}: not a simseg model "
                              f"(cache: {cache_dir or constants.HF_HUB_CACHE})")
    if read_config(config, label=name).get("format") != "simseg":
        raise CheckpointError(f"{name}: its {CONFIG_NAME} is not a simseg config: not a simseg model")
    for need in required:
        if not (folder / need).is_file():
            if offline_now:  # the cache may hold only some files (e.g. the config alone): the repository may have it
                raise CheckpointError(f"{name}: no {need} in the local Hugging Face cache{at} and HF_HUB_OFFLINE is "
                                      "set (the cached copy holds only some of the files: fetch it once with the "
                                      "network)")
            raise CheckpointError(f"{name}: the repository has no {need}{at}")
    return folder


def snapshot_info(folder: str | os.PathLike) -> dict[str, str] | None:
    """``{"repo_id", "commit"}`` of a folder inside the Hugging Face cache (``.../models--ORG--NAME/snapshots/SHA``),
    or None for any other folder."""
    p = Path(folder)
    if p.parent.name != "snapshots" or not p.parent.parent.name.startswith("models--"):
        return None
    org_name = p.parent.parent.name[len("models--"):].split("--")
    return {"repo_id": "/".join(org_name), "commit": p.name}


# ------------------------------------------------------------------------------------------------ model cards
def read_config(path: str | os.PathLike, label: str | None = None) -> dict:
    """A simseg ``config.yaml`` as a plain dict (one line on a YAML error)."""
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise CheckpointError(f"{label or path}: unreadable {CONFIG_NAME} ({describe_read_error(e)})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{label or path}: {CONFIG_NAME} is not a mapping")
    return doc


def _parameter_counts(weights: Path) -> dict[str, int] | None:
    """Parameters per part from the safetensors header (no tensor is read)."""
    if not weights.is_file():
        return None
    try:
        header_len = int.from_bytes(weights.open("rb").read(8), "little")
        with weights.open("rb") as f:
            f.seek(8)
            header = json.loads(f.read(header_len))
    except (OSError, ValueError):
        return None
    counts = {"image_encoder": 0, "text_encoder": 0, "projections": 0, "total": 0}
    for key, info in header.items():
        if key == "__metadata__" or not isinstance(info, dict):
            continue
        n = 1
        for d in info.get("shape", []):
            n *= int(d)
        counts["total"] += n
        part = key.split(".")[0]
        if part in ("image_encoder", "text_encoder"):
            counts[part] += n
        elif part in ("image_projection", "text_projection"):
            counts["projections"] += n
    return counts


def _temperature(weights: Path) -> str:
    """``"0.0123 in the weights; "`` from the weights file (one scalar read), or "" when it cannot be read."""
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="np") as f:
            value = float(f.get_tensor("temperature_param"))
    except Exception:  # no file, another layout: the card just leaves the learned value out
        return ""
    return f"{value:.4g} in the weights; "


def find_metrics(folder: str | os.PathLike) -> list[tuple[str, dict]]:
    """Evaluation reports stored with a model: ``*.json`` and ``metrics/*.json`` holding ``mIoU`` or ``RSUM``.

    Returns:
        (path relative to ``folder``, report) pairs, sorted by path; unreadable or unrelated JSON files are left out.
    """
    root = Path(folder)
    found = []
    for path in sorted(list(root.glob("*.json")) + list(root.glob("metrics/*.json"))):
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        if isinstance(report, dict) and ("mIoU" in report or "RSUM" in report):
            found.append((path.relative_to(root).as_posix(), report))
    return found


def _num(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "n/a"


def _metrics_rows(metrics: list[tuple[str, dict]], weights_sha: str | None, source_sha: str | None = None) -> list[str]:
    rows = ["| report | benchmark | protocol | result | measured on these weights |", "|---|---|---|---|---|"]
    for rel, report in metrics:
        protocol = report.get("protocol") if isinstance(report.get("protocol"), dict) else {}
        pname = protocol.get("name", "n/a")
        if pname == "simseg":
            pname += f" (input {protocol.get('input_size')}, CRF {'on' if protocol.get('crf') else 'off'})"
        if "mIoU" in report:
            result = f"mIoU {_num(report['mIoU'])}, aAcc {_num(report.get('aAcc'))}"
            if report.get("num_evaluated") is not None:
                result += f" ({report.get('num_evaluated')} of {report.get('num_images')} images)"
        else:
            result = (f"I2T R@1 {_num(report.get('I2T_R@1'))}, T2I R@1 {_num(report.get('T2I_R@1'))}, "
                      f"RSUM {_num(report.get('RSUM'))}")
        ck = report.get("checkpoint") if isinstance(report.get("checkpoint"), dict) else {}
        if weights_sha and ck.get("sha256") == weights_sha:
            same = "yes"
        elif source_sha and ck.get("sha256") == source_sha:  # the original .pth these weights were converted from
            same = "yes (the file they were converted from)"
        else:
            same = "no (another checkpoint)" if ck.get("sha256") else "not recorded"
        rows.append(f"| `{rel}` | {report.get('dataset', 'n/a')} | {pname} | {result} | {same} |")
    return rows


def _yaml_block(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=None, width=110).rstrip()


def model_card(
    folder: str | os.PathLike,
    repo_id: str | None = None,
    license: str = "mit",
    training_config: dict | None = None,
    revision: str | None = None,
) -> str:
    """The model card (``README.md``) of a simseg checkpoint folder.

    It says what the model is (towers, sizes, pooling, temperature, parameter counts, weights sha256), how it was
    made (the metadata in ``config.yaml`` and ``training_config``: the run's ``data`` and ``train`` sections), the
    evaluation reports stored in the folder (:func:`find_metrics`), the license field, and three lines that load
    and segment with it.

    Args:
        folder: a folder written by :func:`simseg.checkpoint_format.save_model`.
        repo_id: the Hub repository (``ORG/NAME``) the card is for; None for a folder not yet on the Hub.
        license: the Hub's ``license`` field (an SPDX-like id such as ``mit`` or ``apache-2.0``, or ``other``).
        training_config: the training run's merged config, if known.
        revision: the branch the card is committed to (its load lines name it); None for ``main``.

    Raises:
        CheckpointError: the folder has no simseg config.
    """
    root = Path(folder)
    if not (root / CONFIG_NAME).is_file():
        raise CheckpointError(f"{root}: not a simseg checkpoint folder (no {CONFIG_NAME})")
    doc = read_config(root / CONFIG_NAME)
    if doc.get("format") != "simseg":
        raise CheckpointError(f"{root / CONFIG_NAME}: not a simseg checkpoint config")
    check_license(license)
    cfg = doc.get("model") or {}
    vision, text = cfg.get("vision") or {}, cfg.get("text") or {}
    kwargs, tconf = vision.get("kwargs") or {}, text.get("config") or {}
    meta = doc.get("meta") or {}
    title = repo_id or root.resolve().name
    name = hub_name(repo_id, revision) if repo_id else str(root)
    counts = _parameter_counts(root / WEIGHTS_NAME)
    tokenizer = root / TOKENIZER_DIR / "vocab.txt"
    vocab = sum(1 for _ in tokenizer.open(encoding="utf-8")) if tokenizer.is_file() else None
    pooling = cfg.get("pooling", "loda")
    pool_text = (f"LoDA (per dimension, mean of the top {cfg.get('image_topk', 5)} patches / top "
                 f"{cfg.get('text_topk', 1)} words)") if pooling == "loda" else pooling
    lines = [
        "---",
        f"license: {license}",
        "library_name: simseg",
        "pipeline_tag: image-segmentation",
        "tags:",
        *[f"- {t}" for t in ("simseg", "zero-shot-segmentation", "semantic-segmentation", "image-text-retrieval",
                             "vision-language", "safetensors")],
        "---",
        CARD_MARKER,
        "",
        f"# {title}",
        "",
        "A SimSeg dual encoder (\"A Simple Framework for Text-Supervised Semantic Segmentation\", CVPR 2023): a ViT "
        "image tower and a BERT text tower trained contrastively on image-caption pairs with LoDA pooling, for "
        "zero-shot semantic segmentation with any class names and zero-shot image-text retrieval. Stored in the "
        f"simseg format (`{WEIGHTS_NAME}`, `{CONFIG_NAME}`, `{TOKENIZER_DIR}/vocab.txt`); read it with the `simseg` "
        "package.",
        "",
        "| | |",
        "|---|---|",
        f"| image tower | timm `{vision.get('name', 'n/a')}`"
        + (f" ({', '.join(f'{k} {v}' for k, v in kwargs.items())})" if kwargs else "")
        + f", native input {vision.get('img_size', 'n/a')} px |",
        f"| text tower | BERT (hidden {tconf.get('hidden_size', 768)}, {tconf.get('num_hidden_layers', 12)} layers), "
        f"vocabulary {tconf.get('vocab_size', vocab or 'n/a')}, captions of at most {cfg.get('max_length', 25)} "
        "tokens |",
        f"| shared embedding | {cfg.get('embed_dim', 512)} dimensions, {pool_text} |",
        f"| temperature | {_temperature(root / WEIGHTS_NAME)}initial {cfg.get('temperature_init', 0.02)}, clamped to "
        f"[{cfg.get('temperature_min', 0.001)}, {cfg.get('temperature_max', 0.5)}] |",
    ]
    if counts:
        lines.append(f"| parameters | {counts['total']:,} (image {counts['image_encoder']:,}, text "
                     f"{counts['text_encoder']:,}, projections {counts['projections']:,}) |")
    if doc.get("weights_sha256"):
        lines.append(f"| `{WEIGHTS_NAME}` sha256 | `{doc['weights_sha256']}` |")
    if (root / "onnx" / "simseg_onnx.json").is_file():
        lines.append("| ONNX export | `onnx/` (image and text towers for ONNX Runtime: `--backend onnx`) |")
    lines += [
        "",
        "## How to use",
        "",
        "```python",
        "import simseg, simseg.segment",
        f"model = simseg.load_model(\"{name}\")",
        "result = simseg.segment.segment(model, \"street.jpg\", \"car, person, tree\")  # .labels: 0 = background",
        "```",
        "",
        "From the command line (`pip install \"simseg[hub,crf]\"`):",
        "",
        "```bash",
        f"simseg segment street.jpg --classes \"car,person,tree\" --checkpoint {name} --out out/",
        "```",
        "",
        "## Training",
        "",
    ]
    if meta:
        lines += ["Recorded with the weights:", "", "```yaml", _yaml_block(meta), "```", ""]
    if training_config:
        shown = {k: training_config[k] for k in ("data", "train") if k in training_config} or training_config
        lines += ["The training run's config:", "", "```yaml", _yaml_block(shown), "```", ""]
    if not meta and not training_config:
        lines += ["No training record is stored with these weights.", ""]
    lines += ["The model config:", "", "```yaml", _yaml_block(cfg), "```", "", "## Evaluation", ""]
    metrics = find_metrics(root)
    if metrics:
        rows = _metrics_rows(metrics, doc.get("weights_sha256"), meta.get("source_sha256"))
        lines += ["Reports stored in this repository (percent; each report names its full protocol, checkpoint and "
                  "software versions):", "", *rows, ""]
    else:
        lines += ["No evaluation report is stored with this model. `simseg eval-seg` and `simseg eval-retrieval` "
                  "write `metrics.json` reports that `simseg push-to-hub --metrics` uploads with it.", ""]
    lines += [
        "## License",
        "",
        f"`{license}` (the card's `license` field). The simseg software is MIT-licensed.",
        "",
        "## Citation",
        "",
        "```bibtex",
        "@inproceedings{yi2023simseg,",
        "  author={Yi, Muyang and Cui, Quan and Wu, Hao and Yang, Cheng and Yoshie, Osamu and Lu, Hongtao},",
        "  title={A Simple Framework for Text-Supervised Semantic Segmentation},",
        "  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},",
        "  year={2023}, pages={7071-7080}",
        "}",
        "```",
        "",
    ]
    return "\n".join(lines)


def is_simseg_card(path: str | os.PathLike) -> bool:
    """True when ``path`` is a card simseg wrote (so rewriting it loses nothing a person wrote)."""
    try:
        return CARD_MARKER in Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False


def write_model_card(folder: str | os.PathLike, repo_id: str | None = None, license: str = "mit",
                     training_config: dict | None = None, overwrite: bool = False, revision: str | None = None) -> Path:
    """Write :func:`model_card` as ``folder/README.md`` (atomically).

    A ``README.md`` that simseg did not write is kept unless ``overwrite``.

    Returns:
        The card's path.
    """
    path = Path(folder) / CARD_NAME
    if path.exists() and not overwrite and not is_simseg_card(path):
        return path
    return atomic_write_text(path, model_card(folder, repo_id=repo_id, license=license,
                                              training_config=training_config, revision=revision))


def store_metrics(folder: str | os.PathLike, reports: Sequence[str | os.PathLike]) -> list[Path]:
    """Copy evaluation reports (``metrics.json`` files) into ``folder/metrics/`` under unique names.

    Raises:
        InputError: a report is missing or is not an evaluation report (no ``mIoU`` / ``RSUM``).
    """
    out_dir = Path(folder) / "metrics"
    written: list[Path] = []
    used: set[str] = set()
    for src in reports:
        src = Path(src)
        try:
            report = json.loads(src.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"{src}: file not found") from None
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise InputError(f"{src}: not a JSON report ({describe_read_error(e)})") from None
        if not isinstance(report, dict) or not ("mIoU" in report or "RSUM" in report):
            raise InputError(f"{src}: not an evaluation report (no mIoU or RSUM)")
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(report.get("dataset") or src.stem)).strip("-") or "report"
        stem, n = base, 2
        while stem in used:
            stem, n = f"{base}-{n}", n + 1
        used.add(stem)
        out_dir.mkdir(parents=True, exist_ok=True)
        written.append(atomic_write_text(out_dir / f"{stem}.json", json.dumps(report, indent=2) + "\n"))
    return written


def find_training_config(folder: str | os.PathLike) -> dict | None:
    """The merged config of the training run a checkpoint folder belongs to, if it sits in a run folder.

    ``simseg train`` writes ``RUN/config.yaml`` (with ``train`` and ``data`` sections), the final model in
    ``RUN/checkpoint/`` and periodic ones in ``RUN/checkpoints/step-*/``.
    """
    root = Path(folder).resolve()
    for candidate in (root.parent / CONFIG_NAME, root.parent.parent / CONFIG_NAME):
        if candidate.is_file():
            try:
                doc = read_config(candidate)
            except CheckpointError:
                continue
            if "train" in doc and "model" in doc and doc.get("format") != "simseg":
                return doc
    return None


# ------------------------------------------------------------------------------------------------ upload
def stage_folder(folder: str | os.PathLike, staging: str | os.PathLike) -> Path:
    """Link (or copy) the files of :data:`UPLOAD_PATTERNS` from ``folder`` into ``staging``, so the card and the
    reports can be added without writing into the user's checkpoint folder. A JSON file outside ``onnx/`` goes only
    when it is an evaluation report (:func:`find_metrics`)."""
    import fnmatch

    src, dst = Path(folder), Path(staging)
    reports = {rel for rel, _ in find_metrics(src)}
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = path.relative_to(src).as_posix()
        if not any(fnmatch.fnmatch(rel, pat) for pat in UPLOAD_PATTERNS) or rel.split("/")[-1].startswith("."):
            continue
        if rel.endswith(".json") and not rel.startswith("onnx/") and rel not in reports:
            continue  # not an evaluation report: a training checkpoint's state.json, a tool's notes
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(path, target)
    return dst


def upload_ready(repo_id: str, token: str | None = None) -> str:
    """The token to upload to ``repo_id`` with, or one line saying why no upload can happen (a bad repository id,
    huggingface_hub missing, ``HF_HUB_OFFLINE`` set, no token)."""
    check_repo_id(repo_id)
    _require_hub()
    import huggingface_hub

    if offline():
        raise InputError(f"{repo_id}: cannot upload: HF_HUB_OFFLINE is set (uploading needs the network)")
    token = token or huggingface_hub.get_token()
    if not token:
        raise InputError(f"{repo_id}: cannot upload: no Hugging Face token (run 'hf auth login' or set HF_TOKEN)")
    return token


def upload_folder(folder: str | os.PathLike, repo_id: str, private: bool = False, revision: str | None = None,
                  commit_message: str | None = None, token: str | None = None,
                  api_factory: Callable[..., Any] | None = None) -> str:
    """Create ``repo_id`` on the Hub if needed and upload ``folder`` to it in one commit.

    Args:
        folder: the staged model folder (see :func:`stage_folder`).
        repo_id: ``ORG/NAME``.
        private: create the repository private (an existing repository keeps its visibility).
        revision: the branch to commit to (default ``main``; created from ``main`` if the repository lacks it).
        commit_message: the commit's message.
        token: a Hub token; default the one huggingface_hub finds (``HF_TOKEN``, ``hf auth login``).
        api_factory: builds the client (``huggingface_hub.HfApi`` by default).

    Returns:
        The commit's URL (or the repository's when the Hub answers none).

    Raises:
        InputError: offline, no token, or the Hub refused or could not be reached (one line).
    """
    import huggingface_hub

    token = upload_ready(repo_id, token)
    api = (api_factory or huggingface_hub.HfApi)(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and not revision.startswith("refs/pr/"):  # a commit to a branch the repository lacks fails
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                                 commit_message=commit_message or "Upload simseg model")
    except (ImportError, KeyboardInterrupt):
        raise
    except Exception as e:
        status = _status(e)
        if status in (401, 403):
            raise InputError(f"{repo_id}: the Hub refused the upload (HTTP {status}: the token cannot write there)") \
                from None
        raise InputError(_hub_failure(repo_id, e, False).replace("cannot fetch from", "cannot upload to")) from None
    return str(getattr(info, "commit_url", None) or getattr(info, "url", None) or repo_id)
