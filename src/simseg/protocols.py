"""The segmentation protocols' parameters and the paper's defaults: the one place these numbers live.

Plain frozen dataclasses, no heavy imports, so the command line can offer the protocol names and parameters
without loading torch.

- :class:`CRFParams`: the 2-label dense CRF of the ``simseg`` protocol (the paper's settings).
- :class:`SimSegParams`: the paper's protocol (square input, image-level class selection, per-class maps, CRF,
  closing).
- :class:`DenseParams`: the sliding-window per-pixel protocol of later open-vocabulary work.
- :data:`BENCHMARK_DEFAULTS`: per-benchmark settings the paper used (the threshold uses the top 30 image-level scores
  on PASCAL Context, 10 elsewhere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from simseg.errors import ConfigError


@dataclass(frozen=True)
class CRFParams:
    """The fully connected CRF's settings; the defaults are the ones the paper's numbers were made with.

    Attributes:
        iterations: mean-field iterations.
        gauss_sxy: spatial standard deviation of the Gaussian (smoothness) kernel, in pixels.
        gauss_compat: weight of the Gaussian kernel (Potts compatibility).
        bilateral_sxy: spatial standard deviation of the bilateral (appearance) kernel, in pixels.
        bilateral_srgb: colour standard deviation of the bilateral kernel.
        bilateral_compat: weight of the bilateral kernel.
    """

    iterations: int = 3
    gauss_sxy: float = 3
    gauss_compat: float = 3
    bilateral_sxy: float = 40
    bilateral_srgb: float = 13
    bilateral_compat: float = 10


@dataclass(frozen=True)
class SimSegParams:
    """Parameters of the ``simseg`` protocol; the defaults are the paper's.

    Attributes:
        input_size: side of the square network input.
        top_n: how many of the highest image-level scores set the threshold (the paper: 30 for PASCAL Context,
            10 otherwise; see :data:`BENCHMARK_DEFAULTS`).
        threshold_std: threshold = mean + threshold_std x std of the top ``top_n`` scores.
        candidates: how many of the highest-scoring classes are walked.
        crf_iterations, crf_gauss_sxy, crf_gauss_compat, crf_bilateral_sxy, crf_bilateral_srgb,
            crf_bilateral_compat: the dense CRF's settings (:class:`CRFParams`).
        closing_kernel: side of the square closing element (0 or 1: no closing).
        no_crf_threshold: with the CRF off, a pixel is foreground where the min-max map exceeds this.
    """

    input_size: int = 288
    top_n: int = 10
    threshold_std: float = 1.0
    candidates: int = 5
    crf_iterations: int = CRFParams.iterations
    crf_gauss_sxy: float = CRFParams.gauss_sxy
    crf_gauss_compat: float = CRFParams.gauss_compat
    crf_bilateral_sxy: float = CRFParams.bilateral_sxy
    crf_bilateral_srgb: float = CRFParams.bilateral_srgb
    crf_bilateral_compat: float = CRFParams.bilateral_compat
    closing_kernel: int = 7
    no_crf_threshold: float = 0.5

    def __post_init__(self) -> None:
        for name in ("input_size", "top_n", "candidates", "crf_iterations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"protocol parameter {name}: must be at least 1, got {getattr(self, name)}")
        if self.closing_kernel < 0:
            raise ConfigError(f"protocol parameter closing_kernel: must be >= 0, got {self.closing_kernel}")
        if not 0.0 <= self.no_crf_threshold <= 1.0:
            raise ConfigError(f"protocol parameter no_crf_threshold: must be in [0, 1], got {self.no_crf_threshold}")

    def crf(self) -> CRFParams:
        """The CRF settings of these parameters."""
        return CRFParams(iterations=self.crf_iterations, gauss_sxy=self.crf_gauss_sxy,
                         gauss_compat=self.crf_gauss_compat, bilateral_sxy=self.crf_bilateral_sxy,
                         bilateral_srgb=self.crf_bilateral_srgb, bilateral_compat=self.crf_bilateral_compat)


@dataclass(frozen=True)
class DenseParams:
    """Parameters of the ``dense`` protocol.

    Attributes:
        short_side: the image's short side is resized to this before windowing.
        crop_size: side of the square sliding window.
        stride: step between windows.
        bg_threshold: background where the best foreground class's probability is below this (the softmax then runs
            over the foreground classes only); None lets the ``background`` class compete in the softmax.
        batch_size: windows per forward pass.
        long_side: the short-side resize stops where the long side would exceed this: the image is then resized so
            its long side is ``long_side`` (MMSegmentation's ``Resize(scale=(long_side, short_side), keep_ratio=True)``;
            benchmark images are never that elongated, so only panoramas and strips meet it, whose window count it
            bounds).
    """

    short_side: int = 448
    crop_size: int = 448
    stride: int = 224
    bg_threshold: float | None = None
    batch_size: int = 8
    long_side: int = 2048

    def __post_init__(self) -> None:
        for name in ("short_side", "long_side", "crop_size", "stride", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"protocol parameter {name}: must be at least 1, got {getattr(self, name)}")
        if self.bg_threshold is not None and not 0.0 <= self.bg_threshold <= 1.0:
            raise ConfigError(f"protocol parameter bg_threshold: must be in [0, 1] or None, got {self.bg_threshold}")


@dataclass(frozen=True)
class RetrievalParams:
    """The paper's image-text retrieval transform: resize, then a centre crop at the network's input size.

    Attributes:
        resize_size: side the image is resized to before cropping.
        crop_size: side of the centre crop (the network input).
        resize_mode: ``square`` resizes to (resize_size, resize_size), squashing the image, as the original's
            ``resize`` transform; ``short`` resizes the short side, keeping the aspect ratio.
    """

    resize_size: int = 324
    crop_size: int = 288
    resize_mode: str = "square"


#: Protocol name -> its parameters' class. ``simseg`` (the paper's) is the default everywhere.
PROTOCOLS: dict[str, type] = {"simseg": SimSegParams, "dense": DenseParams}

#: The protocol every command uses unless told otherwise.
DEFAULT_PROTOCOL = "simseg"

#: Per-benchmark protocol settings of the paper, applied unless the user sets the parameter.
BENCHMARK_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "pascal_context": {"simseg": {"top_n": 30}},
    "pascal_context59": {"simseg": {"top_n": 30}},
}


def benchmark_parameters(dataset: str, protocol: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The protocol parameters for a benchmark: the paper's per-benchmark defaults, then the user's overrides."""
    return {**BENCHMARK_DEFAULTS.get(dataset, {}).get(protocol, {}), **overrides}


def make_params(protocol: str, **params: Any) -> SimSegParams | DenseParams:
    """Build a protocol's parameters, checking names and types (values from ``--set`` arrive as YAML scalars).

    Raises:
        ConfigError: unknown protocol, unknown parameter, or a value of the wrong type or range.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    cls = PROTOCOLS[protocol]
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} for protocol {protocol}; "
                          f"known: {', '.join(known)}")
    values: dict[str, Any] = {}
    for name, value in params.items():
        default = known[name].default
        if value is None and default is None:
            values[name] = None
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"protocol parameter {name}: expected a number, got {value!r}")
        elif not math.isfinite(value):  # .nan passes no bound check and fails none
            raise ConfigError(f"protocol parameter {name}: expected a finite number, got {value!r}")
        elif isinstance(default, int) and known[name].type in ("int", int):
            if float(value) != int(value):
                raise ConfigError(f"protocol parameter {name}: expected an integer, got {value!r}")
            values[name] = int(value)
        else:
            values[name] = float(value)
    return cls(**values)
