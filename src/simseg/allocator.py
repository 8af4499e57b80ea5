"""Settings of the C allocator for tensor work on the CPU (Linux with glibc).

torch's CPU tensors come from ``malloc``. By default glibc serves a block of more than 128 KiB (a threshold it
raises as such blocks are freed) with a fresh memory mapping and gives freed memory above 128 KiB at the top of the
heap back to the kernel. A forward pass allocates and frees megabytes per layer, so many of its outputs land on
pages the kernel must map and zero again on first touch: a page fault for every 4 KiB, serialised in the kernel
when two threads fault at once.

:func:`keep_freed_memory` raises both thresholds, so freed blocks stay in the process and are reused. Measured on a
2-core CPU (ViT-S/16 at 288, 30 forwards with each setting in turn in one process): about 1.07x faster on one
thread and 1.3x on two; ``benchmarks/bench_segment.py`` prints the forward with and without it. The price is that
the process keeps the memory it freed (its peak, not more) until it exits.

The ``simseg`` command applies it as it starts (:func:`from_environment`: ``SIMSEG_MALLOC=default`` leaves the
allocator as it is); a program using the library calls it itself, or not. It changes a process-wide setting, so it
belongs in an application's entry point, never in library code.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

#: ``mallopt`` parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc's defaults of both thresholds.
GLIBC_DEFAULT = 128 * 1024
#: The largest mmap threshold glibc accepts on 64-bit (``HEAP_MAX_SIZE / 2``): blocks up to it are reused.
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Freed memory at the top of the heap that stays with the process.
TRIM_THRESHOLD = 1 << 30


def _mallopt():
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") if platform.system() == "Linux" else None
    except (ValueError, OSError):
        libc = None
    if not libc or not libc.startswith("glibc"):
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        fn = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def keep_freed_memory(enable: bool = True) -> bool:
    """Keep freed memory in the process (see the module text); ``enable=False`` sets glibc's default thresholds
    back (fixed at 128 KiB: glibc's raising of the mmap threshold stays off once it was set).

    Returns whether the allocator took the settings: False off Linux/glibc, where nothing is changed."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    mmap, trim = (MMAP_THRESHOLD, TRIM_THRESHOLD) if enable else (GLIBC_DEFAULT, GLIBC_DEFAULT)
    return bool(mallopt(M_MMAP_THRESHOLD, mmap)) and bool(mallopt(M_TRIM_THRESHOLD, trim))


#: The environment variable read by :func:`from_environment`, and its values.
ENV = "SIMSEG_MALLOC"
CHOICES = ("keep", "default")


def from_environment(environ: dict[str, str]) -> bool:
    """:func:`keep_freed_memory` unless ``environ[ENV]`` is ``default``; an unknown value is a ``ValueError`` naming
    the variable. Returns whether the settings were taken."""
    value = environ.get(ENV, "").strip().lower() or "keep"
    if value not in CHOICES:
        raise ValueError(f"{ENV}={environ[ENV]!r}: expected one of {', '.join(CHOICES)}")
    return keep_freed_memory() if value == "keep" else False
