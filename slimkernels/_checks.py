"""Argument checks shared by the layers, the ops, the codec, the container, the command line and
the trainer: ints that are ints (a float or a string was truncated by ``int()``), widths, thread
counts, images passed as tensors."""
import math
import numbers
import operator
import os
from typing import Iterable, List, Optional, Tuple


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


def as_flag(v, name: str, where: str) -> bool:
    """``v`` as a bool: True / False (numpy's too) or the ints 1 / 0; ValueError naming
    ``name`` and ``where`` for anything else (a string such as ``"no"`` was truthy: an IGDN, or
    training noise, where the caller meant the opposite)."""
    if type(v) is bool:
        return v
    if (isinstance(v, numbers.Integral) or (type(v).__module__ == "numpy" and
                                             type(v).__name__ in ("bool", "bool_"))) \
            and v in (0, 1):
        return bool(v)
    raise ValueError(f"{where}: {name} must be True or False, got {v!r}")


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


def _kind_and_hint(x, name: str = "x") -> Tuple[str, str]:
    """``x``'s type as a message names it (``numpy.ndarray``, ``list``) and, for a numpy
    array, the conversion (``": convert it with torch.from_numpy(name)"``, else "")."""
    kind = type(x).__name__ if type(x).__module__ == "builtins" else \
        f"{type(x).__module__.split('.')[0]}.{type(x).__name__}"
    hint = f": convert it with torch.from_numpy({name})" \
        if type(x).__module__.startswith("numpy") else ""
    return kind, hint


def not_a_tensor(x, where: str, what: str = "[N, C, H, W]") -> TypeError:
    """The TypeError for a non-tensor input ``x`` of ``where`` (a layer or function name) that
    takes a ``torch.Tensor`` ``what``: names the type it got and, for a numpy array, the
    conversion. Built on the error path only (the callers check ``isinstance`` themselves)."""
    kind, hint = _kind_and_hint(x)
    return TypeError(f"{where} takes a torch.Tensor {what}, got {kind}{hint}")


def check_tensor_args(fn: str, **args) -> None:
    """TypeError for the first of ``args`` (name -> value, in order) that is not a
    ``torch.Tensor``: ``"fn: name must be a torch.Tensor, got numpy.ndarray: convert it with
    torch.from_numpy(name)"`` (the ops' shape checks had read a numpy array's shape and said
    "must be a 4-D tensor, got (1, 3, 4, 4)", or failed with an AttributeError)."""
    import torch
    for name, v in args.items():
        if not isinstance(v, torch.Tensor):
            kind, hint = _kind_and_hint(v, name)
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {kind}{hint}")


def check_image_tensor(x, fn: str) -> None:
    """TypeError unless ``x`` is a ``torch.Tensor`` (``fn``: the function named in the message;
    the ``(x, note)`` pair of :func:`slimkernels.io.read_image` is named as such); ValueError
    for a tensor on the meta device (shapes only: there are no pixels to code) or a sparse one
    (its first kernel's NotImplementedError: a dense tensor is what the transforms read)."""
    import torch
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn} expects the image as a tensor, got {type(x).__name__}"
                        + (" (slimkernels.io.read_image returns (x, note): pass x)"
                           if isinstance(x, tuple) else ""))
    if x.is_meta:
        raise ValueError(f"{fn}: the image is a meta tensor (a shape without values): pass "
                         f"its pixels, e.g. from slimkernels.io.read_image")
    if x.layout != torch.strided:
        raise ValueError(f"{fn}: the image is a {str(x.layout).replace('torch.', '')} tensor: "
                         f"pass a dense one (x.to_dense())")
