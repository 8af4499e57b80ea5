"""Post-processing of the ``simseg`` protocol: the 2-label dense CRF and the 7 x 7 closing.

The CRF is the fully connected CRF of Krähenbühl & Koltun through ``pydensecrf2`` (an optional extra:
``pip install 'simseg[crf]'``); it is imported only when a CRF is actually run, so the rest of the package works
without it. Its parameters default to the ones the paper's numbers were made with (:class:`simseg.protocols.CRFParams`).

A CRF call costs tens of milliseconds of one core and the library holds the interpreter while it runs, so
:class:`CRFPool` runs calls in worker processes: the calls of one image in parallel, and overlapped with the next
image's forward (:meth:`simseg.segment.Segmenter.segment_many`). A worker computes exactly what the serial path
computes (:func:`refine_patch_map`), so the labels are the same.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from types import ModuleType

import cv2
import numpy as np

from simseg.errors import ConfigError
from simseg.protocols import CRFParams

#: Added to the probabilities before the log, as in the original, so a probability of 0 gives a finite unary.
_LOG_EPS = 1e-8


def require_densecrf() -> ModuleType:
    """Import ``pydensecrf.densecrf`` or raise a :class:`ConfigError` that says how to get it.

    Raises:
        ConfigError: pydensecrf2 is not installed.
    """
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        raise ConfigError(
            "CRF post-processing needs pydensecrf2, which is not installed: run pip install 'simseg[crf]' "
            "(or pip install pydensecrf2), or turn the CRF off (--no-crf on the command line, crf=False in Python)"
        ) from None
    return dcrf


def crf_available() -> bool:
    """Whether the dense CRF can run (pydensecrf2 importable)."""
    try:
        require_densecrf()
    except ConfigError:
        return False
    return True


def binary_unary(prob: np.ndarray) -> np.ndarray:
    """The CRF unary of a foreground probability map: ``-log([1 - p, p] + 1e-8)``, (2, H*W) float32, contiguous.

    Computed in float32 as the original does (its probability map is float32 and numpy keeps that dtype).
    """
    p = np.asarray(prob, dtype=np.float32).reshape(1, -1)
    probs = np.concatenate([1 - p, p], axis=0)
    return np.ascontiguousarray(-np.log(probs + _LOG_EPS), dtype=np.float32)


def dense_crf_binary(image: np.ndarray, prob: np.ndarray, params: CRFParams = CRFParams()) -> np.ndarray:
    """Refine a foreground probability map with a 2-label fully connected CRF.

    Args:
        image: (H, W, 3) uint8 RGB image the bilateral term compares colours on.
        prob: (H, W) foreground probability in [0, 1].
        params: the CRF's settings (default: the paper's).

    Returns:
        (H, W) bool foreground mask: the argmax of the CRF marginals (a tie goes to background, as ``np.argmax``).

    Raises:
        ConfigError: pydensecrf2 is not installed.
        ValueError: shapes or dtypes do not fit.
    """
    if prob.ndim != 2:
        raise ValueError(f"dense_crf_binary: probability map must be (H, W), got {prob.shape}")
    return crf_from_unary(image, binary_unary(prob), params)


def crf_from_unary(image: np.ndarray, unary: np.ndarray, params: CRFParams = CRFParams()) -> np.ndarray:
    """The dense-CRF library's part of :func:`dense_crf_binary`: build, add the kernels, run mean-field, argmax.

    Kept apart so a benchmark can time the library's calls separately from our own work.

    Args:
        image: (H, W, 3) uint8 RGB image.
        unary: (2, H*W) float32 unary energies (:func:`binary_unary`).
        params: the CRF's settings (default: the paper's).

    Returns:
        (H, W) bool foreground mask.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"dense_crf_binary: image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    if unary.shape != (2, h * w):
        raise ValueError(f"dense_crf_binary: image {image.shape[:2]} and probability map "
                         f"({unary.shape[1]} pixels) differ in size")
    dcrf = require_densecrf()
    crf = dcrf.DenseCRF2D(w, h, 2)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=params.gauss_sxy, compat=params.gauss_compat)
    crf.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb, rgbim=np.ascontiguousarray(image),
                             compat=params.bilateral_compat)
    q = np.asarray(crf.inference(params.iterations), dtype=np.float32)
    # argmax over 2 labels with np.argmax's tie rule (first label wins) is "strictly greater".
    return (q[1] > q[0]).reshape(h, w)


