"""Argument checks shared by the layers, the ops, the codec, the container, the command line and
the trainer: ints that are ints (a float or a string was truncated by ``int()``), widths, thread
counts, images passed as tensors."""
import math
import numbers
import operator
import os
from typing import Iterable, List, Optional


def is_int(v) -> bool:
    """Whether ``v`` is an integer (int, numpy integer...; not a bool, float or str). A plain
    int takes the fast path (``isinstance`` against ``numbers.Integral`` costs ~0.3 us)."""
    return type(v) is int or (not isinstance(v, bool) and isinstance(v, numbers.Integral))


#: ``--threads`` at most this many per CPU (more only slows the work down; OpenMP failed to
#: start 20000 threads on a 2-core machine and crashed at 100000).
MAX_THREADS_PER_CPU = 8


def too_many_threads(n: int) -> Optional[str]:
    """The error message for a thread count above ``MAX_THREADS_PER_CPU`` per CPU, else None
    (the command line, ``slimkernels eval`` and the trainer check ``--threads`` with it)."""
    cpus = os.cpu_count() or 1
    if n > MAX_THREADS_PER_CPU * cpus:
        return (f"--threads {n} is more than {MAX_THREADS_PER_CPU} per CPU ({cpus} here): at "
                f"most {MAX_THREADS_PER_CPU * cpus}")
    return None


def as_width(width, where: str) -> int:
    """``width`` as an int: any integer type (``operator.index``: int, numpy integers, 0-dim
    integer tensors); ValueError naming ``where`` for a float, str, bool or anything else (a
    float width used to be truncated silently: 96.5 ran as 96)."""
    if isinstance(width, bool):
        raise ValueError(f"{where}: width must be an int, got {width!r}")
    try:
        return operator.index(width)
    except TypeError:
        raise ValueError(f"{where}: width must be an int, got {width!r} "
                         f"({type(width).__name__})") from None


def width_list(widths: Iterable, where: str, full: Optional[int] = None) -> List[int]:
    """``widths`` as a non-empty list of ints (each :func:`as_width`), in their order; with
    ``full``, each in ``1..full``. ValueError naming ``where`` otherwise."""
    try:
        out = [as_width(w, where) for w in widths]
    except TypeError:
        raise ValueError(f"{where}: widths must be a sequence of ints, got {widths!r}") from None
    if not out:
        raise ValueError(f"{where}: widths must not be empty")
    if full is not None:
        bad = [w for w in out if not 1 <= w <= full]
        if bad:
            raise ValueError(f"{where}: widths {bad} are outside 1..{full} (the layer's output "
                             f"channels)")
    return out


def finite_real(v, name: str, where: str, lo: float = -math.inf, hi: float = math.inf,
                low_ok: bool = False) -> float:
    """``v`` as a finite float in ``(lo, hi)`` (``[lo, hi)`` with ``low_ok``); ValueError naming
    ``where``, ``name`` and the range otherwise (bools and strings are refused, not converted)."""
    rng = f"{'[' if low_ok else '('}{lo:g}, {hi:g})"
    try:
        f = float(v) if not isinstance(v, (bool, str, bytes)) else math.nan
    except (TypeError, ValueError, OverflowError):
        f = math.nan
    if not (math.isfinite(f) and (lo <= f if low_ok else lo < f) and f < hi):
        raise ValueError(f"{where}: {name} must be a finite number in {rng}, got {v!r}")
    return f


def not_a_tensor(x, where: str, what: str = "[N, C, H, W]") -> TypeError:
    """The TypeError for a non-tensor input ``x`` of ``where`` (a layer or function name) that
    takes a ``torch.Tensor`` ``what``: names the type it got and, for a numpy array, the
    conversion. Built on the error path only (the callers check ``isinstance`` themselves)."""
    kind = type(x).__name__ if type(x).__module__ == "builtins" else \
        f"{type(x).__module__.split('.')[0]}.{type(x).__name__}"
    hint = ": convert it with torch.from_numpy(x)" if type(x).__module__.startswith("numpy") \
        else ""
    return TypeError(f"{where} takes a torch.Tensor {what}, got {kind}{hint}")


def check_image_tensor(x, fn: str) -> None:
    """TypeError unless ``x`` is a ``torch.Tensor`` (``fn``: the function named in the message;
    the ``(x, note)`` pair of :func:`slimkernels.io.read_image` is named as such); ValueError
    for a tensor on the meta device (shapes only: there are no pixels to code)."""
    import torch
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn} expects the image as a tensor, got {type(x).__name__}"
                        + (" (slimkernels.io.read_image returns (x, note): pass x)"
                           if isinstance(x, tuple) else ""))
    if x.is_meta:
        raise ValueError(f"{fn}: the image is a meta tensor (a shape without values): pass "
                         f"its pixels, e.g. from slimkernels.io.read_image")
