"""simseg: text-supervised semantic segmentation (SimSeg, CVPR 2023) as a library and a command line."""

__version__ = "0.1.0"


def load_model(path_or_preset, tokenizer=None, device="cpu"):
    """Load a model in eval mode from a preset name, a simseg checkpoint folder, or an original .pth file.

    See :func:`simseg.checkpoint.load_model`.
    """
    from simseg.checkpoint import load_model as _load_model

    return _load_model(path_or_preset, tokenizer=tokenizer, device=device)


def segment(model, image, classes, **kwargs):
    """Segment one image with the given class names. See :func:`simseg.segment.segment`."""
    from simseg.segment import segment as _segment

    return _segment(model, image, classes, **kwargs)