def closing(mask: np.ndarray, kernel: int = 7) -> np.ndarray:
    """Morphological closing with a ``kernel`` x ``kernel`` square: one dilation, then one erosion.

    The original calls ``cv2.dilate(mask, ones((7, 7)), 5)`` then ``cv2.erode(..., 3)``; the 5 and the 3 land in
    OpenCV's ``dst`` argument, not ``iterations``, so each operation runs once . OpenCV's default
    border (``morphologyDefaultBorderValue``) is kept: dilation sees nothing outside the image and erosion sees
    foreground there, so objects touching the border are not eaten.

    Args:
        mask: (H, W) bool or uint8 mask (any non-zero value is foreground).
        kernel: side of the square structuring element; 0 or 1 returns the mask unchanged.

    Returns:
        (H, W) bool mask.
    """
    m = mask.astype(np.uint8) if mask.dtype == np.bool_ else (mask != 0).astype(np.uint8)
    if kernel > 1:
        element = np.ones((kernel, kernel), dtype=np.uint8)
        m = cv2.erode(cv2.dilate(m, element), element)
    return m.astype(bool)


def refine_patch_map(image: np.ndarray, prob: np.ndarray, patch_size: int, params: CRFParams = CRFParams(),
                     kernel: int = 7) -> np.ndarray:
    """One class of the ``simseg`` protocol from its min-max normalised patch map to its closed mask.

    Nearest upsampling by ``patch_size`` (pure repetition), :func:`dense_crf_binary`, then :func:`closing`: the steps
    the serial path runs, in one function that a worker process can run (its arguments are small arrays).

    Args:
        image: (gh * patch_size, gw * patch_size, 3) uint8 image for the bilateral term.
        prob: (gh, gw) foreground probability in [0, 1] (the min-max normalised similarity map).
        patch_size: the upsampling factor.
        params: the CRF's settings.
        kernel: side of the closing's square element.

    Returns:
        (H, W) bool mask.
    """
    full = np.repeat(np.repeat(prob, patch_size, axis=0), patch_size, axis=1)
    return closing(dense_crf_binary(image, full, params), kernel)


def _worker_init() -> None:
    """A CRF worker runs one call at a time on one core: OpenCV's own thread pool would only compete with the other
    workers and the forward."""
    cv2.setNumThreads(1)


def _ready() -> int:
    require_densecrf()
    return os.getpid()


class CRFPool:
    """Dense-CRF calls in worker processes (a ``ProcessPoolExecutor`` of the ``spawn`` start method).

    ``spawn`` (not ``fork``): the parent holds torch's thread pools, which a forked child must not inherit. A call's
    arguments are a small uint8 image and an 18 x 18 map, so sending them costs far less than the call.

    Args:
        workers: number of worker processes (at least 1).
        start_method: ``spawn`` (default) or ``forkserver``.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, workers: int, start_method: str = "spawn"):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if workers < 1:
            raise ValueError(f"CRFPool: workers must be at least 1, got {workers}")
        self.workers = int(workers)
        self._started: list[Future] = []
        context = multiprocessing.get_context(start_method)
        self._executor = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_worker_init)

    def start(self) -> "CRFPool":
        """Start every worker now (they otherwise start on the first calls) and check that each can run the CRF.

        Returns the pool; the start runs in the background, so the caller's work (e.g. loading a model) overlaps it.
        """
        self._started = [self._executor.submit(_ready) for _ in range(self.workers)]
        return self

    def wait_ready(self) -> "CRFPool":
        """Block until every worker started by :meth:`start` is running (raises what a worker could not do)."""
        for future in self._started:
            future.result()
        return self

    def submit(self, image: np.ndarray, prob: np.ndarray, patch_size: int, params: CRFParams = CRFParams(),
               kernel: int = 7) -> Future:
        """:func:`refine_patch_map` in a worker; the future's result is the (H, W) bool mask."""
        return self._executor.submit(refine_patch_map, image, prob, patch_size, params, kernel)

    def close(self) -> None:
        """Stop the workers (calls not yet started are cancelled)."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "CRFPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
