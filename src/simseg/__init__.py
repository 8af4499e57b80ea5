"""simseg: text-supervised semantic segmentation (SimSeg, CVPR 2023) as a library and a command line.

    model = simseg.load_model("ckpt")                       # simseg.checkpoint.load_model (also "hf-hub:ORG/NAME")
    from simseg.segment import segment, Segmenter           # one image in, one label map out
"""

from simseg.version import __version__  # noqa: F401 (re-exported: the version is set in version.py)


def load_model(path_or_preset, tokenizer=None, device="cpu", image_size=None, backend="torch", text=True):
    """Load a model in eval mode from a preset name, a simseg checkpoint folder, an original .pth file, or
    ``hf-hub:ORG/NAME``; ``backend="onnx"`` runs an ONNX export (``simseg export``) in ONNX Runtime.

    See :func:`simseg.checkpoint.load_model`.

    Raises:
        InputError: ``device`` is not a device name, or names one this machine lacks (checked before loading, for
            the torch backend).
    """
    from simseg.checkpoint import load_model as _load_model
    from simseg.distributed import resolve_device

    if device is not None and backend == "torch":  # ONNX Runtime finds its own CUDA (a CPU-only torch may lack it)
        device = resolve_device(str(device), label="device")
    return _load_model(path_or_preset, tokenizer=tokenizer, device=device, image_size=image_size, backend=backend,
                       text=text)

