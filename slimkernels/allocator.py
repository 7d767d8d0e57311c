"""Process-wide tuning of glibc's allocator for repeated codec calls on CPU.

PyTorch's CPU tensors come from ``malloc``. glibc serves a request above its mmap threshold with
a fresh ``mmap`` (every page faulted in on first touch, unmapped on free) and returns the top of
its heap to the OS once more than the trim threshold is free there. Both thresholds adapt to
the largest freed block by default, so a process that only ever runs SlimCAE's narrow widths
(activations of a few MB) keeps paying page faults for every activation: on a 768x512 image at
w=48 (2-core Zen 3 EPYC, fp32) ``compress`` took 15.6-16.2 ms in a fresh process against
11.9-12.4 ms with the thresholds below, and the encoder transform 14.1-14.5 against 10.6-10.9
(``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` set, two runs each, fresh processes);
w=192 was unchanged (its 19 MB activations already raise the adaptive thresholds). Setting the
trim threshold alone is worse than the default (it freezes the mmap threshold at 128 KiB).
Training gains too: the Winograd weight gradients take fresh 10-20 MB buffers every step, and a
fp32 training step (batch 8, crop 128) took 0.697 and 0.638 s against 0.761 and 0.700 s
untuned (``bench/bench_train_step.py --no-plain`` with and without ``--no-tune-malloc``,
alternating processes; the weight-gradient GEMM 20 -> 9 ms).

:func:`tune_malloc` is explicit: the ``slimkernels`` command-line tool, ``slimkernels eval``,
the training command (``slimkernels train``, ``python/train.py``) and the demo call it through
:func:`tune_from_env` (unless ``SLIMKERNELS_TUNE_MALLOC=0``); a program
using the Python API may call it once at start. It
changes the whole process (that is what it is for) and keeps up to ``trim_threshold`` bytes of
freed memory mapped. Memory measurements of single calls (peak RSS) should not use it.
"""
from __future__ import annotations

import ctypes
import sys

from ._env import switched_off

__all__ = ["tune_malloc", "tune_from_env", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

#: Requests up to this many bytes come from the heap (SlimCAE's activations on a 768x512 image:
#: 4.7 MB at w=48 to 19 MB at w=192).
MMAP_THRESHOLD = 64 << 20
#: Freed memory at the top of the heap is returned to the OS only beyond this many bytes.
TRIM_THRESHOLD = 128 << 20
_M_TRIM_THRESHOLD = -1   # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3


def tune_malloc(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD
                ) -> bool:
    """Set glibc's mmap and trim thresholds (``mallopt``) for this process.

    Args:
        mmap_threshold: int bytes, 0 < value <= 2**31 - 1 (glibc caps it at 32 MiB on some
            versions; a refused value leaves the default and returns False).
        trim_threshold: int bytes, > 0.
    Returns:
        True when both were applied; False where there is no glibc (macOS, Windows, musl) or
        ``mallopt`` refused a value. Never raises for an unsupported platform.
    Raises:
        ValueError: a threshold that is not a positive int below 2**31.
    """
    for name, v in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if not isinstance(v, int) or isinstance(v, bool) or not 0 < v < 2 ** 31:
            raise ValueError(f"tune_malloc: {name}={v!r} must be a positive int below 2**31 "
                             f"(bytes)")
    if not sys.platform.startswith("linux"):
        return False
    try:
        # the symbols already loaded into this process (libc among them): no library search,
        # which costs a few ms at start-up (ctypes.util.find_library runs ldconfig)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
    ok_trim = mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1
    return ok_mmap and ok_trim


def enabled_by_env() -> bool:
    """False when ``SLIMKERNELS_TUNE_MALLOC`` is ``0``/``false``/``no``/``off``."""
    return not switched_off("SLIMKERNELS_TUNE_MALLOC")


def tune_from_env() -> bool:
    """:func:`tune_malloc` with the defaults unless ``SLIMKERNELS_TUNE_MALLOC`` switches it off
    (what the command-line tools and example programs call at start). Returns whether it was
    applied."""
    return enabled_by_env() and tune_malloc()
