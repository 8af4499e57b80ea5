"""Option groups that several commands share, and the parsing of their values.

Each ``add_*`` function adds one group of arguments to an ``argparse`` parser; the matching ``resolve_*`` / ``parse_*``
function turns the parsed strings into plain values, raising :class:`~simseg.errors.SimSegError` with a one-line
message that names the option.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Sequence

from simseg.classnames import TEMPLATE_SETS
from simseg.errors import ConfigError, InputError, describe_yaml_error
from simseg.protocols import DEFAULT_PROTOCOL, PROTOCOLS


def add_checkpoint_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--checkpoint`` and ``--tokenizer``."""
    parser.add_argument("--checkpoint", required=required, default=None,
                        help="simseg checkpoint folder, original .pth, preset, or hf-hub:ORG/NAME[@revision]")
    parser.add_argument("--tokenizer", default=None, help="folder with vocab.txt (default: the checkpoint's)")


def add_protocol_options(parser: argparse.ArgumentParser) -> None:
    """The segmentation protocol: ``--protocol``, ``--no-crf``, ``--templates``, ``--set``, ``--cache-dir``."""
    parser.add_argument("--protocol", default=None, choices=list(PROTOCOLS),
                        help="simseg: the paper's protocol (default, unless the checkpoint records another); dense: "
                             "sliding-window per-pixel protocol")
    parser.add_argument("--no-crf", action="store_true", help="skip the dense CRF (the paper's no-CRF variant)")
    parser.add_argument("--templates", default="imagenet", choices=list(TEMPLATE_SETS),
                        help="prompt templates: the 80 ImageNet ones (default) or a single 'a photo of a {}.'")
    parser.add_argument("--set", dest="params", action="append", default=[], metavar="KEY=VALUE",
                        help="protocol parameter, e.g. --set threshold_std=1.5 (repeatable); overrides the "
                             "checkpoint's recorded defaults")
    add_cache_option(parser)


def add_cache_option(parser: argparse.ArgumentParser) -> None:
    """``--cache-dir``: where class embeddings are cached."""
    parser.add_argument("--cache-dir", default=None,
                        help="class-embedding cache folder (default: $SIMSEG_CACHE/text or ~/.cache/simseg/text); "
                             "simseg segment also keeps a traced image tower per checkpoint folder there, in "
                             "image-towers/ (the size of the image weights), for a quicker start")


def add_device_option(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--device``."""
    shown = default or "cuda if available"
    parser.add_argument("--device", default=default, help=f"cpu, cuda, cuda:1, ... (default: {shown})")


def resolve_device(name: str | None, local_rank: int | None = None) -> str:
    """The device to run on: ``name``, or cuda when available; ``cuda`` becomes ``cuda:<local rank>`` under torchrun.

    Raises:
        InputError: CUDA asked for on a machine without it (or a GPU index it lacks), or an unknown device name.
    """
    from simseg.distributed import resolve_device as resolve

    device = resolve(name, "--device", local_rank)
    if name is None or (device.index is not None and ":" not in name):
        return str(device)
    return name  # as the user wrote it: reports show that


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as a dict; values are read as YAML scalars (``1.5``, ``null``, ``true``)."""
    import yaml

    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        try:
            params[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: cannot parse the value ({describe_yaml_error(e)})") from None
    return params


def resolve_protocol(protocol: str | None, overrides: dict[str, Any], recorded: dict[str, Any],
                     base: dict[str, dict[str, Any]] | None = None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The protocol and parameters a command uses: the paper's defaults, under ``base`` (e.g. a benchmark's), under
    the checkpoint's recorded evaluation defaults, under the user's ``--protocol`` / ``--set``.

    Args:
        protocol: ``--protocol`` (None: the recorded one, else the paper's).
        overrides: ``--set`` values.
        recorded: the checkpoint's :func:`~simseg.checkpoint.evaluation_defaults`.
        base: per protocol name, parameters below the recorded ones.

    Returns:
        (protocol name, parameters, what of the recorded defaults was used: ``{"protocol"?, "params"}``).
    """
    name = protocol or recorded.get("protocol") or DEFAULT_PROTOCOL
    from_checkpoint = dict((recorded.get("protocols") or {}).get(name, {}))
    used: dict[str, Any] = {"params": {k: v for k, v in from_checkpoint.items() if k not in overrides}}
    if protocol is None and recorded.get("protocol"):
        used["protocol"] = name
    params = {**(base or {}).get(name, {}), **from_checkpoint, **overrides}
    return name, params, used


def describe_recorded(checkpoint: str | os.PathLike, used: dict[str, Any], options: str) -> str | None:
    """The line saying which of a checkpoint's recorded evaluation defaults a command used (None: none were)."""
    parts = []
    if used.get("protocol"):
        parts.append(f"protocol {used['protocol']}")
    if used.get("params"):
        parts.append(", ".join(f"{k}={v}" for k, v in used["params"].items()))
    if used.get("classes"):
        parts.append(f"classes {used['classes']}")
    if not parts:
        return None
    return f"using the evaluation defaults recorded in {checkpoint}: {'; '.join(parts)} ({options} override them)"


def check_at_least(option: str, value: int | float | None, minimum: int | float) -> None:
    """One line naming ``option`` when ``value`` is below ``minimum`` (None passes)."""
    if value is not None and value < minimum:
        raise InputError(f"{option}: must be at least {minimum}, got {value}")


def output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Create an output folder up front, so an unwritable path fails in one line before any long work."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".simseg-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise InputError(f"{option} {path}: cannot write there ({e.strerror or e})") from None
    return path


def empty_output_folder(path: str | os.PathLike, force: bool) -> Path:
    """A folder a command writes a whole model into: absent, empty, or overwritten only with ``--force``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise InputError(f"{path}: output folder exists and is not empty (use --force to overwrite)")
    return path


def add_parallel_options(parser: argparse.ArgumentParser) -> None:
    """``--workers`` and ``--serial``: how images are overlapped (the labels are the same either way)."""
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="images in flight: N dense-CRF worker processes and, on a CPU, N forward lanes of one "
                             "thread each (default: the CPU cores available to this process)")
    parser.add_argument("--serial", action="store_true",
                        help="one image at a time, in this process (no CRF workers, no lanes)")


def parallel_plan(args: argparse.Namespace, device: str, crf: bool, images: int | None = None) -> dict[str, int]:
    """How to overlap images: ``{"crf_workers", "lanes", "threads"}`` (``threads``: torch's intra-op threads while
    the images run; 0 leaves them as they are).

    On a CPU the cores are shared out: ``lanes`` forwards of one thread each (a single-threaded forward wastes
    nothing on synchronisation, and several keep every core busy) beside as many CRF workers, which take a core
    while a lane waits for its masks. On a GPU one lane feeds the device and the CRF workers use the CPU cores.
    Under ``torchrun`` the cores are divided among the ranks of the node. A single image, ``--serial`` or no CRF
    on a GPU: nothing to overlap.
    """
    check_at_least("--workers", args.workers, 1)
    if getattr(args, "serial", False) or (images is not None and images < 2):
        return {"crf_workers": 0, "lanes": 1, "threads": 0}
    if args.workers is not None:
        cores = args.workers
    else:
        available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        cores = max(1, available // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    on_gpu = not str(device).startswith("cpu")
    if cores < 2 and not on_gpu:  # one core: a second process would only take turns with this one
        return {"crf_workers": 0, "lanes": 1, "threads": 0}
    lanes = 1 if on_gpu else cores
    crf_workers = cores if crf else 0
    if lanes == 1 and crf_workers == 0:
        return {"crf_workers": 0, "lanes": 1, "threads": 0}
    return {"crf_workers": crf_workers, "lanes": lanes, "threads": 1 if lanes > 1 else 0}


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` inside the block and restored after (0: unchanged)."""
    if not threads:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
